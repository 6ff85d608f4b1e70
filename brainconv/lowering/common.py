"""Pieces every formulation shares: the channel-last layout, zero padding, the kernel taps'
strided slices and their products, the windows of output rows a large map is cut into, the
adjoint kernel, and the dtype a convolution accumulates in."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Iterator, Sequence, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from ..shapes import ConvGeometry, kernel_span

#: Bytes of patches one scan step of the im2col forward and of the weight
#: gradient works on (a quarter of it, of input rows, for depthwise kernels),
#: so that a step stays in cache.  Weight gradients measured
#: (benchmarks/bench_cpu.py shapes): config g's second convolution (32->64 on
#: 28x28, batch 64) all patches at once 51-55 ms, 1 MiB steps 20-25 ms, 4 MiB
#: 20-21 ms, XLA's own 255 ms; config e (3-d) 1 MiB 9.8 ms, 2 MiB 8.9 ms,
#: 4 MiB 10.7 ms, 16 MiB 40 ms; depthwise config c 512 KiB or 1 MiB of input
#: rows 12.4 ms, 4 MiB 29 ms.
CHUNK_BYTES = 2 ** 21


def accumulation_dtype(dtype) -> Any:
    """The dtype a convolution of ``dtype`` operands computes and accumulates in: float32 for
    16-bit floats, ``dtype`` itself otherwise (the layers' ``dtype`` policy uses it too)."""
    return jnp.float32 if jnp.dtype(dtype).itemsize < 4 and jnp.issubdtype(dtype, jnp.floating) else dtype


def _dimension_numbers(nd: int) -> lax.ConvDimensionNumbers:
    spatial = tuple(range(1, nd + 1))
    lhs = (0, nd + 1) + spatial
    return lax.ConvDimensionNumbers(lhs, (nd + 1, nd) + tuple(range(nd)), lhs)


def _pad(x: jax.Array, pads: Sequence[Tuple[int, int]]) -> jax.Array:
    """Zero-pad (or, for negative pads, crop) the spatial axes of a channel-last batch."""
    if all(lo == 0 and hi == 0 for lo, hi in pads):
        return x
    config = [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in pads] + [(0, 0, 0)]
    return lax.pad(x, jnp.zeros((), x.dtype), config)


def _tap_slices(xe: jax.Array, g: ConvGeometry) -> Iterator[jax.Array]:
    """For each kernel tap (row-major), the strided slice of the padded input it reads."""
    n_batch, channels = xe.shape[0], xe.shape[-1]
    for tap in itertools.product(*(range(k) for k in g.kernel_size)):
        start = [t * d for t, d in zip(tap, g.rhs_dilation)]
        limit = [b + (o - 1) * s + 1 for b, o, s in zip(start, g.out_spatial, g.stride)]
        yield lax.slice(xe, [0] + start + [0], [n_batch] + limit + [channels], [1] + list(g.stride) + [1])


def _tap_product(xs: jax.Array, wt: jax.Array, groups: int, precision: Any) -> jax.Array:
    """One tap's contribution: ``xs`` ``(..., C_in)`` times ``wt`` ``(C_in // groups, C_out)``."""
    cin_g, cout = wt.shape
    if groups == 1:
        return lax.dot_general(xs, wt, (((xs.ndim - 1,), (0,)), ((), ())), precision=precision)
    if cin_g == 1:
        multiplier = cout // xs.shape[-1]
        xs = xs if multiplier == 1 else jnp.repeat(xs, multiplier, axis=-1)
        return xs * wt[0].reshape((1,) * (xs.ndim - 1) + (cout,))
    cout_g = cout // groups
    xs = xs.reshape(xs.shape[:-1] + (groups, cin_g))
    y = jnp.einsum('...gi,igo->...go', xs, wt.reshape(cin_g, groups, cout_g), precision=precision)
    return y.reshape(y.shape[:-2] + (cout,))


def _patch_matmul(cols: jax.Array, wt: jax.Array, groups: int, precision: Any) -> jax.Array:
    """Patches ``(..., T, C_in)`` times the kernel ``(T, C_in // groups, C_out)``."""
    taps, cin_g, cout = wt.shape
    lead = cols.shape[:-2]
    if groups == 1:
        return lax.dot_general(cols.reshape(lead + (taps * cin_g,)), wt.reshape(taps * cin_g, cout),
                               (((len(lead),), (0,)), ((), ())), precision=precision)
    cout_g = cout // groups
    cols = cols.reshape(lead + (taps, groups, cin_g))
    y = jnp.einsum('...tgi,tigo->...go', cols, wt.reshape(taps, cin_g, groups, cout_g), precision=precision)
    return y.reshape(lead + (cout,))


def _row_plan(g: ConvGeometry, per_row_bytes: int) -> Tuple[int, int]:
    """``(rows, steps)``: output rows of the first spatial axis per scan step, and steps."""
    out0 = g.out_spatial[0]
    rows = max(1, min(out0, CHUNK_BYTES // max(1, per_row_bytes)))
    return rows, -(-out0 // rows)


def _row_windows(xe: jax.Array, g: ConvGeometry, rows: int, steps: int) -> Tuple[ConvGeometry, Callable]:
    """The geometry of a window of ``rows`` output rows, and ``window(i)``: the rows of the
    padded input (extended with zeros to fit ``steps`` windows) that step ``i`` reads."""
    s0, span0 = g.stride[0], kernel_span(g.kernel_size[0], g.rhs_dilation[0])
    need = (rows * steps - 1) * s0 + span0
    xe = _pad(xe, [(0, max(0, need - xe.shape[1]))] + [(0, 0)] * (g.num_spatial_dims - 1))
    size = (rows - 1) * s0 + span0

    def window(i):
        return lax.dynamic_slice_in_dim(xe, i * (rows * s0), size, axis=1)

    return dataclasses.replace(g, out_spatial=(rows,) + tuple(g.out_spatial[1:])), window


def _map_rows(block: Callable, xe: jax.Array, g: ConvGeometry, per_row_bytes: int) -> jax.Array:
    """``block(window, geometry)`` over windows of output rows of the first spatial axis (one
    scan, each step's patches cache-sized), written into one output.  Rows, not batch chunks:
    a batch axis sharded over devices stays sharded (no all-gather; tests/test_sharding.py)."""
    rows, steps = _row_plan(g, per_row_bytes)
    if steps == 1:
        return block(xe, g)
    g_rows, window = _row_windows(xe, g, rows, steps)
    shape = jax.eval_shape(lambda xb: block(xb, g_rows), window(0))
    out = jnp.zeros(shape.shape[:1] + (rows * steps,) + shape.shape[2:], shape.dtype)

    def step(y, i):
        return lax.dynamic_update_slice_in_dim(y, block(window(i), g_rows), i * rows, axis=1), None

    out, _ = lax.scan(step, out, jnp.arange(steps))
    return lax.slice_in_dim(out, 0, g.out_spatial[0], axis=1)


def _sum_rows(block: Callable, xe: jax.Array, gy: jax.Array, g: ConvGeometry, per_row_bytes: int) -> jax.Array:
    """The sum over windows of output rows of ``block(window, grad rows, geometry)`` (one scan)."""
    rows, steps = _row_plan(g, per_row_bytes)
    if steps == 1:
        return block(xe, gy, g)
    g_rows, window = _row_windows(xe, g, rows, steps)
    gy = _pad(gy, [(0, rows * steps - gy.shape[1])] + [(0, 0)] * (g.num_spatial_dims - 1))
    shape = jax.eval_shape(lambda xb, gb: block(xb, gb, g_rows), window(0), gy[:, :rows])

    def step(acc, i):
        return acc + block(window(i), lax.dynamic_slice_in_dim(gy, i * rows, rows, axis=1), g_rows), None

    total, _ = lax.scan(step, jnp.zeros(shape.shape, shape.dtype), jnp.arange(steps))
    return total


def _itemsize(x: jax.Array) -> int:
    return jnp.dtype(x.dtype).itemsize


def _lhs_dilated(g: ConvGeometry) -> bool:
    return any(ld != 1 for ld in g.lhs_dilation)


def adjoint_kernel(w: jax.Array, groups: int) -> jax.Array:
    """The kernel of the input-gradient convolution: spatially flipped, and per
    group ``(C_in // g, C_out // g)`` transposed, laid out ``(*k, C_out // groups, C_in)``."""
    nd = w.ndim - 2
    k, cin_g, cout = w.shape[:nd], w.shape[-2], w.shape[-1]
    wa = w.reshape(k + (cin_g, groups, cout // groups))
    wa = jnp.transpose(wa, tuple(range(nd)) + (nd + 2, nd + 1, nd))
    wa = wa.reshape(k + (cout // groups, groups * cin_g))
    return jnp.flip(wa, axis=tuple(range(nd)))


def _add_all(a, b):
    return tuple(u + v for u, v in zip(a, b))
