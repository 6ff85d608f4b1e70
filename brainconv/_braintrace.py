"""Online learning with braintrace: every brainconv layer's weights traced, exactly.

braintrace (0.2.8) keeps an eligibility trace for a weight only when the weight reaches a
hidden state through an *ETP primitive* (``braintrace.register_primitive`` with its rules set
by ``register_etp_rules``); the class of the ParamState plays no part, and braintrace hands
the rules the raw parameter values.  So, once braintrace has been imported (brainconv never
imports it), a layer runs its whole computation -- padding mode, kernel transform (mask,
weight standardisation, transposed layout), the convolution in the formulation ``'auto'`` or
the user chose, the bias -- as one ETP primitive of that layer, whose operands are the input
and the raw arrays of its ``ParamState``: the rules then see exactly what the layer computes.
A layer with ``etrace = False`` keeps its weights non-temporal (a plain parameter).

The rules, for an output ``y`` laid out as the layer's ``(*batch, *out_size)`` (``h`` the
hidden state fed by ``y``, ``D = dh/dy`` per output element, ``s`` an output position, ``c`` an
output channel):

* pp_prop / ES_D_RTRL (``xy_to_dw``): the vector-Jacobian product of the layer's forward with
  respect to its raw arrays at the filtered ``(x, D)`` -- the layer's own autodiff, every
  option included.
* D_RTRL: the exact trace keeps, per output position, a slot shaped like each raw array
  (:class:`Trace`): a kernel is shared by every position while ``D`` acts per output element,
  so no position-summed trace can follow the recurrence.  The *instantaneous* term of a
  shared kernel is ``patch[s, tap, c_in] * D[s, c]`` (the input window output ``s`` reads,
  in the coordinates of the core lhs-dilated convolution the layer runs), pulled back through
  the layer's kernel transform (mask, standardisation, flip) per position; ``dt_to_t``
  multiplies every slot by ``D[s, c]`` of its output channel; the solve contracts the learning
  signal with the trace over the positions.  A locally connected kernel needs no position
  axis (each weight feeds one output element); a depthwise kernel followed by a pointwise one
  (SeparableConv) feeds every output channel, so its slot also keeps the output channel.
  Memory: ``batch x positions x |kernel| x hidden states`` floats for a shared kernel; a trace
  that would not fit raises :class:`TraceMemoryError` when braintrace initialises it.

braintrace has no public setter for the per-position D_RTRL rules ("instant" and "solve"),
nor for the names of the primitives it treats as mixing positions when it groups hidden
states; brainconv fills its private registries (``braintrace._op._registries``,
``braintrace._compiler.hidden_group``).  ``tests/test_braintrace.py`` fails if they change.
"""

from __future__ import annotations

import math
import os
import sys
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, Sequence, Tuple

import jax
import jax.numpy as jnp

from .lowering.context import restore_context, trace_context
from .lowering.partition import needs_devices
from .lowering.primitives import CONV_PRIMITIVE

__all__ = ['Trace', 'TraceMemoryError', 'set_trace_memory_limit', 'get_trace_memory_limit']

_MIXING = '_RECURRENT_WEIGHT_MIXING_PRIMITIVES'

_STATE: Dict[str, Any] = {'mixing': False, 'limit': None}
#: layer -> (ETP primitive for unbatched inputs, ETP primitive for batched inputs)
_PRIMITIVES: weakref.WeakKeyDictionary[Any, Tuple[Any, Any]] = weakref.WeakKeyDictionary()
#: ETP primitive -> the :class:`_Shape` of the layer it belongs to (what the network-wide memory check reads)
_OWNERS: Dict[Any, _Shape] = {}


class TraceMemoryError(MemoryError):
    """An exact D_RTRL eligibility trace would not fit in memory."""


@dataclass(frozen=True)
class Trace:
    """How D_RTRL's exact trace of one raw parameter array is laid out.

    ``positions``:

    * ``'shared'``: the array is shared by every output position; the trace is
      ``(*batch, *out_spatial, *array_shape)``, and ``channel_axis`` (an axis of the array)
      is the output channel each entry feeds;
    * ``'full'``: shared, and each entry feeds every output channel: the trace is
      ``(*batch, *out_spatial, *array_shape, C_out)``;
    * ``'local'``: each entry feeds one output position and channel: the array's first
      axes are the output positions and ``channel_axis`` the output channel; the trace is
      ``(*batch, *array_shape)``;
    * ``'output'``: the array is laid out as the output itself (a locally connected bias).
    """

    positions: str
    channel_axis: int | None = None


class _Owner:
    """The layer an ETP equation runs, as a parameter of the equation (hashed by identity).

    The equation holds the layer for as long as it lives: a layer rebuilt inside a traced
    function (brainstate's graph merges) may be gone before JAX lowers the program.
    """

    __slots__ = ('layer',)

    def __init__(self, layer: Any):
        self.layer = layer

    def __hash__(self) -> int:
        return id(self.layer)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, _Owner) and other.layer is self.layer

    def __repr__(self) -> str:
        return f"<{type(self.layer).__name__}>"


@dataclass(frozen=True)
class _Shape:
    """What the rules without the equation's parameters (``init_drtrl``, ``dt_to_t``, and the
    network-wide memory check) read of a layer: fixed when the layer is built."""

    kind: str
    in_size: Tuple[int, ...]
    out_size: Tuple[int, ...]
    channel_first: bool
    layout: Tuple[Tuple[str, Trace], ...]

    @classmethod
    def of(cls, layer: Any) -> _Shape:
        return cls(type(layer).__name__, tuple(getattr(layer, 'in_size', ())), tuple(layer.out_size),
                   bool(layer.channel_first), tuple(layer._etrace_layout().items()))

    def _etrace_layout(self) -> Dict[str, Trace]:
        return dict(self.layout)


# --------------------------------------------------------------------------- #
# Entry point used by the layers
# --------------------------------------------------------------------------- #

def active(layer: Any) -> bool:
    """Whether ``layer`` runs as its ETP primitive: braintrace has been imported and ``layer.etrace`` is on."""
    if 'braintrace' not in sys.modules:
        return False
    register_mixing()
    return bool(layer.etrace)


def apply(layer: Any, x: Any, raw: Dict[str, Any], bias_scale: float | None, num_batch: int,
          block: Tuple[int, int] | None = None) -> Any:
    """``layer._forward(x, raw, bias_scale)``, as the layer's ETP primitive when :func:`active`.

    ``block = (start, stop)`` computes output channels ``start:stop`` only (a gated cell's
    gate: braintrace needs an operation's output shaped like the hidden state it feeds).
    """
    if not active(layer):
        return layer._forward(x, sliced(layer, raw, block), bias_scale)
    prims = _PRIMITIVES.get(layer)
    if prims is None:
        prims = _PRIMITIVES[layer] = _make_primitives(layer)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        # boolean or integer spikes enter as floats: braintrace keeps traces of the input and takes
        # vector-Jacobian products at it; that they are spikes is in the context bound with them
        x = x.astype(jnp.result_type(*raw.values()))
    return prims[num_batch > 0].bind(x, *raw.values(), names=tuple(raw), bias_scale=bias_scale, block=block,
                                     context=trace_context(), owner=_Owner(layer))


def sliced(layer: Any, raw: Dict[str, Any], block: Tuple[int, int] | None) -> Dict[str, Any]:
    """The raw arrays restricted to output channels ``block`` (along each array's channel axis)."""
    if block is None:
        return raw
    layout = layer._etrace_layout()
    return {k: jax.lax.slice_in_dim(v, block[0], block[1], axis=layout[k].channel_axis % v.ndim)
            for k, v in raw.items()}


def register_mixing() -> bool:
    """Tell braintrace that :data:`CONV_PRIMITIVE` mixes positions (as ``conv_general_dilated``
    does), so its default hidden-state grouping cuts there; True once braintrace knows it."""
    if _STATE['mixing']:
        return True
    try:
        from braintrace._compiler import hidden_group
    except ImportError:
        return False
    known = getattr(hidden_group, _MIXING, None)
    if known is None:
        return False
    if CONV_PRIMITIVE not in known:
        setattr(hidden_group, _MIXING, frozenset(known) | {CONV_PRIMITIVE})
    _STATE['mixing'] = True
    return True


def notice_braintrace() -> None:
    """Register :data:`CONV_PRIMITIVE` once braintrace has been imported (called whenever a
    convolution is traced, which braintrace does before it reads the program)."""
    if not _STATE['mixing'] and 'braintrace' in sys.modules:
        register_mixing()


def set_trace_memory_limit(nbytes: int | None) -> None:
    """The most bytes one layer's exact D_RTRL trace may take; None (the default): half the
    memory of the device the program runs on (physical RAM on CPU)."""
    if nbytes is not None and (not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 1):
        raise ValueError(f"nbytes must be a positive int or None, got {nbytes!r}")
    _STATE['limit'] = nbytes


def get_trace_memory_limit() -> int:
    """The limit :func:`set_trace_memory_limit` set, or half the default device's memory."""
    if _STATE['limit'] is not None:
        return _STATE['limit']
    device = jax.devices()[0]
    total = None
    try:
        total = (device.memory_stats() or {}).get('bytes_limit')
    except Exception:  # CPU devices have no memory stats on some jaxlib versions
        total = None
    if not total:
        total = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    return int(total) // 2


# --------------------------------------------------------------------------- #
# Layout helpers (no braintrace)
# --------------------------------------------------------------------------- #

def _num_lead(a: Any, layer: Any) -> int:
    return a.ndim - len(layer.out_size)


def channels_last(a: Any, layer: Any) -> Any:
    """``(*lead, *out_size)`` -> ``(*lead, *out_spatial, C_out)``."""
    if not layer.channel_first:
        return a
    return jnp.moveaxis(a, _num_lead(a, layer), -1)


def _out_spatial(layer: Any) -> Tuple[int, ...]:
    size = tuple(layer.out_size)
    return size[1:] if layer.channel_first else size[:-1]


def _aligned(d: Any, lead: int, nsp: int, shape: Sequence[int], trace: Trace) -> Any:
    """``d`` ``(*lead, *out_spatial, C)`` reshaped to broadcast against a trace of an array of ``shape``."""
    c = d.shape[-1]
    if trace.positions == 'shared':
        tail = tuple(c if j == trace.channel_axis % len(shape) else 1 for j in range(len(shape)))
        return d.reshape(d.shape[:lead + nsp] + tail)
    if trace.positions == 'full':
        return d.reshape(d.shape[:lead + nsp] + (1,) * len(shape) + (c,))
    # 'local': the array's first nsp axes are the positions
    tail = tuple(c if j == trace.channel_axis % len(shape) else 1 for j in range(nsp, len(shape)))
    return d.reshape(d.shape[:lead + nsp] + tail)


def trace_shape(layer: Any, lead: Tuple[int, ...], shape: Tuple[int, ...], trace: Trace, out_channels: int) -> Tuple:
    """The shape of D_RTRL's exact trace of an array of ``shape`` (without the hidden-state axis)."""
    if trace.positions == 'shared':
        return lead + _out_spatial(layer) + shape
    if trace.positions == 'full':
        return lead + _out_spatial(layer) + shape + (out_channels,)
    return lead + shape


def shared_instant(patches: Any, df: Any, core_kernel: Callable, kernel_arrays: Dict[str, Any],
                   groups: int) -> Dict[str, Any]:
    """The per-position instantaneous term of arrays that reach the output through one shared kernel.

    ``patches``: ``(*lead, *out_spatial, taps, C_in)``, the input window each output position
    reads in the core convolution; ``df``: ``(*lead, *out_spatial, C_out)``;
    ``core_kernel(**kernel_arrays)``: the core kernel ``(*kernel_size, C_in // groups, C_out)``.
    Returns, per array, ``(*lead, *out_spatial, *array_shape)``: the pullback through
    ``core_kernel`` of ``patch[..., tap, group(c) * C_in_g + i] * df[..., c]`` at every position.
    """
    names = tuple(kernel_arrays)
    w, pullback = jax.vjp(lambda *a: core_kernel(**dict(zip(names, a))), *kernel_arrays.values())
    cin_g, cout = w.shape[-2], w.shape[-1]
    pg = patches.reshape(patches.shape[:-1] + (groups, cin_g))
    dg = df.reshape(df.shape[:-1] + (groups, cout // groups)).astype(pg.dtype)
    inst = jnp.einsum('...tgi,...go->...tigo', pg, dg)
    positions = inst.shape[:-4]
    flat = inst.reshape((-1,) + w.shape)
    pulled = jax.vmap(pullback)(flat)
    return {k: v.reshape(positions + kernel_arrays[k].shape) for k, v in zip(names, pulled)}


def bias_instant(df: Any, bias: Any, scale: float | None, trace: Trace) -> Any:
    """The per-position instantaneous term of a bias added once per output channel."""
    d = df if scale in (None, 1.0) else df * scale
    lead_sp = df.ndim - 1
    return _aligned(d, lead_sp, 0, bias.shape, trace).astype(bias.dtype)


# --------------------------------------------------------------------------- #
# The ETP primitives of one layer (imports braintrace)
# --------------------------------------------------------------------------- #

def _make_primitives(layer: Any) -> Tuple[Any, Any]:
    import braintrace
    from jax.interpreters import ad, batching

    registries = _private_registries()
    shape = _Shape.of(layer)
    label = f'brainconv_{shape.kind}'

    def impl(x, *arrays, names, bias_scale, block, context, owner):
        # the formulation chosen when the operation was bound (global lowering, spike input), also
        # when JAX traces this again to lower or differentiate it
        lay = owner.layer
        with restore_context(context):
            return lay._forward(x, sliced(lay, dict(zip(names, arrays)), block), bias_scale)

    def trainables(params):
        return {name: i + 1 for i, name in enumerate(params['names'])}

    def xy_to_dw(x, df, weights, *, names, bias_scale, block, context, owner):
        y, pullback = jax.vjp(lambda *a: impl(x, *a, names=names, bias_scale=bias_scale, block=block,
                                                   context=context, owner=owner),
                              *(weights[k] for k in names))
        return dict(zip(names, pullback(df.astype(y.dtype))))

    def init_pp(x_var, y_var, weight_vars, num_state):
        return jnp.zeros(tuple(y_var.aval.shape) + (num_state,), y_var.aval.dtype)

    def init_drtrl(x_var, y_var, weight_vars, num_state):
        if registries is None:
            raise NotImplementedError(
                f"{label}: brainconv's exact D_RTRL rules need braintrace's per-position rule registries "
                f"(braintrace._op._registries.ETP_RULES_INSTANT_DRTRL / ETP_RULES_SOLVE_DRTRL, braintrace "
                f"0.2.8), which this braintrace {getattr(braintrace, '__version__', '?')} lacks; use pp_prop, "
                f"or set etrace = False on the layer")
        shapes, dtype = _trace_shapes(shape, x_var, y_var, weight_vars)
        _check_network_memory()
        _check_memory(shape, shapes, num_state, jnp.dtype(dtype).itemsize)
        return {k: jnp.zeros(s + (num_state,), dtype) for k, s in shapes.items()}

    def instant(x, df, weights, *, names, bias_scale, block, context, owner):
        lay = owner.layer
        return lay._etrace_instant(x, df, sliced(lay, {k: weights[k] for k in names}, block), bias_scale)

    def dt_to_t(hidden, trace, *, names, bias_scale, block, context, owner):
        lay = shape
        lead = _num_lead(hidden, lay)
        d = channels_last(hidden, lay)
        nsp = d.ndim - 1 - lead
        out = {}
        for k, t in lay._etrace_layout().items():
            if k not in trace:
                continue
            if t.positions == 'output':
                out[k] = trace[k] * hidden
            else:
                tail = trace[k].shape[lead + (nsp if t.positions != 'local' else 0):]
                tail = tail[:-1] if t.positions == 'full' else tail
                out[k] = trace[k] * _aligned(d, lead, nsp, tail, t)
        return out

    def solve(signal, trace, weights, *, names, bias_scale, block, context, owner):
        lay = shape
        lead = _num_lead(signal, lay)
        d = channels_last(signal, lay)
        nsp = d.ndim - 1 - lead
        out = {}
        for k, t in lay._etrace_layout().items():
            if k not in trace:
                continue
            if t.positions == 'output':
                out[k] = jnp.sum(trace[k] * signal, axis=tuple(range(lead)))
                continue
            start = lead + (nsp if t.positions != 'local' else 0)
            tail = trace[k].shape[start:trace[k].ndim - (t.positions == 'full')]
            grad = jnp.sum(trace[k] * _aligned(d, lead, nsp, tail, t),
                           axis=tuple(range(start)) + ((trace[k].ndim - 1,) if t.positions == 'full' else ()))
            if block is not None:  # a gate's block of the array: zeros for the other channels
                axis = t.channel_axis % grad.ndim
                widths = [(0, 0)] * grad.ndim
                widths[axis] = (block[0], weights[k].shape[axis] - block[1])
                grad = jnp.pad(grad, widths)
            out[k] = grad
        return out

    def transpose(ct, x, *arrays, names, bias_scale, block, context, owner):
        """Transpose with respect to the linear operands (the input, or the kernels): the
        layer's own vector-Jacobian product there (linear_transpose of a layer without bias)."""
        linear = [ad.is_undefined_primal(a) for a in (x,) + arrays]
        point = [jnp.zeros(a.aval.shape, a.aval.dtype) if lin else a for a, lin in zip((x,) + arrays, linear)]

        def f(*free):
            values = iter(free)
            args = [next(values) if lin else a for a, lin in zip(point, linear)]
            return impl(*args, names=names, bias_scale=bias_scale, block=block, context=context, owner=owner)

        _, pullback = jax.vjp(f, *(a for a, lin in zip(point, linear) if lin))
        cts = iter(pullback(ct))
        return [next(cts) if lin else None for lin in linear]

    prims = []
    for batched in (False, True):
        p = braintrace.register_primitive(label + ('_batched' if batched else ''), impl, batched=batched,
                                          trainable_invars_fn=trainables, x_invar_index=0)
        _OWNERS[p] = shape
        p.register_etp_rules(xy_to_dw=xy_to_dw, init_pp=init_pp, init_drtrl=init_drtrl, dt_to_t=dt_to_t)
        if registries is not None:
            registries.ETP_RULES_INSTANT_DRTRL[p] = instant
            registries.ETP_RULES_SOLVE_DRTRL[p] = solve
        prims.append(p)
    unbatched, batched_p = prims

    def batch_rule(args, dims, *, names, bias_scale, block, context, owner):
        x, *arrays = args
        params = dict(names=names, bias_scale=bias_scale, block=block, context=context, owner=owner)
        if all(d is None for d in dims[1:]):  # only the input is mapped: one more batch axis
            return batched_p.bind(jnp.moveaxis(x, dims[0], 0), *arrays, **params), 0
        # mapped weights (an ensemble, per-example kernels): no eligibility trace, just the values
        return jax.vmap(lambda *a: impl(*a, **params), in_axes=dims)(*args), 0

    for p in prims:
        batching.primitive_batchers[p] = batch_rule
        ad.primitive_transposes[p] = transpose
    needs_devices(*prims)   # their lowering runs the layer's, which may partition the event kernel
    return unbatched, batched_p


def _private_registries() -> Any:
    """braintrace's registries of per-position D_RTRL rules, or None where this braintrace has none."""
    try:
        from braintrace._op import _registries
    except ImportError:
        return None
    if not all(hasattr(_registries, n) for n in ('ETP_RULES_INSTANT_DRTRL', 'ETP_RULES_SOLVE_DRTRL')):
        return None
    return _registries


def _trace_shapes(layer: Any, x_var: Any, y_var: Any, weight_vars: Dict[str, Any]) -> Tuple[Dict[str, Tuple], Any]:
    """The shape of D_RTRL's exact trace of each raw array (without the hidden-state axis), and its dtype."""
    y_shape = tuple(y_var.aval.shape)
    nb = len(y_shape) - len(layer.out_size)
    lead, out_channels = y_shape[:nb], y_shape[nb if layer.channel_first else -1]
    dtype = jnp.result_type(x_var.aval.dtype, y_var.aval.dtype, *(v.aval.dtype for v in weight_vars.values()))
    shapes = {}
    for k, t in layer._etrace_layout().items():
        if k not in weight_vars:
            continue
        shape = list(weight_vars[k].aval.shape)
        if t.channel_axis is not None:  # only the channels this operation computes (a gate's block)
            shape[t.channel_axis % len(shape)] = out_channels
        shapes[k] = trace_shape(layer, lead, tuple(shape), t, out_channels)
    return shapes, dtype


def _relations_being_initialised() -> Any:
    """The hidden-parameter relations of the network whose traces braintrace is initialising now,
    read from the caller's frames (its algorithm's ``init_etrace_state`` loops over them, calling
    each operation's ``init_drtrl``); None where no such frame is found."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == 'init_etrace_state':
            graph = getattr(frame.f_locals.get('self'), 'graph', None)
            relations = getattr(graph, 'hidden_param_op_relations', None)
            if relations is not None:
                return relations
        frame = frame.f_back
    return None


def _check_network_memory() -> None:
    """Raise :class:`TraceMemoryError` if the exact D_RTRL traces of every brainconv layer of the
    network being initialised need more than the limit together (checked before any of them is
    allocated; each layer alone is checked by :func:`_check_memory`)."""
    relations = _relations_being_initialised()
    if relations is None:
        return
    sizes: Dict[str, int] = {}
    total = 0
    for relation in relations:
        layer = _OWNERS.get(relation.primitive)
        if layer is None:
            continue
        shapes, dtype = _trace_shapes(layer, relation.x_var, relation.y_var, relation.trainable_vars)
        width = sum(getattr(g, 'trace_state_width', len(g.hidden_states)) for g in relation.hidden_groups)
        nbytes = sum(math.prod(sh) for sh in shapes.values()) * width * jnp.dtype(dtype).itemsize
        name = f"{'.'.join(map(str, next(iter(relation.trainable_paths.values()), ('?',))[:-1]))} " \
               f"({layer.kind})"
        sizes[name] = sizes.get(name, 0) + nbytes
        total += nbytes
    limit = get_trace_memory_limit()
    if total <= limit or len(sizes) < 2:
        return
    largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
    raise TraceMemoryError(
        f"D_RTRL's exact eligibility traces of this network's {len(sizes)} brainconv layers need {_human(total)} "
        f"together, more than the limit of {_human(limit)} (brainconv.set_trace_memory_limit); the largest: "
        + ', '.join(f"{n} {_human(b)}" for n, b in largest)
        + ". Ways out: train with braintrace.pp_prop (ES_D_RTRL), whose traces are shaped like the outputs; a "
          "smaller batch; or keep the largest layers' weights non-temporal with layer.etrace = False")


def _check_memory(layer: Any, shapes: Dict[str, Tuple[int, ...]], num_state: int, itemsize: int) -> None:
    nbytes = sum(math.prod(s) for s in shapes.values()) * num_state * itemsize
    limit = get_trace_memory_limit()
    if nbytes <= limit:
        return
    parts = ', '.join(f"{k} {s}" for k, s in shapes.items())
    raise TraceMemoryError(
        f"{layer.kind}{layer.in_size} -> {layer.out_size}: D_RTRL's exact "
        f"eligibility trace needs {_human(nbytes)} ({parts}, x {num_state} hidden state(s), {itemsize} bytes "
        f"each: one kernel-sized slot per batch element and output position), more than the limit of "
        f"{_human(limit)} (brainconv.set_trace_memory_limit). Ways out: train with braintrace.pp_prop "
        f"(ES_D_RTRL), whose trace is shaped like the output; a smaller batch; or keep this layer's weights "
        f"non-temporal with layer.etrace = False")


def _human(nbytes: float) -> str:
    for unit in ('bytes', 'KiB', 'MiB', 'GiB', 'TiB'):
        if nbytes < 1024 or unit == 'TiB':
            return f"{nbytes:.0f} {unit}" if unit == 'bytes' else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes} bytes"  # pragma: no cover
