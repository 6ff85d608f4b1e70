"""The machinery every brainconv layer shares: weights made from initializers, the call path
(units split off, spike inputs flagged, the layer's computation run as one braintrace ETP
primitive where braintrace is imported), dtype policy, reprs, and the fixed-rank subclasses
(``Conv2d`` is ``Conv`` with ``num_spatial_dims=2``, nothing else)."""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable, Sequence, Tuple, Union

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np

from . import _args, _braintrace, _init, _units, functional
from . import lowering as _lowering
from .shapes import Padding

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

    def _resolve_args(self) -> Tuple[Any, int, int, int]:
        """``(geometry, groups, in_channels, out_channels)`` of the convolution whose formulation
        :attr:`lowering` and :meth:`formulation` report."""
        return self.spec.geometry, self.groups, self.in_channels, self.out_channels

    @property
    def lowering(self) -> str:
        """The formulation this layer's convolution runs as now for a float input
        (:mod:`brainconv.lowering`): the layer's ``lowering`` argument if it named one, else the
        global setting, with ``'auto'`` resolved for the default backend.  ``'event'`` is a
        run-time switch between the event kernel and a dense formulation: :meth:`formulation`
        says which runs for a given input."""
        return _lowering.resolve(self._lowering, *self._resolve_args())

    def formulation(self, x: Any = None, *, density: float | None = None) -> _lowering.Choice:
        """Which formulation this layer's convolution runs as for the input ``x``, without reading HLO.

        ``x``: an input ``(*batch, *in_size)`` -- an array, a nested list, a brainevent
        ``BinaryArray`` or a ``jax.ShapeDtypeStruct`` -- whose kind (boolean or integer spikes, or
        floats), batch size and, where its values are at hand, density decide; None: one float
        example.  ``density`` (the fraction of non-zero inputs) overrides the measured one.  The
        :class:`brainconv.lowering.Choice` prints in words (``print(layer.formulation(x))``) and
        says which map runs the event kernel (``.forward``, ``.kernel_grad``).  To see the
        branches a running program takes, :func:`brainconv.lowering.report_branches`.
        """
        spikes, n_batch, measured = _input_facts(x, self.in_size)
        with _lowering.spike_input(spikes):
            name = self.lowering
        return _lowering.describe(name, *self._resolve_args(), n_batch=n_batch,
                                  density=measured if density is None else _args.density(density))

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
        with _lowering.spike_input(_args.is_spikes(xm)):
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
        choice = self.formulation()
        lowering = choice.formulation if choice.dense is None else f'{choice.formulation}|{choice.dense}'
        return [f"kernel={g.kernel_size}", f"stride={g.stride}", f"padding={padding}{mode} {g.pads}",
                f"groups={self.groups}", f"params={self.num_params}", f"lowering={lowering}"]

    def _dtype_items(self) -> list:
        """The dtype options that differ from the defaults."""
        return [f'{name}={dt.name}' for name, dt in (('dtype', self.dtype), ('param_dtype', self.param_dtype))
                if dt is not None]

    def __repr__(self) -> str:
        items = ', '.join(self._repr_items() + self._dtype_items())
        return f"{type(self).__name__}({self.in_size} -> {self.out_size}, {items})"


def _input_facts(x: Any, in_size: Sequence[int]) -> Tuple[bool, int, float | None]:
    """``(spikes, batch size, density)`` of an example input (density None where its values are not
    at hand: a ShapeDtypeStruct, a tracer, or no input)."""
    if x is None:
        return False, 1, None
    if isinstance(x, jax.ShapeDtypeStruct):
        xm = x
    else:
        xm, _ = _units.split(x)
    shape = tuple(np.shape(xm)) if not isinstance(xm, jax.ShapeDtypeStruct) else tuple(xm.shape)
    n_batch = math.prod(shape[:len(shape) - len(tuple(in_size))])
    density = None
    if not isinstance(xm, (jax.ShapeDtypeStruct, jax.core.Tracer)) and math.prod(shape):
        density = float(np.count_nonzero(np.asarray(xm))) / math.prod(shape)
    return _args.is_spikes(xm), n_batch, density


def _padding_label(padding: Padding) -> str:
    """How a repr names a padding: the string, 'explicit' for pairs, one label per axis when mixed."""
    if isinstance(padding, str):
        return padding
    if not any(isinstance(p, str) for p in padding):
        return 'explicit'
    return '(' + ', '.join(p if isinstance(p, str) else 'explicit' for p in padding) + ')'


def _show_signature(cls: type, drop: int) -> None:
    """Let ``inspect.signature(cls)`` (and Jupyter's ``?``) show the constructor's arguments."""
    params = list(inspect.signature(cls.__init__).parameters.values())[drop:]
    cls.__signature__ = inspect.Signature(params)


def _fixed_rank(base: type, nd: int, render: Callable[[str, int], str]) -> type:
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



#: (base class, rank) -> the fixed-rank class :func:`_fixed_rank` made.
_RANKED: dict = {}
