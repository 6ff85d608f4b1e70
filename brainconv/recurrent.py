"""Convolutional recurrent cells: ConvLSTMCell and ConvGRUCell in 1-, 2-, 3- and N-d.

A cell holds two kinds of brainconv convolutions: the input-to-state
convolution ``input_conv`` (any stride, dilation, padding and padding mode,
with the gates' bias) and the state-to-state convolutions (``hidden_conv``,
and for the GRU ``candidate_conv``), which run with stride 1 and 'SAME'
padding on the state's own spatial size, so the state keeps its shape.  The
state size is the input convolution's ``out_size``, known at construction.

The cells follow brainstate's recurrent-cell conventions
(``brainstate.nn.LSTMCell`` / ``GRUCell``): the states are
``brainstate.HiddenState`` s made by ``init_state(batch_size)`` and cleared by
``reset_state``; ``update(x)`` advances one step and returns the new hidden
state, so a cell runs inside ``brainstate.transform.for_loop`` and is set up by
``brainstate.nn.init_all_states``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, Tuple, Union

import brainstate
import braintools
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np

from . import _args, _braintrace, _units
from ._base import _fixed_rank, _materialize, _show_signature
from .layers import Conv
from .shapes import Padding

__all__ = [
    'ConvLSTMCell', 'ConvLSTMCell1d', 'ConvLSTMCell2d', 'ConvLSTMCell3d',
    'ConvGRUCell', 'ConvGRUCell1d', 'ConvGRUCell2d', 'ConvGRUCell3d',
]

IntOrSeq = Union[int, Sequence[int]]
Init = Union[Callable[..., Any], Any]


class _ConvRNNCell(brainstate.nn.RNNCell):
    """Machinery shared by the convolutional cells; not public."""

    #: Names of the gate blocks along the channel axis of the convolutions' outputs, in order.
    gate_order: Tuple[str, ...] = ()
    #: Names of the HiddenStates the cell keeps.
    state_names: Tuple[str, ...] = ('h',)

    def _build(self, nd, in_size, out_channels, kernel_size, stride, padding, lhs_dilation, rhs_dilation,
               recurrent_kernel_size, w_init, recurrent_w_init, b_init, state_init, activation,
               recurrent_activation, channel_first, padding_mode, recurrent_padding_mode, param_type,
               precision, lowering, name, recurrent_blocks, forget_bias=None):
        """Validate everything, draw every weight, then set attributes (nothing is set on an error)."""
        n = len(self.gate_order)
        nd = _args.num_spatial_dims(nd)
        hidden = _args.positive_int(out_channels, 'out_channels')
        spec_in = _args.conv_spec(nd, in_size, n * hidden, kernel_size, stride, padding, lhs_dilation,
                                  rhs_dilation, 1, padding_mode, channel_first)
        spatial = spec_in.geometry.out_spatial
        state_size = (hidden,) + spatial if channel_first else spatial + (hidden,)
        rk = spec_in.geometry.kernel_size if recurrent_kernel_size is None else recurrent_kernel_size
        rk = _args.int_tuple(rk, nd, 'recurrent_kernel_size')
        rmode = _args.recurrent_padding_mode(recurrent_padding_mode)
        specs_h = [_args.conv_spec(nd, state_size, blocks * hidden, rk, 1, 'SAME', 1, 1, 1, rmode, channel_first)
                   for blocks in recurrent_blocks]
        act = _args.activation(activation, 'activation', brainstate.nn)
        rec_act = _args.activation(recurrent_activation, 'recurrent_activation', brainstate.nn)
        lowering = _args.lowering(lowering)
        if not callable(state_init):
            shape = tuple(u.math.shape(state_init))
            _args.state_init_shape(shape[max(len(shape) - len(state_size), 0):], state_size)
        if forget_bias is not None:
            forget_bias = _args.real_number(forget_bias, 'forget_bias')

        kernel = _materialize(w_init, spec_in.kernel_shape, 'w_init')
        _args.dimensionless(_units.split(kernel)[1], 'w_init', type(self).__name__)
        bias = None
        if b_init is not None:
            if not callable(b_init) and tuple(u.math.shape(b_init)) == (n * hidden,):
                b_init = np.reshape(b_init, spec_in.bias_shape)  # a per-channel vector
            bias = _materialize(b_init, spec_in.bias_shape, 'b_init')
            _args.dimensionless(_units.split(bias)[1], 'b_init', type(self).__name__)
            if forget_bias and callable(b_init):
                bias = np.array(bias)
                index = [slice(None)] * bias.ndim
                f = self.gate_order.index('f')
                index[1 if channel_first else nd] = slice(f * hidden, (f + 1) * hidden)  # the channel axis
                bias[tuple(index)] += forget_bias
                bias = jax.device_put(bias)
        rec_kernels = []
        for spec in specs_h:
            k = _materialize(recurrent_w_init, spec.kernel_shape, 'recurrent_w_init')
            _args.dimensionless(_units.split(k)[1], 'recurrent_w_init', type(self).__name__)
            rec_kernels.append(k)

        super().__init__(name=name)
        common = dict(w_mask=None, channel_first=channel_first, param_type=param_type, precision=precision,
                      lowering=lowering)
        self.input_conv = Conv(nd, spec_in.in_size, n * hidden, spec_in.geometry.kernel_size,
                               spec_in.geometry.stride, spec_in.padding, spec_in.geometry.lhs_dilation,
                               spec_in.geometry.rhs_dilation, 1, w_init=kernel, b_init=bias,
                               padding_mode=spec_in.padding_mode, **common)
        recurrent = [Conv(nd, state_size, spec.out_channels, rk, 1, 'SAME', w_init=k, b_init=None,
                          padding_mode=rmode, **common) for spec, k in zip(specs_h, rec_kernels)]
        self.hidden_conv = recurrent[0]
        if len(recurrent) > 1:
            self.candidate_conv = recurrent[1]
        self.num_spatial_dims = nd
        self.in_size = spec_in.in_size
        self.out_size = state_size
        self.out_channels = hidden
        self.in_channels = spec_in.in_channels
        self.channel_first = bool(channel_first)
        self.recurrent_kernel_size = rk
        self.activation = act
        self.recurrent_activation = rec_act
        self._state_init = state_init

    # Geometry of the input convolution, under brainstate.nn.Conv's names.
    kernel_size = property(lambda self: self.input_conv.kernel_size)
    stride = property(lambda self: self.input_conv.stride)
    padding = property(lambda self: self.input_conv.padding)
    padding_mode = property(lambda self: self.input_conv.padding_mode)
    lhs_dilation = property(lambda self: self.input_conv.lhs_dilation)
    rhs_dilation = property(lambda self: self.input_conv.rhs_dilation)
    pads = property(lambda self: self.input_conv.pads, doc="Resolved (low, high) pads of the input convolution.")

    @property
    def state_size(self) -> Tuple[int, ...]:
        """Shape of each state without batch axes (the same as ``out_size``)."""
        return self.out_size

    @property
    def recurrent_convs(self) -> Tuple[Conv, ...]:
        """The state-to-state convolutions (stride 1, 'SAME' on the state's size)."""
        return tuple(c for c in (self.hidden_conv, getattr(self, 'candidate_conv', None)) if c is not None)

    @property
    def num_params(self) -> int:
        return sum(c.num_params for c in (self.input_conv,) + self.recurrent_convs)

    def _initial(self, shape: Tuple[int, ...]) -> Any:
        init = self._state_init
        if callable(init):
            value = _materialize(init, shape, 'state_init')
        else:
            _args.state_init_shape(u.math.shape(init), shape)
            value = u.math.broadcast_to(init, shape)
        _args.dimensionless(_units.split(value)[1], 'state_init', type(self).__name__)
        return value

    def init_state(self, batch_size: int | Sequence[int] | None = None, **kwargs) -> None:
        """Make the states, each of shape ``(*batch, *state_size)``.

        ``batch_size``: None (no batch axis), an int (one batch axis) or a
        sequence of ints (several).  Other keyword arguments are ignored, as
        in brainstate.
        """
        shape = _args.batch_size(batch_size) + self.state_size
        values = [self._initial(shape) for _ in self.state_names]
        for name, value in zip(self.state_names, values):
            setattr(self, name, brainstate.HiddenState(value))

    def reset_state(self, batch_size: int | Sequence[int] | None = None, **kwargs) -> None:
        """Set the states back to ``state_init``, with ``batch_size`` as in :meth:`init_state`.

        The states must exist (``init_state`` first, outside any transform:
        a state made inside ``jit`` or ``grad`` dies with the trace).
        """
        _args.state_initialised(self._initialised(), type(self).__name__)
        shape = _args.batch_size(batch_size) + self.state_size
        values = [self._initial(shape) for _ in self.state_names]
        for name, value in zip(self.state_names, values):
            getattr(self, name).value = value

    def _initialised(self) -> bool:
        return all(isinstance(getattr(self, n, None), brainstate.State) for n in self.state_names)

    def _check(self, x: Any) -> Any:
        """The input as a plain array, checked against in_size and the state's batch shape."""
        layer = type(self).__name__
        _args.state_initialised(self._initialised(), layer)
        xm, x_unit = _units.split(x)
        _args.dimensionless(x_unit, 'x', layer)
        _args.input_array(xm, self.in_size, layer)
        h = self.h.value
        _args.state_batch(jnp.shape(xm), self.in_size, jnp.shape(h)[:jnp.ndim(h) - len(self.state_size)], layer,
                          'cell')
        return xm

    def _gates(self, conv: Conv, x: Any, parts: int) -> list:
        """``conv(x)`` split into its ``parts`` gate blocks along the channels.  Under braintrace
        (:mod:`brainconv._braintrace`) each block is a traced operation of its own, shaped like
        the state it gates: braintrace links an operation to a hidden state only through an
        output of that state's shape."""
        if not _braintrace.active(conv):
            return self._split(conv(x), parts)
        size = conv.out_channels // parts
        return [conv._apply(conv.weight.value, x, (i * size, (i + 1) * size)) for i in range(parts)]

    def _split(self, z: Any, parts: int) -> list:
        axis = -(self.num_spatial_dims + 1) if self.channel_first else -1
        return jnp.split(z, parts, axis=axis)

    def __repr__(self) -> str:
        g = self.input_conv.spec.geometry
        return (f"{type(self).__name__}({self.in_size} -> {self.out_size}, kernel={g.kernel_size}, "
                f"recurrent_kernel={self.recurrent_kernel_size}, stride={g.stride}, pads={g.pads}, "
                f"params={self.num_params})")


_SHARED = """\
    in_size : sequence of int
        Input shape without batch axes: ``(*spatial, C_in)``, or ``(C_in, *spatial)`` with
        ``channel_first=True``; {nd} spatial sizes.
    out_channels : int
        Channels of the state (Keras ``filters``, flax ``features``).
    kernel_size : int or sequence of {nd} ints
        Kernel of the input-to-state convolution.
    stride : int or sequence of {nd} ints, default 1
        Stride of the input-to-state convolution (the state is smaller than the input then).
    padding : str, int, or pairs, default 'SAME'
        Padding of the input-to-state convolution, as for :class:`brainconv.Conv`.
    lhs_dilation, rhs_dilation : int or sequence of {nd} ints, default 1
        Input and kernel dilation of the input-to-state convolution.
    recurrent_kernel_size : int or sequence of {nd} ints, optional
        Kernel of the state-to-state convolution(s); default ``kernel_size``.  They run with
        stride 1 and 'SAME' padding on the state's spatial size.
    w_init : initializer or array, default ``braintools.init.XavierNormal()``
        Input-to-state kernel, shape ``(*kernel_size, C_in, {n} * out_channels)``.
    recurrent_w_init : initializer or array, default ``braintools.init.Orthogonal()``
        State-to-state kernel(s), {rec_shapes}; braintools' Orthogonal flattens all axes but
        the last, as Keras does.
    b_init : initializer or array, optional, default ``braintools.init.ZeroInit()``
        Bias of the gates, ``{n} * out_channels`` values (in the input convolution's bias
        layout); None for no bias.
{forget}    state_init : initializer or array, default ``braintools.init.ZeroInit()``
        Initial value of {states}: called with ``(*batch, *state_size)``, or an array that
        broadcasts to it.
    activation : str or callable, default 'tanh'
        The candidate's and (LSTM) the output's nonlinearity; a name looks in brainstate.nn.
    recurrent_activation : str or callable, default 'sigmoid'
        The gates' nonlinearity.
    channel_first : bool, default False
        Input and states channels-first: ``(*batch, C, *spatial)``.
    padding_mode : str, default 'ZEROS'
        Padding mode of the input-to-state convolution ('ZEROS', 'REFLECT', 'REPLICATE',
        'CIRCULAR').
    recurrent_padding_mode : str, default 'ZEROS'
        Padding mode of the state-to-state convolution(s); 'CIRCULAR' for a periodic domain.
    name : str, optional
    param_type : type, default ``brainstate.ParamState``
    precision : optional
        Passed to ``jax.lax.conv_general_dilated``.
    lowering : str, optional
        The formulation of every convolution of the cell (see :mod:`brainconv.lowering`).
"""

_COMMON = """
    Call ``init_state(batch_size)`` (or ``brainstate.nn.init_all_states(model, batch_size)``)
    first: it makes {states_attr}, ``brainstate.HiddenState`` s of shape ``(*batch,
    *state_size)`` (``batch_size`` None, an int, or a tuple of ints for several batch axes);
    ``reset_state`` sets them back to ``state_init``.  ``update(x)`` (or calling the cell)
    takes ``x`` of shape ``(*batch, *in_size)`` with the states' batch shape, advances one
    step and returns the new hidden state ``h``.  ``in_size``, ``out_size`` and
    ``state_size`` (equal to ``out_size``: the input convolution's output size with
    ``out_channels`` channels) are known at construction.  The state keeps its dtype
    (set by ``state_init``) whatever the input's.

    Inputs, weights and states must be dimensionless: a Quantity with a unit raises a
    TypeError, because the gates squash weighted sums with sigmoid and tanh.
"""

_LSTM_DOC = """{title}

    With ``σ`` the recurrent activation (sigmoid) and ``φ`` the activation (tanh), in gate
    order ``(i, f, g, o)`` along the channel axis of both kernels and of the bias (Keras's
    order; PyTorch's too)::

        i, f, g, o = split(input_conv(x_t) + hidden_conv(h_{{t-1}}), 4)   # input_conv adds the bias
        c_t = σ(f) ⊙ c_{{t-1}} + σ(i) ⊙ φ(g)
        h_t = σ(o) ⊙ φ(c_t)

    This is Keras's ``ConvLSTM{nd_name}`` (no peepholes) and, up to the gate order and one
    bias instead of two, flax's ``ConvLSTMCell``; see the docs page "Recurrent cells" for
    loading their weights.  ``input_conv.weight`` holds ``{{'weight': (*kernel_size, C_in,
    4 * out_channels), 'bias': ...}}``, ``hidden_conv.weight`` ``{{'weight':
    (*recurrent_kernel_size, out_channels, 4 * out_channels)}}``.
{common}
    Parameters
    ----------
{num}{shared}
    Examples
    --------
    >>> import brainconv
    >>> cell = brainconv.{example}
    >>> cell.out_size
    {example_out}
    >>> cell.init_state(batch_size=2)
    >>> cell.h.value.shape, cell.c.value.shape
    {example_states}
"""

_GRU_DOC = """{title}

    The convolutional GRU of Ballas et al. (2016), with brainstate.nn.GRUCell's equations: the
    reset gate acts on the state before its convolution.  With ``σ`` the recurrent activation
    (sigmoid), ``φ`` the activation (tanh) and gate order ``(r, z, n)`` along the input
    kernel's and the bias's channel axis::

        r, z = split(σ(input_conv(x_t)[r, z] + hidden_conv(h_{{t-1}})), 2)   # bias in input_conv
        n = φ(input_conv(x_t)[n] + candidate_conv(r ⊙ h_{{t-1}}))
        h_t = (1 - z) ⊙ h_{{t-1}} + z ⊙ n

    ``input_conv`` has ``3 * out_channels`` output channels, ``hidden_conv`` ``2 *
    out_channels`` (r, z) and ``candidate_conv`` ``out_channels``; neither recurrent
    convolution has a bias.
{common}
    Parameters
    ----------
{num}{shared}
    Examples
    --------
    >>> import brainconv
    >>> cell = brainconv.{example}
    >>> cell.out_size
    {example_out}
    >>> cell.init_state(batch_size=2)
    >>> cell.h.value.shape
    {example_states}
"""

_FORGET = """\
    forget_bias : float, default 1.0
        Added to the forget gate's slice of the bias that an initializer ``b_init`` draws
        (Keras ``unit_forget_bias=True``; Jozefowicz et al. 2015), so the cell starts by
        remembering.  An array ``b_init`` is taken as it is, and ``b_init=None`` has no bias.
        It is part of the bias parameter, not a constant added at each step.
"""

_EXAMPLES = {
    ('ConvLSTMCell', 1): ("ConvLSTMCell1d((32, 2), 4, kernel_size=3)", "(32, 4)", "((2, 32, 4), (2, 32, 4))"),
    ('ConvLSTMCell', 2): ("ConvLSTMCell2d((16, 16, 1), 8, kernel_size=3, stride=2)", "(8, 8, 8)",
                          "((2, 8, 8, 8), (2, 8, 8, 8))"),
    ('ConvLSTMCell', 3): ("ConvLSTMCell3d((4, 8, 8, 1), 2, kernel_size=3)", "(4, 8, 8, 2)",
                          "((2, 4, 8, 8, 2), (2, 4, 8, 8, 2))"),
    ('ConvLSTMCell', None): ("ConvLSTMCell(2, (1, 16, 16), 4, kernel_size=5, padding='VALID', channel_first=True)",
                             "(4, 12, 12)", "((2, 4, 12, 12), (2, 4, 12, 12))"),
    ('ConvGRUCell', 1): ("ConvGRUCell1d((32, 2), 4, kernel_size=3)", "(32, 4)", "(2, 32, 4)"),
    ('ConvGRUCell', 2): ("ConvGRUCell2d((16, 16, 1), 8, kernel_size=3)", "(16, 16, 8)", "(2, 16, 16, 8)"),
    ('ConvGRUCell', 3): ("ConvGRUCell3d((4, 8, 8, 1), 2, kernel_size=3)", "(4, 8, 8, 2)", "(2, 4, 8, 8, 2)"),
    ('ConvGRUCell', None): ("ConvGRUCell(1, (64, 3), 8, kernel_size=5, stride=2, recurrent_kernel_size=3)",
                            "(32, 8)", "(2, 32, 8)"),
}

_TITLES = {
    'ConvLSTMCell': "{rank} convolutional LSTM cell (Shi et al. 2015) with brainconv convolutions.",
    'ConvGRUCell': "{rank} convolutional GRU cell with brainconv convolutions.",
}


def _render(stem: str, nd: int | None) -> str:
    """The one docstring of ``stem``, rendered for rank ``nd`` (None: the generic N-d class)."""
    lstm = stem == 'ConvLSTMCell'
    nd_text = nd or 'num_spatial_dims'
    shared = _SHARED.format(
        nd=nd_text, n=4 if lstm else 3, forget=_FORGET if lstm else '',
        states="``h`` and ``c``" if lstm else "``h``",
        rec_shapes=("``(*recurrent_kernel_size, out_channels, 4 * out_channels)``" if lstm else
                    "``(*recurrent_kernel_size, out_channels, 2 * out_channels)`` and "
                    "``(*recurrent_kernel_size, out_channels, out_channels)``"))
    example, out, states = _EXAMPLES[stem, nd]
    return (_LSTM_DOC if lstm else _GRU_DOC).format(
        title=_TITLES[stem].format(rank=f'{nd}-d' if nd else 'N-d'),
        nd_name=f'{nd}D' if nd else '1D/2D/3D',
        common=_COMMON.format(states_attr="``h`` and ``c``" if lstm else "``h``"),
        num='' if nd else '    num_spatial_dims : int\n        Number of spatial axes (1 for the 1d cell, ...).\n',
        shared=shared, example=example, example_out=out, example_states=states)


class ConvLSTMCell(_ConvRNNCell):
    __doc__ = _render('ConvLSTMCell', None)
    gate_order = ('i', 'f', 'g', 'o')
    state_names = ('h', 'c')

    def __init__(
        self,
        num_spatial_dims: int,
        in_size: Sequence[int],
        out_channels: int,
        kernel_size: IntOrSeq,
        stride: IntOrSeq = 1,
        padding: Union[Padding, int, Sequence] = 'SAME',
        lhs_dilation: IntOrSeq = 1,
        rhs_dilation: IntOrSeq = 1,
        recurrent_kernel_size: IntOrSeq | None = None,
        w_init: Init = braintools.init.XavierNormal(),
        recurrent_w_init: Init = braintools.init.Orthogonal(),
        b_init: Init | None = braintools.init.ZeroInit(),
        forget_bias: float = 1.0,
        state_init: Init = braintools.init.ZeroInit(),
        activation: str | Callable = 'tanh',
        recurrent_activation: str | Callable = 'sigmoid',
        channel_first: bool = False,
        padding_mode: str = 'ZEROS',
        recurrent_padding_mode: str = 'ZEROS',
        name: str | None = None,
        param_type: type = brainstate.ParamState,
        precision: Any = None,
        lowering: str | None = None,
    ):
        self._build(num_spatial_dims, in_size, out_channels, kernel_size, stride, padding, lhs_dilation,
                    rhs_dilation, recurrent_kernel_size, w_init, recurrent_w_init, b_init, state_init, activation,
                    recurrent_activation, channel_first, padding_mode, recurrent_padding_mode, param_type,
                    precision, lowering, name, recurrent_blocks=(4,), forget_bias=forget_bias)

    def update(self, x: Any) -> Any:
        """Advance one step on ``x`` of shape ``(*batch, *in_size)``; returns the new ``h``."""
        x = self._check(x)
        h, c = self.h.value, self.c.value
        gx, gh = self._gates(self.input_conv, x, 4), self._gates(self.hidden_conv, h, 4)
        dtype = jnp.promote_types(gx[0].dtype, gh[0].dtype)
        i, f, g, o = (a.astype(dtype) + b.astype(dtype) for a, b in zip(gx, gh))
        sig, act = self.recurrent_activation, self.activation
        c_new = (sig(f) * c.astype(dtype) + sig(i) * act(g))
        h_new = (sig(o) * act(c_new)).astype(h.dtype)
        self.c.value = c_new.astype(c.dtype)
        self.h.value = h_new
        return h_new


class ConvGRUCell(_ConvRNNCell):
    __doc__ = _render('ConvGRUCell', None)
    gate_order = ('r', 'z', 'n')
    state_names = ('h',)

    def __init__(
        self,
        num_spatial_dims: int,
        in_size: Sequence[int],
        out_channels: int,
        kernel_size: IntOrSeq,
        stride: IntOrSeq = 1,
        padding: Union[Padding, int, Sequence] = 'SAME',
        lhs_dilation: IntOrSeq = 1,
        rhs_dilation: IntOrSeq = 1,
        recurrent_kernel_size: IntOrSeq | None = None,
        w_init: Init = braintools.init.XavierNormal(),
        recurrent_w_init: Init = braintools.init.Orthogonal(),
        b_init: Init | None = braintools.init.ZeroInit(),
        state_init: Init = braintools.init.ZeroInit(),
        activation: str | Callable = 'tanh',
        recurrent_activation: str | Callable = 'sigmoid',
        channel_first: bool = False,
        padding_mode: str = 'ZEROS',
        recurrent_padding_mode: str = 'ZEROS',
        name: str | None = None,
        param_type: type = brainstate.ParamState,
        precision: Any = None,
        lowering: str | None = None,
    ):
        self._build(num_spatial_dims, in_size, out_channels, kernel_size, stride, padding, lhs_dilation,
                    rhs_dilation, recurrent_kernel_size, w_init, recurrent_w_init, b_init, state_init, activation,
                    recurrent_activation, channel_first, padding_mode, recurrent_padding_mode, param_type,
                    precision, lowering, name, recurrent_blocks=(2, 1))

    def update(self, x: Any) -> Any:
        """Advance one step on ``x`` of shape ``(*batch, *in_size)``; returns the new ``h``."""
        x = self._check(x)
        h = self.h.value
        gx, gh = self._gates(self.input_conv, x, 3), self._gates(self.hidden_conv, h, 2)
        dtype = jnp.promote_types(gx[0].dtype, gh[0].dtype)
        xr, xz, xn = (a.astype(dtype) for a in gx)
        hr, hz = (a.astype(dtype) for a in gh)
        sig = self.recurrent_activation
        r, z = sig(xr + hr), sig(xz + hz)
        hd = h.astype(dtype)
        n = self.activation(xn + self.candidate_conv((r * hd).astype(h.dtype)).astype(dtype))
        h_new = ((1 - z) * hd + z * n).astype(h.dtype)
        self.h.value = h_new
        return h_new


for _cls in (ConvLSTMCell, ConvGRUCell):
    _show_signature(_cls, 1)
ConvLSTMCell1d, ConvLSTMCell2d, ConvLSTMCell3d = (_fixed_rank(ConvLSTMCell, nd, _render) for nd in (1, 2, 3))
ConvGRUCell1d, ConvGRUCell2d, ConvGRUCell3d = (_fixed_rank(ConvGRUCell, nd, _render) for nd in (1, 2, 3))
