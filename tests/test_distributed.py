"""Data-parallel training over two processes, through JAX's own runtime (``jax.distributed``).

Two processes on localhost, one CPU device each, CPU collectives over gloo: each holds half of a
batch of spike sequences, and one jitted BPTT step of a convolutional SNN (boolean spikes in,
every convolution and pooling layer brainconv's) runs over the two-device mesh.  Loss,
gradients and the SGD-updated weights equal one process computing the whole batch, and the
compiled program runs the event kernel on each process's shard.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NETWORK = textwrap.dedent('''
    import brainstate, braintools, jax, jax.numpy as jnp, numpy as np
    import brainconv

    T, BATCH = 4, 4

    class LIF(brainstate.nn.Module):
        def __init__(self, size):
            super().__init__()
            self.size, self.spike = tuple(size), braintools.surrogate.Sigmoid()

        def init_state(self, batch_size=None, **kwargs):
            self.v = brainstate.HiddenState(jnp.zeros((batch_size,) + self.size))

        def update(self, x):
            v = 0.5 * self.v.value + x
            s = self.spike(v - 1.0)
            self.v.value = v - jax.lax.stop_gradient(s)
            return s

    def init(seed):
        return lambda shape: (np.random.default_rng(seed).standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
                              * 2.0).astype(np.float32)

    class Net(brainstate.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = brainconv.Conv2d((16, 16, 2), 8, 3, w_init=init(1))
            self.pool1 = brainconv.MaxPool2d((16, 16, 8), 2)
            self.lif1 = LIF((8, 8, 8))
            self.conv2 = brainconv.Conv2d((8, 8, 8), 16, 3, w_init=init(2))
            self.lif2 = LIF((8, 8, 16))
            self.out = brainconv.Conv2d((8, 8, 16), 4, 8, padding='VALID', w_init=init(3))

        def update(self, x):
            s = self.lif1(self.pool1(self.conv1(x)))
            return self.out(self.lif2(self.conv2(s)))[:, 0, 0]

    def data():
        rng = np.random.default_rng(0)
        return rng.random((T, BATCH, 16, 16, 2)) < 0.05, rng.integers(0, 4, BATCH)

    def step_fn(net):
        params = net.states(brainstate.ParamState)

        def loss(xs, labels):
            brainstate.nn.init_all_states(net, batch_size=xs.shape[1])
            logits = brainstate.transform.for_loop(net, xs).sum(0)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

        def step(xs, labels):
            grads, value = brainstate.transform.grad(loss, params, return_value=True)(xs, labels)
            for k, g in grads.items():
                params[k].value = jax.tree.map(lambda w, d: w - 0.1 * d, params[k].value, g)
            return value, grads
        return params, brainstate.transform.jit(step)
''')

WORKER = NETWORK + textwrap.dedent('''
    import json, re, sys
    pid, port, out_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=f'localhost:{port}', num_processes=2, process_id=pid)
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    mesh = Mesh(np.array(jax.devices()), ('data',))
    xs, labels = data()
    half = slice(pid * BATCH // 2, (pid + 1) * BATCH // 2)
    xs = jax.make_array_from_process_local_data(NamedSharding(mesh, P(None, 'data')), xs[:, half])
    labels = jax.make_array_from_process_local_data(NamedSharding(mesh, P('data')), labels[half])
    brainstate.random.seed(0)
    net = Net()
    params, step = step_fn(net)
    with brainconv.lowering.event_branch('event'):   # the event kernel on each shard, whatever the density
        value, grads = step(xs, labels)
        hlo = step.lower(xs, labels).compile().as_text()
    result = dict(pid=pid, devices=len(jax.devices()), loss=float(value),
                  event_calls=len(re.findall('brainconv_event', hlo)),
                  all_gathers=len(re.findall(r'all-gather(-start)?[(]', hlo)),
                  grads={'.'.join(k): np.asarray(g['weight']).tolist() for k, g in grads.items()},
                  weights={'.'.join(k): np.asarray(p.value['weight']).tolist() for k, p in params.items()})
    with open(out_path, 'w') as f:
        json.dump(result, f)
''')

SINGLE = NETWORK + textwrap.dedent('''
    import json, sys
    xs, labels = data()
    brainstate.random.seed(0)
    net = Net()
    params, step = step_fn(net)
    with brainconv.lowering.event_branch('event'):
        value, grads = step(jnp.asarray(xs), jnp.asarray(labels))
    with open(sys.argv[1], 'w') as f:
        json.dump(dict(loss=float(value),
                       grads={'.'.join(k): np.asarray(g['weight']).tolist() for k, g in grads.items()},
                       weights={'.'.join(k): np.asarray(p.value['weight']).tolist() for k, p in params.items()}), f)
''')


def _env():
    env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    env.pop('XLA_FLAGS', None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


def test_two_processes_train_as_one(tmp_path):
    """Results go to files (the processes' pipes could fill while the other waits at shutdown)."""
    port = str(_free_port())
    logs = [open(tmp_path / f'worker{pid}.log', 'w') for pid in (0, 1)]
    procs = [subprocess.Popen([sys.executable, '-c', WORKER, str(pid), port, str(tmp_path / f'worker{pid}.json')],
                              env=_env(), stdout=log, stderr=subprocess.STDOUT) for pid, log in zip((0, 1), logs)]
    single = subprocess.run([sys.executable, '-c', SINGLE, str(tmp_path / 'single.json')], env=_env(),
                            capture_output=True, text=True, timeout=300)
    for p, log in zip(procs, logs):
        p.wait(timeout=300)
        log.close()
        assert p.returncode == 0, (tmp_path / f'worker{procs.index(p)}.log').read_text()[-4000:]
    assert single.returncode == 0, single.stderr[-4000:]
    want = json.loads((tmp_path / 'single.json').read_text())
    assert want['loss'] > 0 and all(np.abs(g).max() > 1e-6 for g in map(np.asarray, want['grads'].values()))
    for pid in (0, 1):
        got = json.loads((tmp_path / f'worker{pid}.json').read_text())
        assert got['devices'] == 2
        # each process's program runs the event kernel on its shard (forward and kernel gradient of
        # the two spiking convolutions, at least), and gathers no activation
        assert got['event_calls'] >= 4 and got['all_gathers'] == 0, (got['event_calls'], got['all_gathers'])
        np.testing.assert_allclose(got['loss'], want['loss'], rtol=1e-5)
        for key in want['grads']:
            np.testing.assert_allclose(got['grads'][key], want['grads'][key], rtol=1e-5, atol=1e-6, err_msg=key)
            np.testing.assert_allclose(got['weights'][key], want['weights'][key], rtol=1e-5, atol=1e-6, err_msg=key)
