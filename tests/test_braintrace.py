"""Online learning with braintrace: every brainconv layer's weights traced, exactly.

The oracle for ``D_RTRL`` is backpropagation through time: on a network where every layer
feeds one LIF layer and the loss reads the spikes (one hidden layer per branch: D_RTRL is
exact RTRL there), the online gradient of every parameter equals BPTT's gradient of the
summed loss (divided by the number of steps, as braintrace averages).  One network holds a
branch per layer kind and option, so one braintrace compilation covers them all, under each
lowering.  ``pp_prop`` (ES_D_RTRL) is approximate by design: its gradients must be non-zero
and equal to ``braintrace.nn.Conv2d``'s where both layers apply.
"""

import os

import brainunit as u
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
from braintrace._op import _registries as _bt_registries  # noqa: E402

import brainconv  # noqa: E402
from brainconv import _braintrace  # noqa: E402
from brainconv import lowering as _lowering  # noqa: E402

T, BATCH = 3, 2
IN = (6, 6, 4)


@pytest.fixture(scope='module', autouse=True)
def _dt():
    with brainstate.environ.context(dt=1.0):
        yield


def _lif(size):
    # Unitless LIF; a sigmoid surrogate so that every spike has a non-zero derivative.
    return brainpy.state.LIF(size, R=4., tau=2., V_th=0.5, V_reset=0., V_rest=0.,
                             V_initializer=braintools.init.Constant(0.), spk_fun=braintools.surrogate.Sigmoid())


def _init(seed, scale=0.5, unit=None):
    def make(shape):
        w = np.random.default_rng(seed).normal(0., scale, shape).astype(np.float32)
        return w if unit is None else w * unit
    return make


def _mask(shape):
    return (np.arange(int(np.prod(shape))).reshape(shape) % 3 != 1).astype(np.float32)


BIAS = braintools.init.Constant(0.2)


def _branches(lowering):
    """name -> (layer, how the branch reads the (B, 6, 6, 4) input, extra batch axes of its output)."""
    low = dict(lowering=lowering)
    cf = lambda x: jnp.moveaxis(x, -1, 1)  # noqa: E731
    frames = lambda x: jnp.stack([x, x[:, ::-1], x[:, :, ::-1]], axis=1)  # noqa: E731  (spikes too)
    same = lambda x: x  # noqa: E731
    return {
        'stride-reflect-bias': (brainconv.Conv2d(IN, 4, 3, stride=2, padding_mode='REFLECT', b_init=BIAS,
                                                 w_init=_init(1), **low), same, ()),
        'grouped-dilated-circular-masked': (brainconv.Conv2d(IN, 4, 3, groups=2, rhs_dilation=2, w_mask=_mask,
                                                             padding_mode='CIRCULAR', w_init=_init(2), **low),
                                            same, ()),
        'depthwise-multiplier-replicate-bias': (brainconv.Conv2d(IN, 8, 3, groups=4, padding_mode='REPLICATE',
                                                                 b_init=BIAS, w_init=_init(3), **low), same, ()),
        'lhs-dilated-channel-first': (brainconv.Conv2d((4, 6, 6), 4, 3, lhs_dilation=2, stride=2, channel_first=True,
                                                       b_init=BIAS, w_init=_init(4), **low), cf, ()),
        'transposed-grouped-output-padding-masked': (brainconv.ConvTranspose2d(
            IN, 4, 3, stride=2, padding='VALID', output_padding=1, groups=2, b_init=BIAS, w_mask=_mask,
            w_init=_init(5), **low), same, ()),
        'transposed-circular-channel-first': (brainconv.ConvTranspose2d(
            (4, 6, 6), 2, 3, stride=2, padding_mode='CIRCULAR', channel_first=True, w_init=_init(6), **low), cf, ()),
        'scaled-ws-gain-masked-bias': (brainconv.ScaledWSConv2d(IN, 4, 3, b_init=BIAS, w_mask=_mask, w_init=_init(7),
                                                                **low), same, ()),
        'scaled-ws-no-gain': (brainconv.ScaledWSConv2d(IN, 4, 3, ws_gain=False, w_init=_init(8), **low), same, ()),
        'separable-bias': (brainconv.SeparableConv2d(IN, 4, 3, depth_multiplier=2, b_init=BIAS,
                                                     depthwise_init=_init(9), pointwise_init=_init(10), **low),
                           same, ()),
        'local-strided-masked-bias': (brainconv.LocalConv2d(IN, 4, 3, stride=2, b_init=BIAS, w_mask=_mask,
                                                            w_init=_init(11)), same, ()),
        'conv1d-causal': (brainconv.Conv1d((6, 4), 4, 3, padding='CAUSAL', b_init=BIAS, w_init=_init(12), **low),
                          lambda x: x[:, 0], ()),
        'conv3d-strided': (brainconv.Conv3d((3, 6, 6, 4), 2, 2, stride=(1, 2, 2), w_init=_init(13), **low),
                           frames, ()),
        'conv4d': (brainconv.Conv(4, (2, 3, 6, 6, 4), 2, 2, b_init=BIAS, w_init=_init(14), **low),
                   lambda x: jnp.stack([frames(x), frames(x)[:, ::-1]], axis=1), ()),
        'two-batch-axes': (brainconv.Conv2d(IN, 3, 3, b_init=BIAS, w_init=_init(15), **low),
                           lambda x: jnp.stack([x, x[..., ::-1]], axis=1), (2,)),
        'streaming': (brainconv.Conv2d((5, 6, 4), 3, (2, 3), padding=((1, 0), (1, 1)), b_init=BIAS,
                                       w_init=_init(16), **low).streaming(), lambda x: x[:, 0], ()),
        # output in mS, divided by mS before the neuron; the bias in uS (scaled into mS inside the op)
        'units': (brainconv.Conv2d(IN, 4, 3, w_init=_init(17, unit=u.mS), b_init=braintools.init.Constant(
            200. * u.uS), **low), same, ()),
    }


class _Branches(brainstate.nn.Module):
    """One branch per layer: layer -> LIF; the output is every branch's spikes, flattened.
    ``names``: only these branches (default: all)."""

    def __init__(self, lowering, names=None):
        super().__init__()
        self.inputs = {}
        for name, (layer, read, extra) in _branches(lowering).items():
            if names is not None and name not in names:
                continue
            key = name.replace('-', '_')
            setattr(self, key, layer)
            setattr(self, key + '_lif', _lif(extra + tuple(layer.out_size)))
            self.inputs[key] = read

    def layers(self):
        return {key: getattr(self, key) for key in self.inputs}

    def update(self, x):
        out = []
        for key, read in self.inputs.items():
            y = getattr(self, key)(read(x))
            if key == 'units':
                y = y / u.mS
            s = getattr(self, key + '_lif')(y)
            out.append(jnp.reshape(s, (s.shape[0], -1)))
        return jnp.concatenate(out, axis=-1)


def _loss(s):
    return jnp.sum(s * jnp.cos(jnp.arange(s.shape[-1], dtype=s.dtype))[None])


@pytest.fixture(scope='module')
def xs():
    return jnp.asarray(np.random.default_rng(0).uniform(0., 2., (T, BATCH) + IN), jnp.float32)


@pytest.fixture(scope='module')
def spikes(xs):
    """Boolean spikes (about 30% active): what the network runs on under 'auto'."""
    return xs > 1.4


def _online(net, algorithm, xs, **options):
    learner = braintrace.compile(net, algorithm, xs[0], batch_size=BATCH, **options)
    grads = learner.etrace_grad(xs, step_fn=lambda x: _loss(learner(x)))
    return learner, grads


def _bptt(net, xs):
    brainstate.nn.init_all_states(net, batch_size=BATCH)
    params = net.states(brainstate.ParamState)
    total = lambda: jnp.sum(brainstate.transform.for_loop(lambda x: _loss(net(x)), xs))  # noqa: E731
    return brainstate.transform.grad(total, params)()


def _relative_error(got, want):
    got, want = u.get_mantissa(got), u.get_mantissa(want)  # both in the parameter's unit
    return float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))


#: The branches every formulation runs through (a strided, a depthwise, an lhs-dilated grouped and a
#: 3-d core convolution): the D_RTRL rules do not depend on the formulation, which only runs the
#: layer's forward inside its ETP primitive, so every layer kind and option runs under 'auto' (what
#: users run) and 'lax', and each other formulation on these.
CORE_GEOMETRIES = ('stride-reflect-bias', 'depthwise-multiplier-replicate-bias',
                   'transposed-grouped-output-padding-masked', 'conv3d-strided')


@pytest.mark.parametrize('lowering', [None] + list(brainconv.LOWERINGS))
def test_d_rtrl_equals_bptt(lowering, xs, spikes):
    """D_RTRL's online gradient of every parameter of every layer kind and option equals BPTT's
    (under 'auto' on boolean spikes, which take the event path; float inputs elsewhere)."""
    brainstate.random.seed(0)
    net = _Branches(lowering, None if lowering in (None, 'lax') else CORE_GEOMETRIES)
    xs = spikes if lowering is None else xs
    learner, grads = _online(net, braintrace.D_RTRL, xs)
    want = _bptt(net, xs)
    params = net.states(brainstate.ParamState)
    assert {path for path, _ in learner.report.etrace_weights} == set(params)  # every weight traced
    assert not learner.report.excluded_weights
    for path in params:
        for key in want[path]:
            w = want[path][key] / T
            assert float(jnp.max(jnp.abs(u.get_mantissa(w)))) > 1e-4, (path, key)  # a real gradient
            err = _relative_error(grads[path][key], w)
            assert err < 1e-5, (lowering, path, key, err)


def test_pp_prop_learns_every_weight(spikes):
    """pp_prop (ES_D_RTRL): every brainconv weight traced, finite, non-zero online gradients, on
    boolean spikes (test_spike_matrix.py: they give float spikes' numbers)."""
    brainstate.random.seed(0)
    net = _Branches(None)
    learner, grads = _online(net, braintrace.pp_prop, spikes, decay_or_rank=0.9)
    params = net.states(brainstate.ParamState)
    assert {path for path, _ in learner.report.etrace_weights} == set(params)
    for path in params:
        for key, g in grads[path].items():
            g = np.asarray(u.get_mantissa(g))
            assert np.all(np.isfinite(g)) and np.abs(g).max() > 1e-6, (path, key)


class _OneLayer(brainstate.nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.conv = conv
        self.lif = _lif(conv.out_size)

    def update(self, x):
        s = self.lif(self.conv(x))
        return jnp.reshape(s, (s.shape[0], -1))


@pytest.mark.parametrize('algorithm', ['D_RTRL', 'pp_prop'])
def test_same_as_braintrace_conv2d(algorithm, xs):
    """Where braintrace's own Conv2d applies (ungrouped, zero padding, channels last; its D_RTRL
    fails on a bias), brainconv's Conv2d gets the same online gradients from both algorithms."""
    bias = BIAS if algorithm == 'pp_prop' else None
    ours = _OneLayer(brainconv.Conv2d(IN, 4, 3, stride=2, b_init=bias, w_init=_init(20)))
    assert ours.conv.pads == ((0, 1), (0, 1))  # SAME at stride 2 on 6, written out for braintrace below
    with jax.numpy_rank_promotion('allow'):
        theirs = _OneLayer(braintrace.nn.Conv2d(IN, 4, 3, stride=2, padding=((0, 1), (0, 1)), b_init=bias))
    theirs.conv.weight.value = ours.conv.weight.value
    options = {'decay_or_rank': 0.9} if algorithm == 'pp_prop' else {}
    _, grads = _online(ours, getattr(braintrace, algorithm), xs, **options)
    with jax.numpy_rank_promotion('allow'):  # braintrace's bias add relies on implicit rank promotion
        _, want = _online(theirs, getattr(braintrace, algorithm), xs, **options)
    for key in want['conv', 'weight']:
        g, w = grads['conv', 'weight'][key], want['conv', 'weight'][key]
        assert float(jnp.max(jnp.abs(w))) > 1e-4
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(w))))


def test_etrace_false_keeps_a_weight_non_temporal(xs):
    """``layer.etrace = False``: braintrace reports the weight as non-temporal and, behind a
    spiking layer, its online gradient is zero; the other layers are traced as before."""
    net = _Branches(None, ('stride-reflect-bias', 'units', 'transposed-grouped-output-padding-masked'))
    net.stride_reflect_bias.etrace = False
    learner, grads = _online(net, braintrace.D_RTRL, xs)
    assert {path for path, _ in learner.report.excluded_weights} == {('stride_reflect_bias', 'weight')}
    assert not any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads['stride_reflect_bias', 'weight']))
    traced = {path for path, _ in learner.report.etrace_weights}
    assert {('units', 'weight'), ('transposed_grouped_output_padding_masked', 'weight')} <= traced


def test_a_trace_that_does_not_fit_is_refused(xs):
    """An exact trace over the memory limit raises, with its size and the ways out, at compile time."""
    conv = brainconv.Conv2d(IN, 4, 3, w_init=_init(21))
    before = np.asarray(conv.weight.value['weight'])
    _braintrace.set_trace_memory_limit(1000)
    try:
        message = r'(?s)Conv2d.*40.5 KiB.*weight \(2, 6, 6, 3, 3, 4, 4\).*limit of 1000 bytes.*pp_prop'
        with pytest.raises(brainconv.TraceMemoryError, match=message):
            braintrace.compile(_OneLayer(conv), braintrace.D_RTRL, xs[0], batch_size=BATCH)
        braintrace.compile(_OneLayer(conv), braintrace.pp_prop, xs[0], batch_size=BATCH, decay_or_rank=0.9)
    finally:
        _braintrace.set_trace_memory_limit(None)
    np.testing.assert_array_equal(np.asarray(conv.weight.value['weight']), before)
    with pytest.raises(ValueError, match='nbytes'):
        brainconv.set_trace_memory_limit(-1)


class _TwoLayers(brainstate.nn.Module):
    def __init__(self, a, b):
        super().__init__()
        self.first, self.second = a, b
        self.lif_a, self.lif_b = _lif(a.out_size), _lif(b.out_size)

    def update(self, x):
        sa, sb = self.lif_a(self.first(x)), self.lif_b(self.second(x))
        return jnp.concatenate([jnp.reshape(sa, (sa.shape[0], -1)), jnp.reshape(sb, (sb.shape[0], -1))], axis=-1)


def test_the_traces_of_the_whole_network_are_checked_together(xs):
    """Two layers whose exact traces (40.5 KiB each) fit the limit alone but not together: refused at
    compile, naming the largest; under a limit that holds both, the network compiles."""
    a, b = (brainconv.Conv2d(IN, 4, 3, w_init=_init(s)) for s in (22, 23))
    _braintrace.set_trace_memory_limit(60 * 1024)
    try:
        message = r'(?s)2 brainconv layers need 81.0 KiB together.*limit of 60.0 KiB.*first \(Conv2d\) 40.5 KiB'
        with pytest.raises(brainconv.TraceMemoryError, match=message):
            braintrace.compile(_TwoLayers(a, b), braintrace.D_RTRL, xs[0], batch_size=BATCH)
        _braintrace.set_trace_memory_limit(90 * 1024)
        braintrace.compile(_TwoLayers(a, b), braintrace.D_RTRL, xs[0], batch_size=BATCH)
    finally:
        _braintrace.set_trace_memory_limit(None)


def test_braintrace_private_names_are_still_there():
    """brainconv fills private braintrace registries (no public setter in 0.2.8): fail loudly when
    braintrace renames them, instead of silently losing exactness or the hidden grouping."""
    assert hasattr(_bt_registries, 'ETP_RULES_INSTANT_DRTRL') and hasattr(_bt_registries, 'ETP_RULES_SOLVE_DRTRL')
    conv = brainconv.Conv2d(IN, 4, 3)
    jax.eval_shape(conv, jnp.zeros((BATCH,) + IN))  # binds (and so registers) the layer's primitive
    prims = _braintrace._PRIMITIVES[conv]
    for p in prims:
        assert p in _bt_registries.ETP_PRIMITIVES
        assert p in _bt_registries.ETP_RULES_INSTANT_DRTRL and p in _bt_registries.ETP_RULES_SOLVE_DRTRL
    assert _lowering.conv_p.name in _bt_hidden_group._RECURRENT_WEIGHT_MIXING_PRIMITIVES


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_recurrent_cells_are_traced(cell, xs):
    """The convolutions inside ConvLSTMCell / ConvGRUCell are traced (the gates mix channels, so
    D_RTRL is braintrace's diagonal approximation there, as for its own cells): non-zero online
    gradients for every weight, equal between the default formulation and 'lax'."""
    make = brainconv.ConvLSTMCell2d if cell == 'lstm' else brainconv.ConvGRUCell2d

    class Net(brainstate.nn.Module):
        def __init__(self, lowering):
            super().__init__()
            self.cell = make(IN, 3, 3, stride=2, lowering=lowering)

        def update(self, x):
            return jnp.reshape(self.cell(x), (x.shape[0], -1))

    brainstate.random.seed(3)
    fast, ref = Net(None), Net('lax')
    ref_params = ref.states(brainstate.ParamState)
    for path, state in fast.states(brainstate.ParamState).items():
        ref_params[path].value = state.value
    learner, grads = _online(fast, braintrace.D_RTRL, xs)
    _, want = _online(ref, braintrace.D_RTRL, xs)
    assert {path for path, _ in learner.report.etrace_weights} == set(fast.states(brainstate.ParamState))
    for path in want:
        for g, w in zip(jax.tree.leaves(grads[path]), jax.tree.leaves(want[path])):
            assert float(jnp.max(jnp.abs(w))) > 1e-6, path
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(w))))


def test_transforms_through_the_traced_op():
    """With braintrace imported a layer is one ETP primitive: jit, jvp, linearize, hessian, grad of
    grad, linear_transpose, vmap (input and weights), checkpoint and scan see the same numbers as
    the plain layer (``etrace = False``)."""
    import test_transforms as tt

    for kind in ('conv-stride-circular', 'depthwise-bias', 'transposed-circular-grouped-1d', 'scaled-ws'):
        brainstate.random.seed(7)
        layer = {**tt.LAYERS, **tt.FEATURE_LAYERS}[kind]()
        x = jnp.asarray(np.random.default_rng(3).standard_normal((2,) + layer.in_size), jnp.float32)
        run = jax.jit(lambda p, a, layer=layer: tt._transforms(layer, a, p))
        traced = run(layer.weight.value, x)
        jaxpr = str(jax.make_jaxpr(layer.apply)(layer.weight.value, x))
        assert 'brainconv_' + type(layer).__name__ in jaxpr, kind
        layer.etrace = False
        run = jax.jit(lambda p, a, layer=layer: tt._transforms(layer, a, p))
        plain = run(layer.weight.value, x)
        tt._assert_close(traced, plain, kind)


def test_online_learning_runs_data_parallel_with_the_event_kernel_on_each_shard():
    """braintrace's D_RTRL with the batch sharded over two devices: each device's ETP operation runs
    the event kernel on its shard of the spikes, nothing is all-gathered, and the online gradient
    equals one device's."""
    import subprocess
    import sys
    import textwrap
    script = textwrap.dedent('''
        import os, re
        import jax, jax.numpy as jnp, numpy as np, brainstate, braintrace, brainpy, braintools, brainconv
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        mesh = Mesh(np.array(jax.devices()), ('data',))
        xs = np.random.default_rng(0).random((4, 16, 15, 15, 12)) < 0.05
        out = []
        for sharded in (False, True):
            with brainstate.environ.context(dt=1.0):
                init = lambda s: (np.random.default_rng(1).standard_normal(s) * .3).astype('f4')
                conv = brainconv.Conv2d((15, 15, 12), 32, 5, padding='VALID', w_init=init)
                lif = brainpy.state.LIF((11, 11, 32), R=4., tau=2., V_th=0.5, V_reset=0., V_rest=0.,
                                        V_initializer=braintools.init.Constant(0.),
                                        spk_fun=braintools.surrogate.Sigmoid())
                net = brainstate.nn.Sequential(conv, lif)
                learner = braintrace.compile(net, braintrace.D_RTRL, jnp.asarray(xs[0]), batch_size=16)
                x = jnp.asarray(xs)
                if sharded:
                    x = jax.device_put(x, NamedSharding(mesh, P(None, 'data')))
                f = brainstate.transform.jit(lambda a: learner.etrace_grad(a, step_fn=lambda b: jnp.sum(learner(b))))
                grads = f(x)
                text = f.lower(x).compile().as_text()
                out.append((np.asarray(jax.tree.leaves(grads)[0]), text.count('brainconv_event_forward'),
                            len(re.findall(r'all-gather(-start)?[(]', text))))
        (g1, e1, _), (g2, e2, a2) = out
        print('RESULT', float(np.abs(g2 - g1).max() / np.abs(g1).max()), e1, e2, a2)
    ''')
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2', JAX_PLATFORMS='cpu')
    proc = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    err, single_events, sharded_events, gathers = next(
        line for line in proc.stdout.splitlines() if line.startswith('RESULT')).split()[1:]
    assert float(err) < 1e-5 and int(single_events) >= 1 and int(sharded_events) >= 1 and int(gathers) == 0
