"""The FFT formulation (``'fft'``) of the core convolution, and when it pays.

Same core convolution as every formulation in :mod:`brainconv.lowering`:
channel-last ``x`` ``(N, *in_spatial, C_in)``, kernel ``(*kernel_size,
C_in // groups, C_out)``, a non-transposed
:class:`~brainconv.shapes.ConvGeometry` (pads possibly negative, window
stride, lhs and rhs dilation), ``groups``.  Two functions:
:func:`forward` ``(x, w) -> y`` and :func:`weight_grad` ``(x, gy) -> dw``;
the input gradient is :func:`forward` of the adjoint geometry.

How, per spatial axis:

* the input is lhs-dilated and padded (negative pads crop) in one
  ``lax.pad``, cut to the positions the window reads;
* the stride ``s`` is taken out by *space-to-depth*: the padded input
  ``xp[m * s + r]`` becomes ``s`` phases ``xs[m, r]`` and the (rhs-dilated,
  zero-extended) kernel ``wd[q * s + r]`` becomes ``ws[q, r]``, so that
  ``y[o] = sum_{q, r} xs[o + q, r] ws[q, r]``: a stride-1 correlation whose
  channels are (phase, C_in).  Nothing is computed and thrown away;
* that correlation is a product of real FFTs (``rfftn``) of a size
  ``F >= M`` (M: phase-input length; :func:`fast_size`), which is enough: no
  output reads a wrapped-around sample.  A short kernel (:data:`DFT_MAX_TAPS`)
  is transformed by DFT matmuls instead.  Per frequency the channels
  contract per group (``(N, S * C_in/g) @ (S * C_in/g, C_out/g)``); a
  depthwise kernel is an elementwise product.  The kernel gradient is the
  same correlation of the input with the output gradient, summed over the
  batch per frequency and transformed back only at the kernel's taps.

Sharding: XLA's SPMD partitioner replicates the operand of an FFT op whatever
its sharding, so with a batch-sharded input this formulation all-gathers it
(tests/test_sharding.py; ``jax.experimental.custom_partitioning`` would keep
the batch sharded, but cannot lower inside a primitive's lowering in jax
0.10).  'auto' is for one device's speed; pick another lowering for
data-parallel runs of long kernels.

bf16/f16 are computed in float32 and cast back (float64 stays float64).  The
frequency-domain contraction runs at ``precision`` (``HIGHEST`` when None:
a TF32 product would cost far more than float32 rounding after an FFT).

:func:`fft_wins` and :func:`taps_too_many` encode when ``'auto'`` should run
this formulation, and when the per-tap unrolled ``'taps'`` stops paying;
the numbers are in their docstrings and in ``docs/performance.md``.
"""

from __future__ import annotations

import math
from typing import Any, List, Sequence, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from ..shapes import ConvGeometry, dilated_length, kernel_span

__all__ = ['forward', 'weight_grad', 'fft_wins', 'taps_too_many', 'fast_size']


def fast_size(n: int) -> int:
    """The smallest length ``>= n`` of the form ``2^a * r``, ``r`` in :data:`_ODD_FACTORS` (even
    unless 1): the real FFT of an even length is a complex FFT of half of it, and mixed-radix
    FFTs with many factors 3 run slower (measured, XLA:CPU: rfft of 8x16 rows padded to 4374 =
    2 * 3^7 3.9 ms, to 4608 = 2^9 * 9 1.8 ms)."""
    n = int(n)
    if n <= 2:
        return max(n, 1)
    best = None
    for r in _ODD_FACTORS:
        m = 2 * r
        while m < n:
            m *= 2
        best = m if best is None else min(best, m)
    return best


#: The odd parts :func:`fast_size` allows.
_ODD_FACTORS = (1, 3, 5, 7, 9, 15)


def _compute_dtype(dtype: Any) -> Any:
    return jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32


class _Plan:
    """Per-axis sizes: kernel phases ``kq``, phase-input length ``m``, FFT size ``f``."""

    def __init__(self, g: ConvGeometry):
        self.g = g
        self.nd = g.num_spatial_dims
        self.span = [kernel_span(k, d) for k, d in zip(g.kernel_size, g.rhs_dilation)]
        self.kq = [-(-sp // s) for sp, s in zip(self.span, g.stride)]
        self.m = [o + kq - 1 for o, kq in zip(g.out_spatial, self.kq)]
        self.f = [fast_size(m) for m in self.m]
        self.phases = math.prod(g.stride)

    def fft(self, a: jax.Array) -> jax.Array:
        return jnp.fft.rfftn(a, s=self.f, axes=tuple(range(-self.nd, 0)))

    def kernel_fft(self, a: jax.Array) -> jax.Array:
        """:meth:`fft` of an array whose trailing axes are only ``kq`` long: by DFT matmuls
        when the kernel is short (:data:`DFT_MAX_TAPS`), an FFT of the zero-extended array otherwise."""
        if max(self.kq) > DFT_MAX_TAPS:
            return self.fft(a)
        nd = self.nd
        cd = a.dtype
        hi = lax.Precision.HIGHEST   # a transform, not the user's product: no TF32 / bf16 passes
        cos, sin = _dft_matrix(self.f[-1], self.kq[-1], self.f[-1] // 2 + 1, cd)   # (bins, kq)
        spec = lax.complex(jnp.matmul(a, cos.T, precision=hi), -jnp.matmul(a, sin.T, precision=hi))
        for axis in range(nd - 1):
            cos, sin = _dft_matrix(self.f[axis], self.kq[axis], self.f[axis], cd)
            mat = lax.complex(cos, -sin)                                             # (f, kq)
            spec = jnp.moveaxis(jnp.tensordot(spec, mat, axes=((spec.ndim - nd + axis,), (1,)), precision=hi),
                                -1, spec.ndim - nd + axis)
        return spec

    def kernel_ifft(self, a: jax.Array) -> jax.Array:
        """``ifft(a, keep=kq)``: by inverse DFT matmuls evaluated only at the ``kq`` taps when the
        kernel is short, by an inverse FFT otherwise."""
        if max(self.kq) > DFT_MAX_TAPS:
            return self.ifft(a, self.kq)
        nd = self.nd
        cd = jnp.real(a).dtype
        hi = lax.Precision.HIGHEST
        for axis in range(nd - 1):
            cos, sin = _dft_matrix(self.f[axis], self.kq[axis], self.f[axis], cd)
            scale = jnp.asarray(1.0 / self.f[axis], cd)
            mat = lax.complex(cos * scale, sin * scale)                                # (f, kq)
            a = jnp.moveaxis(jnp.tensordot(a, mat, axes=((a.ndim - nd + axis,), (0,)), precision=hi),
                             -1, a.ndim - nd + axis)
        n = self.f[-1]
        bins = n // 2 + 1
        cos, sin = _dft_matrix(n, self.kq[-1], bins, cd)
        weight = jnp.full((bins, 1), 2.0 / n, cd).at[0].set(1.0 / n)
        if n % 2 == 0:
            weight = weight.at[bins - 1].set(1.0 / n)
        return (jnp.matmul(jnp.real(a), cos * weight, precision=hi)
                - jnp.matmul(jnp.imag(a), sin * weight, precision=hi))

    def ifft(self, a: jax.Array, keep: Sequence[int]) -> jax.Array:
        a = jnp.fft.irfftn(a, s=self.f, axes=tuple(range(-self.nd, 0)))
        return a[(Ellipsis,) + tuple(slice(0, n) for n in keep)]


#: Kernels at most this long on every axis are transformed by DFT matmuls (:meth:`_Plan.kernel_fft`):
#: C_in * C_out short rows zero-extended to the FFT size would cost more transforms than the input.
DFT_MAX_TAPS = 32


def _dft_matrix(n: int, taps: int, bins: int, dtype: Any) -> Tuple[jax.Array, jax.Array]:
    """``cos`` and ``sin`` of ``2 pi f q / n`` for ``f < bins``, ``q < taps``: ``(bins, taps)`` each
    (the phase reduced mod ``n`` in integers, so large ``f * q`` lose nothing)."""
    f = lax.broadcasted_iota(jnp.int32, (bins, taps), 0)
    q = lax.broadcasted_iota(jnp.int32, (bins, taps), 1)
    angle = ((f * q) % n).astype(dtype) * jnp.asarray(2 * math.pi / n, dtype)
    return jnp.cos(angle), jnp.sin(angle)


def _depth_perm(nd: int, lead: int) -> Tuple[List[int], List[int]]:
    """Axis orders of an array laid out ``(*lead, q0, r0, q1, r1, ..., *trail)``: the phase
    axes ``r`` and the position axes ``q``."""
    r = [lead + 2 * a + 1 for a in range(nd)]
    q = [lead + 2 * a for a in range(nd)]
    return r, q


def _input_phases(x: jax.Array, p: _Plan) -> jax.Array:
    """``(N, *in_spatial, C)`` -> ``(N, S, C, *m)``: lhs-dilated, padded, cut, split by the stride."""
    g, nd = p.g, p.nd
    config = [(0, 0, 0)]
    for n, ld, (lo, _), s, m in zip(g.in_spatial, g.lhs_dilation, g.pads, g.stride, p.m):
        config.append((lo, m * s - dilated_length(n, ld) - lo, ld - 1))
    config.append((0, 0, 0))
    xp = lax.pad(x, jnp.zeros((), x.dtype), config)
    n_batch, c = x.shape[0], x.shape[-1]
    xp = xp.reshape((n_batch,) + sum(((m, s) for m, s in zip(p.m, g.stride)), ()) + (c,))
    r, q = _depth_perm(nd, 1)
    xp = jnp.transpose(xp, [0] + r + [2 * nd + 1] + q)
    return xp.reshape((n_batch, p.phases, c) + tuple(p.m))


def _kernel_phases(w: jax.Array, p: _Plan) -> jax.Array:
    """``(*k, C_in/g, C_out)`` -> ``(S, C_in/g, C_out, *kq)``: rhs-dilated, split by the stride."""
    g, nd = p.g, p.nd
    config = [(0, kq * s - sp, d - 1) for kq, s, sp, d in zip(p.kq, g.stride, p.span, g.rhs_dilation)]
    wd = lax.pad(w, jnp.zeros((), w.dtype), config + [(0, 0, 0)] * 2)
    wd = wd.reshape(sum(((kq, s) for kq, s in zip(p.kq, g.stride)), ()) + w.shape[-2:])
    r, q = _depth_perm(nd, 0)
    wd = jnp.transpose(wd, r + [2 * nd, 2 * nd + 1] + q)
    return wd.reshape((p.phases,) + w.shape[-2:] + tuple(p.kq))


def _kernel_from_phases(ws: jax.Array, p: _Plan) -> jax.Array:
    """Inverse of :func:`_kernel_phases`: ``(S, C_in/g, C_out, *kq)`` -> ``(*k, C_in/g, C_out)``."""
    g, nd = p.g, p.nd
    cin_g, cout = ws.shape[1], ws.shape[2]
    ws = ws.reshape(tuple(g.stride) + (cin_g, cout) + tuple(p.kq))
    order = [i for a in range(nd) for i in (nd + 2 + a, a)] + [nd, nd + 1]
    wd = jnp.transpose(ws, order).reshape(tuple(kq * s for kq, s in zip(p.kq, g.stride)) + (cin_g, cout))
    index = tuple(slice(0, sp, d) for sp, d in zip(p.span, g.rhs_dilation))
    return wd[index]


def _precision(precision: Any) -> Any:
    return lax.Precision.HIGHEST if precision is None else precision


#: Contractions at most this long run as a broadcast product and sum (vectorised over
#: frequencies), longer ones as a batched matmul with the frequencies as the batch.
#: Measured (XLA:CPU, loaded 2-core machine): 16 channels, batch 8, 2188 bins: product and sum
#: 2.4 ms, complex einsum 9.7 ms, frequency-major batched matmul 5.7 ms; 64 channels -> 64,
#: batch 32, 684 bins: product and sum 988 ms, batched matmul 119 ms.
SMALL_CONTRACTION = 16


def _mix(a: jax.Array, b: jax.Array, kind: str, precision: Any) -> jax.Array:
    """Per frequency bin and group, the channel contraction.

    ``kind='forward'``: ``a`` ``(N, G, K, P)``, ``b`` ``(G, K, O, P)`` -> ``(N, G, O, P)``
    (sum over K).  ``kind='weight'``: ``a`` ``(N, G, K, P)``, ``b`` ``(N, G, O, P)`` ->
    ``(G, K, O, P)`` (sum over N).
    """
    forward_kind = kind == 'forward'
    length = a.shape[2] if forward_kind else a.shape[0]
    if length <= SMALL_CONTRACTION:
        if forward_kind:
            return jnp.sum(a[:, :, :, None, :] * b[None], axis=2)
        return jnp.sum(a[:, :, :, None, :] * b[:, :, None, :, :], axis=0)
    precision = _precision(precision)
    if forward_kind:   # (P, G, N, K) @ (P, G, K, O)
        y = lax.dot_general(jnp.transpose(a, (3, 1, 0, 2)), jnp.transpose(b, (3, 0, 1, 2)),
                            (((3,), (2,)), ((0, 1), (0, 1))), precision=precision)
        return jnp.transpose(y, (2, 1, 3, 0))
    y = lax.dot_general(jnp.transpose(a, (3, 1, 2, 0)), jnp.transpose(b, (3, 1, 0, 2)),   # (P, G, K, N) @ (P, G, N, O)
                        (((3,), (2,)), ((0, 1), (0, 1))), precision=precision)
    return jnp.transpose(y, (1, 2, 3, 0))


def forward(x: jax.Array, w: jax.Array, g: ConvGeometry, groups: int, precision: Any = None) -> jax.Array:
    """The core convolution ``(N, *in_spatial, C_in) -> (N, *out_spatial, C_out)`` by real FFTs."""
    dtype = jnp.result_type(x, w)
    cd = _compute_dtype(dtype)
    p = _Plan(g)
    n_batch = x.shape[0]
    cin_g, cout = w.shape[-2], w.shape[-1]
    cout_g = cout // groups
    xf = p.fft(_input_phases(x.astype(cd), p))          # (N, S, C_in, *fh)
    wf = jnp.conj(p.kernel_fft(_kernel_phases(w.astype(cd), p)))  # (S, C_in/g, C_out, *fh)
    fh = xf.shape[3:]
    bins = math.prod(fh)
    s = p.phases
    xf = jnp.swapaxes(xf.reshape(n_batch, s, groups, cin_g, bins), 1, 2).reshape(n_batch, groups, s * cin_g, bins)
    wf = jnp.swapaxes(wf.reshape(s * cin_g, groups, cout_g, bins), 0, 1)
    yf = _mix(xf, wf, 'forward', precision)                          # (N, G, C_out/g, bins)
    y = p.ifft(yf.reshape((n_batch, cout) + fh), g.out_spatial)   # (N, C_out, *out)
    return jnp.moveaxis(y, 1, -1).astype(dtype)


def weight_grad(x: jax.Array, gy: jax.Array, g: ConvGeometry, groups: int, precision: Any = None) -> jax.Array:
    """Gradient of ``sum(forward(x, w) * gy)`` with respect to ``w``: ``(*k, C_in // groups, C_out)``.

    For every tap ``t``: ``dw[t] = sum over batch and outputs of xp[o * s + t * d]^T gy[o]``
    (per group), one correlation of the input with ``gy`` by real FFTs.
    """
    dtype = jnp.result_type(x, gy)
    cd = _compute_dtype(dtype)
    p = _Plan(g)
    n_batch, cin = x.shape[0], x.shape[-1]
    cout = gy.shape[-1]
    cin_g, cout_g = cin // groups, cout // groups
    xf = p.fft(_input_phases(x.astype(cd), p))                       # (N, S, C_in, *fh)
    gf = jnp.conj(p.fft(jnp.moveaxis(gy.astype(cd), -1, 1)))          # (N, C_out, *fh)
    fh = xf.shape[3:]
    bins = math.prod(fh)
    s = p.phases
    xf = jnp.swapaxes(xf.reshape(n_batch, s, groups, cin_g, bins), 1, 2).reshape(n_batch, groups, s * cin_g, bins)
    dwf = _mix(xf, gf.reshape(n_batch, groups, cout_g, bins), 'weight', precision)   # (G, S*C_in/g, C_out/g, bins)
    dwf = jnp.transpose(dwf.reshape(groups, s, cin_g, cout_g, bins), (1, 2, 0, 3, 4))
    ws = p.kernel_ifft(dwf.reshape((s, cin_g, cout) + fh))           # (S, C_in/g, C_out, *kq)
    return _kernel_from_phases(ws, p).astype(dtype)


# --------------------------------------------------------------------------- #
# When it pays (measured; see docs/performance.md)
# --------------------------------------------------------------------------- #

#: Fewest kernel taps at which ``'fft'`` beats the best direct formulation on CPU, by
#: (number of spatial dims, depthwise).  See :func:`fft_wins` for the measurements.
FFT_MIN_TAPS = {(1, False): 48, (2, False): 81, (2, True): 121}

#: Most kernel taps for which the unrolled ``'taps'`` formulation still pays (:func:`taps_too_many`).
TAPS_MAX = 121


def fft_wins(geometry: ConvGeometry, groups: int, in_channels: int, out_channels: int) -> bool:
    """Whether ``'fft'`` is the formulation to run on CPU: measured to beat raw lax and every
    direct formulation, forward+backward, at this kernel size (:data:`FFT_MIN_TAPS`).

    ``benchmarks/bench_cpu.py --crossover i,j,dense`` (2-core AMD EPYC shared with other jobs,
    jax 0.10.2; medians of 7 interleaved rounds; ratios to raw lax, forward / forward+backward;
    docs/performance.md has the tables):

    * 1-d, 16 -> 16 channels, L 4096, batch 8: k 9: 2.15 / 2.56 (lax_vjp 1.11 / 1.23); k 33:
      1.11-1.20 / 0.83-0.93 (break-even); k 65: 0.43-0.63 / 0.47-0.50; k 129: 0.29 / 0.26;
      k 257: 0.05 / 0.11 -- from 48 taps;
    * depthwise 2-d, 64x64x32, batch 8: 'taps' wins to k 7 (0.04 / 0.08 against fft 0.13 / 0.18);
      k 11: taps 0.06 / 0.10, fft 0.11 / 0.06; k 15: taps 0.67 / 0.47, fft 0.06 / 0.07 --
      from 121 taps;
    * dense 2-d, 32x32x64 -> 64, batch 32: k 3: 7.2 / 2.0; k 7: 1.45 / 0.73 (lax_vjp 1.17 / 1.01);
      k 11: 0.70 / 0.38 (lax_vjp 1.20 / 0.85) -- from 81 taps (k 9: the direct cost grows with
      the taps, the FFT's hardly at all).

    Measured at stride 1 without dilation; strided, dilated, grouped (but depthwise) and 3-d
    convolutions keep the direct formulations (config d, k 5 with rhs dilation 2, 32 -> 64: fft
    7.0 / 5.0).
    """
    g = geometry
    if any(v != 1 for v in g.stride + g.lhs_dilation + g.rhs_dilation):
        return False
    depthwise = groups > 1 and in_channels == groups
    if groups > 1 and not depthwise:
        return False
    threshold = FFT_MIN_TAPS.get((g.num_spatial_dims, depthwise))
    return threshold is not None and math.prod(g.kernel_size) >= threshold


def taps_too_many(geometry: ConvGeometry) -> bool:
    """Whether the unrolled ``'taps'`` formulation (one product per kernel tap, so a program that
    grows with the taps) costs more than it saves: more than :data:`TAPS_MAX` taps.

    Measured (``--crossover``; ratios to raw lax, forward / forward+backward; compile seconds,
    forward / forward+backward): depthwise 64x64x32, k 7 (49 taps): 0.04 / 0.08, compile
    1.5 / 3.8 s; k 11 (121): 0.06 / 0.10, 1.1 / 5.0 s; k 15 (225): 0.67 / 0.47, 5.8 / 21 s
    (fft: 0.06 / 0.07, 2.5 / 5.5 s).  1-d, 16 -> 16: compile 0.7-1.0 s at 9 taps, 2.1-2.5 s at
    33, 4.7-7.1 s at 65, 10-15 s at 129, 45 / 84 s at 257.
    """
    return math.prod(geometry.kernel_size) > TAPS_MAX
