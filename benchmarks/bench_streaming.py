"""Stepping a causal convolution through time (StreamingConv) against the full-sequence convolution.

Configs (float32, forward, jitted):

  1d  Conv1d, T 1000, 64 -> 64 channels, k 9, rhs_dilation 4, CAUSAL, batch 32
  3d  Conv3d, T 100 of 32x32x2 frames -> 16 channels, k 5x3x3, CAUSAL in time, SAME in space, batch 8

For each: the full causal convolution of the (batch, T, ...) sequence (``conv(x)``) and ``T`` steps of
``conv.streaming()`` in a ``brainstate.transform.for_loop`` over the (T, batch, ...) frames (state reset
at the start of each run), both under ``brainstate.transform.jit``.  Before timing, the stepped outputs
are checked against the full convolution.  With ``--variants``, formulations of the step that are not
the layer's are timed too (as ``jax.lax.scan`` loops, checked the same way):

  ``window``     the span-frame window shifted by concatenation each step and convolved (VALID,
                 dilated in time) by the convolution's functional op: the first formulation
  ``ring-conv``  the layer's ring buffer, its k taps convolved by the functional op (not folded)
  ``shift-dot``  (1-d) the window shifted by concatenation, its k taps multiplied by the kernel in one dot

``stepped`` is the layer in ``for_loop``; ``unroll8`` the same with ``for_loop(..., unroll=8)``.

Timing interleaves the implementations in rounds; reported are compile times (first call, including
tracing) and medians over the rounds, and the median of per-round ratios stepped / full.  Not a test:
nothing here asserts a speed.

Usage::

    python benchmarks/bench_streaming.py                 # both configs, the layer only
    python benchmarks/bench_streaming.py --variants      # and the alternative formulations
    python benchmarks/bench_streaming.py --rounds 5 --configs 1d
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys

import numpy as np
from _common import interleaved, med, timed

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import brainstate  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

import brainconv  # noqa: E402
from brainconv import functional  # noqa: E402

CONFIGS = {
    '1d': dict(title='Conv1d T1000 64->64 k9 d4 batch 32', nd=1, frame=(64,), T=1000, cout=64, kernel=9,
               rhs_dilation=4, padding='CAUSAL', batch=32),
    '3d': dict(title='Conv3d T100 32x32x2 ->16 k5x3x3 batch 8', nd=3, frame=(32, 32, 2), T=100, cout=16,
               kernel=(5, 3, 3), rhs_dilation=1, padding=((4, 0), (1, 1), (1, 1)), batch=8),
}


def build(cfg):
    conv = brainconv.Conv(cfg['nd'], (cfg['T'],) + cfg['frame'], cfg['cout'], cfg['kernel'],
                          padding=cfg['padding'], rhs_dilation=cfg['rhs_dilation'])
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((cfg['batch'], cfg['T']) + cfg['frame']).astype(np.float32))
    return conv, x


def layer_impls(conv, x):
    step = conv.streaming()
    step.init_state(batch_size=x.shape[0])

    def stepped(xs, unroll=1):
        step.reset_state()
        return brainstate.transform.for_loop(step, xs, unroll=unroll)

    xs = jnp.moveaxis(x, 1, 0)
    return {'full': (brainstate.transform.jit(lambda x: conv(x)), x),
            'stepped': (brainstate.transform.jit(stepped), xs),
            'unroll8': (brainstate.transform.jit(lambda xs: stepped(xs, 8)), xs)}


def variant_impls(conv, x):
    """Other formulations of the step, as lax.scan loops over (T, batch, *frame)."""
    step = conv.streaming()
    spec = step.window_spec
    g = spec.geometry
    k, d, span = g.kernel_size[0], g.rhs_dilation[0], step.span
    w, _ = conv._kernel_mantissa(conv.weight.value)
    xs = jnp.moveaxis(x, 1, 0)
    batch = x.shape[:1]
    impls = {}

    def window(w, xs):
        """The first formulation: the span-frame window shifted by concatenation, then convolved
        (VALID, dilated in time) by the convolution's functional op."""
        def body(buf, xt):
            win = jnp.concatenate([buf, xt[:, None]], axis=1)
            y = functional.conv_resolved(win, w, g, spec.groups, spec.padding_mode, False, None, conv._lowering)
            return win[:, 1:], y[:, 0]

        return lax.scan(body, jnp.zeros(batch + (span - 1,) + xs.shape[2:], xs.dtype), xs)[1]

    impls['window'] = (jax.jit(window), (w, xs))
    window_k = brainconv.shapes.conv_geometry((k,) + g.in_spatial[1:], g.kernel_size, g.stride,
                                              g.pads, g.lhs_dilation, (1,) + g.rhs_dilation[1:])

    def ring_conv(w, xs):
        """The layer's ring buffer, the k taps convolved by the functional op without folding them."""
        def body(carry, xt):
            buf, pos = carry
            back = jnp.asarray(d * np.arange(k - 1, 0, -1), jnp.int32)
            old = jnp.take(buf, (pos - back) % (span - 1), axis=1, mode='clip')
            win = jnp.concatenate([old, xt[:, None]], axis=1)
            buf = lax.dynamic_update_index_in_dim(buf, xt, pos, axis=1)
            y = functional.conv_resolved(win, w, window_k, spec.groups, spec.padding_mode, False, None,
                                         conv._lowering)
            return (buf, (pos + 1) % (span - 1)), y[:, 0]

        buf0 = jnp.zeros(batch + (span - 1,) + xs.shape[2:], xs.dtype)
        return lax.scan(body, (buf0, jnp.int32(0)), xs)[1]

    impls['ring-conv'] = (jax.jit(ring_conv), (w, xs))
    if g.num_spatial_dims == 1:
        wflat = w.reshape(-1, w.shape[-1])

        def shift_dot(wflat, xs):
            """The span-frame window shifted by concatenation, its k taps in one dot."""
            def body(buf, xt):
                win = jnp.concatenate([buf, xt[:, None]], axis=1)
                taps = win[:, ::d]
                return win[:, 1:], taps.reshape(taps.shape[0], -1) @ wflat

            return lax.scan(body, jnp.zeros(batch + (span - 1,) + xs.shape[2:], xs.dtype), xs)[1]

        impls['shift-dot'] = (jax.jit(shift_dot), (wflat, xs))
    return impls


def _args(a):
    return a if isinstance(a, tuple) else (a,)


def measure(impls, rounds, reference):
    """Each implementation's first call (seconds; its output checked against ``reference``), then
    ``rounds`` interleaved rounds of one call each."""
    compile_s = {}
    for name, (fn, a) in impls.items():
        y, compile_s[name] = timed(fn, *_args(a))
        if name != 'full':
            got = np.moveaxis(np.asarray(y), 0, 1)
            err = float(np.max(np.abs(got - reference)))
            assert err < 1e-3 * max(1.0, float(np.max(np.abs(reference)))), (name, err)
    return compile_s, interleaved({name: functools.partial(fn, *_args(a)) for name, (fn, a) in impls.items()}, rounds)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--configs', default='1d,3d')
    parser.add_argument('--rounds', type=int, default=15)
    parser.add_argument('--variants', action='store_true')
    args = parser.parse_args(argv)
    print(f'jax {jax.__version__} ({jax.default_backend()}), brainstate {brainstate.__version__}, '
          f'Python {platform.python_version()}, {os.cpu_count()} CPUs, rounds {args.rounds}')
    for key in args.configs.split(','):
        cfg = CONFIGS[key]
        conv, x = build(cfg)
        impls = layer_impls(conv, x)
        reference = np.asarray(impls['full'][0](x))
        if args.variants:
            impls.update(variant_impls(conv, x))
        compile_s, times = measure(impls, args.rounds, reference)
        full = times['full']
        print(f'\n{key}: {cfg["title"]}  (full convolution lowering: {conv.lowering})')
        print(f'  {"impl":10s} {"compile s":>10s} {"median ms":>10s} {"ratio to full":>14s}')
        for name in impls:
            ratio = med(t / f for t, f in zip(times[name], full))
            print(f'  {name:10s} {compile_s[name]:10.2f} {1e3 * med(times[name]):10.2f} {ratio:14.2f}')


if __name__ == '__main__':
    main()
