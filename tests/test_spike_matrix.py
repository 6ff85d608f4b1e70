"""Every spike form through every layer kind, under every way a spiking network is run.

Rows: spike forms (boolean, integer, brainevent ``BinaryArray``, float 0/1 straight out of a
surrogate spike function) x layer kinds (Conv 1-, 2-, 3-d, ConvTranspose, ScaledWS, Separable,
Local, Streaming, the ConvLSTM and ConvGRU cells).  Columns: the forward pass (jit), vmap, BPTT
through ``brainstate.transform.for_loop`` and through ``jax.lax.scan``, and braintrace's online
D_RTRL and pp_prop.  Each layer kind sits in a branch ``layer -> LIF`` of one network, so one
compilation covers every kind; every result must equal the same network on float32 inputs to
1e-5, and the float32 network's convolutions equal the NumPy oracle (``_reference.py``).
"""

from __future__ import annotations

import _reference as ref
import brainstate
import braintools
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _configs import cheap_init

import brainconv

T, BATCH = 3, 2
IN = (6, 6, 2)
TOL = dict(rtol=1e-5, atol=1e-5)
FORMS = ('bool', 'int', 'binary_array', 'surrogate')


class _LIF(brainstate.nn.Module):
    """v <- 0.5 v + I; s = H(v - 0.5) with a sigmoid surrogate; soft reset (its state a HiddenState)."""

    def __init__(self, size):
        super().__init__()
        self.size = tuple(size)
        self.spike = braintools.surrogate.Sigmoid()

    def init_state(self, batch_size=None, **kwargs):
        self.v = brainstate.HiddenState(jnp.zeros(((batch_size,) if batch_size else ()) + self.size))

    def reset_state(self, batch_size=None, **kwargs):
        self.v.value = jnp.zeros(((batch_size,) if batch_size else ()) + self.size)

    def update(self, current):
        v = 0.5 * self.v.value + current
        s = self.spike(v - 0.5)
        self.v.value = v - jax.lax.stop_gradient(s) * 0.5
        return s


def _read(fn):
    """``fn`` on an input, a BinaryArray staying a BinaryArray (the layer must see the form itself)."""
    def read(x):
        return type(x)(fn(x.value)) if type(x).__name__ == 'BinaryArray' else fn(x)
    return read


def _kinds():
    """name -> (layer, how the branch reads the (B, 6, 6, 2) input)."""
    same = _read(lambda x: x)
    frames = _read(lambda x: jnp.stack([x, x[:, ::-1]], axis=1))
    first = _read(lambda x: x[:, 0])
    w = cheap_init
    return {
        'conv1d': (brainconv.Conv1d((6, 2), 3, 3, stride=2, w_init=w(1)), first),
        'conv2d': (brainconv.Conv2d(IN, 3, 3, b_init=braintools.init.Constant(0.1), w_init=w(2)), same),
        'conv3d': (brainconv.Conv3d((2, 6, 6, 2), 2, 2, w_init=w(3)), frames),
        'transpose2d': (brainconv.ConvTranspose2d(IN, 2, 3, stride=2, w_init=w(4)), same),
        'scaled_ws': (brainconv.ScaledWSConv2d(IN, 3, 3, w_init=w(5)), same),
        'separable': (brainconv.SeparableConv2d(IN, 3, 3, depthwise_init=w(6), pointwise_init=w(7)), same),
        'local': (brainconv.LocalConv2d(IN, 2, 3, w_init=w(8)), same),
        'streaming': (brainconv.Conv2d(IN, 3, (2, 3), padding=((1, 0), (1, 1)), w_init=w(9)).streaming(), first),
        'lstm': (brainconv.ConvLSTMCell2d(IN, 2, 3, w_init=w(10)), same),
        'gru': (brainconv.ConvGRUCell2d(IN, 2, 3, w_init=w(11)), same),
    }


class _Net(brainstate.nn.Module):
    """One branch per layer kind: layer -> LIF; returns every branch's spikes, flattened."""

    def __init__(self):
        super().__init__()
        self.reads = {}
        for name, (layer, read) in _kinds().items():
            setattr(self, name, layer)
            out = layer.out_size if not hasattr(layer, 'state_size') or name == 'streaming' else layer.state_size
            setattr(self, name + '_lif', _LIF(out))
            self.reads[name] = read

    def update(self, x):
        out = []
        for name, read in self.reads.items():
            s = getattr(self, name + '_lif')(getattr(self, name)(read(x)))
            out.append(jnp.reshape(s, (s.shape[0], -1)))
        return jnp.concatenate(out, axis=-1)


def _loss(s):
    return jnp.sum(s * jnp.cos(jnp.arange(s.shape[-1], dtype=s.dtype))[None])


def _spikes():
    rng = np.random.default_rng(0)
    return rng.random((T, BATCH) + IN) < 0.3


def _as(form, base):
    """The (T, B, ...) spikes ``base`` in one form (a BinaryArray marks its spikes with 0.5: any
    non-zero is a spike of 1; the surrogate form is the forward value of a spike function)."""
    import brainevent
    if form == 'float32':
        return jnp.asarray(base, jnp.float32)
    if form == 'bool':
        return jnp.asarray(base)
    if form == 'int':
        return jnp.asarray(base, jnp.int8)
    if form == 'binary_array':
        return brainevent.BinaryArray(jnp.asarray(base * np.float32(0.5)))
    return braintools.surrogate.sigmoid(jnp.asarray(np.where(base, 1.0, -1.0), jnp.float32))


def _net():
    brainstate.random.seed(0)
    net = _Net()
    brainstate.nn.init_all_states(net, batch_size=BATCH)
    return net


def _run_all(form, base, scan=True):
    """For one spike form: the network's outputs over time and its BPTT gradients through for_loop
    (one jitted program), one layer vmapped over the time axis, and (``scan``) the BPTT gradients
    through a raw lax.scan of brainstate's pure form."""
    net = _net()
    params = net.states(brainstate.ParamState)
    xs = _as(form, base)

    def bptt():
        brainstate.nn.reset_all_states(net, batch_size=BATCH)
        ys = brainstate.transform.for_loop(net, xs)
        return jnp.sum(jax.vmap(_loss)(ys)), ys

    grads, ys = brainstate.transform.jit(brainstate.transform.grad(bptt, params, has_aux=True))()
    conv = net.conv2d
    out = {'forward': ys, 'bptt_for_loop': grads,
           'vmap': jax.jit(jax.vmap(lambda x: conv.apply(conv.weight.value, x)))(xs)}
    if scan:
        def scan_loss(param_tree, graphdef, hidden_tree):
            def body(tree, x):
                model = brainstate.graph.treefy_merge(graphdef, param_tree, tree)
                y = model(x)
                return brainstate.graph.treefy_split(model, brainstate.ParamState, ...)[2], _loss(y)
            return jnp.sum(jax.lax.scan(body, hidden_tree, xs)[1])

        brainstate.nn.reset_all_states(net, batch_size=BATCH)
        graphdef, param_tree, hidden_tree = brainstate.graph.treefy_split(net, brainstate.ParamState, ...)
        out['bptt_scan'] = jax.jit(jax.grad(scan_loss), static_argnums=1)(param_tree, graphdef, hidden_tree)
    return out


@pytest.fixture(scope='module')
def reference():
    base = _spikes()
    return base, _run_all('float32', base)


def _close(got, want, what):
    got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(got_leaves) == len(want_leaves), what
    for a, b in zip(got_leaves, want_leaves):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), err_msg=what, **TOL)


def test_the_float_network_is_the_oracle(reference):
    """The float32 reference's convolutions against explicit tap sums (the matrix compares
    everything else with it), and its gradients are real."""
    base, out = reference
    net = _net()
    x = np.asarray(base[0], np.float64)
    layer = net.conv2d
    want = ref.conv(x, layer.weight.value['weight'], (1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1), 1) + 0.1
    np.testing.assert_allclose(layer(jnp.asarray(base[0], jnp.float32)), want, **TOL)
    for key, grads in out['bptt_for_loop'].items():
        assert any(float(jnp.max(jnp.abs(g))) > 1e-6 for g in jax.tree.leaves(grads)), key


@pytest.mark.parametrize('form', FORMS)
def test_every_spike_form_equals_float(form, reference):
    """Each form's columns against float32's (the raw-scan column for one form: what differs between
    forms is the layers' entrance, which the for_loop column already runs for each)."""
    base, want = reference
    got = _run_all(form, base, scan=form == 'int')
    for column in got:
        _close(got[column], want[column], f"{form} / {column}")


def _reproducer(form, algorithm):
    """The issue's reproducer: Conv2d((8, 8, 3), 4, 3) -> brainpy.state.LIF, trained online on
    5 steps of 5% spikes of one form; the online gradient of the convolution's weights."""
    braintrace = pytest.importorskip('braintrace', reason='braintrace installs on Python >= 3.12 only')
    import brainpy

    class Net(brainstate.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = brainconv.Conv2d((8, 8, 3), 4, 3, w_init=cheap_init(3))
            self.lif = brainpy.state.LIF((8, 8, 4), R=4., tau=2., V_th=0.5, V_reset=0., V_rest=0.,
                                         V_initializer=braintools.init.Constant(0.),
                                         spk_fun=braintools.surrogate.Sigmoid())

        def update(self, x):
            return self.lif(self.conv(x))

    base = np.random.default_rng(1).random((5, BATCH, 8, 8, 3)) < 0.05
    xs = _as(form, base)
    with brainstate.environ.context(dt=1.0):
        brainstate.random.seed(0)
        options = dict(decay_or_rank=0.9) if algorithm == 'pp_prop' else {}
        learner = braintrace.compile(Net(), getattr(braintrace, algorithm), xs[0], batch_size=BATCH, **options)
        weights = jnp.cos(jnp.arange(4.))[None, None, None]
        grads = learner.etrace_grad(xs, step_fn=lambda x: jnp.sum(learner(x) * weights))
    return grads[('conv', 'weight')]['weight']


@pytest.mark.parametrize('algorithm', ['D_RTRL', 'pp_prop'])
def test_bool_and_int_spikes_train_online(algorithm):
    """Boolean and integer spikes through braintrace (they crashed: D_RTRL's VJP and pp_prop's scan
    carry met a bool input) give the online gradients of float32 spikes."""
    want = _reproducer('float32', algorithm)
    assert float(jnp.max(jnp.abs(want))) > 1e-4
    for form in ('bool', 'int'):
        np.testing.assert_allclose(_reproducer(form, algorithm), want, err_msg=form, **TOL)
