"""The FFT formulation (:mod:`brainconv.lowering.fft`) against an independent NumPy oracle.

The oracle is written here in float64 as explicit sums over kernel taps: the
input is lhs-dilated (zeros inserted), padded and -- for negative pads --
cropped, then every tap's strided slice is multiplied into that tap's weights
per group (forward), or transposed against the output gradient (kernel
gradient: ``dw[t] = sum_o xp[o*s + t*d]^T gy[o]``, the gradient of
``sum(y * gy)``).  Random core geometries cover 1-3 spatial dims, negative
and positive pads, stride, both dilations, groups, depthwise with a channel
multiplier, and low precision inputs.
"""

from __future__ import annotations

import itertools

import _reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from brainconv.lowering import fft as _fft
from brainconv.shapes import ConvGeometry, conv_out_length

# --------------------------------------------------------------------------- #
# The oracle
# --------------------------------------------------------------------------- #

def _padded(x, g):
    """lhs-dilate, then pad by the positive part of the pads and crop by the negative part."""
    x = ref.lhs_dilate(np.asarray(x, np.float64), g.lhs_dilation)
    x = np.pad(x, [(0, 0)] + [(max(lo, 0), max(hi, 0)) for lo, hi in g.pads] + [(0, 0)])
    crop = tuple(slice(max(-lo, 0), x.shape[1 + a] - max(-hi, 0)) for a, (lo, hi) in enumerate(g.pads))
    return x[(slice(None),) + crop]


def _tap_slices(xp, g):
    for tap in itertools.product(*(range(k) for k in g.kernel_size)):
        index = tuple(slice(t * d, t * d + (o - 1) * s + 1, s)
                      for t, d, s, o in zip(tap, g.rhs_dilation, g.stride, g.out_spatial))
        yield tap, xp[(slice(None),) + index]


def oracle_forward(x, w, g, groups):
    """y[b, o, j] = sum_t sum_i xp[b, o*s + t*d, i] w[t, i, j] within each group."""
    w = np.asarray(w, np.float64)
    ig, cout = w.shape[-2:]
    og = cout // groups
    y = np.zeros((x.shape[0],) + tuple(g.out_spatial) + (cout,))
    for tap, xs in _tap_slices(_padded(x, g), g):
        for q in range(groups):
            y[..., q * og:(q + 1) * og] += xs[..., q * ig:(q + 1) * ig] @ w[tap][:, q * og:(q + 1) * og]
    return y


def oracle_weight_grad(x, gy, g, groups):
    """dw[t, i, j] = sum_{b, o} xp[b, o*s + t*d, i] gy[b, o, j] within each group."""
    gy = np.asarray(gy, np.float64)
    cin, cout = x.shape[-1], gy.shape[-1]
    ig, og = cin // groups, cout // groups
    dw = np.zeros(tuple(g.kernel_size) + (ig, cout))
    for tap, xs in _tap_slices(_padded(x, g), g):
        for q in range(groups):
            a = xs[..., q * ig:(q + 1) * ig].reshape(-1, ig)
            dw[tap][:, q * og:(q + 1) * og] = a.T @ gy[..., q * og:(q + 1) * og].reshape(-1, og)
    return dw


# --------------------------------------------------------------------------- #
# Random core geometries
# --------------------------------------------------------------------------- #

def _random_case(seed):
    """A random non-empty core geometry with groups and channels (depthwise one time in three)."""
    rng = np.random.default_rng(seed)
    nd = 1 + seed % 3
    while True:
        n, k, s = (rng.integers(lo, hi, nd).tolist() for lo, hi in ((2, 9), (1, 5), (1, 4)))
        ld, d = (rng.integers(1, 4, nd).tolist() for _ in range(2))
        pads = tuple((int(rng.integers(-2, 4)), int(rng.integers(-2, 4))) for _ in range(nd))
        out = tuple(conv_out_length(*args) for args in zip(n, k, s, *zip(*pads), ld, d))
        if min(out) >= 1 and all((a - 1) * ld_ + 1 + lo + hi >= 1 for a, ld_, (lo, hi) in zip(n, ld, pads)):
            break
    g = ConvGeometry(tuple(n), out, tuple(k), tuple(s), pads, tuple(ld), tuple(d))
    groups = int(rng.choice([1, 2, 3]))
    depthwise = seed % 3 == 2 and groups > 1
    cin = groups * (1 if depthwise else int(rng.integers(1, 3)))
    cout = groups * int(rng.integers(1, 3))
    return g, groups, cin, cout, rng


def _scale(a, b, axes):
    """The size of a sum of products of |a| and |b|: the yardstick for float32 rounding."""
    return float(np.sqrt(np.sum(np.abs(a) ** 2) * np.sum(np.abs(b) ** 2) / max(1, axes))) + 1.0


@pytest.mark.parametrize('seed', range(16))
def test_fft_matches_oracle(seed, monkeypatch):
    """Odd seeds transform the kernel by FFT too (else short kernels go by DFT matmuls)."""
    if seed % 2:
        monkeypatch.setattr(_fft, 'DFT_MAX_TAPS', 0)
    g, groups, cin, cout, rng = _random_case(seed)
    x = rng.standard_normal((2,) + g.in_spatial + (cin,)).astype(np.float32)
    w = rng.standard_normal(g.kernel_size + (cin // groups, cout)).astype(np.float32)
    gy = rng.standard_normal((2,) + g.out_spatial + (cout,)).astype(np.float32)
    y, dw = jax.jit(lambda a, b, c: (_fft.forward(a, b, g, groups), _fft.weight_grad(a, c, g, groups)))(x, w, gy)
    y_ref, dw_ref = oracle_forward(x, w, g, groups), oracle_weight_grad(x, gy, g, groups)
    assert y.shape == y_ref.shape and y.dtype == jnp.float32
    assert dw.shape == dw_ref.shape and dw.dtype == jnp.float32
    # float32 rounding of an FFT: relative to the root-sum-square of the terms, a few eps.
    tol = 1e-5
    np.testing.assert_allclose(np.asarray(y), y_ref, atol=tol * (1 + np.abs(y_ref).max()), rtol=0)
    np.testing.assert_allclose(np.asarray(dw), dw_ref, atol=tol * (1 + np.abs(dw_ref).max()), rtol=0)


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
def test_fft_low_precision_computes_in_float32(dtype):
    """bf16/f16 inputs: the result in the input dtype, as accurate as float32 rounded to it."""
    g = ConvGeometry((16,), (5,), (5,), (2,), ((1, 1),), (1,), (2,))
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 16, 4)), dtype)
    w = jnp.asarray(rng.standard_normal((5, 2, 4)), dtype)
    gy = jnp.asarray(rng.standard_normal((2, 5, 4)), dtype)
    y, dw = jax.jit(lambda a, b, c: (_fft.forward(a, b, g, 2), _fft.weight_grad(a, c, g, 2)))(x, w, gy)
    assert y.dtype == dtype and dw.dtype == dtype
    eps = float(jnp.finfo(dtype).eps)
    xs, ws, gs = (np.asarray(a.astype(jnp.float32)) for a in (x, w, gy))
    y_ref, dw_ref = oracle_forward(xs, ws, g, 2), oracle_weight_grad(xs, gs, g, 2)
    np.testing.assert_allclose(np.asarray(y.astype(jnp.float32)), y_ref, atol=2 * eps * np.abs(y_ref).max(), rtol=0)
    np.testing.assert_allclose(np.asarray(dw.astype(jnp.float32)), dw_ref, atol=2 * eps * np.abs(dw_ref).max(),
                               rtol=0)


def test_fft_long_kernel_and_jit():
    """A long 1-d kernel (the case the formulation is for), jitted, against the oracle."""
    g = ConvGeometry((200,), (200,), (65,), (1,), ((32, 32),), (1,), (1,))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 200, 3)).astype(np.float32)
    w = rng.standard_normal((65, 3, 5)).astype(np.float32)
    gy = rng.standard_normal((2, 200, 5)).astype(np.float32)
    y = jax.jit(lambda a, b: _fft.forward(a, b, g, 1))(x, w)
    dw = jax.jit(lambda a, b: _fft.weight_grad(a, b, g, 1))(x, gy)
    y_ref, dw_ref = oracle_forward(x, w, g, 1), oracle_weight_grad(x, gy, g, 1)
    np.testing.assert_allclose(np.asarray(y), y_ref, atol=1e-5 * np.abs(y_ref).max(), rtol=0)
    np.testing.assert_allclose(np.asarray(dw), dw_ref, atol=1e-5 * np.abs(dw_ref).max(), rtol=0)


@pytest.mark.parametrize('n', [1, 2, 7, 8, 97, 1000, 4352])
def test_fast_size(n):
    """The smallest 2^a * r >= n with r in the allowed odd parts (a >= 1 past 2), by enumeration."""
    allowed = [v for v in range(1, 4 * n + 3) if v <= 2 or _form(v)]
    assert _fft.fast_size(n) == min(v for v in allowed if v >= n)


def _form(v):
    a = 0
    while v % 2 == 0:
        v //= 2
        a += 1
    return a >= 1 and v in _fft._ODD_FACTORS


def test_auto_rules_only_claim_what_was_measured():
    """fft_wins: stride-1 undilated long kernels of the measured kinds only; taps_too_many by tap count."""
    from brainconv.shapes import conv_geometry

    def geometry(spatial, k, stride=1, dilation=1):
        nd = len(spatial)
        return conv_geometry(spatial, (k,) * nd, (stride,) * nd, 'SAME', (1,) * nd, (dilation,) * nd)

    assert _fft.fft_wins(geometry((4096,), 257), 1, 16, 16)            # config i
    assert _fft.fft_wins(geometry((64, 64), 31), 32, 32, 32)           # config j
    assert not _fft.fft_wins(geometry((64, 64), 3), 32, 32, 32)        # short depthwise: 'taps'
    assert not _fft.fft_wins(geometry((4096,), 257, stride=2), 1, 16, 16)
    assert not _fft.fft_wins(geometry((4096,), 65, dilation=2), 1, 16, 16)
    assert not _fft.fft_wins(geometry((64, 64), 31), 4, 32, 32)        # grouped, not depthwise
    assert not _fft.fft_wins(geometry((16, 16, 16), 15), 1, 8, 8)      # 3-d: not measured
    assert _fft.taps_too_many(geometry((64, 64), 15)) and not _fft.taps_too_many(geometry((64, 64), 11))
