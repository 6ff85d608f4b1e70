"""Stateless convolution ops: ``pad``, ``conv``, ``conv_transpose``.

Inputs are plain arrays of shape ``(*batch, *spatial, C)`` (or
``(*batch, C, *spatial)`` with ``channel_first=True``): no batch axis, one, or
several.  Kernels use brainstate's layouts: ``(*kernel_size, C_in // groups,
C_out)`` for ``conv`` and ``(*kernel_size, C_out, C_in // groups)`` for
``conv_transpose``.  Arguments are validated and resolved by the same code the
layers use (:mod:`brainconv._args`, :mod:`brainconv.shapes`); the layers call
the ``*_resolved`` ops directly with what they resolved at construction.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _args, _braintrace, _units
from . import lowering as _lowering
from .lowering.common import _tap_slices
from .shapes import ConvGeometry, Padding, Pads, transpose_as_conv

__all__ = ['pad', 'conv', 'conv_transpose', 'patches', 'transpose_kernel', 'weight_standardize']

_JNP_MODE = {'ZEROS': 'constant', 'REFLECT': 'reflect', 'REPLICATE': 'edge', 'CIRCULAR': 'wrap'}


def _spatial_axes(ndim: int, nd: int, channel_first: bool) -> tuple:
    if channel_first:
        return tuple(range(ndim - nd, ndim))
    return tuple(range(ndim - nd - 1, ndim - 1))


def _dimension_numbers(nd: int, channel_first: bool, transposed: bool) -> lax.ConvDimensionNumbers:
    spatial = tuple(range(1, nd + 1))
    lhs = (0, 1) + tuple(a + 1 for a in spatial) if channel_first else (0, nd + 1) + spatial
    # rhs_spec is (out-feature axis, in-feature axis, *spatial axes) of the kernel.
    rhs = (nd, nd + 1) if transposed else (nd + 1, nd)
    return lax.ConvDimensionNumbers(lhs, rhs + tuple(range(nd)), lhs)


def _with_batch(fn: Callable[[Any], Any], x: Any, in_rank: int) -> Any:
    """Run ``fn`` on ``x`` with its leading batch axes flattened into one."""
    batch = tuple(x.shape[:x.ndim - in_rank])
    y = fn(x.reshape((math.prod(batch),) + tuple(x.shape[len(batch):])))
    return y.reshape(batch + tuple(y.shape[1:]))


def _common_dtype(x, w):
    """Both operands in one floating dtype; boolean or integer spikes take the kernel's."""
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        x = jnp.asarray(x, jnp.result_type(w))
    dtype = jnp.result_type(x, w)
    return jnp.asarray(x, dtype), jnp.asarray(w, dtype)


def pad(x: Any, pads: Pads, mode: str = 'ZEROS', *, channel_first: bool = False) -> jax.Array:
    """Pad the spatial axes of ``x`` by ``pads``, one ``(low, high)`` pair per axis.

    ``mode``: 'ZEROS', 'REFLECT' (1234 -> 32123432), 'REPLICATE' (11123444) or
    'CIRCULAR' (34123412); torch's lower-case names are accepted too.  A
    brainunit Quantity stays one, in its unit.
    """
    mode = _args.padding_mode(mode)
    x, unit = _units.split(x)
    x = jnp.asarray(x)
    widths = [(0, 0)] * x.ndim
    for axis, p in zip(_spatial_axes(x.ndim, len(pads), channel_first), pads):
        widths[axis] = tuple(p)
    return _units.attach(jnp.pad(x, widths, mode=_JNP_MODE[mode]), unit)


def _channels(x: jax.Array, channel_first: bool) -> int:
    return x.shape[1] if channel_first else x.shape[-1]


def conv_resolved(
    x: jax.Array, w: jax.Array, geometry: ConvGeometry, groups: int, padding_mode: str,
    channel_first: bool, precision: Any = None, lowering: str | None = None,
) -> jax.Array:
    """Convolution of ``x`` (exactly one batch axis) with everything resolved.

    ``lowering`` picks the formulation (:mod:`brainconv.lowering`); None
    follows the global setting.
    """
    nd = geometry.num_spatial_dims
    x, w = _common_dtype(x, w)
    name = _lowering.resolve(lowering, geometry, groups, _channels(x, channel_first), w.shape[-1])
    pads = geometry.pads
    if padding_mode != 'ZEROS':
        x = pad(x, pads, padding_mode, channel_first=channel_first)
        pads = ((0, 0),) * nd
    if name == 'lax':
        return _lowering.lax_conv(
            x, w, window_strides=geometry.stride, padding=pads,
            lhs_dilation=geometry.lhs_dilation, rhs_dilation=geometry.rhs_dilation,
            dimension_numbers=_dimension_numbers(nd, channel_first, False),
            feature_group_count=groups, precision=precision)
    if channel_first:
        x = jnp.moveaxis(x, 1, -1)
    core = dataclasses.replace(geometry, in_spatial=tuple(x.shape[1:-1]), pads=pads)
    y = _conv_core(x, w, core, groups, name, precision)
    return jnp.moveaxis(y, -1, 1) if channel_first else y


def _conv_core(x: jax.Array, w: jax.Array, core: ConvGeometry, groups: int, name: str, precision: Any) -> jax.Array:
    """:func:`brainconv.lowering.conv_core`, once braintrace (if imported) knows its primitive mixes positions."""
    _braintrace.notice_braintrace()
    return _lowering.conv_core(x, w, core, groups, name, precision)


def _fold_circular(z: jax.Array, pads: Pads, out_spatial: Sequence[int], axes: Sequence[int]) -> jax.Array:
    """Adjoint of circular padding: add every padded position back onto the one it copied."""
    for axis, (lo, _), n in zip(axes, pads, out_spatial):
        index = (np.arange(z.shape[axis]) - lo) % n
        moved = jax.ops.segment_sum(jnp.moveaxis(z, axis, 0), index, num_segments=n)
        z = jnp.moveaxis(moved, 0, axis)
    return z


def conv_transpose_resolved(
    y: jax.Array, w: jax.Array, geometry: ConvGeometry, groups: int, padding_mode: str,
    channel_first: bool, precision: Any = None, lowering: str | None = None,
) -> jax.Array:
    """Transposed convolution of ``y`` (exactly one batch axis) with everything resolved.

    The adjoint of the forward convolution described by ``geometry``: the
    stride becomes an lhs dilation, the kernel is flipped, and the pads come
    from :func:`brainconv.shapes.transpose_lax_pads`.  ``lowering`` picks the
    formulation (:mod:`brainconv.lowering`); None follows the global setting.
    """
    g = geometry
    nd = g.num_spatial_dims
    y, w = _common_dtype(y, w)
    name = _lowering.resolve(lowering, g, groups, _channels(y, channel_first), w.shape[nd])
    wrap = padding_mode == 'CIRCULAR'
    core = transpose_as_conv(g, wrap=wrap)
    if name == 'lax':
        z = _lowering.lax_conv(
            y, jnp.flip(w, axis=tuple(range(nd))), window_strides=core.stride, padding=core.pads,
            lhs_dilation=core.lhs_dilation, rhs_dilation=core.rhs_dilation,
            dimension_numbers=_dimension_numbers(nd, channel_first, True),
            feature_group_count=groups, precision=precision)
        axes = _spatial_axes(z.ndim, nd, channel_first)
    else:
        if channel_first:
            y = jnp.moveaxis(y, 1, -1)
        z = _conv_core(y, transpose_core_kernel(w), core, groups, name, precision)
        axes = tuple(range(1, nd + 1))
    if wrap:  # CIRCULAR: transposed onto the padded length; fold the pads back.
        z = _fold_circular(z, g.pads, g.out_spatial, axes)
    return jnp.moveaxis(z, -1, 1) if channel_first and name != 'lax' else z


def transpose_core_kernel(w: Any) -> Any:
    """A ConvTranspose kernel ``(*k, C_out, C_in // g)`` as the kernel ``(*k, C_in // g, C_out)`` of the
    lhs-dilated convolution that computes it (:func:`brainconv.shapes.transpose_as_conv`): flipped."""
    return jnp.swapaxes(jnp.flip(w, axis=tuple(range(w.ndim - 2))), -1, -2)


def patches(x: Any, geometry: ConvGeometry, padding_mode: str = 'ZEROS', channel_first: bool = False) -> jax.Array:
    """The input window each output position of a (non-transposed) convolution reads.

    ``x``: ``(N, *in_spatial, C)`` (``(N, C, *in_spatial)`` with ``channel_first``); returns
    ``(N, *out_spatial, taps, C)``, taps row-major over the kernel: position ``o``'s window in
    the padded (by ``padding_mode``), lhs-dilated input, so that ``y[o, c] = sum over taps
    and the in-channels i of c's group of window[o, tap, i] * kernel[tap, i, c]``.
    """
    g = geometry
    nd = g.num_spatial_dims
    if channel_first:
        x = jnp.moveaxis(x, 1, -1)
    pads = g.pads
    if padding_mode != 'ZEROS':
        x = pad(x, pads, padding_mode)
        pads = ((0, 0),) * nd
    config = [(0, 0, 0)] + [(lo, hi, ld - 1) for (lo, hi), ld in zip(pads, g.lhs_dilation)] + [(0, 0, 0)]
    xp = lax.pad(x, jnp.zeros((), x.dtype), config)
    return jnp.stack(list(_tap_slices(xp, g)), axis=-2)


def transpose_kernel(w: Any, groups: int = 1) -> Any:
    """Lay a Conv kernel ``(*k, C_in // g, C_out)`` out as the kernel ``(*k, C_in, C_out // g)``
    of the ConvTranspose that is its adjoint (the identity when ``groups == 1``)."""
    if groups == 1:
        return w
    *k, cin_g, cout = w.shape
    w = w.reshape(tuple(k) + (cin_g, groups, cout // groups))
    w = jnp.moveaxis(w, -2, -3)
    return w.reshape(tuple(k) + (groups * cin_g, cout // groups))


def weight_standardize(w: Any, eps: float = 1e-4, gain: Any | None = None) -> jax.Array:
    """Scaled weight standardisation: zero mean, unit fan-in variance per output channel.

    ``w * rsqrt(max(var * fan_in, eps)) - mean * rsqrt(...)``, over every axis
    but the last, then times ``gain`` (broadcast over the last axis).
    """
    axes = tuple(range(w.ndim - 1))
    fan_in = math.prod(w.shape[:-1])
    mean = jnp.mean(w, axis=axes, keepdims=True)
    var = jnp.var(w, axis=axes, keepdims=True)
    scale = lax.rsqrt(jnp.maximum(var * fan_in, eps))
    if gain is not None:
        scale = gain * scale
    return w * scale - mean * scale


def _in_size(x: Any, nd: int) -> tuple:
    if jnp.ndim(x) < nd + 1:
        raise ValueError(f"x must have at least {nd + 1} axes (*spatial and channel) for a "
                         f"{nd}-d kernel, got shape {tuple(jnp.shape(x))}")
    return tuple(jnp.shape(x)[-(nd + 1):])


def conv(
    x: Any, kernel: Any, *, stride: int | Sequence[int] = 1, padding: Padding | int = 'SAME',
    lhs_dilation: int | Sequence[int] = 1, rhs_dilation: int | Sequence[int] = 1, groups: int = 1,
    padding_mode: str = 'ZEROS', channel_first: bool = False, precision: Any = None,
    lowering: str | None = None,
) -> jax.Array:
    """N-d convolution of ``x`` with ``kernel`` of shape ``(*kernel_size, C_in // groups, C_out)``.

    The arguments mean what they mean for :class:`brainconv.Conv`.  ``x`` and
    ``kernel`` may be brainunit Quantities, as for the layers: the result is in
    unit(x) * unit(kernel).
    """
    (x, x_unit), (kernel, k_unit) = _units.split(x), _units.split(kernel)
    spikes = _args.is_spikes(x)
    nd = jnp.ndim(kernel) - 2
    spec = _args.conv_spec(nd, _in_size(x, nd), kernel.shape[nd + 1], kernel.shape[:nd], stride, padding,
                           lhs_dilation, rhs_dilation, groups, padding_mode, channel_first)
    _args.kernel_shape(kernel.shape, spec.kernel_shape)
    with _lowering.spike_input(spikes):
        y = _with_batch(
                lambda b: conv_resolved(b, kernel, spec.geometry, spec.groups, spec.padding_mode, channel_first,
                                    precision, lowering),
            x, nd + 1)
    return _units.attach(y, _units.product(x_unit, k_unit))


def conv_transpose(
    x: Any, kernel: Any, *, stride: int | Sequence[int] = 1, padding: Padding | int = 'SAME',
    rhs_dilation: int | Sequence[int] = 1, groups: int = 1, output_padding: int | Sequence[int] | None = None,
    padding_mode: str = 'ZEROS', channel_first: bool = False, precision: Any = None,
    lowering: str | None = None,
) -> jax.Array:
    """N-d transposed convolution with ``kernel`` of shape ``(*kernel_size, C_out, C_in // groups)``.

    The arguments mean what they mean for :class:`brainconv.ConvTranspose`; units as for :func:`conv`.
    """
    (x, x_unit), (kernel, k_unit) = _units.split(x), _units.split(kernel)
    spikes = _args.is_spikes(x)
    nd = jnp.ndim(kernel) - 2
    spec = _args.conv_transpose_spec(nd, _in_size(x, nd), kernel.shape[nd], kernel.shape[:nd], stride, padding,
                                     rhs_dilation, groups, output_padding, padding_mode, channel_first)
    _args.kernel_shape(kernel.shape, spec.kernel_shape)
    with _lowering.spike_input(spikes):
        y = _with_batch(
            lambda b: conv_transpose_resolved(b, kernel, spec.geometry, spec.groups, spec.padding_mode,
                                              channel_first, precision, lowering),
            x, nd + 1)
    return _units.attach(y, _units.product(x_unit, k_unit))
