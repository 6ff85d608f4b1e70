"""Normalise and validate user arguments, once, at the earliest point.

Every user-facing error message about an argument lives here.  Messages read
``"{name} must be ..., got {value!r}"`` and give the valid range when there is
one.  Nothing here imports JAX.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Sequence, Tuple

import numpy as np

from .shapes import (
    PADDING_MODES,
    PADDING_STRINGS,
    ConvGeometry,
    Padding,
    Pads,
    axis_window_counts,
    conv_geometry,
    conv_out_length,
    conv_transpose_geometry,
    per_axis,
    resolve_pads,
)

_MODE_ALIASES = {
    'ZEROS': 'ZEROS', 'ZERO': 'ZEROS', 'CONSTANT': 'ZEROS',
    'REFLECT': 'REFLECT', 'REPLICATE': 'REPLICATE', 'EDGE': 'REPLICATE',
    'CIRCULAR': 'CIRCULAR', 'WRAP': 'CIRCULAR',
}


def is_int(value: Any) -> bool:
    """True for Python and NumPy integers, False for bools."""
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def num_spatial_dims(value: Any) -> int:
    if not is_int(value) or value < 1:
        raise ValueError(f"num_spatial_dims must be a positive int, got {value!r}")
    return int(value)


def positive_int(value: Any, name: str) -> int:
    scalar = value if is_int(value) else as_sequence(value)  # a 0-d array becomes its scalar
    if not is_int(scalar):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if scalar < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(scalar)


def as_sequence(value: Any) -> Any:
    """A tuple for a list, tuple or 1-d array (NumPy, or anything with ``__array__``); ``value`` otherwise.

    Size arguments may come as NumPy arrays (``np.array([8, 8, 3])``); they are
    read as the sequence of their entries.  A 0-d array becomes its scalar.
    """
    if isinstance(value, (tuple, list)):
        return tuple(value)
    if isinstance(value, (str, bytes)) or not hasattr(value, '__array__'):
        return value
    try:
        array = np.asarray(value)
    except Exception:  # an abstract tracer, say: leave it for the caller to refuse
        return value
    if array.ndim == 0:
        return array[()]
    return tuple(array.tolist()) if array.ndim == 1 else value


def int_tuple(value: Any, nd: int, name: str, minimum: int = 1) -> Tuple[int, ...]:
    """An int, a sequence of one int (for every axis, as brainstate allows), or a
    sequence of ``nd`` ints; each at least ``minimum``."""
    seq = as_sequence(value)
    if is_int(seq):
        values = (seq,) * nd
    elif isinstance(seq, tuple) and seq and all(is_int(v) for v in seq):
        if len(seq) not in (1, nd):
            raise ValueError(f"{name} must be an int or a sequence of {_one_or(nd)} ints "
                             f"(one per spatial axis), got {value!r}")
        values = seq * nd if len(seq) == 1 else seq
    else:
        raise TypeError(f"{name} must be an int or a sequence of {_one_or(nd)} ints, got {value!r}")
    if any(v < minimum for v in values):
        raise ValueError(f"{name} must be {'positive' if minimum == 1 else f'>= {minimum}'}"
                         f" on every axis, got {value!r}")
    return tuple(int(v) for v in values)


def _one_or(nd: int) -> str:
    return str(nd) if nd == 1 else f'1 or {nd}'


def in_size(value: Any, nd: int, channel_first: bool, what: str = 'convolution') -> Tuple[int, ...]:
    layout = '(C, *spatial)' if channel_first else '(*spatial, C)'
    seq = as_sequence(value)
    if not isinstance(seq, tuple) or len(seq) != nd + 1:
        raise ValueError(f"in_size must be a sequence of {nd + 1} ints {layout} for a "
                         f"{nd}-d {what}, got {value!r}")
    if not all(is_int(v) for v in seq):
        raise TypeError(f"in_size must hold ints, got {value!r}")
    if any(v < 1 for v in seq):
        raise ValueError(f"in_size entries must be positive, got {value!r}")
    return tuple(int(v) for v in seq)


def padding(value: Any, nd: int) -> Padding:
    """An upper-case padding string (for every axis), or one entry per axis.

    Accepts a string (any case); an int; a sequence of ``nd`` entries, one per
    spatial axis, or of one entry for every axis, each a string, an int ``q``
    (``(q, q)``) or a ``(low, high)`` pair, mixed freely (``('CAUSAL', 'SAME',
    1)``); for 1-d also a bare ``(low, high)``.  Sequences may be NumPy arrays.
    Returns the string when every axis has the same one, the pairs when no
    axis has a string, and otherwise one entry per axis (strings and pairs).
    """
    if isinstance(value, str):
        return _padding_string(value, value, None)
    seq = as_sequence(value)
    if not isinstance(seq, tuple) and hasattr(value, '__array__') and np.ndim(value) == 2:
        seq = tuple(tuple(p) for p in np.asarray(value).tolist())  # an (nd, 2) array of pairs
    if is_int(seq):
        seq = (seq,)
    elif isinstance(seq, tuple) and nd == 1 and len(seq) == 2 and all(is_int(v) for v in seq):
        seq = (seq,)  # a bare (low, high) for the one axis
    if not isinstance(seq, tuple) or len(seq) not in (1, nd):
        raise ValueError(f"padding must be a string in {PADDING_STRINGS}, an int, {_one_or(nd)} ints, "
                         f"or {_one_or(nd)} (low, high) pairs, or {_one_or(nd)} of these mixed (one per "
                         f"spatial axis), got {value!r}")
    entries = tuple(_padding_entry(as_sequence(p), value, i, nd) for i, p in enumerate(seq)) * (nd // len(seq))
    for axis, p in enumerate(entries):
        if not isinstance(p, str) and min(p) < 0:
            raise ValueError(f"padding must be non-negative, got {value!r}"
                             + (f" ({p} on axis {axis})" if len(seq) > 1 else ''))
    if all(isinstance(p, str) for p in entries) and len(set(entries)) == 1:
        return entries[0]
    return entries


def _padding_string(entry: str, value: Any, axis: int | None) -> str:
    upper = entry.upper()
    if upper not in PADDING_STRINGS:
        if axis is None:
            raise ValueError(f"padding must be one of {PADDING_STRINGS} (any case), an int, "
                             f"or (low, high) pairs, got {value!r}")
        raise ValueError(f"padding[{axis}] must be one of {PADDING_STRINGS} (any case), an int or a "
                         f"(low, high) pair, got {entry!r} in padding={value!r}")
    return upper


def _padding_entry(entry: Any, value: Any, axis: int, nd: int) -> Any:
    """One axis's padding: an upper-case string or an int pair."""
    if isinstance(entry, str):
        return _padding_string(entry, value, axis)
    if is_int(entry):
        return int(entry), int(entry)
    if isinstance(entry, tuple) and len(entry) == 2 and all(is_int(v) for v in entry):
        return int(entry[0]), int(entry[1])
    raise ValueError(f"padding[{axis}] must be a string in {PADDING_STRINGS}, an int or a (low, high) pair "
                     f"(padding has {_one_or(nd)} entries, one per spatial axis), got {entry!r} in "
                     f"padding={value!r}")


def padding_mode(value: Any, allowed: Sequence[str] = PADDING_MODES) -> str:
    if isinstance(value, str) and value.upper() in _MODE_ALIASES:
        mode = _MODE_ALIASES[value.upper()]
        if mode in allowed:
            return mode
    raise ValueError(f"padding_mode must be one of {tuple(allowed)} (any case), got {value!r}")


def groups(value: Any, in_channels: int, out_channels: int) -> int:
    g = positive_int(value, 'groups')
    if in_channels % g:
        raise ValueError(f"groups must divide in_channels {in_channels}, got groups={g}")
    if out_channels % g:
        raise ValueError(f"groups must divide out_channels {out_channels}, got groups={g}")
    return g


def output_padding(value: Any, nd: int, stride: Sequence[int], rhs_dilation: Sequence[int],
                   padding_: Padding = 'VALID') -> Tuple[int, ...] | None:
    """None (each axis's default length), or one int per axis.

    On an axis padded with an explicit pair or 'VALID' it must be below
    ``max(stride, rhs_dilation)`` (PyTorch's rule); on a 'SAME', 'SAME_LOWER'
    or 'CAUSAL' axis below the stride, so that the stride-``s`` convolution
    of the output has as many outputs as the transposed convolution has inputs.
    """
    if value is None:
        return None
    ops = int_tuple(value, nd, 'output_padding', minimum=0)
    for axis, (op, s, d, p) in enumerate(zip(ops, stride, rhs_dilation, per_axis(padding_, nd))):
        if isinstance(p, str) and p != 'VALID':
            if op >= s:
                raise ValueError(f"output_padding must be in [0, {s}) (smaller than the stride) on axis {axis}, "
                                 f"which is padded {p!r}: only then does a stride-{s} {p} convolution map the "
                                 f"output's (m - 1) * {s} + 1 + output_padding positions back to the input's m; "
                                 f"got {value!r}")
        elif op >= max(s, d):
            raise ValueError(f"output_padding must be smaller than max(stride, rhs_dilation) = "
                             f"{max(s, d)} on axis {axis}, got {value!r}")
    return ops


def pads_for_mode(mode: str, pads: Pads, in_spatial: Sequence[int], lhs_dilation: Sequence[int]) -> None:
    """Check that a non-zero padding mode can pad this input."""
    if mode == 'ZEROS':
        return
    if any(ld != 1 for ld in lhs_dilation):
        raise ValueError(f"padding_mode {mode!r} pads the input before a VALID convolution and "
                         f"cannot be combined with lhs_dilation {tuple(lhs_dilation)}; use 'ZEROS'")
    if mode == 'REFLECT':
        for axis, ((lo, hi), n) in enumerate(zip(pads, in_spatial)):
            if max(lo, hi) >= n:
                raise ValueError(f"REFLECT padding must be smaller than the input on each axis: "
                                 f"pads {(lo, hi)} on axis {axis} with input length {n}")


def _broadcasts_to(shape: Sequence[int], target: Sequence[int]) -> bool:
    try:
        return np.broadcast_shapes(tuple(shape), tuple(target)) == tuple(target)
    except ValueError:
        return False


#: Names of the exact formulations a convolution can be lowered to (see :mod:`brainconv.lowering`).
LOWERINGS = ('lax', 'lax_vjp', 'im2col', 'taps', 'fold', 'fft', 'event')


def lowering(value: Any, allow_auto: bool = True) -> str | None:
    """A lowering name from :data:`LOWERINGS`, ``'auto'``, or None (follow the global setting)."""
    allowed = LOWERINGS + (('auto',) if allow_auto else ())
    if value is None and allow_auto:
        return None
    if not isinstance(value, str):
        raise TypeError(f"lowering must be a string in {allowed}{' or None' if allow_auto else ''}, got {value!r}")
    if value not in allowed:
        raise ValueError(f"lowering must be one of {allowed}{' or None' if allow_auto else ''}, got {value!r}")
    return value


def mask_shape(shape: Sequence[int], kernel_shape: Sequence[int]) -> None:
    if not _broadcasts_to(shape, kernel_shape):
        raise ValueError(f"w_mask must broadcast to the kernel shape {tuple(kernel_shape)}, "
                         f"got shape {tuple(shape)}")


def init_shape(shape: Sequence[int], expected: Sequence[int], name: str, broadcast: bool) -> None:
    """An initializer must give ``expected``; an array may also broadcast to it."""
    if tuple(shape) != tuple(expected) and not (broadcast and _broadcasts_to(shape, expected)):
        raise ValueError(f"{name} must give an array of shape {tuple(expected)}, got shape {tuple(shape)}")


def dtype_of(x: Any) -> np.dtype:
    """The dtype of ``x`` as the user gave it (an int64 NumPy array stays int64, where
    ``jnp.result_type`` would already report JAX's default int32)."""
    dtype = getattr(x, 'dtype', None)
    return np.dtype(dtype) if dtype is not None else np.asarray(x).dtype


def input_array(x: Any, in_size: Sequence[int], layer: str) -> int:
    """Check a call's input (a plain array: units split off); return its number of leading batch axes.

    Its dtype is the one the user passed (:func:`dtype_of`), so a message names it.
    """
    shape, in_size, dtype = tuple(np.shape(x)), tuple(in_size), dtype_of(x)
    nb = len(shape) - len(in_size)
    if nb < 0 or shape[nb:] != in_size:
        raise ValueError(f"{layer} expects input of shape (*batch, *in_size) = (*batch, "
                         f"{', '.join(map(str, in_size))}), got shape {shape}")
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.bool_)
            or dtype.name.startswith(('bfloat', 'float'))):
        raise TypeError(f"{layer} expects a real input (floating point, or boolean / integer spikes), got dtype "
                        f"{dtype.name}")
    return nb


def is_spikes(x: Any) -> bool:
    """Whether an input (as :func:`brainconv._units.split` gives it: a list made an array, a
    brainevent ``BinaryArray`` its boolean non-zeros) is spikes by its type: a boolean or integer
    array."""
    dtype = getattr(x, 'dtype', None)
    return dtype is not None and (np.issubdtype(np.dtype(dtype), np.integer) or np.dtype(dtype) == np.bool_)


def density(value: Any) -> float:
    """A fraction of non-zero inputs, in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(f"density must be a number in [0, 1] (the fraction of non-zero inputs), got {value!r}")
    return float(value)


def kernel_shape(shape: Sequence[int], expected: Sequence[int]) -> None:
    if tuple(shape) != tuple(expected):
        raise ValueError(f"kernel must have shape {tuple(expected)} for this input and these "
                         f"arguments, got shape {tuple(shape)}")


@dataclass(frozen=True)
class ConvSpec:
    """A validated (transposed) convolution: everything but the weights."""

    in_size: Tuple[int, ...]
    in_channels: int
    out_channels: int
    groups: int
    padding: Padding
    padding_mode: str
    channel_first: bool
    geometry: ConvGeometry

    @property
    def kernel_shape(self) -> Tuple[int, ...]:
        k = self.geometry.kernel_size
        if self.geometry.transposed:
            return k + (self.out_channels, self.in_channels // self.groups)
        return k + (self.in_channels // self.groups, self.out_channels)

    @property
    def out_size(self) -> Tuple[int, ...]:
        spatial = self.geometry.out_spatial
        return (self.out_channels,) + spatial if self.channel_first else spatial + (self.out_channels,)

    @property
    def bias_shape(self) -> Tuple[int, ...]:
        """brainstate's bias layout: broadcasts over the output's channel axis."""
        nd = self.geometry.num_spatial_dims
        return (1, self.out_channels) + (1,) * nd if self.channel_first else (1,) * nd + (self.out_channels,)


def _split_in_size(value, nd, channel_first):
    size = in_size(value, nd, channel_first)
    return size, (size[0] if channel_first else size[-1]), (size[1:] if channel_first else size[:-1])


def conv_spec(nd, in_size_, out_channels, kernel_size, stride, padding_, lhs_dilation, rhs_dilation,
              groups_, padding_mode_, channel_first) -> ConvSpec:
    """Validate a convolution's arguments and resolve its geometry."""
    nd = num_spatial_dims(nd)
    size, cin, spatial = _split_in_size(in_size_, nd, channel_first)
    cout = positive_int(out_channels, 'out_channels')
    k = int_tuple(kernel_size, nd, 'kernel_size')
    s = int_tuple(stride, nd, 'stride')
    ld = int_tuple(lhs_dilation, nd, 'lhs_dilation')
    rd = int_tuple(rhs_dilation, nd, 'rhs_dilation')
    g = groups(groups_, cin, cout)
    pad = padding(padding_, nd)
    mode = padding_mode(padding_mode_)
    geometry = conv_geometry(spatial, k, s, pad, ld, rd)
    pads_for_mode(mode, geometry.pads, spatial, ld)
    return ConvSpec(size, cin, cout, g, pad, mode, bool(channel_first), geometry)


def conv_transpose_spec(nd, in_size_, out_channels, kernel_size, stride, padding_, rhs_dilation, groups_,
                        output_padding_, padding_mode_, channel_first) -> ConvSpec:
    """Validate a transposed convolution's arguments and resolve its geometry."""
    nd = num_spatial_dims(nd)
    size, cin, spatial = _split_in_size(in_size_, nd, channel_first)
    cout = positive_int(out_channels, 'out_channels')
    k = int_tuple(kernel_size, nd, 'kernel_size')
    s = int_tuple(stride, nd, 'stride')
    rd = int_tuple(rhs_dilation, nd, 'rhs_dilation')
    g = groups(groups_, cin, cout)
    pad = padding(padding_, nd)
    op = output_padding(output_padding_, nd, s, rd, pad)
    mode = padding_mode(padding_mode_, ('ZEROS', 'CIRCULAR'))
    geometry = conv_transpose_geometry(spatial, k, s, pad, rd, op)
    return ConvSpec(size, cin, cout, g, pad, mode, bool(channel_first), geometry)


def streamable(spec: ConvSpec, layer: str) -> None:
    """Check that a convolution can run one time step at a time (time: its first spatial axis).

    The time axis must be padded causally, ``(span - 1, 0)``, with zeros or
    copies of the first frame (the pads a step can know), stride 1 and no lhs
    dilation.
    """
    g = spec.geometry
    k, s, d, ld, pads = g.kernel_size[0], g.stride[0], g.rhs_dilation[0], g.lhs_dilation[0], g.pads[0]
    span = (k - 1) * d + 1
    where = f"{layer} cannot step through time (its first spatial axis):"
    if pads != (span - 1, 0):
        nd = g.num_spatial_dims
        per_axis_ = (f"padding={('CAUSAL',) + ('SAME',) * (nd - 1)} (causal in time, centred on the other "
                     f"axes), " if nd > 1 else '')
        raise ValueError(f"{where} the time axis must be padded causally: {per_axis_}padding='CAUSAL', or "
                         f"(low, high) = ({span - 1}, 0) on that axis for kernel {k} with rhs_dilation {d}; "
                         f"got pads {pads}")
    if s != 1:
        raise ValueError(f"{where} stride on the time axis must be 1, got {s}; step a stride-1 layer and keep "
                         f"every {s}-th output (outputs at steps 0, {s}, {2 * s}, ... are the strided ones)")
    if ld != 1:
        raise ValueError(f"{where} lhs_dilation on the time axis must be 1, got {ld}")
    if spec.padding_mode not in ('ZEROS', 'REPLICATE') and span > 1:
        raise ValueError(f"{where} padding_mode must be 'ZEROS' or 'REPLICATE' when the time axis is padded "
                         f"(span {span}), got {spec.padding_mode!r}: its pads before the first frame would be "
                         f"frames that have not arrived yet")
# --- recurrent cells (brainconv.recurrent) ------------------------------------------------------

def real_number(value: Any, name: str) -> float:
    """A finite real number (bools refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def activation(value: Any, name: str, namespace: Any) -> Any:
    """A callable, or the name of a function in ``namespace`` (brainstate.nn: 'tanh', 'sigmoid', ...)."""
    if isinstance(value, str):
        found = getattr(namespace, value, None)
        if found is None or isinstance(found, type) or not callable(found):
            raise ValueError(f"{name} must be a callable or the name of an activation function in "
                             f"brainstate.nn (e.g. 'tanh', 'sigmoid', 'relu'), got {value!r}")
        return found
    if isinstance(value, type) or not callable(value):
        raise TypeError(f"{name} must be a callable or a string naming one, got {value!r}")
    return value


def batch_size(value: Any) -> Tuple[int, ...]:
    """None (no batch axis), a positive int (one), or a sequence of positive ints (several)."""
    if value is None:
        return ()
    if is_int(value):
        values = (value,)
    elif isinstance(value, (tuple, list)) and all(is_int(v) for v in value):
        values = tuple(value)
    else:
        raise TypeError(f"batch_size must be None, a positive int or a sequence of positive ints, got {value!r}")
    if any(v < 1 for v in values):
        raise ValueError(f"batch_size must be positive, got {value!r}")
    return tuple(int(v) for v in values)


def state_init_shape(shape: Sequence[int], expected: Sequence[int]) -> None:
    """An array given as ``state_init`` must broadcast to the state's shape."""
    if not _broadcasts_to(shape, expected):
        raise ValueError(f"state_init must broadcast to the state shape {tuple(expected)} "
                         f"(*batch, *state_size), got shape {tuple(shape)}")


def state_batch(x_shape: Sequence[int], in_size: Sequence[int], state_batch_: Sequence[int], layer: str,
                what: str = 'layer') -> None:
    """A step's input must have the state's batch axes: the state is not broadcast over new axes.

    An input with one axis more than that (and the state's batch axes otherwise) is taken
    for a whole sequence: the message names the axis that looks like time and shows how to
    step through it.  Otherwise it says how to make the state for the input's batch shape.
    """
    x_shape, in_size, state_batch_ = tuple(x_shape), tuple(in_size), tuple(state_batch_)
    x_batch = x_shape[:len(x_shape) - len(in_size)]
    if x_batch == state_batch_:
        return
    if len(x_batch) == len(state_batch_) + 1:
        axes = [i for i in range(len(x_batch)) if x_batch[:i] + x_batch[i + 1:] == state_batch_]
        if axes:
            t = axes[0]
            also = (f" (or on axis {', '.join(map(str, axes[1:]))}: the sizes do not tell)" if len(axes) > 1
                    else '')
            xs = 'xs' if t == 0 else f'jnp.moveaxis(xs, {t}, 0)'
            raise ValueError(
                f"{layer} takes one time step of shape (*batch, *in_size) = {state_batch_ + in_size} per call "
                f"(its state has batch shape {state_batch_}), got shape {x_shape}: this looks like a whole "
                f"sequence with time on axis {t}{also}. Step through it with "
                f"brainstate.transform.for_loop({what}, {xs}): it calls the {what} once per entry of the "
                f"leading (time) axis of what it is given and stacks the outputs along axis 0")
    hint = None if not x_batch else x_batch[0] if len(x_batch) == 1 else x_batch
    raise ValueError(f"{layer} got input with batch shape {x_batch} but its state has batch shape "
                     f"{state_batch_}; call init_state(batch_size={hint!r}) (or reset_state) "
                     f"with the input's batch shape first")


def state_initialised(initialised: bool, layer: str) -> None:
    if not initialised:
        raise RuntimeError(f"{layer} has no state yet: call init_state(batch_size=...) "
                           f"(or brainstate.nn.init_all_states(model, ...)) before the first step")


def dimensionless(unit: Any, name: str, layer: str) -> None:
    """Gates squash their pre-activations: a gated cell takes plain (dimensionless) numbers only."""
    if unit is not None:
        raise TypeError(f"{layer}: {name} must be dimensionless (a plain array), got a Quantity in {unit}; "
                        f"the gates apply sigmoid/tanh to weighted sums, which needs unit-free numbers. "
                        f"Divide by a reference value first, e.g. x / u.mV")


def recurrent_padding_mode(value: Any) -> str:
    if isinstance(value, str) and value.upper() in _MODE_ALIASES:
        return _MODE_ALIASES[value.upper()]
    raise ValueError(f"recurrent_padding_mode must be one of {PADDING_MODES} (any case), got {value!r}")
def dtype(value: Any, name: str) -> np.dtype | None:
    """A floating dtype (float16, bfloat16, float32, float64, ...) or None."""
    if value is None:
        return None
    try:
        dt = np.dtype(value)
    except TypeError:
        dt = None
    # ml_dtypes' floats (bfloat16, float8_*) have kind 'V'; their names say what they are.
    if dt is None or not (dt.kind == 'f' or dt.name.startswith(('bfloat', 'float'))):
        raise TypeError(f"{name} must be a floating dtype (e.g. jnp.float32, jnp.bfloat16) or None, got {value!r}")
    return dt


def separable_specs(nd, in_size_, out_channels, kernel_size, stride, padding_, lhs_dilation, rhs_dilation,
                    depth_multiplier, padding_mode_, channel_first) -> Tuple[ConvSpec, ConvSpec]:
    """Validate a separable convolution's arguments: the depthwise step's spec
    (``groups = in_channels``, ``in_channels * depth_multiplier`` outputs) and the
    pointwise (1x1, VALID) step's spec on its output."""
    nd = num_spatial_dims(nd)
    _, cin, _ = _split_in_size(in_size_, nd, channel_first)
    cout = positive_int(out_channels, 'out_channels')
    dm = positive_int(depth_multiplier, 'depth_multiplier')
    depthwise = conv_spec(nd, in_size_, cin * dm, kernel_size, stride, padding_, lhs_dilation, rhs_dilation,
                          cin, padding_mode_, channel_first)
    pointwise = conv_spec(nd, depthwise.out_size, cout, 1, 1, 'VALID', 1, 1, 1, 'ZEROS', channel_first)
    return depthwise, pointwise


def pool_spec(nd, in_size_, kernel_size, stride, padding_, channel_first) -> ConvSpec:
    """Validate a pooling layer's arguments: a window over each channel on its own (a depthwise
    convolution's geometry, ``groups`` = channels, no weights); ``stride`` None is ``kernel_size``.
    Every window must hold at least one input position (not only pads)."""
    nd = num_spatial_dims(nd)
    channel_first = flag(channel_first, 'channel_first')
    size = in_size(in_size_, nd, channel_first, 'pooling')
    cin, spatial = (size[0], size[1:]) if channel_first else (size[-1], size[:-1])
    k = int_tuple(kernel_size, nd, 'kernel_size')
    s = k if stride is None else int_tuple(stride, nd, 'stride')
    pad = padding(padding_, nd)
    ones = (1,) * nd
    for axis, (n, kk, ss, (lo, hi)) in enumerate(zip(spatial, k, s, resolve_pads(pad, spatial, k, s, ones))):
        if n + lo + hi < kk:
            raise ValueError(f"kernel_size must fit in the padded input: {kk} on axis {axis}, whose input has "
                             f"{n} positions and pads {(lo, hi)}; got kernel_size={kernel_size!r}")
        counts = axis_window_counts(n, kk, ss, lo, conv_out_length(n, kk, ss, lo, hi))
        if 0 in counts:
            raise ValueError(f"padding must leave an input position in every window, got padding={padding_!r}: "
                             f"pads {(lo, hi)} on axis {axis} (input {n}, kernel_size {kk}, stride {ss}) put "
                             f"window {counts.index(0)} entirely in the padding (pads must be smaller than the "
                             f"kernel size, and leave the last window an input position)")
    geometry = conv_geometry(spatial, k, s, pad, ones, ones)
    return ConvSpec(size, cin, cin, cin, pad, 'ZEROS', bool(channel_first), geometry)


def flag(value: Any, name: str) -> bool:
    """A bool (Python's or NumPy's)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)
