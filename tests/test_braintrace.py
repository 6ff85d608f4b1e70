"""Online learning through brainconv layers with braintrace (eligibility-trace algorithms).

A small convolutional spiking network -- braintrace's own ``Conv2d`` layers around a
brainconv ``Conv2d`` (stride 2), a depthwise ``Conv2d`` and a ``ConvTranspose2d``
(stride 2), LIF neurons in between, a leaky rate readout -- is trained online with
``D_RTRL`` and ``pp_prop`` (``ES_D_RTRL`` is the same class).  braintrace drives the
network through ``jax.jvp`` (the ``df`` factor of each trace), vmapped ``jax.vjp``
(hidden-to-hidden Jacobians) and plain reverse mode, so every brainconv formulation must
carry all three.  The oracle is the same network on ``lowering='lax'`` (one
``lax.conv_general_dilated``, XLA's own derivatives), with the same weights.

What braintrace does with brainconv weights (docs/braintrace.md): they are plain
``ParamState`` s used by a non-ETP primitive, so braintrace keeps no eligibility trace
for them; between two spiking layers their online gradient is zero.
"""

import numpy as np
import pytest

braintrace = pytest.importorskip(
    'braintrace', reason='braintrace (online learning) installs only on Python >= 3.12 (the test extra has it there)')

import brainpy  # noqa: E402  (a braintrace dependency)
import brainstate  # noqa: E402
import braintools  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from braintrace._compiler import hidden_group as _bt_hidden_group  # noqa: E402

import brainconv  # noqa: E402
from brainconv import lowering as _lowering  # noqa: E402

T, BATCH, CLASSES = 4, 2, 3
DT = 1.0  # unitless time: LIF and readout time constants below are in steps


def _lif(size, gain):
    # Unitless LIF; a sigmoid surrogate so that every spike has a non-zero derivative.
    return brainpy.state.LIF(size, R=gain, tau=2., V_th=0.5, V_reset=0., V_rest=0.,
                             V_initializer=braintools.init.Constant(0.), spk_fun=braintools.surrogate.Sigmoid())


class _Net(brainstate.nn.Module):
    """8x8x2 -> bt.Conv2d -> LIF -> brainconv Conv2d stride 2 -> LIF (4x4x4) -> depthwise -> LIF
    -> ConvTranspose2d stride 2 -> LIF (8x8x4) -> bt.Conv2d -> LIF -> readout (3)."""

    def __init__(self, lowering):
        super().__init__()
        self.c1 = braintrace.nn.Conv2d((8, 8, 2), 4, kernel_size=3)
        self.n1 = _lif((8, 8, 4), 1.)
        self.c2 = brainconv.Conv2d((8, 8, 4), 4, kernel_size=3, stride=2, lowering=lowering)
        self.n2 = _lif((4, 4, 4), 4.)
        self.c3 = brainconv.Conv2d((4, 4, 4), 4, kernel_size=3, groups=4, lowering=lowering)
        self.n3 = _lif((4, 4, 4), 4.)
        self.c4 = brainconv.ConvTranspose2d((4, 4, 4), 4, kernel_size=3, stride=2, lowering=lowering)
        self.n4 = _lif((8, 8, 4), 4.)
        self.c5 = braintrace.nn.Conv2d((8, 8, 4), 2, kernel_size=3)
        self.n5 = _lif((8, 8, 2), 4.)
        self.out = braintrace.nn.LeakyRateReadout(128, CLASSES, tau=5.)

    def brainconv_layers(self):
        return {'c2': self.c2, 'c3': self.c3, 'c4': self.c4}

    def update(self, x):
        s = self.n1(self.c1(x))
        s = self.n2(self.c2(s))
        s = self.n3(self.c3(s))
        s = self.n4(self.c4(s))
        s = self.n5(self.c5(s))
        return self.out(jnp.reshape(s, (s.shape[0], -1)))


# braintrace's default configuration (its 'diagonal' recurrence scope cuts hidden-to-hidden
# transitions at the primitives it knows by name; brainconv registers its own convolution
# primitive there when it is first traced, see brainconv/_interop.py).
# 'coupled' scope: hidden-to-hidden paths are traced through every convolution, so the
# trace's df factor is a jax.jvp through c2, c3 and c4 (n1 and n4 form one hidden group).
ALGORITHMS = {
    'D_RTRL': (braintrace.D_RTRL, lambda: {}),
    'D_RTRL-coupled': (braintrace.D_RTRL, lambda: {'config': braintrace.ETraceConfig(recurrence_scope='coupled')}),
    'pp_prop': (braintrace.pp_prop, lambda: {'decay_or_rank': 0.9, 'config': braintrace.ETraceConfig(
        trace_factorization='io_factorized', decay=0.9)}),
}


@pytest.fixture(scope='module')
def data():
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.uniform(0., 4., (T, BATCH, 8, 8, 2)), jnp.float32)
    ys = jnp.asarray(rng.integers(0, CLASSES, (T, BATCH)), jnp.int32)
    return xs, ys


@pytest.fixture(scope='module', autouse=True)
def _dt():
    with brainstate.environ.context(dt=DT):
        yield


def _net_pair():
    """The network on the default lowering and a copy on 'lax' with the same weights."""
    brainstate.random.seed(0)
    fast, ref = _Net(None), _Net('lax')
    ref_params = ref.states(brainstate.ParamState)
    for path, state in fast.states(brainstate.ParamState).items():
        ref_params[path].value = state.value
    return fast, ref


def _etrace_grad(learner, xs, ys):
    def step_loss(x, y):
        return jnp.mean(braintools.metric.softmax_cross_entropy_with_integer_labels(learner(x), y))
    return learner.etrace_grad(xs, ys, step_fn=step_loss, return_value=True)


def _run(net, algorithm, options, xs, ys):
    learner = braintrace.compile(net, algorithm, xs[0], batch_size=BATCH, **options)
    grads, losses = _etrace_grad(learner, xs, ys)
    return learner, grads, losses


def _assert_grads_close(grads, ref_grads):
    assert set(grads) == set(ref_grads)
    for path in grads:
        for got, want in zip(jax.tree.leaves(grads[path]), jax.tree.leaves(ref_grads[path])):
            want = np.asarray(want)
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5 * np.abs(want).max(),
                                       err_msg=str(path))


TRACED = {('c1', 'weight'), ('c5', 'weight'), ('out', 'W')}  # the weights routed through ETP ops


def _assert_lowerings(fast, ref):
    on = {name: layer.lowering for name, layer in fast.brainconv_layers().items()}
    if jax.default_backend() == 'cpu':  # 'auto' picks 'lax' off CPU: nothing to compare there
        assert 'lax' not in on.values(), on
    assert {layer.lowering for layer in ref.brainconv_layers().values()} == {'lax'}


def test_es_d_rtrl_is_pp_prop():
    assert braintrace.ES_D_RTRL is braintrace.pp_prop


# One test per algorithm, everything in it: pytest-xdist would build a shared fixture
# once per worker.
@pytest.mark.parametrize('name', sorted(ALGORITHMS))
def test_online_learning(name, data):
    algorithm, options = ALGORITHMS[name]
    xs, ys = data
    fast, ref = _net_pair()
    _assert_lowerings(fast, ref)
    learner, grads, losses = _run(fast, algorithm, options(), xs, ys)
    ref_learner, ref_grads, ref_losses = _run(ref, algorithm, options(), xs, ys)

    # Online gradients on the default lowering equal those on 'lax'.
    np.testing.assert_allclose(np.asarray(losses), np.asarray(ref_losses), rtol=1e-5)
    _assert_grads_close(grads, ref_grads)

    # The same hidden groups as on 'lax' (brainconv's primitive is registered with braintrace);
    # under the coupled scope n1 and n4 form one group, its transition a jax.jvp through c2-c4.
    assert _lowering.conv_p.name in _bt_hidden_group._RECURRENT_WEIGHT_MIXING_PRIMITIVES
    groups = [paths for _, paths in learner.report.hidden_groups]
    assert groups == [paths for _, paths in ref_learner.report.hidden_groups]
    if name.endswith('coupled'):
        assert [('n1', 'V'), ('n4', 'V')] in groups, groups
    else:
        assert all(len(paths) == 1 for paths in groups), groups  # one group per spiking layer
    assert np.abs(np.asarray(jax.tree.leaves(grads['c1', 'weight'])[0])).max() > 1e-3

    # brainconv weights are plain (non-ETP) parameters: no trace, and here, where every
    # path from them to the loss passes a hidden state, a zero online gradient.
    assert {path for path, _ in learner.report.etrace_weights} == TRACED
    plain = {path for path, _ in learner.report.excluded_weights}
    assert plain == {(layer, 'weight') for layer in fast.brainconv_layers()}
    for path in plain:
        assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads[path])), path

    # Two SGD steps (the first with the gradients above): the loss stays finite, the
    # traced weights move, brainconv's do not.
    params = learner.param_states
    before = {path: jax.tree.leaves(state.value) for path, state in params.items()}
    for step in range(2):
        if step:
            grads, losses = _etrace_grad(learner, xs, ys)
            assert np.all(np.isfinite(np.asarray(losses)))
        for path, g in grads.items():
            params[path].value = jax.tree.map(lambda p, d: p - 0.5 * d, params[path].value, g)
    for path, state in params.items():
        moved = any(np.any(np.asarray(a) != np.asarray(b)) for a, b in zip(jax.tree.leaves(state.value), before[path]))
        assert moved == (path in TRACED), path


class _TracedConv2d(brainconv.Conv2d):
    """A brainconv Conv2d (shapes, pads, initialisation) whose convolution is braintrace's
    ETP ``conv``, so braintrace keeps an eligibility trace for its kernel (ZEROS padding,
    channels-last only; the bias, if any, stays a plain parameter)."""

    def _op(self, x, w):
        g = self.spec.geometry
        return braintrace.conv(x, w, strides=g.stride, padding=g.pads, lhs_dilation=g.lhs_dilation,
                               rhs_dilation=g.rhs_dilation, feature_group_count=self.groups,
                               dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


class _OneLayer(brainstate.nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.c1 = conv
        self.n1 = _lif((4, 4, 4), 4.)
        self.out = braintrace.nn.LeakyRateReadout(64, CLASSES, tau=5.)

    def update(self, x):
        s = self.n1(self.c1(x))
        return self.out(jnp.reshape(s, (s.shape[0], -1)))


def test_brainconv_layer_routed_through_etp_conv(data):
    """A brainconv layer whose ``_op`` calls ``braintrace.conv`` is traced like
    ``braintrace.nn.Conv2d``: same trace, same online gradients."""
    xs, ys = data
    ours = _OneLayer(_TracedConv2d((8, 8, 2), 4, kernel_size=3, stride=2))
    assert ours.c1.pads == ((0, 1), (0, 1))  # SAME at stride 2 on 8: (0, 1), written out for braintrace below
    theirs = _OneLayer(braintrace.nn.Conv2d((8, 8, 2), 4, kernel_size=3, stride=2, padding=((0, 1), (0, 1))))
    their_params = theirs.states(brainstate.ParamState)
    for path, state in ours.states(brainstate.ParamState).items():
        their_params[path].value = state.value
    learner, grads, losses = _run(ours, braintrace.D_RTRL, {}, xs, ys)
    _, ref_grads, ref_losses = _run(theirs, braintrace.D_RTRL, {}, xs, ys)
    assert {path for path, _ in learner.report.etrace_weights} == {('c1', 'weight'), ('out', 'W')}
    np.testing.assert_allclose(np.asarray(losses), np.asarray(ref_losses), rtol=1e-5)
    _assert_grads_close(grads, ref_grads)
    assert np.abs(np.asarray(jax.tree.leaves(grads['c1', 'weight'])[0])).max() > 1e-3
