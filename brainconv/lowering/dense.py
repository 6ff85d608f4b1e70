"""The dense forward formulations of the core convolution (no lhs dilation: phases are split off
before, :mod:`brainconv.lowering.phased`, but for ``'lax_vjp'`` in 2-d): one XLA convolution
(``'lax'``, ``'lax_vjp'``), shift-multiply-add (``'taps'``), patches and one matmul
(``'im2col'``), and the first axis's taps folded into the channels (``'fold'``)."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from ..shapes import ConvGeometry
from . import cpu
from .common import (
    _dimension_numbers,
    _itemsize,
    _map_rows,
    _pad,
    _patch_matmul,
    _tap_product,
    _tap_slices,
    accumulation_dtype,
)


def lax_conv(x: jax.Array, w: jax.Array, **kwargs: Any) -> jax.Array:
    """``lax.conv_general_dilated``, accumulating 16-bit inputs in float32 (the ``'lax'`` formulation)."""
    dtype = x.dtype
    if accumulation_dtype(dtype) == dtype:
        return lax.conv_general_dilated(x, w, **kwargs)
    return lax.conv_general_dilated(x, w, preferred_element_type=jnp.float32, **kwargs).astype(dtype)


def direct(x: jax.Array, w: jax.Array, g: ConvGeometry, groups: int, precision: Any = None) -> jax.Array:
    """The core convolution as one ``lax.conv_general_dilated`` call (``'lax'``)."""
    return lax_conv(
        x, w, window_strides=g.stride, padding=g.pads, lhs_dilation=g.lhs_dilation,
        rhs_dilation=g.rhs_dilation, dimension_numbers=_dimension_numbers(g.num_spatial_dims),
        feature_group_count=groups, precision=precision)


def _forward_lax(x, w, g, groups, precision):
    """``lax.conv_general_dilated`` that never sees an all-zero (VALID) window, nor (jaxlib < 0.12)
    XLA:CPU's single-threaded YNNPACK path where leaving it costs few extra rows.

    XLA:CPU sends a convolution without padding to a slow kernel (config h:
    a VALID 3x3 convolution of a pre-padded 34x34x64 batch 81 ms, the same
    work as a pad-1 convolution 31 ms).  Negative pads are cropped first
    (without lhs dilation); if no pad is left, the last spatial axis is
    padded low by its stride and the one extra output cropped.  The extra
    rows of :func:`_ynn_escape` are padded and cropped the same way.
    """
    nd = g.num_spatial_dims
    pads = list(g.pads)
    if all(ld == 1 for ld in g.lhs_dilation):  # (lhs-dilated: pads count dilated positions; lax crops)
        x = _pad(x, [(min(lo, 0), min(hi, 0)) for lo, hi in g.pads])
        pads = [(max(lo, 0), max(hi, 0)) for lo, hi in g.pads]
    axis, rows = cpu._ynn_escape(x, w, pads, g) or (nd - 1, int(all(p == (0, 0) for p in pads)))
    if rows:
        pads[axis] = (pads[axis][0] + rows * g.stride[axis], pads[axis][1])
    y = lax.conv_general_dilated(
        x, w, window_strides=g.stride, padding=pads, lhs_dilation=g.lhs_dilation, rhs_dilation=g.rhs_dilation,
        dimension_numbers=_dimension_numbers(nd), feature_group_count=groups, precision=precision)
    return lax.slice_in_dim(y, rows, y.shape[axis + 1], axis=axis + 1) if rows else y


def _materialise(y: jax.Array) -> jax.Array:
    """``y`` unchanged, through an op YNNPACK does not take (``reduce_precision`` to the dtype's
    own precision: the identity), so that XLA:CPU cannot pull the elementwise ops that computed
    ``y`` into a YNNPACK fusion with a reduction that consumes it.  Config c's shift-multiply-add
    followed by a ``jnp.vdot`` loss ran as one YNNPACK graph in 39 ms (the forward alone: 2.2 ms,
    the vdot alone 0.9 ms); through this, 9.5 ms.  (``lax.optimization_barrier`` does not help:
    XLA:CPU removes it before fusion.)"""
    info = jnp.finfo(y.dtype)
    return lax.reduce_precision(y, exponent_bits=info.nexp, mantissa_bits=info.nmant)


def _forward_taps(x, w, g, groups, precision):
    """Shift-multiply-add (:func:`_materialise`-d)."""
    xe = _pad(x, g.pads)
    wt = w.reshape((-1,) + w.shape[-2:])
    y = None
    for i, xs in enumerate(_tap_slices(xe, g)):
        term = _tap_product(xs, wt[i], groups, precision)
        y = term if y is None else y + term
    return _materialise(y)


def _forward_im2col(x, w, g, groups, precision):
    xe = _pad(x, g.pads)
    wt = w.reshape((-1,) + w.shape[-2:])

    def block(xb, gb):
        return _patch_matmul(jnp.stack(list(_tap_slices(xb, gb)), axis=-2), wt, groups, precision)

    per_row = x.shape[0] * math.prod(g.out_spatial[1:]) * wt.shape[0] * x.shape[-1] * _itemsize(x)
    return _map_rows(block, xe, g, per_row)


def _forward_fold(x, w, g, groups, precision):
    """Fold the first spatial axis's taps into the channels; an (N-1)-d convolution is left."""
    nd = g.num_spatial_dims
    if nd == 1:
        return _forward_im2col(x, w, g, groups, precision)
    k0, s0, d0, out0 = g.kernel_size[0], g.stride[0], g.rhs_dilation[0], g.out_spatial[0]
    xe = _pad(x, [g.pads[0]] + [(0, 0)] * (nd - 1))
    cin = x.shape[-1]
    cin_g = cin // groups
    slices = [lax.slice_in_dim(xe, t * d0, t * d0 + (out0 - 1) * s0 + 1, stride=s0, axis=1) for t in range(k0)]
    xf = jnp.stack(slices, axis=-2)                                # (N, out0, *rest, k0, C)
    rest = xf.shape[2:-2]
    xf = xf.reshape(xf.shape[:-2] + (k0, groups, cin_g))
    xf = jnp.swapaxes(xf, -3, -2)                                  # channels ordered (group, tap, channel)
    xf = xf.reshape((x.shape[0] * out0,) + rest + (groups * k0 * cin_g,))
    wf = jnp.moveaxis(w, 0, nd - 1)                                # (*k_rest, k0, C_in // groups, C_out)
    wf = wf.reshape(wf.shape[:nd - 1] + (k0 * cin_g, w.shape[-1]))
    inner = ConvGeometry(g.in_spatial[1:], g.out_spatial[1:], g.kernel_size[1:], g.stride[1:], g.pads[1:],
                         g.lhs_dilation[1:], g.rhs_dilation[1:])
    y = _forward_lax(xf, wf, inner, groups, precision)
    return y.reshape((x.shape[0], out0) + y.shape[1:])
