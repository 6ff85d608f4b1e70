"""Where the event kernel stops paying, measured on whole layers, and the cost model fitted to it.

For every layer kind a spiking network uses (``KINDS``: dense, thin-input and strided 2-d
convolutions, grouped and depthwise ones, 1-d, 3-d, a transposed convolution, a separable one), on
spikes at densities 1-50%, three programs of the same layer are timed in interleaved rounds: the
event formulation with its branch forced to the event kernel, forced to the dense formulation, and
left to its run-time switch (what users get). Each for the forward pass, the kernel gradient (``d
vdot(layer(x), g) / d weights``) and a training step's value and gradients with respect to the
weights and the input (its switch / dense only: the input gradient runs densely either way). Printed
per kind: event / dense at each density (< 1: the event kernel is faster), the measured crossover
(the density where that ratio reaches 1, interpolated), the crossover the cost model predicts for
the layer (``brainconv.lowering.event.cost.crossover_density``), and switch / dense (what the switch
costs or saves: > 1.05 at 30% or 50% is a miss).

With ``--fit`` the cost model's coefficients are refitted on these layer times (non-negative least
squares on each run's per-density medians: the event map's terms of
``cost.cost_features`` against event times, seconds per multiply-accumulate of each dense kind
against dense times) and printed as Python to paste into ``brainconv/lowering/event/cost.py``.  Not a
test: nothing here asserts a speed.

Usage::

    python benchmarks/bench_event_crossover.py                      # every kind, 5 rounds
    python benchmarks/bench_event_crossover.py --kinds conv2d,depthwise --densities 0.01,0.3 --rounds 3
    python benchmarks/bench_event_crossover.py --fit
"""

from __future__ import annotations

import argparse
import statistics
import sys

import _common as common
import jax
import jax.numpy as jnp
import numpy as np

import brainconv
from brainconv.lowering import event_branch
from brainconv.lowering.event import cost
from brainconv.shapes import transpose_as_conv

#: kind -> (layer constructor, batch)
KINDS = {
    'conv2d': (lambda: brainconv.Conv2d((32, 32, 64), 64, 3), 32),
    'conv2d-thin': (lambda: brainconv.Conv2d((34, 34, 2), 12, 5, padding='VALID'), 16),
    'conv2d-snn': (lambda: brainconv.Conv2d((15, 15, 12), 32, 5, padding='VALID'), 16),
    'strided': (lambda: brainconv.Conv2d((32, 32, 32), 64, 3, stride=2), 32),
    'grouped': (lambda: brainconv.Conv2d((32, 32, 64), 64, 3, groups=4), 32),
    'depthwise': (lambda: brainconv.Conv2d((32, 32, 128), 128, 3, groups=128), 32),
    'conv1d': (lambda: brainconv.Conv1d((1024, 64), 64, 5), 32),
    'conv3d': (lambda: brainconv.Conv3d((16, 16, 16, 8), 16, 3), 8),
    'transpose2d': (lambda: brainconv.ConvTranspose2d((16, 16, 64), 32, 3, stride=2), 32),
    'separable': (lambda: brainconv.SeparableConv2d((32, 32, 64), 64, 3), 32),
}
DENSITIES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
BRANCHES = ('event', 'dense', None)   # None: the switch decides


def core(layer):
    """``(geometry, groups, C_in, C_out)`` of the convolution the layer's event path runs."""
    g, groups, cin, cout = layer._resolve_args()
    return (transpose_as_conv(g) if g.transposed else g), groups, cin, cout


def programs(layer, x, g_out):
    """Compiled forward and kernel-gradient programs, per branch."""
    params = layer.weight.value
    out = {}
    for branch in BRANCHES:
        with event_branch(branch):
            out['fwd', branch] = jax.jit(layer.apply).lower(params, x).compile()
            grad = jax.grad(lambda p, a: jnp.vdot(layer.apply(p, a), g_out))
            out['dw', branch] = jax.jit(grad).lower(params, x.astype(jnp.float32)).compile()
            both = jax.value_and_grad(lambda p, a: jnp.vdot(layer.apply(p, a), g_out), argnums=(0, 1))
            out['fb', branch] = jax.jit(both).lower(params, x.astype(jnp.float32)).compile()
    return out


def time_kind(kind, densities, rounds, reps):
    """Per density: {(map, branch): median seconds}."""
    make, batch = KINDS[kind]
    layer = make()
    rng = np.random.default_rng(0)
    g_out = jnp.asarray(rng.standard_normal((batch,) + layer.out_size).astype(np.float32))
    params = layer.weight.value
    progs = programs(layer, jnp.zeros((batch,) + layer.in_size, bool), g_out)   # the shapes do not change
    # (forward on boolean spikes; gradients of float 0/1 spikes, as a spiking layer's input is
    # differentiated: the input gradient runs densely)
    results = {}
    for density in densities:
        spikes = jnp.asarray(rng.random((batch,) + layer.in_size) < density)
        inputs = {'fwd': spikes, 'dw': spikes.astype(jnp.float32), 'fb': spikes.astype(jnp.float32)}
        times = {k: [] for k in progs}
        for r in range(rounds):
            for k in common.rotated(list(progs), r):
                times[k].append(common.best_of(
                    lambda k=k, a=inputs: jax.block_until_ready(progs[k](params, a[k[0]])), reps))
        results[density] = {k: statistics.median(v) for k, v in times.items()}
    return layer, batch, results


def crossing(densities, ratios) -> float | None:
    """The density where event / dense reaches 1 (linear interpolation); None where it never does."""
    for (d0, r0), (d1, r1) in zip(zip(densities, ratios), zip(densities[1:], ratios[1:])):
        if r0 < 1 <= r1:
            return d0 + (1 - r0) * (d1 - d0) / (r1 - r0)
    return 0.0 if ratios and ratios[0] >= 1 else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--kinds', default=','.join(KINDS))
    parser.add_argument('--densities', default=','.join(map(str, DENSITIES)))
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--reps', type=int, default=3, help='calls per measurement (the best is kept)')
    parser.add_argument('--fit', action='store_true', help='refit the cost model on the layer times')
    args = parser.parse_args(argv)
    densities = [float(d) for d in args.densities.split(',')]
    print(f"versions: {common.versions()}\nmachine: {common.machine()}\nevent backend: "
          f"{brainconv.lowering.event.backend()}; medians of {args.rounds} interleaved rounds, best of "
          f"{args.reps} calls each")
    samples = []   # (kind, map, features at nnz, event seconds, macs, dense seconds)
    for kind in args.kinds.split(','):
        layer, batch, res = time_kind(kind, densities, args.rounds, args.reps)
        g, groups, cin, cout = core(layer)
        print(f"\n## {kind}: {layer!r}, batch {batch}")
        print("| map | " + ' | '.join(f'{d:.0%}' for d in densities) + " | measured crossover | model crossover "
              "| switch/dense at 30% / 50% |")
        print('|---' * (len(densities) + 4) + '|')
        fb = {d: res[d]['fb', None] / res[d]['fb', 'dense'] for d in densities}
        print("| fwd+bwd (weights and input) switch/dense | " + ' | '.join(f'{fb[d]:.2f}' for d in densities)
              + " | | | " + ' / '.join(f"{fb[d]:.2f}" if d in fb else '-' for d in (0.3, 0.5)) + " |")
        for m, label in (('fwd', 'forward'), ('dw', 'weight_grad')):
            ratios = [res[d][m, 'event'] / res[d][m, 'dense'] for d in densities]
            switch = {d: res[d][m, None] / res[d][m, 'dense'] for d in densities}
            cross = crossing(densities, ratios)
            model = cost.crossover_density(g, groups, batch, cin, cout, label)
            tail = ' / '.join(f"{switch[d]:.2f}" if d in switch else '-' for d in (0.3, 0.5))
            print(f"| {label} event/dense | " + ' | '.join(f'{r:.2f}' for r in ratios)
                  + f" | {'never' if cross is None else f'{cross:.1%}'} | {model:.1%} | {tail} |", flush=True)
            macs = batch * np.prod(g.out_spatial) * np.prod(g.kernel_size) * (cin // groups) * cout
            for d in densities:
                nnz = d * batch * np.prod(g.in_spatial) * cin
                feats = [float(f) for f in cost.cost_features(g, groups, batch, cin, cout, nnz, label)]
                samples.append((kind, label, feats, res[d][m, 'event'], float(macs), res[d][m, 'dense'],
                                cost._depthwise(groups, cin)))
    if args.fit:
        fit(samples)
    return 0


def fit(samples) -> None:
    """Non-negative least squares of the event terms and of the dense seconds per MAC, per map."""
    from scipy.optimize import nnls
    print("\n## Cost model refitted on layer times (paste into brainconv/lowering/event/cost.py)")
    backend = brainconv.lowering.event.backend()
    for label in ('forward', 'weight_grad'):
        rows = [s for s in samples if s[1] == label]
        a = np.array([s[2] for s in rows])
        y = np.array([s[3] for s in rows])
        # relative errors matter: weight each sample by 1 / its time
        coef, _ = nnls(a / y[:, None], np.ones_like(y))
        worst = max(abs(float(np.dot(coef, f)) / t - 1) for f, t in zip(a, y))
        print(f"EVENT_COST[({backend!r}, {label!r})] = {tuple(float(f'{c:.3g}') for c in coef)}  "
              f"# worst point {worst:.0%} off")
        for shape in ('dense', 'depthwise'):
            pts = [(s[4], s[5]) for s in rows if s[6] == (shape == 'depthwise')]
            if pts:
                per_mac = statistics.median(t / m for m, t in pts)
                print(f"DENSE_COST[({label!r}, {shape!r})] = {per_mac:.3g}")


if __name__ == '__main__':
    sys.exit(main())
