"""A/B: brainconv at an older git revision against the working tree, in one process.

The older package is extracted with ``git archive`` into a temporary folder and imported as
``brainconv_old`` (its imports are relative, so the rename is all it needs); both versions' layers
get the same weights and are timed jitted, forward and forward+backward (gradients with respect to
input and weights), in interleaved rounds that alternate which goes first.  Printed: the median over
rounds of the per-round ratio new / old (< 1: the working tree is faster), and the formulation the
new layer runs as.  Not a test: nothing here asserts a speed.

``--same-program`` first compares the two versions' compiled XLA programs (forward and
gradients, debug metadata stripped): where they are identical, so is the speed, and no timing
can say otherwise.

``--snn`` times bench_event_layers.py's 3-conv spiking network's BPTT step (its events boolean, as a
user feeds them, no lowering flag) under each version instead.  The two versions' event kernels
register XLA FFI targets of the same names, so each runs in a process of its own: the processes
alternate (``--rounds`` of each), each reporting its median step; printed are the median new / old
and the largest difference between the two versions' gradients.

Usage::

    python benchmarks/ab_versions.py --old 84a6f67            # configs a-f, h of bench_cpu.py
    python benchmarks/ab_versions.py --old HEAD~3 --configs a,f --rounds 11
    python benchmarks/ab_versions.py --old HEAD~3 --same-program --rounds 0
    python benchmarks/ab_versions.py --old 099c9d9 --snn --rounds 5
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import subprocess
import sys
import tempfile

from _common import CONFIGS, best_of, compiled, conv_data, med

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The configs of bench_cpu.py (_common.CONFIGS) compared by default: a-f and h.
KEYS = ('a', 'b', 'c', 'd', 'e', 'f', 'h-circ', 'h-refl')


def _extract(rev: str, into: str) -> None:
    archive = subprocess.run(['git', '-C', ROOT, 'archive', rev, 'brainconv'], check=True, capture_output=True).stdout
    subprocess.run(['tar', '-x', '-C', into], input=archive, check=True)
    os.rename(os.path.join(into, 'brainconv'), os.path.join(into, 'brainconv_old'))


def _program(fn, *args) -> str:
    """The optimised HLO of ``jax.jit(fn)`` without debug metadata and instruction numbering."""
    text = compiled(fn, *args)[0].as_text()
    text = text[text.index('HloModule'):].split('FileNames')[0]
    text = re.sub(r'metadata=\{[^}]*\}|, stack_frame_id=\d+', '', text)
    return re.sub(r'\.\d+', '', text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--old', required=True, help='git revision of the older brainconv')
    parser.add_argument('--configs', default=','.join(KEYS), help='comma-separated subset of ' + ','.join(KEYS))
    parser.add_argument('--rounds', type=int, default=7)
    parser.add_argument('--reps', type=int, default=5, help='timed calls per measurement (the best is kept)')
    parser.add_argument('--same-program', action='store_true', help='compare the compiled programs first')
    parser.add_argument('--snn', action='store_true', help="time the 3-conv SNN's training step instead")
    args = parser.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix='brainconv-ab-')
    _extract(args.old, tmp)
    if args.snn:
        return snn_ab(args, tmp)
    sys.path.insert(0, tmp)
    sys.path.insert(0, ROOT)
    import brainconv_old
    import jax
    import jax.numpy as jnp

    import brainconv

    print(f"new / old (old = {args.old}); medians of {args.rounds} interleaved rounds; < 1: new is faster")
    for key in args.configs.split(','):
        cfg = CONFIGS[key]
        new, old = cfg.layer(brainconv), cfg.layer(brainconv_old)
        old.weight.value = new.weight.value
        x = jnp.asarray(conv_data(cfg)[0])
        fns = {}
        for name, layer in (('new', new), ('old', old)):
            fns[name, 'fwd'] = layer.apply
            fns[name, 'fb'] = jax.value_and_grad(lambda p, a, lay=layer: jnp.sum(lay.apply(p, a) ** 2), argnums=(0, 1))
        if args.same_program:
            same = [mode for mode in ('fwd', 'fb') if _program(fns['new', mode], new.weight.value, x)
                    == _program(fns['old', mode], new.weight.value, x)]
            print(f"{key}: compiled programs {'identical' if len(same) == 2 else 'differ'}"
                  f" (forward {'same' if 'fwd' in same else 'differs'}, value_and_grad "
                  f"{'same' if 'fb' in same else 'differs'})", flush=True)
        fns = {k: jax.jit(f) for k, f in fns.items()}
        ratios = {'fwd': [], 'fb': []}
        for i in range(args.rounds):
            for mode in ratios:
                order = ('new', 'old') if i % 2 == 0 else ('old', 'new')
                t = {name: best_of(functools.partial(fns[name, mode], new.weight.value, x), args.reps)
                     for name in order}
                ratios[mode].append(t['new'] / t['old'])
        if args.rounds:
            fwd, fb = med(ratios['fwd']), med(ratios['fb'])
            print(f"{key}: forward {fwd:.2f}  fwd+bwd {fb:.2f}   (new runs as {new.lowering})", flush=True)
    return 0


SNN_STEP = r'''
import sys, time, statistics
sys.path[:0] = [sys.argv[2], sys.argv[3]]
import numpy as np, jax, jax.numpy as jnp, brainstate
module = __import__(sys.argv[1])
import bench_event_layers as bel
events, labels, *_ = bel.snn_data()
net = bel.SpikingNet(None, module)
brainstate.nn.init_all_states(net, bel.SNN['batch'])
params = net.states(brainstate.ParamState)
grads = brainstate.transform.jit(brainstate.transform.grad(net.loss, params, has_aux=True, return_value=True))
ev, lab = jnp.asarray(events), jnp.asarray(labels)
jax.block_until_ready(grads(ev, lab))
times = []
for _ in range(int(sys.argv[4])):
    t0 = time.perf_counter(); out = jax.block_until_ready(grads(ev, lab)); times.append(time.perf_counter() - t0)
np.savez(sys.argv[5], *[np.asarray(g) for g in jax.tree.leaves(out[0])])
print('RESULT', statistics.median(times))
'''


def snn_ab(args, tmp) -> int:
    """The 3-conv SNN's BPTT step under each version, in alternating processes (see the docstring)."""
    env = dict(os.environ, PYTHONPATH='')
    times = {'new': [], 'old': []}
    for i in range(args.rounds):
        for name in (('new', 'old') if i % 2 == 0 else ('old', 'new')):
            module, path = ('brainconv', ROOT) if name == 'new' else ('brainconv_old', tmp)
            out = subprocess.run([sys.executable, '-c', SNN_STEP, module, path, os.path.join(ROOT, 'benchmarks'),
                                  str(args.reps), os.path.join(tmp, f'{name}.npz')], env=env, capture_output=True,
                                 text=True, check=True)
            times[name].append(float(next(ln for ln in out.stdout.splitlines() if ln.startswith('RESULT')).split()[1]))
    import numpy as np
    new, old = (np.load(os.path.join(tmp, f'{n}.npz')) for n in ('new', 'old'))
    err = max(float(np.abs(new[k] - old[k]).max() / max(np.abs(old[k]).max(), 1e-30)) for k in new.files)
    ratio = med([a / b for a, b in zip(times['new'], times['old'])])
    print(f"3-conv SNN BPTT step (boolean events, default lowering): new {med(times['new']) * 1e3:.1f} ms, old "
          f"{med(times['old']) * 1e3:.1f} ms; new / old {ratio:.2f} (medians of {args.rounds} alternating "
          f"processes, each the median of {args.reps} steps); gradients differ by {err:.1e} (relative)")
    return 0


if __name__ == '__main__':
    sys.exit(main())
