"""What dense inputs pay for the event switch on float inputs, on CPU.

``'auto'`` runs float inputs through the event formulation where its kernel can pay for the
geometry (``brainconv.lowering.auto.EVENT_FOR_FLOATS``): a sampled non-zero count and a
``lax.cond`` decide, at run time, between the event kernel and the dense formulation.  A ReLU
network's activations (about half non-zero) always take the dense branch; this script measures
what the count and the cond cost them.  For bench_cpu.py's layer configs (a-f, h, i, j) on ReLU'd
inputs, and config g (a small CNN's training step: conv, ReLU, conv, ReLU, max pool, Linear, SGD),
each jitted twice -- with the switch (``EVENT_FOR_FLOATS = True``, the default) and without
(``False``, the dense formulation alone, as before the switch) -- and timed in interleaved rounds
(forward, and value and gradients with respect to input and weights).  Printed: the median of
per-round ratios switch / dense (> 1: the switch costs), and the formulation each runs.  Not a
test: nothing here asserts a speed.

Usage::

    python benchmarks/bench_switch_cost.py                 # every config, 9 rounds
    python benchmarks/bench_switch_cost.py --configs a,g --rounds 5
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
from brainconv.lowering import auto

LAYERS = ['a', 'b', 'c', 'd', 'e', 'f', 'h-circ', 'h-refl', 'i', 'j']


def layer_fns(cfg):
    """Forward and value-and-gradients of one config's layer on ReLU'd inputs, as closures."""
    layer = cfg.layer(brainconv)
    x, _, _ = common.conv_data(cfg)
    x = jnp.asarray(np.maximum(x, 0))
    params = layer.weight.value
    grad = jax.value_and_grad(lambda p, a: jnp.sum(layer.apply(p, a) ** 2), argnums=(0, 1))
    return layer, {'fwd': (layer.apply, (params, x)), 'fb': (grad, (params, x))}


def cnn_fns():
    """Config g: a small CNN's SGD step (28x28x1 -> conv 32 -> ReLU -> conv 64 -> ReLU -> max pool 2
    -> Linear 10, batch 64) and its forward."""
    import brainstate
    rng = np.random.default_rng(0)
    c1 = brainconv.Conv2d((28, 28, 1), 32, 3)
    c2 = brainconv.Conv2d((28, 28, 32), 64, 3)
    pool = brainconv.MaxPool2d((28, 28, 64), 2)
    dense = brainstate.nn.Linear(14 * 14 * 64, 10)
    x = jnp.asarray(rng.standard_normal((64, 28, 28, 1)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, 64))
    params = {'c1': c1.weight.value, 'c2': c2.weight.value, 'dense': dense.weight.value}

    def apply(p, a):
        h = jax.nn.relu(c1.apply(p['c1'], a))
        h = pool(jax.nn.relu(c2.apply(p['c2'], h)))
        h = h.reshape(h.shape[0], -1)
        return h @ p['dense']['weight'] + p['dense']['bias']

    def loss(p, a):
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(apply(p, a)), y[:, None], axis=1))

    def step(p, a):
        value, g = jax.value_and_grad(loss)(p, a)
        return value, jax.tree.map(lambda w, d: w - 0.01 * d, p, g)

    return c2, {'fwd': (apply, (params, x)), 'fb': (step, (params, x))}


def compiled(fn, args, switch: bool):
    """``fn`` jitted with the float switch on or off (read when it is traced), compiled now."""
    previous, auto.EVENT_FOR_FLOATS = auto.EVENT_FOR_FLOATS, switch
    try:
        jitted = jax.jit(fn)
        jax.block_until_ready(jitted(*args))
    finally:
        auto.EVENT_FOR_FLOATS = previous
    return lambda: jax.block_until_ready(jitted(*args))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--configs', default=','.join(LAYERS[:6] + ['g'] + LAYERS[6:]))
    parser.add_argument('--rounds', type=int, default=9)
    parser.add_argument('--reps', type=int, default=5, help='calls per measurement (the best is kept)')
    args = parser.parse_args(argv)
    print(f"versions: {common.versions()}\nmachine: {common.machine()}")
    print(f"switch / dense (medians of {args.rounds} interleaved rounds, best of {args.reps} calls each; > 1: the "
          f"switch costs); ReLU'd inputs (about half non-zero)")
    print("| config | forward | fwd+bwd | runs as (switch) | dense alone |\n|---|---|---|---|---|")
    for key in args.configs.split(','):
        layer, fns = cnn_fns() if key == 'g' else layer_fns(common.CONFIGS[key])
        calls = {(mode, s): compiled(fn, a, s) for mode, (fn, a) in fns.items() for s in (True, False)}
        times = {k: [] for k in calls}
        for r in range(args.rounds):
            for k in common.rotated(list(calls), r):
                times[k].append(common.best_of(calls[k], args.reps, warmup=False))
        ratios = {}
        for mode in fns:
            per_round = [a / b for a, b in zip(times[mode, True], times[mode, False])]
            ratios[mode] = statistics.median(per_round)
        previous, auto.EVENT_FOR_FLOATS = auto.EVENT_FOR_FLOATS, False
        dense = layer.lowering
        auto.EVENT_FOR_FLOATS = previous
        print(f"| {key} | {ratios['fwd']:.3f} | {ratios['fb']:.3f} | {layer.lowering} | {dense} |", flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
