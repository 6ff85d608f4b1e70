"""Kernel gradients of the core convolution, for every formulation but ``'fft'`` and
``'event'``: one canonical convolution, row-windowed ``patches^T @ grad``, a loop over the taps,
phase by phase for lhs-dilated convolutions; :func:`_weight_grad_any` picks among them."""

from __future__ import annotations

import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..shapes import ConvGeometry, adjoint_geometry, kernel_span
from . import cpu
from .common import _add_all, _itemsize, _lhs_dilated, _pad, _sum_rows, _tap_slices, adjoint_kernel
from .phased import _phase_plan


def weight_grad(x: jax.Array, gy: jax.Array, g: ConvGeometry, groups: int, precision: Any = None) -> jax.Array:
    """Gradient of the core convolution (no lhs dilation) with respect to its kernel.

    Summed over windows of output rows (:data:`CHUNK_BYTES` of patches each):
    ``patches^T @ grad`` per window, or for depthwise kernels (groups > 1)
    the per-tap products reduced in one variadic reduce (config c: 12 ms;
    XLA's own 410-500 ms).
    """
    nd = g.num_spatial_dims
    xe = _pad(x, g.pads)
    cin, cout = x.shape[-1], gy.shape[-1]
    cin_g = cin // groups
    taps = math.prod(g.kernel_size)
    zero = jnp.zeros((), jnp.result_type(x, gy))
    if cin_g == 1 and groups > 1:
        multiplier = cout // cin

        def block(xb, gb, gr):
            gb = gb.reshape(gb.shape[:-1] + (cin, multiplier))
            prods = tuple(xs[..., None] * gb for xs in _tap_slices(xb, gr))
            sums = lax.reduce(prods, (zero,) * taps, _add_all, tuple(range(1, nd + 1)))
            return jnp.sum(jnp.stack(sums), axis=1).reshape(taps, 1, cout)

        per_row = 4 * x.shape[0] * g.stride[0] * math.prod(xe.shape[2:]) * _itemsize(x)  # 1/4 of the budget
    else:
        def block(xb, gb, gr):
            cols = jnp.stack(list(_tap_slices(xb, gr)), axis=-2)
            rows = math.prod(cols.shape[:-2])
            if groups == 1:
                return lax.dot_general(cols.reshape(rows, taps * cin), gb.reshape(rows, cout),
                                       (((0,), (0,)), ((), ())), precision=precision).reshape(taps, cin, cout)
            dw = jnp.einsum('ptgi,pgo->tigo', cols.reshape(rows, taps, groups, cin_g),
                            gb.reshape(rows, groups, cout // groups), precision=precision)
            return dw.reshape(taps, cin_g, cout)

        per_row = x.shape[0] * math.prod(g.out_spatial[1:]) * taps * cin * _itemsize(x)
    dw = _sum_rows(block, xe, gy, g, per_row)
    return dw.reshape(tuple(g.kernel_size) + (cin_g, cout))


def _phased_weight_grad(x, gy, g, groups, precision):
    """The kernel gradient of an lhs-dilated core convolution, phase by phase (each tap
    belongs to at most one phase; one that reads only inserted zeros gets zero)."""
    _, plan = _phase_plan(g)
    dw = jnp.zeros(tuple(g.kernel_size) + (x.shape[-1] // groups, gy.shape[-1]), x.dtype)
    zero = jnp.zeros((), x.dtype)
    for entry in plan:
        if entry is not None:
            taps, outs, sub = entry
            block = weight_grad(x, gy[outs], sub, groups, precision)
            # the phase's taps are a strided sub-grid of the kernel: place the block there by
            # (interior) padding -- a scatter here crashes XLA:CPU under second-order autodiff
            config = [(t.start, k - 1 - (t.start + (n - 1) * t.step), t.step - 1)
                      for t, k, n in zip(taps, g.kernel_size, block.shape)] + [(0, 0, 0)] * 2
            dw = dw + lax.pad(block, zero, config)
    return dw


#: Multiply-accumulates under which an ungrouped kernel gradient is computed by
#: :func:`_weight_grad_loop` (a loop over the taps: a program of constant size) rather than by
#: stacked patches.  Measured: a 3-d kernel gradient (16^3 x 8 -> 16, k 3, stride 2, batch 2)
#: compiles in 0.14 s as a loop, 0.43 s as patches; the U-Net training steps of
#: docs/performance.md compile in 1.41 / 2.28 s instead of 1.63 / 3.92 s at the same step time
#: (2-d) or 5 -> 8 ms (3-d); on large ones the loop runs 2-2.5x slower (config g's second
#: convolution, 925M MACs: 243 ms against 98 ms), so they keep the patches.
SMALL_MACS = 2 ** 24


def _weight_grad_loop(x, gy, g, precision):
    """Kernel gradient of an ungrouped core convolution (no lhs dilation) as a loop over the taps.

    The padded input is split once into its stride phases, so that every tap
    reads a unit-stride window of one phase: one dynamic slice and one dot per
    tap, in a ``fori_loop`` whose body does not grow with the kernel.
    """
    nd = g.num_spatial_dims
    xe = _pad(x, g.pads)
    s, k = g.stride, g.kernel_size
    lens = [-(-n // st) for n, st in zip(xe.shape[1:-1], s)]
    xe = _pad(xe, [(0, ln * st - n) for ln, st, n in zip(lens, s, xe.shape[1:-1])])
    n_batch, cin = xe.shape[0], xe.shape[-1]
    shape = [n_batch]
    for ln, st in zip(lens, s):
        shape += [ln, st]
    xp = xe.reshape(shape + [cin])                                   # (N, l0, s0, l1, s1, ..., C)
    order = [2 + 2 * a for a in range(nd)] + [0] + [1 + 2 * a for a in range(nd)] + [2 * nd + 1]
    xp = jnp.transpose(xp, order).reshape((-1, n_batch) + tuple(lens) + (cin,))  # (phases, N, *l, C)
    taps = list(itertools.product(*(range(kk) for kk in k)))
    starts = [[t * d for t, d in zip(tap, g.rhs_dilation)] for tap in taps]
    phase = jnp.asarray([int(np.ravel_multi_index(tuple(p % st for p, st in zip(st0, s)), s)) for st0 in starts],
                        jnp.int32)
    offset = jnp.asarray([[p // st for p, st in zip(st0, s)] for st0 in starts], jnp.int32).reshape(len(taps), nd)
    contract = tuple(range(nd + 1))
    zero = jnp.zeros((), jnp.int32)

    def body(i, dw):
        start = [phase[i], zero] + [offset[i, a] for a in range(nd)] + [zero]
        xs = lax.dynamic_slice(xp, start, (1, n_batch) + tuple(g.out_spatial) + (cin,))[0]
        tap = lax.dot_general(xs, gy, ((contract, contract), ((), ())), precision=precision)
        return lax.dynamic_update_index_in_dim(dw, tap, i, 0)

    dw = lax.fori_loop(0, len(taps), body, jnp.zeros((len(taps), cin, gy.shape[-1]), x.dtype))
    return dw.reshape(tuple(k) + (cin, gy.shape[-1]))


def _weight_grad_canonical(x, gy, g, precision):
    """Kernel gradient of an ungrouped core convolution (no lhs dilation) as one forward-style
    convolution: the input's channels as its batch, the batch as the contracted features, the
    output gradient as the kernel, the original stride as its kernel dilation and the original
    kernel dilation as its stride.

    The same arithmetic as XLA's own kernel gradient (the transpose rule's convolution with
    batch-contracting dimension numbers), but XLA:CPU runs that one 60-200x slower inside a
    ``lax.cond`` branch or a loop body (``scan``, ``for_loop``: every BPTT step): a 2-d 64 ->
    64 gradient 19-34 ms at top level, 3.3-3.8 s in a cond; a 1-d one 10 ms against 770-890 ms.
    This layout is the ordinary one and runs at the same speed everywhere (jaxlib 0.12: 1-d
    config d 7.9 ms, 2-d 64 -> 64 19.7 ms; in a scan 70.7 ms a step against the row windows'
    108.8).
    """
    nd = g.num_spatial_dims
    x = _pad(x, [(min(lo, 0), 0) for lo, _ in g.pads])
    pads = []
    for a, (lo, _) in enumerate(g.pads):
        lo = max(lo, 0)
        # the input positions past the last one any window reads are cut off
        used = kernel_span(g.kernel_size[a], g.rhs_dilation[a]) + (g.out_spatial[a] - 1) * g.stride[a]
        pads.append((lo, used - lo - x.shape[1 + a]))
    x = _pad(x, [(0, min(hi, 0)) for _, hi in pads])
    pads = [(lo, max(hi, 0)) for lo, hi in pads]
    spatial = tuple(range(1, nd + 1))
    lhs = jnp.transpose(x, (nd + 1,) + spatial + (0,))               # (C_in, *spatial, N)
    rhs = jnp.moveaxis(gy, 0, -2)                                     # (*out, N, C_out)
    numbers = lax.ConvDimensionNumbers((0, nd + 1) + spatial, (nd + 1, nd) + tuple(range(nd)),
                                       (0, nd + 1) + spatial)
    dw = lax.conv_general_dilated(lhs, rhs, window_strides=g.rhs_dilation, padding=pads,
                                  rhs_dilation=g.stride, dimension_numbers=numbers, precision=precision)
    return jnp.moveaxis(dw, 0, nd)                                    # (*k, C_in, C_out)


def _weight_grad_any(x, gy, g, groups, precision):
    """The kernel gradient for every formulation but 'fft': for ungrouped 1-d convolutions (and 2-d
    ones where YNNPACK is multi-threaded, jaxlib >= 0.12) one canonical convolution
    (:func:`_weight_grad_canonical`); otherwise row-windowed patches^T @ grad, or for small
    ungrouped convolutions (:data:`SMALL_MACS`) a loop over the taps.

    An lhs-dilated convolution with stride 1 (every transposed convolution) is
    the adjoint of a strided one, ``<gy, conv(x, w)> = <x, conv(gy,
    adjoint_kernel(w), adjoint geometry)>``, so its kernel gradient is the
    strided convolution's, with ``gy`` as input and ``x`` as output gradient,
    laid back out by ``adjoint_kernel`` (a permutation that is its own
    inverse): one scan over the real taps instead of one per sub-pixel phase
    (a 3-d U-Net's training step compiled in 2.7x less time, same run time).
    """
    if _lhs_dilated(g) and all(s == 1 for s in g.stride):
        return adjoint_kernel(_weight_grad_any(gy, x, adjoint_geometry(g), groups, precision), groups)
    if _lhs_dilated(g):
        return _phased_weight_grad(x, gy, g, groups, precision)
    if groups == 1 and (g.num_spatial_dims == 1 or (g.num_spatial_dims == 2 and not cpu.YNN_SINGLE_THREADED)):
        return _weight_grad_canonical(x, gy, g, precision)
    macs = x.shape[0] * math.prod(g.out_spatial) * math.prod(g.kernel_size) * x.shape[-1] * gy.shape[-1] // groups
    if groups == 1 and macs < SMALL_MACS:
        return _weight_grad_loop(x, gy, g, precision)
    return weight_grad(x, gy, g, groups, precision)
