"""Online learning with braintrace: brainconv's layers against braintrace.nn.Conv2d, per algorithm.

A convolutional spiking network of the size of an event-camera classifier -- input 32x32x2, then
Conv2d 2 -> 16 (k3, pad 1), LIF, Conv2d 16 -> 32 (k3, stride 2), LIF, Conv2d 32 -> 32 (k3, stride 2),
LIF, a leaky readout of 10 -- trained on sequences of ``--steps`` frames at batch ``--batch``.  The
same network is built with brainconv's Conv2d and with braintrace's own Conv2d (the same geometry,
explicit pads, no bias: braintrace's D_RTRL cannot take one), with the same weights.  Timed, for
BPTT (brainconv only: braintrace's layer is for online learning), pp_prop (ES_D_RTRL) and D_RTRL:
one training step (reset, the sequence's online gradients, jitted), the first call (compilation:
what a notebook user waits for) and the steady state, in interleaved rounds; a round whose
reference matmul ran more than 30% slower than the quietest one is re-measured (other processes
were loading the CPU).  Also the memory of the eligibility traces.  Printed: medians over the
quiet rounds and the median per-round ratio brainconv / braintrace (< 1: brainconv is faster).
Not a test: nothing here asserts a speed.

Usage::

    python benchmarks/bench_braintrace.py                   # 9 rounds, batch 16, 8 steps
    python benchmarks/bench_braintrace.py --rounds 5 --batch 8
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import sys

import numpy as np
from _common import LoadMonitor, best_of, med, one_call, time_group


class BestOf:
    """A compiled training step as time_group times it: the best of ``reps`` calls (in its one mode, 'fwd')."""

    def __init__(self, fn, reps: int):
        self.fwd, self._reps = fn, reps

    def reps(self, mode, target_s):
        return self._reps

    def time(self, mode, reps):
        return best_of(self.fwd, reps, warmup=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=9)
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--steps', type=int, default=8)
    parser.add_argument('--reps', type=int, default=3, help='timed calls per measurement (the best is kept)')
    args = parser.parse_args(argv)

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import brainpy
    import brainstate
    import braintools
    import braintrace
    import jax
    import jax.numpy as jnp

    import brainconv

    brainstate.environ.set(dt=1.0)
    batch, steps = args.batch, args.steps
    geometry = [((32, 32, 2), 16, 1, ((1, 1), (1, 1))), ((32, 32, 16), 32, 2, ((0, 1), (0, 1))),
                ((16, 16, 32), 32, 2, ((0, 1), (0, 1)))]

    def lif(size):
        return brainpy.state.LIF(size, R=10., tau=5., V_th=1., V_reset=0., V_rest=0.,
                                 V_initializer=braintools.init.Constant(0.), spk_fun=braintools.surrogate.ReluGrad())

    class Net(brainstate.nn.Module):
        def __init__(self, kind):
            super().__init__()
            self.convs = []
            for i, (in_size, cout, stride, pads) in enumerate(geometry):
                if kind == 'brainconv':
                    conv = brainconv.Conv2d(in_size, cout, 3, stride=stride, padding=pads)
                else:
                    conv = braintrace.nn.Conv2d(in_size, cout, 3, stride=stride, padding=pads)
                setattr(self, f'conv{i}', conv)
                setattr(self, f'lif{i}', lif(conv.out_size))
            self.out = braintrace.nn.LeakyRateReadout(8 * 8 * 32, 10, tau=5.)

        def update(self, x):
            for i in range(len(geometry)):
                x = getattr(self, f'lif{i}')(getattr(self, f'conv{i}')(x))
            return self.out(jnp.reshape(x, (x.shape[0], -1)))

    def xent(logits, labels):
        return jnp.mean(braintools.metric.softmax_cross_entropy_with_integer_labels(logits, labels))

    rng = np.random.default_rng(0)
    xs = jnp.asarray((rng.random((steps, batch, 32, 32, 2)) < 0.05).astype(np.float32))
    ys = jnp.asarray(rng.integers(0, 10, (steps, batch)))

    def make_step(kind, algorithm):
        brainstate.random.seed(0)
        net = Net(kind)
        if kind == 'braintrace':  # the same weights as brainconv's
            ref = Net('brainconv')
            for i in range(len(geometry)):
                getattr(net, f'conv{i}').weight.value = getattr(ref, f'conv{i}').weight.value
            for path, state in ref.out.states(brainstate.ParamState).items():
                net.out.states(brainstate.ParamState)[path].value = state.value
        memory = 0
        if algorithm == 'BPTT':
            params = net.states(brainstate.ParamState)

            @brainstate.transform.jit
            def step(xs, ys):
                brainstate.nn.init_all_states(net, batch_size=batch)

                def loss():
                    return jnp.mean(brainstate.transform.for_loop(lambda x, y: xent(net(x), y), xs, ys))
                return brainstate.transform.grad(loss, params)()
            return step, memory
        options = {'decay_or_rank': 0.9} if algorithm == 'pp_prop' else {}
        learner = braintrace.compile(net, getattr(braintrace, algorithm), xs[0], batch_size=batch, **options)
        traces = learner.states(braintrace.EligibilityTrace)
        memory = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves([s.value for s in traces.values()]))

        @brainstate.transform.jit
        def step(xs, ys):
            brainstate.nn.reset_all_states(net, batch_size=batch)
            learner.reset_state()
            return learner.etrace_grad(xs, ys, step_fn=lambda x, y: xent(learner(x), y))
        return step, memory

    monitor = LoadMonitor()
    cases = [('brainconv', 'BPTT'), ('brainconv', 'pp_prop'), ('braintrace', 'pp_prop'),
             ('brainconv', 'D_RTRL'), ('braintrace', 'D_RTRL')]
    impls, memory, compile_s = {}, {}, {}
    for case in cases:
        fn, memory[case] = make_step(*case)
        compile_s[case] = one_call(fn, xs, ys)
        impls[case] = BestOf(functools.partial(fn, xs, ys), args.reps)

    res = time_group(impls, monitor, args.rounds, 0.0, modes=('fwd',))
    times, quiet = {case: res.times[(case, 'fwd')] for case in cases}, res.quiet

    print(f"brainconv {brainconv.__version__}, braintrace {braintrace.__version__}, jax {jax.__version__}, "
          f"python {platform.python_version()}; {os.cpu_count()} cores; {datetime.date.today()}")
    print(f"network: 32x32x2 -> conv16 -> conv32 s2 -> conv32 s2 -> readout 10 (LIF between), batch {batch}, "
          f"{steps} steps; {quiet} of {args.rounds} rounds quiet")
    print(f"{'layers':11s} {'algorithm':9s} {'compile':>9s} {'step':>9s} {'trace memory':>13s}  brainconv / braintrace")
    for case in cases:
        kind, algorithm = case
        ratio = ''
        if kind == 'brainconv' and ('braintrace', algorithm) in times:
            other = times['braintrace', algorithm]
            ratio = f"{med(a / b for a, b in zip(times[case], other)):.2f}"
        print(f"{kind:11s} {algorithm:9s} {compile_s[case]:7.2f} s {1e3 * med(times[case]):7.1f} ms "
              f"{memory[case] / 2 ** 20:10.1f} MiB  {ratio}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
