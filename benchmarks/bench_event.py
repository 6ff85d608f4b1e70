"""The event-driven kernels (``brainconv.lowering.event``) against dense convolutions on CPU, across input densities.

Configs (float32, batch 32, SAME padding, stride 1; the input is 0/1 spikes
at the given density, the kernel and output gradient Gaussian):

  A  Conv2d 32x32x64 -> 64, k3
  B  depthwise Conv2d 32x32x128, k3, groups 128
  C  Conv1d L1024 64 -> 64, k5

at densities 0.5, 1, 2, 5, 10, 20 and 50% (``--densities``).  Implementations,
each timed for the forward ("fwd") and the kernel gradient ("dw"), jitted:

  cpp     ``_event.forward`` / ``_event.weight_grad`` on the C++ backend (XLA FFI)
  numba   the same on the Numba backend (brainevent's custom-call bridge)
  lax     ``lax.conv_general_dilated``; dw: its VJP with respect to the kernel
  bc      brainconv's dense formulation for the config (what ``'auto'`` picks:
          'lax_vjp' for A and C, 'taps' for B), called directly
  torch   ``F.convNd`` / ``torch.nn.grad.convNd_weight``, in a worker process
          that never imports JAX (bench_cpu's arrangement)

Timing is bench_cpu.py's (``_common.time_group``): interleaved rounds in rotated order, a
reference matmul (JAX and torch) before and after each round, a round more
than 30% slower than the quietest re-measured up to three times, medians over
the quiet rounds (over all rounds if fewer than 3 were quiet), and ratios as
medians of per-round ratios (dense time / event time: > 1 means the event
kernel is faster).  Every implementation's output is checked against lax
first.  Each config reports the first-call time (trace + compile + first run,
in this process, kernels' own caches warm) beside the run times.  After the
table, the cost model of ``brainconv.lowering.event`` is fitted to the event times
(each implementation's fastest round; least squares over every config and
density) and its crossovers are printed beside the measured ones.

Other sections (each alone with its flag):

  --overhead  per-call cost: a lax.scan of 200 steps of a tiny convolution
  --compile   first-call time in fresh processes, with empty and with warm
              caches (the C++ library / numba's cache), per backend
  --compose   an event convolution and a dense one in one jitted function,
              against each alone (do the kernels' threads and XLA's share?)

Usage::

    python benchmarks/bench_event.py                  # the table (a few minutes)
    python benchmarks/bench_event.py --quick --configs A
    python benchmarks/bench_event.py --overhead --compile --compose --no-table
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
from typing import Dict, List

import _common as common
import numpy as np
from _common import EVENT_BATCH as BATCH
from _common import EVENT_CONFIGS as CONFIGS

DENSITIES = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


def spike_data(key: str, density: float):
    """Spikes (N, *spatial, C_in) at ``density``, kernel (*k, C_in // groups, C_out) and output
    gradient (N, *spatial, C_out), seeded: the same arrays in this process and torch's worker."""
    _, spatial, cin, cout, k, groups = CONFIGS[key]
    rng = np.random.default_rng(int(density * 1e4) + ord(key))
    x = (rng.random((BATCH,) + spatial + (cin,)) < density).astype(np.float32)
    w = (rng.standard_normal((k,) * len(spatial) + (cin // groups, cout)) / math.sqrt(k ** len(spatial) * cin // groups)
         ).astype(np.float32)
    gy = rng.standard_normal((BATCH,) + spatial + (cout,)).astype(np.float32)
    return x, w, gy


# --------------------------------------------------------------------------- #
# torch, in a worker process that never imports JAX
# --------------------------------------------------------------------------- #

def _torch_impl(key: str, density: float):
    import torch
    F = torch.nn.functional
    _, spatial, _, _, k, groups = CONFIGS[key]
    nd = len(spatial)
    x, w, gy = spike_data(key, density)
    xt, gt, wt = common.to_torch(x), common.to_torch(gy), common.torch_kernel(w)  # wt: (C_out, C_in/g, *k)
    conv = getattr(F, f'conv{nd}d')
    weight = getattr(torch.nn.grad, f'conv{nd}d_weight')
    pad = (k - 1) // 2

    def fwd():
        with torch.no_grad():
            return conv(xt, wt, padding=pad, groups=groups)

    def fb():
        with torch.no_grad():
            return weight(xt, wt.shape, gt, padding=pad, groups=groups)

    def results():
        return common.from_torch(fwd()), common.kernel_from_torch(fb())
    return {'fwd': fwd, 'fb': fb, 'results': results}


if __name__ == '__main__' and '--torch-worker' in sys.argv:
    common.serve(lambda key: _torch_impl(*key))
    sys.exit(0)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

from brainconv import lowering  # noqa: E402
from brainconv.lowering.event import cost as event_cost  # noqa: E402
from brainconv.lowering.event import kernels as _event  # noqa: E402
from brainconv.shapes import conv_geometry  # noqa: E402


def geometry(key: str):
    _, spatial, _, _, k, _ = CONFIGS[key]
    nd = len(spatial)
    return conv_geometry(spatial, (k,) * nd, (1,) * nd, 'SAME', (1,) * nd, (1,) * nd)


class JaxImpl(common.Timed):
    """A jitted forward ('fwd') and kernel gradient ('fb') on fixed arrays; ``first``: their first calls' times."""

    def __init__(self, name, fwd, dw, x, w, gy):
        self.name = name
        fwd_j, dw_j = jax.jit(fwd), jax.jit(dw)
        x, w, gy = jnp.asarray(x), jnp.asarray(w), jnp.asarray(gy)
        self.fwd = lambda: jax.block_until_ready(fwd_j(x, w))
        self.fb = lambda: jax.block_until_ready(dw_j(x, gy))
        self.first = (common.one_call(fwd_j, x, w), common.one_call(dw_j, x, gy))

    def results(self):
        return np.asarray(self.fwd()), np.asarray(self.fb())


def build(key: str, density: float, backends: List[str]) -> Dict[str, object]:
    _, spatial, cin, cout, _, groups = CONFIGS[key]
    g = geometry(key)
    x, w, gy = spike_data(key, density)
    impls = {}
    for b in backends:
        def fwd(a, v, b=b):
            with _backend(b):
                return _event.forward(a, v, g, groups, binary=True)

        def dw(a, u, b=b):
            with _backend(b):
                return _event.weight_grad(a, u, g, groups, binary=True)
        impls[b] = JaxImpl(b, fwd, dw, x, w, gy)

    def lax_fwd(a, v):
        return lowering.direct(a, v, g, groups)

    def lax_dw(a, u):
        return jax.vjp(lambda v: lowering.direct(a, v, g, groups), jnp.zeros(w.shape, w.dtype))[1](u)[0]
    impls['lax'] = JaxImpl('lax', lax_fwd, lax_dw, x, w, gy)
    name = lowering.choose(g, groups, cin, cout, 'cpu')
    form = lowering.FORMULATIONS[name]
    impls['bc'] = JaxImpl('bc', lambda a, v: form.forward(a, v, g, groups, None),
                          lambda a, u: form.weight_grad(a, u, g, groups, None), x, w, gy)
    impls['bc'].lowering = name
    torch = common.remote_torch((key, density))
    if torch is not None:
        impls['torch'] = torch
    return impls


class _backend:
    """Context: the event kernels traced inside run on backend ``name``."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.previous, _event.BACKEND = _event.BACKEND, self.name

    def __exit__(self, *exc):
        _event.BACKEND = self.previous


def check(impls) -> Dict[str, float]:
    ref_y, ref_dw = impls['lax'].results()
    errors = {}
    for name, impl in impls.items():
        y, dw = impl.results()
        errors[name] = max(common.rel_err(y, ref_y), common.rel_err(dw, ref_dw))
        if not errors[name] <= 2e-4:
            print(f"  !! {name} differs from lax: max relative error {errors[name]:.1e}", flush=True)
    return errors


# --------------------------------------------------------------------------- #
# The table
# --------------------------------------------------------------------------- #

def table(keys, densities, backends, rounds, budget, target_s):
    monitor = common.LoadMonitor()
    print(f"reference matmul (768^3 float32, jax): {monitor.gflops():.0f} GFLOP/s; up to {rounds} rounds, "
          f"{budget:.0f} s of timing per density", flush=True)
    samples = []   # (key, density, backend, mode, seconds, dense seconds by impl)
    for key in keys:
        title, spatial, cin, cout, k, groups = CONFIGS[key]
        print(f"\n## {key}: {title}   (ms: medians over quiet rounds; x: dense time / event time, median of "
              f"per-round ratios, > 1 = event faster)")
        first = None
        rows = []
        for density in densities:
            impls = build(key, density, backends)
            if first is None:
                first = {n: i.first for n, i in impls.items() if hasattr(i, 'first')}
            errors = check(impls)
            res = common.time_group(impls, monitor, rounds, target_s, budget_s=budget)
            nnz = int(spike_data(key, density)[0].sum())
            rows.append((density, nnz, impls, res, errors))
            for b in backends:
                for mode in ('fwd', 'fb'):
                    best = {n: min(res.times[(n, mode)]) for n in impls}
                    dense = {n: best[n] for n in impls if n not in backends}
                    samples.append((key, density, nnz, b, mode, best[b], dense))
        dense_names = [n for n in rows[0][2] if n not in backends]
        bc_form = rows[0][2]['bc'].lowering
        for mode, label in (('fwd', 'forward'), ('fb', 'kernel gradient')):
            print(f"\n### {key} {label} (bc = brainconv '{bc_form}')")
            head = ['density', 'nnz'] + [f'{b} ms' for b in backends] + [f'{n} ms' for n in dense_names]
            head += [f'{b} x{n}' for b in backends for n in dense_names] + ['quiet/rounds', 'max err']
            print('| ' + ' | '.join(head) + ' |')
            print('|' + '---|' * len(head))
            for density, nnz, _impls, res, errors in rows:
                ms = [common.med(res.kept(res.times[(n, mode)])) * 1e3 for n in list(backends) + dense_names]
                ratios = [common.ratio(res, n, b, mode) for b in backends for n in dense_names]
                cells = [f'{density * 100:g}%', str(nnz)] + [f'{v:.2f}' for v in ms] + [f'{v:.1f}' for v in ratios]
                cells += [f'{res.quiet}/{res.rounds}', f'{max(errors.values()):.0e}']
                print('| ' + ' | '.join(cells) + ' |', flush=True)
        print("\nfirst call (trace + compile + first run, s; fwd / dw): "
              + ', '.join(f"{n} {f:.2f} / {d:.2f}" for n, (f, d) in first.items()))
    return samples


def fit(samples, backends) -> None:
    """Least-squares fit of the event cost model to the measured times, per backend and map, and
    of the dense cost per multiply-accumulate (brainconv's formulation, 'bc'); prints the
    constants, and the model's crossovers beside the measured ones (the density where the event
    time meets bc's, interpolated in log density).  Times are each implementation's fastest
    round: on a shared machine the least disturbed estimate of what the code costs."""
    print("\n## Cost model fit: event seconds = sum of coefficient * term, terms " + ', '.join(event_cost.COST_TERMS)
          + " (brainconv.lowering.event.cost.cost_features); dense seconds = c * MACs")
    kinds = {'fwd': 'forward', 'fb': 'weight_grad'}
    dense = {}
    for mode, kind in kinds.items():
        for shape in ('dense', 'depthwise'):
            per_mac = [s[6]['bc'] / _macs(s[0]) for s in samples if s[4] == mode and _shape(s[0]) == shape]
            if per_mac:
                dense[(kind, shape)] = common.med(per_mac)
    print(f"DENSE_COST = {{{', '.join(f'{k!r}: {v:.3g}' for k, v in dense.items())}}}")
    coefs = {}
    for b in backends:
        for mode, kind in kinds.items():
            rows = [s for s in samples if s[3] == b and s[4] == mode]
            feats = np.array([event_cost.cost_features(geometry(k), CONFIGS[k][5], BATCH, CONFIGS[k][2], CONFIGS[k][3],
                                                   nnz, kind) for k, _, nnz, *_ in rows])
            t = np.array([s[5] for s in rows])
            coef = _nnls(feats / t[:, None], np.ones_like(t))   # relative errors: every point weighs the same
            coefs[(b, kind)] = coef
            pred = feats @ coef
            print(f"EVENT_COST[{(b, kind)!r}] = ({', '.join(f'{c:.3g}' for c in coef)})   "
                  f"# max |predicted / measured - 1| = {np.max(np.abs(pred / t - 1)):.2f}")
    print("\n| backend | map | config | measured crossover (density, fastest rounds, vs bc) | model crossover |")
    print("|---|---|---|---|---|")
    for b in backends:
        for mode, kind in kinds.items():
            for key in sorted({s[0] for s in samples}):
                rows = sorted((s for s in samples if s[3] == b and s[4] == mode and s[0] == key), key=lambda s: s[1])
                measured = _crossing([s[1] for s in rows], [s[6]['bc'] / s[5] for s in rows])
                _, spatial, cin, cout, _, groups = CONFIGS[key]
                g = geometry(key)
                saved = dict(event_cost.EVENT_COST), dict(event_cost.DENSE_COST)
                event_cost.EVENT_COST.update({k: tuple(v) for k, v in coefs.items()})
                event_cost.DENSE_COST.update(dense)
                try:
                    nnz = event_cost.crossover(g, groups, BATCH, cin, cout, kind, b)
                finally:
                    event_cost.EVENT_COST.clear(), event_cost.EVENT_COST.update(saved[0])
                    event_cost.DENSE_COST.clear(), event_cost.DENSE_COST.update(saved[1])
                total = BATCH * math.prod(spatial) * cin
                print(f"| {b} | {kind} | {key} | {_pct(measured)} | {_pct(nnz / total)} |")


def _macs(key):
    _, spatial, cin, cout, k, groups = CONFIGS[key]
    return BATCH * math.prod(spatial) * k ** len(spatial) * (cin // groups) * cout


def _shape(key):
    _, _, cin, _, _, groups = CONFIGS[key]
    return 'depthwise' if groups > 1 and groups == cin else 'dense'


def _crossing(densities, speedups):
    """The density where the speedup falls through 1 (log-linear interpolation); 0 if the event
    kernel is never faster, inf if it is faster at every density measured."""
    if not speedups or speedups[0] < 1:
        return 0.0
    for (d0, r0), (d1, r1) in zip(zip(densities, speedups), zip(densities[1:], speedups[1:])):
        if r0 >= 1 > r1:
            f = math.log(r0) / (math.log(r0) - math.log(r1))
            return math.exp(math.log(d0) + f * (math.log(d1) - math.log(d0)))
    return math.inf


def _pct(v):
    if v <= 0:
        return 'never'
    return f"> {DENSITIES[-1] * 100:g}%" if math.isinf(v) else f"{v * 100:.1f}%"


def _nnls(a, y):
    """Non-negative least squares by active-set clipping (small problems)."""
    active = np.ones(a.shape[1], bool)
    while True:
        coef = np.zeros(a.shape[1])
        coef[active] = np.linalg.lstsq(a[:, active], y, rcond=None)[0]
        if (coef >= 0).all():
            return coef
        active &= coef > 0


# --------------------------------------------------------------------------- #
# Per-call overhead, first-call time, composition with XLA's threads
# --------------------------------------------------------------------------- #

def overhead(backends, steps: int = 200, rounds: int = 15) -> None:
    """Per step of a lax.scan whose body is one tiny convolution (N=1, 8x8x4 -> 4, k3, spikes at
    10%): what a time-stepped simulation pays per call beyond the arithmetic."""
    print(f"\n## Per-call overhead: lax.scan of {steps} steps, each one convolution of 1x8x8x4 -> 4, k3 "
          f"(µs per step; median and min of {rounds} rounds)")
    g = conv_geometry((8, 8), (3, 3), (1, 1), 'SAME', (1, 1), (1, 1))
    rng = np.random.default_rng(0)
    xs = jnp.asarray((rng.random((steps, 1, 8, 8, 4)) < 0.1).astype(np.float32))
    w = jnp.asarray(rng.standard_normal((3, 3, 4, 4)).astype(np.float32))

    def scan_of(conv):
        def run(xs, w):
            def body(acc, x):
                return acc + conv(x, w), None
            return lax.scan(body, jnp.zeros((1, 8, 8, 4)), xs)[0]
        return jax.jit(run)

    fns = {}
    for b in backends:
        with _backend(b):
            fns[b] = scan_of(lambda x, v: _event.forward(x, v, g, 1))
            jax.block_until_ready(fns[b](xs, w))
    fns['lax'] = scan_of(lambda x, v: lowering.direct(x, v, g, 1))
    jax.block_until_ready(fns['lax'](xs, w))
    for n, v in common.interleaved({n: functools.partial(f, xs, w) for n, f in fns.items()}, rounds).items():
        print(f"- {n}: {common.med(v) / steps * 1e6:.1f} µs (min {min(v) / steps * 1e6:.1f})")


_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import jax, jax.numpy as jnp, numpy as np
import brainconv
from brainconv import lowering
from brainconv.lowering.event import kernels as _event
from brainconv.shapes import conv_geometry
t_import = time.perf_counter() - t0
_event.BACKEND = sys.argv[1]
g = conv_geometry((32, 32), (3, 3), (1, 1), 'SAME', (1, 1), (1, 1))
rng = np.random.default_rng(0)
x = jnp.asarray((rng.random((32, 32, 32, 64)) < 0.02).astype(np.float32))
w = jnp.asarray(rng.standard_normal((3, 3, 64, 64)).astype(np.float32))
t0 = time.perf_counter(); name = _event.backend(); t_backend = time.perf_counter() - t0
out = {}
for label, fn, b in (('forward', lambda: jax.jit(lambda a, v: _event.forward(a, v, g, 1))(x, w), x),
                     ('weight_grad', lambda: jax.jit(lambda a, u: _event.weight_grad(a, u, g, 1))(x, x), x),
                     ('lax forward', lambda: jax.jit(lambda a, v: lowering.direct(a, v, g, 1))(x, w), x)):
    t0 = time.perf_counter(); jax.block_until_ready(fn()); out[label] = time.perf_counter() - t0
print(json.dumps(dict(backend=name, import_s=t_import, build_s=t_backend, **out)))
"""


def compile_times(backends) -> None:
    """First-call times in fresh processes: with empty caches (the C++ library compiled, numba's
    kernels jitted) and again with the caches they left."""
    print("\n## First call in a fresh process (s): import brainconv; backend() (C++: compile or load the "
          "library; numba: import, probe); first jitted forward, kernel gradient (config A shapes; "
          "numba jits each on its first call) and, for scale, lax's forward")
    print("| backend | caches | import | backend() | forward | kernel gradient | lax forward |")
    print("|---|---|---|---|---|---|---|")
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
    for b in backends:
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, BRAINCONV_CACHE_DIR=os.path.join(tmp, 'bc'), NUMBA_CACHE_DIR=os.path.join(tmp, 'nb'),
                       PYTHONPATH=root + os.pathsep + os.environ.get('PYTHONPATH', ''))
            for state in ('empty', 'warm'):
                done = subprocess.run([sys.executable, '-c', _CHILD, b], env=env, capture_output=True, text=True)
                if done.returncode:
                    print(f"| {b} | {state} | failed: {done.stderr.strip().splitlines()[-1]} |||||")
                    continue
                r = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"| {r['backend']} | {state} | {r['import_s']:.2f} | {r['build_s']:.2f} | {r['forward']:.2f} | "
                      f"{r['weight_grad']:.2f} | {r['lax forward']:.2f} |", flush=True)


def compose(backends, rounds: int = 15) -> None:
    """An event forward (config A, 2%) and lax's dense forward of another input in one jitted
    function, against each alone: with 2 cores, 'both' near the sum means the kernels' threads and
    XLA's pool take turns; far above the sum means they fight."""
    print(f"\n## Composition with XLA's threads: config A event forward (2%) and a dense lax forward in one jit "
          f"(ms, median of {rounds} rounds)")
    g = geometry('A')
    x, w, _ = spike_data('A', 0.02)
    x2 = jnp.asarray(np.random.default_rng(5).standard_normal(x.shape).astype(np.float32))
    x, w = jnp.asarray(x), jnp.asarray(w)
    dense = jax.jit(lambda a, v: lowering.direct(a, v, g, 1))
    for b in backends:
        with _backend(b):
            event = jax.jit(lambda a, v: _event.forward(a, v, g, 1))
            both = jax.jit(lambda a, c, v: (_event.forward(a, v, g, 1), lowering.direct(c, v, g, 1)))
            fns = {'event': lambda e=event: e(x, w), 'dense': lambda: dense(x2, w),
                   'both': lambda f=both: f(x, x2, w)}
            for f in fns.values():
                jax.block_until_ready(f())
        ms = {n: common.med(v) * 1e3 for n, v in common.interleaved(fns, rounds).items()}
        print(f"- {b}: event {ms['event']:.2f}, dense {ms['dense']:.2f}, sum {ms['event'] + ms['dense']:.2f}, "
              f"both in one jit {ms['both']:.2f}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--configs', default='A,B,C')
    parser.add_argument('--densities', default=','.join(f'{d:g}' for d in DENSITIES),
                        help='comma-separated fractions')
    parser.add_argument('--backends', default='cpp,numba')
    parser.add_argument('--quick', action='store_true', help='3 rounds, shorter repetitions')
    parser.add_argument('--rounds', type=int, default=None)
    parser.add_argument('--no-table', action='store_true')
    parser.add_argument('--overhead', action='store_true')
    parser.add_argument('--compile', action='store_true')
    parser.add_argument('--compose', action='store_true')
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.configs.split(',') if k.strip()]
    densities = [float(d) for d in args.densities.split(',')]
    backends = [b for b in args.backends.split(',') if _event._resolve(b) is not None]
    rounds = args.rounds or (3 if args.quick else 7)
    common.TorchProxy.start(__file__)
    load = os.getloadavg()
    print("# brainconv event kernels on CPU")
    print(f"versions: {common.versions()}; backends {backends}")
    print(f"machine: {common.machine()}; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at start")
    if not args.no_table:
        samples = table(keys, densities, backends, rounds, 4.0 if args.quick else 12.0, 0.01 if args.quick else 0.03)
        if len({s[0] for s in samples}) * len(densities) >= 6:
            fit(samples, backends)
    if args.overhead:
        overhead(backends)
    if args.compose:
        compose(backends)
    if args.compile:
        compile_times(backends)
    common.TorchProxy.stop()
    print(f"\nload average at the end: {' / '.join(f'{v:.1f}' for v in os.getloadavg())}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
