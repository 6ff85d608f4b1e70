"""brainstate Modules: Conv, ConvTranspose, ScaledWSConv and their 1d/2d/3d names.

A layer validates its arguments once (:mod:`brainconv._args`), learns every
shape at construction from closed-form arithmetic (:mod:`brainconv.shapes`),
holds its weights in one ``param_type`` state, and at call time splits units
off (:mod:`brainconv._units`), runs a functional op
(:mod:`brainconv.functional`) and puts the units back.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable, ClassVar, Sequence, Tuple, Union

import brainstate
import braintools
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np

from . import _args, _braintrace, _init, _units, functional
from . import lowering as _lowering
from .shapes import Padding, adjoint_output_padding, transpose_as_conv

__all__ = [
    'Conv', 'Conv1d', 'Conv2d', 'Conv3d',
    'ConvTranspose', 'ConvTranspose1d', 'ConvTranspose2d', 'ConvTranspose3d',
    'ScaledWSConv', 'ScaledWSConv1d', 'ScaledWSConv2d', 'ScaledWSConv3d',
]

IntOrSeq = Union[int, Sequence[int]]
Init = Union[Callable[..., Any], Any]


def _materialize(init: Init, shape: Tuple[int, ...], name: str) -> Any:
    """Array of ``shape`` from an initializer (called with the shape) or an array
    broadcastable to it (a bias given as a ``(C,)`` vector, say)."""
    value = _init.sample(init, shape) if callable(init) else init  # variance scaling: NumPy, no compiles
    if not hasattr(value, 'shape'):
        value = jnp.asarray(value)
    if tuple(value.shape) != tuple(shape):
        _args.init_shape(value.shape, shape, name, broadcast=not callable(init))
        value = u.math.broadcast_to(value, shape)
    return value


def _as_dtype(value: Any, dtype: np.dtype | None) -> Any:
    """``value`` (an array or a Quantity) with its mantissa in ``dtype``; unchanged when None."""
    if dtype is None:
        return value
    m, unit = _units.split(value)
    if isinstance(m, jax.core.Tracer):
        m = m.astype(dtype)
    elif np.dtype(m.dtype) != dtype:
        m = jax.device_put(np.asarray(m).astype(dtype))  # NumPy: no compile per shape
    return _units.attach(m, unit)


class _ConvBase(brainstate.nn.Module):
    """Machinery shared by every layer here; not public."""

    num_spatial_dims: int

    def _setup(self, spec: _args.ConvSpec, w_init: Init, b_init: Init | None, w_mask: Init | None,
               param_type: type, precision: Any, lowering: str | None = None, dtype: Any = None,
               param_dtype: Any = None) -> None:
        """Everything after validation: masks and weights first, then attributes."""
        dtype = _args.dtype(dtype, 'dtype')
        param_dtype = _args.dtype(param_dtype, 'param_dtype')
        kernel_shape = spec.kernel_shape
        mask = None
        if w_mask is not None:
            mask = w_mask(kernel_shape) if callable(w_mask) else jnp.asarray(w_mask)
            _args.mask_shape(jnp.shape(mask), kernel_shape)
            mask = jnp.reshape(mask, (1,) * (len(kernel_shape) - jnp.ndim(mask)) + jnp.shape(mask))
        params = {'weight': self._init_kernel(w_init, spec)}
        if b_init is not None:
            params['bias'] = self._make_bias(b_init, spec)
        self._set_dtypes(dtype, param_dtype)
        self.spec = spec
        self.num_spatial_dims = spec.geometry.num_spatial_dims
        self.in_size = spec.in_size
        self.out_size = spec.out_size
        self.precision = precision
        self._lowering = lowering
        self.w_mask = mask
        self.weight = param_type({k: _as_dtype(v, param_dtype) for k, v in params.items()})

    def _init_kernel(self, w_init: Init, spec: _args.ConvSpec) -> Any:
        return _materialize(w_init, spec.kernel_shape, 'w_init')

    def _make_bias(self, b_init: Init, spec: _args.ConvSpec) -> Any:
        """The bias array of ``spec.bias_shape``; a ``(out_channels,)`` array is a per-channel vector."""
        if not callable(b_init) and np.shape(b_init) == (spec.out_channels,):
            nd = spec.geometry.num_spatial_dims
            vector = (spec.out_channels,) + (1,) * nd if spec.channel_first else (spec.out_channels,)
            b_init = u.math.reshape(b_init, (1,) * (len(spec.bias_shape) - len(vector)) + vector)
        return _materialize(b_init, spec.bias_shape, 'b_init')

    def _set_dtypes(self, dtype: np.dtype | None, param_dtype: np.dtype | None) -> None:
        self.dtype = dtype
        self.param_dtype = param_dtype

    # brainstate.nn.Conv's attribute names, read from the one spec.
    in_channels = property(lambda self: self.spec.in_channels)
    out_channels = property(lambda self: self.spec.out_channels)
    groups = property(lambda self: self.spec.groups)
    kernel_shape = property(lambda self: self.spec.kernel_shape)
    kernel_size = property(lambda self: self.spec.geometry.kernel_size)
    stride = property(lambda self: self.spec.geometry.stride)
    lhs_dilation = property(lambda self: self.spec.geometry.lhs_dilation)
    rhs_dilation = property(lambda self: self.spec.geometry.rhs_dilation)
    padding = property(lambda self: self.spec.padding)
    padding_mode = property(lambda self: self.spec.padding_mode)
    channel_first = property(lambda self: self.spec.channel_first)
    channels_last = property(lambda self: not self.spec.channel_first)
    pads = property(lambda self: self.spec.geometry.pads, doc="Resolved (low, high) pads per spatial axis.")

    @property
    def lowering(self) -> str:
        """The formulation this layer's convolution runs as now (:mod:`brainconv.lowering`).

        The layer's ``lowering`` argument if it named one, else the global
        setting, with ``'auto'`` resolved for the default backend.
        """
        return _lowering.resolve(self._lowering, self.spec.geometry, self.groups, self.in_channels,
                                 self.out_channels)

    @property
    def num_params(self) -> int:
        return sum(math.prod(np.shape(v)) for v in self.weight.value.values())

    def kernel(self, params: dict | None = None) -> Any:
        """The kernel the layer convolves with (mask and any standardisation applied)."""
        w, unit = self._kernel_mantissa(self.weight.value if params is None else params)
        return _units.attach(w, unit)

    def _kernel_mantissa(self, params: dict) -> Tuple[Any, Any]:
        """The (first) kernel as a plain array, transforms applied, and its unit."""
        raw = {k: _units.split(v)[0] for k, v in params.items()}
        return self._kernels_of(raw)[0], self._kernel_unit(params)

    def _kernel_unit(self, params: dict) -> Any:
        """The unit the kernels multiply the input's by (None: dimensionless)."""
        return _units.split(params['weight'])[1]

    def _kernels_of(self, raw: dict) -> Tuple[Any, ...]:
        """The kernel arrays ``_op`` takes after ``x``, from the raw (unit-free) parameter arrays:
        a pure, differentiable function of them (mask and any standardisation applied)."""
        w = raw['weight']
        return (w if self.w_mask is None else w * self.w_mask,)

    def _op(self, x: Any, *kernels: Any) -> Any:
        raise NotImplementedError

    def update(self, x: Any) -> Any:
        """Convolve ``x`` of shape ``(*batch, *in_size)``; returns ``(*batch, *out_size)``."""
        return self.apply(self.weight.value, x)

    def apply(self, params: dict, x: Any) -> Any:
        """``update`` with explicit parameters: a pure function of ``(params, x)``.

        ``params`` has the layout of ``self.weight.value``; use it with raw
        ``jax.grad``/``jax.jit``, which cannot write brainstate states.
        """
        return self._apply(params, x)

    def _apply(self, params: dict, x: Any, block: Tuple[int, int] | None = None) -> Any:
        """:meth:`apply`, or with ``block = (start, stop)`` output channels ``start:stop`` only."""
        name = type(self).__name__
        xm, x_unit = _units.split(x)
        num_batch = _args.input_array(xm, self.in_size, name)
        raw = {k: _units.split(v)[0] for k, v in params.items()}
        out_unit = _units.product(x_unit, self._kernel_unit(params))
        scale = _units.bias_scale(params['bias'], out_unit, name) if 'bias' in params else None
        with _lowering.spike_input(_args.is_spikes(x)):
            y = _braintrace.apply(self, xm, raw, scale, num_batch, block)
        return _units.attach(y, out_unit)

    #: Whether braintrace keeps eligibility traces for this layer's weights (when a model using
    #: the layer is compiled by braintrace): True, as for braintrace's own layers.  Set it to
    #: False on a layer to keep its weights non-temporal (see docs/braintrace.md).
    etrace: bool = True

    def _cast(self, a: Any) -> Any:
        """``a`` rounded to the layer's ``dtype`` and held in its accumulation dtype (unchanged without one)."""
        if self.dtype is None:
            return a
        return jnp.asarray(a).astype(self.dtype).astype(_lowering.accumulation_dtype(self.dtype))

    def _forward(self, x: Any, raw: dict, bias_scale: float | None) -> Any:
        """The layer's computation on plain arrays: ``x`` ``(*batch, *in_size)`` and the raw
        parameter arrays (units split off; ``bias_scale`` puts the bias in the output's unit)."""
        kernels = tuple(self._cast(k) for k in self._kernels_of(raw))
        bias = raw.get('bias')
        if bias is not None:
            bias = self._cast(bias if bias_scale in (None, 1.0) else bias * bias_scale)

        def run(batched):
            y = self._op(self._cast(batched), *kernels)
            return y if bias is None else y + jnp.reshape(bias, (1,) * (y.ndim - jnp.ndim(bias)) + jnp.shape(bias))

        y = functional._with_batch(run, x, len(self.in_size))
        return y if self.dtype is None else y.astype(self.dtype)

    # -- exact D_RTRL (brainconv._braintrace): how the trace of each raw array is laid out, and
    #    its instantaneous term, for layers whose kernel is shared by every output position.

    def _etrace_layout(self) -> dict:
        return {'weight': _braintrace.Trace('shared', -1), 'gain': _braintrace.Trace('shared', -1),
                'bias': _braintrace.Trace('shared', 1 if self.channel_first else -1)}

    def _core_kernel(self, **arrays: Any) -> Any:
        """The kernel of the core convolution the layer runs (``(*k, C_in // groups, C_out)``)."""
        return self._cast(self._kernels_of(arrays)[0])

    def _patches(self, x: Any) -> Any:
        """``(n, *out_spatial, taps, C_in)``: the core convolution's input window of every output position."""
        return functional.patches(self._cast(x), self.spec.geometry, self.padding_mode, self.channel_first)

    def _etrace_instant(self, x: Any, df: Any, raw: dict, bias_scale: float | None) -> dict:
        lead = df.shape[:df.ndim - len(self.out_size)]
        d = _braintrace.channels_last(jnp.reshape(df, (-1,) + df.shape[len(lead):]), self)
        patches = self._patches(jnp.reshape(x, (-1,) + tuple(self.in_size)))
        kernels = {k: v for k, v in raw.items() if k != 'bias'}
        out = _braintrace.shared_instant(patches, d, self._core_kernel, kernels, self.groups)
        if 'bias' in raw:
            out['bias'] = _braintrace.bias_instant(d, raw['bias'], bias_scale, self._etrace_layout()['bias'])
        return {k: v.reshape(lead + v.shape[1:]) for k, v in out.items()}

    def _repr_items(self) -> list:
        g = self.spec.geometry
        padding = _padding_label(self.spec.padding)
        mode = '' if self.spec.padding_mode == 'ZEROS' else f' {self.spec.padding_mode}'
        return [f"kernel={g.kernel_size}", f"stride={g.stride}", f"padding={padding}{mode} {g.pads}",
                f"groups={self.groups}", f"params={self.num_params}", f"lowering={self.lowering}"]

    def _dtype_items(self) -> list:
        """The dtype options that differ from the defaults."""
        return [f'{name}={dt.name}' for name, dt in (('dtype', self.dtype), ('param_dtype', self.param_dtype))
                if dt is not None]

    def __repr__(self) -> str:
        items = ', '.join(self._repr_items() + self._dtype_items())
        return f"{type(self).__name__}({self.in_size} -> {self.out_size}, {items})"


def _padding_label(padding: Padding) -> str:
    """How a repr names a padding: the string, 'explicit' for pairs, one label per axis when mixed."""
    if isinstance(padding, str):
        return padding
    if not any(isinstance(p, str) for p in padding):
        return 'explicit'
    return '(' + ', '.join(p if isinstance(p, str) else 'explicit' for p in padding) + ')'


_SHARED_ARGS = """\
    in_size : sequence of int
        Input shape without batch axes: ``(*spatial, C)``, or ``(C, *spatial)`` with
        ``channel_first=True``; {nd} spatial sizes.
    out_channels : int
        Output channels.
    kernel_size : int or sequence of {nd} ints
    stride : int or sequence of {nd} ints, default 1
    padding : str, int, pairs, or one entry per axis, default 'SAME'
        'SAME' (``ceil(n / stride)`` outputs, odd extra pad at the end), 'SAME_LOWER' (odd
        extra pad at the start), 'VALID', 'CAUSAL' (all ``(k - 1) * rhs_dilation`` pads before
        each axis), any case; an int; one int per axis; one ``(low, high)`` pair per axis;
        one pair for every axis; or one entry per axis mixing these, e.g. ``('CAUSAL',
        'SAME', 'SAME')`` (causal on the first axis, centred on the others).  See
        :mod:`brainconv.shapes` and the docs page "Padding semantics" for the exact formulas.
"""

_SHARED_TAIL = """\
    w_init : initializer or array, default ``braintools.init.XavierNormal()``
        Called with the kernel shape; may give brainunit Quantities.
    b_init : initializer or array, optional
        Bias, shaped to broadcast over the output's channel axis; no bias when None.
    w_mask : initializer or array, optional
        Broadcastable to the kernel shape and multiplied into the kernel at every call;
        masked-out entries get zero gradient.
    channel_first : bool, default False
        Channels-first layout ``(*batch, C, *spatial)``.
    name : str, optional
    param_type : type, default ``brainstate.ParamState``
        State class holding ``{{'weight': ..., 'bias': ...}}``.
    padding_mode : str, default 'ZEROS'
        {modes}
    precision : optional
        Passed to ``jax.lax.conv_general_dilated``.
"""

_LOWERING_ARG = """\
    lowering : str, optional
        The exact formulation the convolution runs as: 'lax', 'lax_vjp', 'im2col', 'taps',
        'fold', 'fft' or 'auto' (see :mod:`brainconv.lowering`); None follows
        :func:`brainconv.set_lowering` (initially 'auto': measured per backend).  The
        ``lowering`` property reports the resolved choice.
"""

_DTYPE_ARGS = """\
    dtype : dtype, optional
        Compute dtype (a floating dtype): the input, kernel and bias are cast to it and the
        output is in it; 16-bit dtypes (bfloat16, float16) accumulate in float32 (the
        operands are rounded to ``dtype``, the convolution runs in float32, the result is
        cast back).  None: as without it, the result dtype of the input and the weights.
    param_dtype : dtype, optional
        Dtype the weights are created in (a floating dtype); None: as the initializer gives
        them (``brainstate.environ.dftype()`` for braintools initializers).
"""

_CALL = """
    Calling the layer on ``x`` of shape ``(*batch, *in_size)`` (no batch axis, one, or
    several) returns ``(*batch, *out_size)``.  ``out_size`` is known at construction.
    A Quantity input (or Quantity weights) gives an output in unit(x) * unit(w).
"""

_CONV_DOC = """{title}

    A cross-correlation over {dims} via ``jax.lax.conv_general_dilated``, grouped
    (``groups``) and depthwise (``groups = in_channels``; ``out_channels = m * in_channels``
    is a depth multiplier), with input (lhs) and kernel (rhs) dilation.  The kernel has
    shape ``(*kernel_size, in_channels // groups, out_channels)``.
{call}
    Parameters
    ----------
{num}{shared}    lhs_dilation : int or sequence of {nd} ints, default 1
        Input dilation (zeros inserted between input positions).
    rhs_dilation : int or sequence of {nd} ints, default 1
        Kernel dilation.
    groups : int, default 1
        Divides in_channels and out_channels.
{extra}{tail}{lowering}
    Examples
    --------
    >>> import brainconv, jax.numpy as jnp
    >>> layer = brainconv.{example}
    >>> layer.out_size
    {example_out}
"""

_TRANSPOSE_DOC = """{title}

    The linear adjoint of the convolution with the same kernel_size, stride, padding,
    rhs_dilation and groups (channel counts swapped): it maps that convolution's output
    shape back to its input shape with the same connectivity.  The kernel has shape
    ``(*kernel_size, out_channels, in_channels // groups)`` and is not flipped by the user:
    for ``groups=1``, ``Conv.transpose()`` uses the convolution's kernel array as it is.

    Output length per axis, ``m`` the input length, ``span = (k - 1) * rhs_dilation + 1``:
    for VALID or explicit pads ``(m - 1) * stride + span - low - high + output_padding``
    (PyTorch's); for SAME, SAME_LOWER and CAUSAL ``m * stride`` without ``output_padding``
    (``jax.lax.conv_transpose``'s and brainstate's) and ``(m - 1) * stride + 1 +
    output_padding`` with one (Keras's and PyTorch's for odd spans; see the docs page
    "Padding semantics" for a table of the conventions).
{call}
    Parameters
    ----------
{num}{shared}    rhs_dilation : int or sequence of {nd} ints, default 1
    groups : int, default 1
{tail}    output_padding : int or sequence of {nd} ints, optional
        Added to the smallest output length the padding allows, as in Keras and PyTorch:
        it picks among the output shapes a stride > 1 maps to one input shape.  Smaller
        than the stride on SAME, SAME_LOWER and CAUSAL axes, than max(stride,
        rhs_dilation) on the others.  None: as 0 for VALID and explicit pads, the
        largest length (``m * stride``) for the strings.  The ``output_padding``
        attribute holds the explicit value that gives the layer's lengths.
{lowering}
    Examples
    --------
    >>> import brainconv
    >>> layer = brainconv.{example}
    >>> layer.out_size
    {example_out}
"""

_WS_EXTRA = """    ws_gain : bool, default True
        Learn a per-output-channel gain ``'gain'`` multiplied into the standardised kernel.
    eps : float, default 1e-4
        Lower bound on ``fan_in * var(w)`` in the standardisation.
"""

_MODES = ("'ZEROS', 'REFLECT', 'REPLICATE' or 'CIRCULAR' (torch's spellings too): a non-zero\n"
          "        mode pads the input that way, then runs a VALID convolution.")
_TRANSPOSE_MODES = "'ZEROS' or 'CIRCULAR' (the adjoint of a circular-padded convolution)."

_EXAMPLES = {
    # (class stem, nd): (constructor text, out_size)
    ('Conv', 1): ("Conv1d((100, 3), 8, kernel_size=5, stride=2)", "(50, 8)"),
    ('Conv', 2): ("Conv2d((28, 28, 1), 16, kernel_size=3, padding='VALID')", "(26, 26, 16)"),
    ('Conv', 3): ("Conv3d((8, 8, 8, 2), 4, kernel_size=3, stride=2)", "(4, 4, 4, 4)"),
    ('Conv', None): ("Conv(2, (32, 32, 3), 8, kernel_size=3, padding='CAUSAL')", "(32, 32, 8)"),
    ('ConvTranspose', 1): ("ConvTranspose1d((50, 8), 3, kernel_size=4, stride=2)", "(100, 3)"),
    ('ConvTranspose', 2): ("ConvTranspose2d((14, 14, 16), 1, kernel_size=3, stride=2, padding=1, output_padding=1)",
                           "(28, 28, 1)"),
    ('ConvTranspose', 3): ("ConvTranspose3d((4, 4, 4, 4), 2, kernel_size=3, stride=2)", "(8, 8, 8, 2)"),
    ('ConvTranspose', None): ("ConvTranspose(2, (16, 16, 8), 3, kernel_size=3, stride=2, padding='VALID')",
                              "(33, 33, 3)"),
    ('ScaledWSConv', 1): ("ScaledWSConv1d((100, 3), 8, kernel_size=5)", "(100, 8)"),
    ('ScaledWSConv', 2): ("ScaledWSConv2d((28, 28, 1), 16, kernel_size=3, stride=2)", "(14, 14, 16)"),
    ('ScaledWSConv', 3): ("ScaledWSConv3d((8, 8, 8, 2), 4, kernel_size=3)", "(8, 8, 8, 4)"),
    ('ScaledWSConv', None): ("ScaledWSConv(1, (64, 2), 4, kernel_size=3, rhs_dilation=2)", "(64, 4)"),
}

_TITLES = {
    'Conv': "{rank} convolution layer with weights in a brainstate ``ParamState``.",
    'ConvTranspose': "{rank} transposed convolution layer (the adjoint of :class:`Conv{suffix}`).",
    'ScaledWSConv': "{rank} weight-standardised convolution: as :class:`Conv{suffix}`, with the kernel "
                    "standardised per output channel at every call.",
}


def _render(stem: str, nd: int | None) -> str:
    """The one docstring of ``stem``, rendered for rank ``nd`` (None: the generic N-d class)."""
    rank = f'{nd}-d' if nd else 'N-d'
    suffix = f'{nd}d' if nd else ''
    fields = dict(
        nd=nd or 'num_spatial_dims', title=_TITLES[stem].format(rank=rank, suffix=suffix),
        dims=f'{nd} spatial axes' if nd else '``num_spatial_dims`` spatial axes',
        num='' if nd else '    num_spatial_dims : int\n        Number of spatial axes (1 for Conv1d, ...).\n',
        call=_CALL, extra=_WS_EXTRA if stem == 'ScaledWSConv' else '', lowering=_LOWERING_ARG + _DTYPE_ARGS,
        example=_EXAMPLES[stem, nd][0], example_out=_EXAMPLES[stem, nd][1])
    fields['shared'] = _SHARED_ARGS.format(**fields)
    fields['tail'] = _SHARED_TAIL.format(modes=_TRANSPOSE_MODES if stem == 'ConvTranspose' else _MODES)
    return (_TRANSPOSE_DOC if stem == 'ConvTranspose' else _CONV_DOC).format(**fields)


class Conv(_ConvBase):
    __doc__ = _render('Conv', None)

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
        groups: int = 1,
        w_init: Init = braintools.init.XavierNormal(),
        b_init: Init | None = None,
        w_mask: Init | None = None,
        channel_first: bool = False,
        name: str | None = None,
        param_type: type = brainstate.ParamState,
        padding_mode: str = 'ZEROS',
        precision: Any = None,
        lowering: str | None = None,
        dtype: Any = None,
        param_dtype: Any = None,
    ):
        spec = _args.conv_spec(num_spatial_dims, in_size, out_channels, kernel_size, stride, padding,
                               lhs_dilation, rhs_dilation, groups, padding_mode, channel_first)
        lowering = _args.lowering(lowering)
        super().__init__(name=name)
        self._setup(spec, w_init, b_init, w_mask, param_type, precision, lowering, dtype, param_dtype)

    def _op(self, x, w):
        return functional.conv_resolved(x, w, self.spec.geometry, self.groups, self.padding_mode,
                                        self.channel_first, self.precision, self._lowering)

    #: The class :meth:`streaming` makes: :class:`brainconv.StreamingConv`, which builds on this
    #: module and registers itself here when :mod:`brainconv.streaming` is imported (``import
    #: brainconv`` does).
    _streaming_class: ClassVar[type | None] = None

    def streaming(self, name: str | None = None) -> StreamingConv:  # noqa: F821 - brainconv.streaming
        """This convolution stepped through time, one frame per call, sharing these weights
        (:class:`brainconv.StreamingConv`; the first spatial axis is time and must be causal)."""
        return Conv._streaming_class(self, name=name)

    def transpose(self) -> ConvTranspose:
        """The ConvTranspose that computes exactly the adjoint of this layer's linear part.

        Its kernel is laid out from this layer's current kernel (mask and any
        standardisation applied); it has no bias.  Needs lhs_dilation 1 and
        padding_mode 'ZEROS' or 'CIRCULAR'.
        """
        g = self.spec.geometry
        if any(d != 1 for d in g.lhs_dilation):
            raise ValueError(f"transpose() needs lhs_dilation 1, got {g.lhs_dilation}")
        if self.padding_mode not in ('ZEROS', 'CIRCULAR'):
            raise ValueError(f"transpose() supports padding_mode 'ZEROS' or 'CIRCULAR', got {self.padding_mode!r}")
        w, unit = self._kernel_mantissa(self.weight.value)
        kernel = _units.attach(functional.transpose_kernel(w, self.groups), unit)
        nd = self.num_spatial_dims
        cls = _RANKED.get((ConvTranspose, nd))
        make = functools.partial(cls) if cls else functools.partial(ConvTranspose, nd)
        return make(
            self.out_size, self.in_channels, g.kernel_size, stride=g.stride,
            padding=g.pads, rhs_dilation=g.rhs_dilation, groups=self.groups, w_init=kernel,
            channel_first=self.channel_first, padding_mode=self.padding_mode,
            precision=self.precision, output_padding=adjoint_output_padding(g), lowering=self._lowering,
            dtype=self.dtype, param_dtype=self.param_dtype)


class ScaledWSConv(Conv):
    __doc__ = _render('ScaledWSConv', None)

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
        groups: int = 1,
        ws_gain: bool = True,
        eps: float = 1e-4,
        w_init: Init = braintools.init.XavierNormal(),
        b_init: Init | None = None,
        w_mask: Init | None = None,
        channel_first: bool = False,
        name: str | None = None,
        param_type: type = brainstate.ParamState,
        padding_mode: str = 'ZEROS',
        precision: Any = None,
        lowering: str | None = None,
        dtype: Any = None,
        param_dtype: Any = None,
    ):
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
            raise ValueError(f"eps must be a positive float, got {eps!r}")
        super().__init__(num_spatial_dims, in_size, out_channels, kernel_size, stride, padding, lhs_dilation,
                         rhs_dilation, groups, w_init, b_init, w_mask, channel_first, name, param_type,
                         padding_mode, precision, lowering, dtype, param_dtype)
        self.eps = float(eps)
        if ws_gain:
            dtype = brainstate.environ.dftype() if self.param_dtype is None else self.param_dtype
            gain = jax.device_put(np.ones((1,) * (self.num_spatial_dims + 1) + (self.out_channels,), dtype))
            self.weight.value = {**self.weight.value, 'gain': gain}

    def _kernel_unit(self, params):
        return None  # a standardised kernel is dimensionless: the output keeps the input's unit

    def _kernels_of(self, raw):
        w = functional.weight_standardize(raw['weight'], self.eps, raw.get('gain'))
        return (w if self.w_mask is None else w * self.w_mask,)


class ConvTranspose(_ConvBase):
    __doc__ = _render('ConvTranspose', None)

    def __init__(
        self,
        num_spatial_dims: int,
        in_size: Sequence[int],
        out_channels: int,
        kernel_size: IntOrSeq,
        stride: IntOrSeq = 1,
        padding: Union[Padding, int, Sequence] = 'SAME',
        rhs_dilation: IntOrSeq = 1,
        groups: int = 1,
        w_init: Init = braintools.init.XavierNormal(),
        b_init: Init | None = None,
        w_mask: Init | None = None,
        channel_first: bool = False,
        name: str | None = None,
        param_type: type = brainstate.ParamState,
        padding_mode: str = 'ZEROS',
        precision: Any = None,
        output_padding: IntOrSeq | None = None,
        lowering: str | None = None,
        dtype: Any = None,
        param_dtype: Any = None,
    ):
        spec = _args.conv_transpose_spec(num_spatial_dims, in_size, out_channels, kernel_size, stride, padding,
                                         rhs_dilation, groups, output_padding, padding_mode, channel_first)
        lowering = _args.lowering(lowering)
        super().__init__(name=name)
        self._setup(spec, w_init, b_init, w_mask, param_type, precision, lowering, dtype, param_dtype)

    output_padding = property(lambda self: self.spec.geometry.output_padding)

    def _op(self, x, w):
        return functional.conv_transpose_resolved(x, w, self.spec.geometry, self.groups, self.padding_mode,
                                                  self.channel_first, self.precision, self._lowering)

    def _etrace_layout(self) -> dict:
        return {**super()._etrace_layout(), 'weight': _braintrace.Trace('shared', -2)}  # (*k, C_out, C_in // g)

    def _core_kernel(self, **arrays):
        return functional.transpose_core_kernel(super()._core_kernel(**arrays))

    def _patches(self, x):
        g = self.spec.geometry
        wrap = self.padding_mode == 'CIRCULAR'
        p = functional.patches(self._cast(x), transpose_as_conv(g, wrap=wrap), 'ZEROS', self.channel_first)
        if wrap:  # the convolution ran onto the padded output, whose pads fold back circularly
            p = functional._fold_circular(p, g.pads, g.out_spatial, tuple(range(1, g.num_spatial_dims + 1)))
        return p


def _show_signature(cls: type, drop: int) -> None:
    """Let ``inspect.signature(cls)`` (and Jupyter's ``?``) show the constructor's arguments."""
    params = list(inspect.signature(cls.__init__).parameters.values())[drop:]
    cls.__signature__ = inspect.Signature(params)


def _fixed_rank(base: type, nd: int, render: Callable[[str, int], str] = _render) -> type:
    """``{base}{nd}d``: ``base`` with ``num_spatial_dims`` fixed; same signature otherwise.

    ``render(stem, nd)`` gives its docstring (the module defining ``base`` passes its own).
    """
    cls = type(f'{base.__name__}{nd}d', (base,), {
        '__init__': functools.partialmethod(base.__init__, nd),
        '__doc__': render(base.__name__, nd),
        '__module__': base.__module__,
        '__qualname__': f'{base.__name__}{nd}d',
    })
    _show_signature(cls, 1)
    _RANKED[base, nd] = cls
    return cls


_RANKED: dict = {}
for _base in (Conv, ConvTranspose, ScaledWSConv):
    _show_signature(_base, 1)
Conv1d, Conv2d, Conv3d = (_fixed_rank(Conv, nd) for nd in (1, 2, 3))
ConvTranspose1d, ConvTranspose2d, ConvTranspose3d = (_fixed_rank(ConvTranspose, nd) for nd in (1, 2, 3))
ScaledWSConv1d, ScaledWSConv2d, ScaledWSConv3d = (_fixed_rank(ScaledWSConv, nd) for nd in (1, 2, 3))
