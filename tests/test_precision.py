"""Low precision: with bfloat16 or float16 inputs and weights, every formulation accumulates in
float32, so its error against a float32 run is no worse than ``'lax'``'s -- forward, input
gradient and weight gradient -- and its output dtypes are ``'lax'``'s.

The float32 reference is the NumPy oracle (float64 tap sums) on the same rounded inputs, so the
error measured is the formulation's own, not the rounding of its inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _reference import conv as np_conv

import brainconv
from brainconv import functional

# (name, input shape, kernel shape, conv kwargs): kernels wide enough that accumulation matters
CASES = [
    ('dense-strided', (2, 9, 9, 16), (3, 3, 16, 16), dict(stride=2)),
    ('grouped', (2, 8, 8, 16), (3, 3, 4, 16), dict(groups=4)),
    ('depthwise', (2, 10, 10, 16), (5, 5, 1, 16), dict(groups=16)),
    ('3d', (1, 5, 5, 5, 8), (3, 3, 3, 8, 8), dict()),
]
FORMULATIONS = [name for name in brainconv.LOWERINGS if name != 'lax']


def _errors(dtype, x, w, kw, lowering):
    """Relative errors (forward, dx, dw) of ``lowering`` at ``dtype`` against float64 tap sums."""
    xl, wl = jnp.asarray(x, dtype), jnp.asarray(w, dtype)
    xr, wr = np.asarray(xl, np.float64), np.asarray(wl, np.float64)  # the rounded inputs, exactly
    nd = x.ndim - 2
    stride = kw.get('stride', 1)
    stride = (stride,) * nd
    # SAME pads, from the definition: ceil(n / s) outputs, the odd extra pad at the end
    pads = []
    for n, k, s in zip(x.shape[1:-1], w.shape[:nd], stride):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    groups = kw.get('groups', 1)
    y_ref = np_conv(xr, wr, stride, pads, (1,) * nd, (1,) * nd, groups)
    gy = np.cos(np.arange(y_ref.size)).reshape(y_ref.shape)
    gy_low = jnp.asarray(gy, dtype)
    gy = np.asarray(gy_low, np.float64)

    def f(a, b):
        return functional.conv(a, b, lowering=lowering, **kw)

    @jax.jit
    def forward_and_pullback(a, b, c):
        y, pullback = jax.vjp(f, a, b)
        return (y,) + pullback(c)

    y, dx, dw = forward_and_pullback(xl, wl, gy_low)
    dx_ref, dw_ref = _oracle_grads(xr, wr, gy, stride, pads, groups)

    def rel(a, b):
        return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))

    return (y.dtype, dx.dtype, dw.dtype), (rel(y, y_ref), rel(dx, dx_ref), rel(dw, dw_ref))


def _oracle_grads(x, w, gy, stride, pads, groups):
    """Gradients of ``sum(gy * conv(x, w))`` in float64, by tap sums (written out, no autodiff)."""
    nd = x.ndim - 2
    xp = np.pad(x, [(0, 0)] + list(pads) + [(0, 0)])
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    cin, cout = x.shape[-1], w.shape[-1]
    cin_g, cout_g = cin // groups, cout // groups
    out = gy.shape[1:-1]
    for tap in np.ndindex(*w.shape[:nd]):
        index = (slice(None),) + tuple(slice(t, t + (o - 1) * s + 1, s) for t, o, s in zip(tap, out, stride))
        patch = xp[index]
        for g in range(groups):
            ci, co = slice(g * cin_g, (g + 1) * cin_g), slice(g * cout_g, (g + 1) * cout_g)
            dw[tap][:, co] += patch[..., ci].reshape(-1, cin_g).T @ gy[..., co].reshape(-1, cout_g)
            dxp[index + (ci,)] += gy[..., co] @ w[tap][:, co].T
    crop = (slice(None),) + tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, x.shape[1:-1]))
    return dxp[crop], dw


@pytest.mark.parametrize('case,dtype', [(c, jnp.bfloat16) for c in CASES] + [(CASES[0], jnp.float16)],
                         ids=[f'{c[0]}-bf16' for c in CASES] + [f'{CASES[0][0]}-f16'])
def test_low_precision_is_no_worse_than_lax(case, dtype):
    _, xshape, wshape, kw = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xshape).astype(np.float32)
    w = (rng.standard_normal(wshape) / np.sqrt(np.prod(wshape[:-1]))).astype(np.float32)
    dtypes, lax_err = _errors(dtype, x, w, kw, 'lax')
    assert dtypes == (dtype, dtype, dtype)
    # float32 accumulation: the error is the final rounding to 16 bits (2^-8 for bf16, 2^-11 for f16)
    bound = 8e-3 if dtype == jnp.bfloat16 else 1e-3
    assert max(lax_err) < bound, lax_err
    for name in FORMULATIONS:
        got_dtypes, err = _errors(dtype, x, w, kw, name)
        assert got_dtypes == dtypes, name
        for what, e, ref in zip(('forward', 'input gradient', 'weight gradient'), err, lax_err):
            assert e <= 1.25 * ref + 1e-4, f"{name} {what}: error {e:.2e}, lax {ref:.2e}"
