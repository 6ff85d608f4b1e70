"""Kernel gradients on CPU at the top level of a program and inside a loop body.

XLA's own kernel gradient (``jax.vjp`` of ``lax.conv_general_dilated`` with respect to the kernel: a
convolution whose dimension numbers contract the batch) against brainconv's three ways of computing the
same thing (``lowering.kernel_grad._weight_grad_canonical``, the row windows of
``lowering.kernel_grad.weight_grad`` and the loop over taps of
``lowering.kernel_grad._weight_grad_loop``), each jitted alone and as the body of a 4-step ``lax.scan``
(the shape of every BPTT step). Reported: the median ms of 7 calls (top level) and of 3 calls divided by
4 (per scan step), and each result's largest difference from XLA's, relative to its largest magnitude.
Not a test: nothing here asserts a speed.

Usage::

    python benchmarks/bench_weight_grad.py            # every case
    python benchmarks/bench_weight_grad.py d1 a2      # some
"""

from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
from _common import median_of
from jax import lax

from brainconv import lowering as L
from brainconv.lowering import cpu, kernel_grad
from brainconv.shapes import ConvGeometry, conv_out_length

#: name -> (spatial, C_in, C_out, kernel, stride, dilation, pads, batch)
CASES = {
    'd1': ((1024,), 32, 64, 5, 1, 2, [(4, 4)], 32),          # bench_cpu config d
    'a2': ((32, 32), 64, 64, 3, 1, 1, [(1, 1)] * 2, 32),      # config a
    'b2': ((64, 64), 3, 32, 3, 2, 1, [(1, 1)] * 2, 32),       # config b
    'small2': ((16, 16), 16, 16, 3, 1, 1, [(1, 1)] * 2, 8),
}
STEPS = 4


def geometry(spatial, k, s, d, pads) -> ConvGeometry:
    nd = len(spatial)
    out = tuple(conv_out_length(n, k, s, lo, hi, d=d) for n, (lo, hi) in zip(spatial, pads))
    return ConvGeometry(tuple(spatial), out, (k,) * nd, (s,) * nd, tuple(pads), (1,) * nd, (d,) * nd)


def run_case(name: str) -> str:
    """One case's line: every way's time at the top level / per scan step, and its error."""
    spatial, cin, cout, k, s, d, pads, batch = CASES[name]
    g = geometry(spatial, k, s, d, pads)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch,) + spatial + (cin,)), jnp.float32)
    gy = jnp.asarray(rng.standard_normal((batch,) + g.out_spatial + (cout,)), jnp.float32)
    kernel = jnp.zeros((k,) * len(spatial) + (cin, cout))

    def xla(x, gy):
        _, pullback = jax.vjp(lambda v: L.direct(x, v, g, 1), kernel)
        return pullback(gy)[0]

    ways = {'xla': xla,
            'canonical': lambda x, gy: kernel_grad._weight_grad_canonical(x, gy, g, None),
            'rows': lambda x, gy: kernel_grad.weight_grad(x, gy, g, 1),
            'loop': lambda x, gy: kernel_grad._weight_grad_loop(x, gy, g, None)}
    ref = np.asarray(jax.jit(xla)(x, gy))
    zero = jnp.zeros(ref.shape)
    cells = []
    for way, fn in ways.items():
        err = np.abs(np.asarray(jax.jit(fn)(x, gy)) - ref).max() / np.abs(ref).max()

        def scanned(xs, gy, fn=fn):
            return lax.scan(lambda c, xi: (c + fn(xi, gy), None), zero, xs)[0]

        top = median_of(functools.partial(jax.jit(fn), x, gy), 7) * 1e3
        step = median_of(functools.partial(jax.jit(scanned), jnp.stack([x] * STEPS), gy), 3) * 1e3 / STEPS
        cells.append(f"{way} {top:.1f} / {step:.1f} (err {err:.0e})")
    return f"{name}: " + ' | '.join(cells)


def main(names) -> None:
    print(f"# kernel gradients at the top level / per step of a {STEPS}-step scan (ms); jax {jax.__version__}, "
          f"YNN_SINGLE_THREADED={cpu.YNN_SINGLE_THREADED}")
    for name in names:
        print(run_case(name), flush=True)


if __name__ == '__main__':
    main(sys.argv[1:] or list(CASES))
