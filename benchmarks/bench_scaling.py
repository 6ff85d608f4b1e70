"""Data parallelism over processes, and spatial sharding, on CPU.

Two sections (``--sections``):

  processes  A convolutional SNN's BPTT + SGD training step (events 34x34x2, Conv 2->12 k5, MaxPool
             2, LIF, Conv 12->32 k5, MaxPool 2, LIF, Linear 800->10; T steps, a global batch) on one
             process, and data-parallel on two processes on this machine (``jax.distributed`` on
             localhost, CPU collectives over gloo, one device each, half the batch each), for the
             dense path (float events, ``EVENT_FOR_FLOATS`` off: the dense formulation) and the event
             path (boolean events, the default).  The one process uses every core; each of the two
             is pinned to its own half of them (``os.sched_setaffinity``).
             Printed: ms per step (median of the steps timed), the speed-up T1 / T2 and the scaling
             efficiency T1 / (2 T2).
  spatial    A 3-d convolution of a large volume (``--volume``) sharded along its first spatial axis
             over two devices of one process: which collectives the compiled program holds (XLA's
             halo exchange is a collective-permute; an all-gather moves the whole volume) and its time
             against one device, for each formulation.

Not a test: nothing here asserts a speed.

Usage::

    python benchmarks/bench_scaling.py                              # both sections
    python benchmarks/bench_scaling.py --sections processes --steps 8
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

NETWORK = r'''
import os, sys, json, time, statistics
import numpy as np
import jax, jax.numpy as jnp
import brainstate, braintools
import brainconv
from brainconv.lowering import auto

class LIF(brainstate.nn.Module):
    def __init__(self, size):
        super().__init__()
        self.size, self.spike = tuple(size), braintools.surrogate.Sigmoid(alpha=4.)
    def init_state(self, batch_size=None, **kwargs):
        self.v = brainstate.HiddenState(jnp.zeros((batch_size,) + self.size))
    def update(self, x):
        v = 0.5 * self.v.value + x
        s = self.spike(v - 1.0)
        self.v.value = v - s
        return s

def init(seed, gain):
    return lambda shape: (np.random.default_rng(seed).standard_normal(shape) * gain
                          / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)

class Net(brainstate.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = brainconv.Conv2d((34, 34, 2), 12, 5, padding='VALID', w_init=init(1, 6.))
        self.pool1 = brainconv.MaxPool2d((30, 30, 12), 2)
        self.lif1 = LIF((15, 15, 12))
        self.conv2 = brainconv.Conv2d((15, 15, 12), 32, 5, padding='VALID', w_init=init(2, 3.))
        self.pool2 = brainconv.MaxPool2d((11, 11, 32), 2)
        self.lif2 = LIF((5, 5, 32))
        self.fc = brainstate.nn.Linear(800, 10, w_init=init(3, 3.))
    def update(self, x):
        s = self.lif1(self.pool1(self.conv1(x)))
        s = self.lif2(self.pool2(self.conv2(s)))
        return self.fc(s.reshape(s.shape[0], -1))

def data(steps, batch):
    rng = np.random.default_rng(0)
    return rng.random((steps, batch, 34, 34, 2)) < 0.03, rng.integers(0, 10, batch)

def step_fn(net):
    params = net.states(brainstate.ParamState)
    def loss(xs, ys):
        brainstate.nn.init_all_states(net, batch_size=xs.shape[1])
        logits = brainstate.transform.for_loop(net, xs).sum(0)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), ys[:, None], axis=1))
    def step(xs, ys):
        grads, value = brainstate.transform.grad(loss, params, return_value=True)(xs, ys)
        for k, g in grads.items():
            params[k].value = jax.tree.map(lambda w, d: w - 0.01 * d, params[k].value, g)
        return value
    return params, brainstate.transform.jit(step)

def run(xs, ys, path, reps):
    auto.EVENT_FOR_FLOATS = path == 'event'
    xs = xs if path == 'event' else xs.astype(jnp.float32)
    brainstate.random.seed(0)
    params, step = step_fn(Net())
    saved = {k: p.value for k, p in params.items()}
    t0 = time.perf_counter(); jax.block_until_ready(step(xs, ys)); first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        for k, p in params.items():
            p.value = saved[k]
        t0 = time.perf_counter(); value = jax.block_until_ready(step(xs, ys)); times.append(time.perf_counter() - t0)
    return dict(ms=statistics.median(times) * 1e3, first_s=first, loss=float(value),
                events=len(__import__('re').findall('brainconv_event', step.lower(xs, ys).compile().as_text())))
'''

SINGLE = NETWORK + r'''
steps, batch, reps, path, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
xs, ys = data(steps, batch)
json.dump(run(jnp.asarray(xs), jnp.asarray(ys), path, reps), open(out, 'w'))
'''

WORKER = NETWORK + r'''
steps, batch, reps, path, out, pid, port = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
                                            sys.argv[5], int(sys.argv[6]), sys.argv[7])
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.distributed.initialize(coordinator_address=f'localhost:{port}', num_processes=2, process_id=pid)
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
mesh = Mesh(np.array(jax.devices()), ('data',))
xs, ys = data(steps, batch)
half = slice(pid * batch // 2, (pid + 1) * batch // 2)
xs = jax.make_array_from_process_local_data(NamedSharding(mesh, P(None, 'data')), xs[:, half])
ys = jax.make_array_from_process_local_data(NamedSharding(mesh, P('data')), ys[half])
result = run(xs, ys, path, reps)
if pid == 0:
    json.dump(result, open(out, 'w'))
'''

SPATIAL = r'''
import os, sys, json, re, time, statistics
import numpy as np
import jax, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import brainconv
size, channels, reps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
mesh = Mesh(np.array(jax.devices()), ('space',))
layer = brainconv.Conv3d((size, size, size, channels), channels, 3)
x = jnp.asarray(np.maximum(np.random.default_rng(0).standard_normal((1, size, size, size, channels)), 0)
                .astype(np.float32))
out = {}
for name in ('lax',) + tuple(n for n in brainconv.LOWERINGS if n != 'lax'):
    f = jax.jit(jax.value_and_grad(lambda p, a: jnp.sum(layer.apply(p, a) ** 2), argnums=(0, 1)))
    row = {}
    sharded = jax.device_put(x, NamedSharding(mesh, P(None, 'space')))
    for label, xa in (('one device', x), ('2 devices, sharded', sharded)):
        with brainconv.use_lowering(name):
            c = f.lower(layer.weight.value, xa).compile()
        jax.block_until_ready(c(layer.weight.value, xa))
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            jax.block_until_ready(c(layer.weight.value, xa))
            ts.append(time.perf_counter() - t0)
        text = c.as_text()
        row[label] = dict(ms=statistics.median(ts) * 1e3,
                          permutes=len(re.findall(r'collective-permute(-start)?\(', text)),
                          gathers=len(re.findall(r'all-gather(-start)?\(', text)))
    out[name] = row
print('RESULT' + json.dumps(out))
'''


def _env(devices: int | None = None) -> dict:
    env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}' if devices else ''
    return env


def _pinned(cores):
    """A preexec_fn pinning the child to ``cores`` (where the OS can)."""
    def pin():
        if hasattr(os, 'sched_setaffinity'):
            os.sched_setaffinity(0, cores)
    return pin


def _port() -> str:
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return str(s.getsockname()[1])


def processes(args) -> None:
    cores = os.cpu_count() or 1
    print(f"\n## Data parallel over processes: T = {args.steps}, global batch {args.batch}; one process on {cores} "
          f"cores against two on {max(1, cores // 2)} each")
    print("| path | 1 process ms/step | 2 processes ms/step | speed-up | efficiency | event calls (1 / 2) | "
          "loss (1 / 2) |\n|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for path in ('dense', 'event'):
            one = os.path.join(tmp, f'one-{path}.json')
            subprocess.run([sys.executable, '-c', SINGLE, str(args.steps), str(args.batch), str(args.reps), path, one],
                           env=_env(), check=True, capture_output=True)
            two, port = os.path.join(tmp, f'two-{path}.json'), _port()
            half = max(1, cores // 2)
            procs = [subprocess.Popen([sys.executable, '-c', WORKER, str(args.steps), str(args.batch),
                                       str(args.reps), path, two, str(pid), port], env=_env(),
                                      preexec_fn=_pinned(set(range(pid * half, (pid + 1) * half)) or {0}),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for pid in (0, 1)]
            for p in procs:
                p.wait(timeout=900)
            r1, r2 = (json.load(open(f)) for f in (one, two))
            speedup = r1['ms'] / r2['ms']
            print(f"| {path} | {r1['ms']:.1f} | {r2['ms']:.1f} | {speedup:.2f} | {speedup / 2:.2f} | "
                  f"{r1['events']} / {r2['events']} | {r1['loss']:.6f} / {r2['loss']:.6f} |", flush=True)


def spatial(args) -> None:
    size, channels = args.volume
    print(f"\n## Spatial sharding: Conv3d {size}^3x{channels} -> {channels} k3 SAME, batch 1, value and gradients, "
          f"the first spatial axis sharded over 2 devices of one process")
    proc = subprocess.run([sys.executable, '-c', SPATIAL, str(size), str(channels), str(args.reps)],
                          env=_env(devices=2), capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        print(proc.stderr[-3000:])
        return
    out = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith('RESULT'))[len('RESULT'):])
    print("| formulation | 1 device ms | 2 devices ms | collective-permutes (halo) | all-gathers |\n"
          "|---|---|---|---|---|")
    for name, row in out.items():
        one, two = row['one device'], row['2 devices, sharded']
        print(f"| {name} | {one['ms']:.1f} | {two['ms']:.1f} | {two['permutes']} | {two['gathers']} |", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sections', default='processes,spatial')
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--reps', type=int, default=7)
    parser.add_argument('--volume', type=int, nargs=2, default=(48, 16), metavar=('SIZE', 'CHANNELS'))
    args = parser.parse_args(argv)
    import _common as common
    print(f"versions: {common.versions()}\nmachine: {common.machine()}")
    for section in args.sections.split(','):
        {'processes': processes, 'spatial': spatial}[section](args)
    return 0


if __name__ == '__main__':
    sys.exit(main())
