"""The 'event' formulation in the layers: spike inputs against the NumPy oracle.

Kernel-level tests (every geometry, both backends) are in ``test_event_kernels.py``; here the
layers take spikes -- boolean, integer, brainevent ``BinaryArray`` (``'auto'`` picks the event
path) and float 0/1 with ``lowering='event'`` -- at densities 0 (all zero), 0.1%, 1%, 10%, 50%
and 100% (all one), and their output and kernel gradient are compared with explicit tap sums.
conftest.py forces the event kernel to run (``event_branch('event')``); the run-time density
switch itself is tested below with ``event_branch(None)``.  The event formulation also runs in
the transform, precision, sharding and braintrace matrices (every test over ``LOWERINGS``).
"""

import _reference as ref
import brainstate
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _configs import cheap_init

import brainconv
from brainconv import lowering as _lowering
from brainconv.lowering import event as _event

pytestmark = pytest.mark.skipif(not _event.available(), reason='no event kernel backend here')

DENSITIES = (0.0, 0.001, 0.01, 0.1, 0.5, 1.0)
TOL = dict(rtol=1e-5, atol=1e-5)


def _spikes(shape, density, seed=0):
    if density in (0.0, 1.0):
        return np.full(shape, bool(density))
    rng = np.random.default_rng(seed)
    x = rng.random(shape) < density
    x.flat[rng.integers(x.size)] = True  # at least one spike
    return x


def _runs_event(fn, *args):
    """Whether the compiled ``fn`` calls an event kernel (C++ FFI target or brainevent's numba bridge)."""
    text = jax.jit(fn).lower(*args).as_text()
    return 'brainconv_event' in text or 'brainevent_numba' in text


def _mask(shape):
    return (np.arange(int(np.prod(shape))).reshape(shape) % 3 != 1).astype(np.float32)


def _conv_oracle(layer, x, w=None):
    """The layer's convolution of ``x`` (channels last, one batch axis) from its geometry."""
    g = layer.spec.geometry
    w = np.asarray(layer.kernel() if w is None else w, np.float64)
    if layer.padding_mode == 'ZEROS':
        return ref.conv(x, w, g.stride, g.pads, g.lhs_dilation, g.rhs_dilation, layer.groups)
    return ref.conv(x, w, g.stride, g.pads, g.lhs_dilation, g.rhs_dilation, layer.groups, layer.padding_mode)


def _grad_oracle(layer, x, r):
    """d sum(conv(x) * r) / d kernel."""
    g = layer.spec.geometry
    if layer.padding_mode != 'ZEROS':
        x = np.pad(x, [(0, 0)] + list(g.pads) + [(0, 0)], mode=ref.NP_MODE[layer.padding_mode])
        pads = ((0, 0),) * g.num_spatial_dims
    else:
        pads = g.pads
    return ref.conv_weight_grad(x, r, g.kernel_size, g.stride, pads, g.lhs_dilation, g.rhs_dilation, layer.groups)


def _cl(a, layer):
    """Channels last."""
    return np.moveaxis(a, 1, -1) if layer.channel_first else a


# name -> (layer, oracle of (layer, x channels-last float64) -> y channels-last, d y / d raw weight)
CASES = {
    'conv2d-stride-reflect-grouped-masked-bias': lambda: brainconv.Conv2d(
        (9, 9, 4), 6, 3, stride=2, groups=2, padding_mode='REFLECT', w_mask=_mask, w_init=cheap_init(1),
        b_init=cheap_init(2)),
    'depthwise-multiplier-circular-channel-first': lambda: brainconv.Conv2d(
        (4, 8, 8), 8, 3, groups=4, padding_mode='CIRCULAR', channel_first=True, w_init=cheap_init(3)),
    'conv1d-causal-lhs-rhs-dilated': lambda: brainconv.Conv1d(
        (12, 3), 4, 3, lhs_dilation=2, rhs_dilation=2, padding='CAUSAL', w_init=cheap_init(4)),
    'conv3d-strided-per-axis-padding': lambda: brainconv.Conv3d(
        (4, 5, 5, 2), 3, 2, stride=(1, 2, 2), padding=('CAUSAL', 'SAME', 1), w_init=cheap_init(5)),
    'conv4d': lambda: brainconv.Conv(4, (3, 3, 4, 4, 2), 2, 2, w_init=cheap_init(6)),
    'transposed-grouped-output-padding-bias': lambda: brainconv.ConvTranspose2d(
        (5, 5, 4), 4, 3, stride=2, groups=2, padding='VALID', output_padding=1, w_init=cheap_init(7),
        b_init=cheap_init(8)),
    'scaled-ws': lambda: brainconv.ScaledWSConv2d((6, 6, 3), 4, 3, w_init=cheap_init(9)),
}


def _expected(layer, x):
    """Forward and d sum(y * r) / d kernel (effective kernel, mask applied) from the oracle."""
    xc = _cl(np.asarray(x, np.float64), layer)
    if isinstance(layer, brainconv.ConvTranspose):
        g = layer.spec.geometry
        y = ref.conv_transpose(xc, layer.kernel(), g.stride, g.pads, g.out_spatial, g.rhs_dilation, layer.groups)
    else:
        y = _conv_oracle(layer, xc)
    if 'bias' in layer.weight.value:
        y = y + np.asarray(layer.weight.value['bias'], np.float64).reshape(-1)
    return y


@pytest.mark.parametrize('kind', list(CASES))
def test_spikes_against_the_oracle(kind):
    """Boolean spikes under the default lowering take the event path; output and kernel gradient
    equal the tap sums at every density; integer spikes and BinaryArrays give the same."""
    import brainevent

    layer = CASES[kind]()
    batch = (2,)
    shape = batch + tuple(layer.in_size)
    assert _runs_event(layer, jnp.zeros(shape, bool))
    # float inputs take the switch too where the event kernel can pay for this geometry
    g = layer.spec.geometry
    pays = _event.cost.may_pay(g, layer.groups, layer.in_channels, layer.spec.out_channels)
    assert _runs_event(layer, jnp.zeros(shape)) == pays
    r = np.random.default_rng(1).standard_normal(batch + tuple(layer.out_size)).astype(np.float32)

    @jax.jit
    def run(params, x):
        y, pull = jax.vjp(lambda p: layer.apply(p, x), params)
        return y, pull(jnp.asarray(r))[0]

    for density in DENSITIES:
        x = _spikes(shape, density, seed=int(density * 1000))
        y, grads = run(layer.weight.value, jnp.asarray(x))
        np.testing.assert_allclose(_cl(np.asarray(y), layer), _expected(layer, x), err_msg=f"{kind} {density}",
                                   **TOL)
        if isinstance(layer, (brainconv.ScaledWSConv, brainconv.ConvTranspose)):
            # the kernel gradient through the standardisation / transposed layout: against 'lax'
            xf = jnp.asarray(x, jnp.float32)
            want = jax.vjp(lambda p, xf=xf: _lax_twin(layer).apply(p, xf), layer.weight.value)[1](jnp.asarray(r))[0]
            for key in grads:
                np.testing.assert_allclose(grads[key], want[key], err_msg=f"{kind} {density} {key}", **TOL)
        else:
            dw = _grad_oracle(layer, _cl(np.asarray(x, np.float64), layer), _cl(r, layer).astype(np.float64))
            if layer.w_mask is not None:
                dw = dw * np.asarray(layer.w_mask)
            np.testing.assert_allclose(grads['weight'], dw, err_msg=f"{kind} {density}", **TOL)
        if density == 0.01:
            np.testing.assert_allclose(run(layer.weight.value, jnp.asarray(x, jnp.int32))[0], y, **TOL)
            np.testing.assert_allclose(layer(brainevent.BinaryArray(jnp.asarray(x))), y, **TOL)


def _lax_twin(layer):
    twin = type(layer).__new__(type(layer))
    twin.__dict__.update(layer.__dict__)
    twin._lowering = 'lax'
    return twin


def test_float_spikes_opt_in_with_surrogate_gradients():
    """Float 0/1 spikes (as brainpy's neurons emit them, a surrogate gradient attached) take the event
    path with ``lowering='event'`` (or ``set_lowering('event')``): values and both gradients -- the input
    gradient, through which surrogates flow, is dense -- equal 'lax''s."""
    layer = brainconv.Conv2d((8, 8, 4), 5, 3, stride=2, lowering='event', w_init=cheap_init(1))
    twin = _lax_twin(layer)
    v = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 4)), jnp.float32)

    @jax.custom_jvp
    def spike(a):
        return (a > 1.0).astype(a.dtype)

    @spike.defjvp
    def _(primals, tangents):
        return spike(primals[0]), tangents[0] / (1 + jnp.abs(primals[0] - 1.0)) ** 2

    def loss(p, a, net):
        return jnp.sum(jnp.tanh(net.apply(p, spike(a))))

    assert _runs_event(layer.apply, layer.weight.value, v)
    got = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(layer.weight.value, v, layer)
    want = jax.grad(loss, argnums=(0, 1))(layer.weight.value, v, twin)
    np.testing.assert_allclose(got[0]['weight'], want[0]['weight'], **TOL)
    np.testing.assert_allclose(got[1], want[1], **TOL)
    assert float(jnp.max(jnp.abs(got[1]))) > 1e-3  # the surrogate gradient reached the input
    with brainconv.use_lowering('event'):
        assert brainconv.Conv2d((8, 8, 4), 5, 3).lowering == 'event'


def test_separable_units_and_batch_axes():
    """SeparableConv's depthwise step, Quantity weights and two batch axes, with boolean spikes."""
    sep = brainconv.SeparableConv2d((6, 6, 3), 4, 3, depth_multiplier=2, depthwise_init=cheap_init(1),
                                    pointwise_init=cheap_init(2))
    x = _spikes((2, 3, 6, 6, 3), 0.1)
    d, p = (np.asarray(a, np.float64) for a in sep.kernel())
    xf = x.reshape((6, 6, 6, 3)).astype(np.float64)
    want = ref.conv(ref.conv(xf, d, (1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1), 3), p, (1, 1), ((0, 0), (0, 0)),
                    (1, 1), (1, 1), 1)
    np.testing.assert_allclose(np.asarray(sep(jnp.asarray(x))).reshape(want.shape), want, **TOL)
    conv = brainconv.Conv2d((6, 6, 3), 4, 3, w_init=lambda s: cheap_init(3)(s) * u.mS)
    y = conv(jnp.asarray(x))
    assert u.get_unit(y) == u.mS
    want = _conv_oracle(conv, xf, np.asarray(u.get_mantissa(conv.weight.value['weight'])))
    np.testing.assert_allclose(np.asarray(y.mantissa).reshape(want.shape), want, **TOL)


@pytest.mark.parametrize('nd', [1, 2])
def test_streaming_steps_on_spike_frames(nd):
    """A StreamingConv stepped on boolean frames (the event path; in 1-d its matrix product runs as
    a one-position convolution) reproduces the causal convolution of the whole sequence."""
    size = (10, 16) if nd == 1 else (10, 6, 4)
    conv = brainconv.Conv(nd, size, 5, 3, padding=('CAUSAL',) + ('SAME',) * (nd - 1), w_init=cheap_init(1),
                          b_init=cheap_init(2))
    xs = _spikes((10, 2) + size[1:], 0.1)
    step = conv.streaming()
    step.init_state(batch_size=2)
    with _lowering.spike_input(True):  # what update() says for boolean frames
        assert _runs_event(lambda a: step._step(a, conv.kernel()), step._pack(jnp.zeros((2, 3) + size[1:], bool)))
    ys = brainstate.transform.for_loop(step, jnp.asarray(xs))
    want = _conv_oracle(conv, np.moveaxis(xs, 0, 1).astype(np.float64)) + np.asarray(
        conv.weight.value['bias'], np.float64).reshape(-1)
    np.testing.assert_allclose(np.moveaxis(np.asarray(ys), 0, 1), want, **TOL)


def test_the_density_switch():
    """Left to itself (``event_branch(None)``) the switch is a ``lax.cond`` on the non-zero count
    against the cost model's crossover: both branches agree with 'lax' below and above it."""
    layer = brainconv.Conv2d((16, 16, 32), 32, 3, lowering='event', w_init=cheap_init(1))
    twin = _lax_twin(layer)
    g = layer.spec.geometry
    limit = _event.crossover(g, 1, 4, 32, 32, 'forward')
    assert 0 < limit < 4 * 16 * 16 * 32
    with _lowering.event_branch(None):
        f = jax.jit(layer.apply)
        for density in (0.005, 0.9):
            x = jnp.asarray(_spikes((4, 16, 16, 32), density), jnp.float32)
            np.testing.assert_allclose(f(layer.weight.value, x), twin.apply(layer.weight.value, x), **TOL)
        lowered = jax.jit(layer.apply).lower(layer.weight.value, jnp.zeros((4, 16, 16, 32))).as_text()
    assert 'case' in lowered and ('brainconv_event' in lowered or 'brainevent_numba' in lowered)  # the switch
    with pytest.raises(ValueError, match='branch'):
        with _lowering.event_branch('sparse'):
            pass


def test_long_strided_kernels_fall_back_to_a_dense_formulation():
    """A kernel of more taps than 'taps' compiles and too strided for 'fft' is 'lax' under 'auto';
    the event path's dense branch is then 'lax_vjp' (same forward, a kernel gradient XLA runs at
    full speed inside a ``lax.cond``): both branches against the oracle."""
    layer = brainconv.Conv2d((19, 19, 2), 2, 15, stride=2, groups=2, lowering='event', w_init=cheap_init(2))
    g = layer.spec.geometry
    assert _lowering.choose(g, 2, 2, 2, 'cpu') == 'lax'
    x = _spikes((2, 19, 19, 2), 0.2, seed=4)
    r = np.random.default_rng(5).standard_normal((2,) + g.out_spatial + (2,))
    expected_dw = _grad_oracle(layer, x.astype(np.float64), r)

    def loss(weight, x):
        return jnp.sum(layer.apply(weight, x) * r)

    for branch in ('event', 'dense', None):
        with _lowering.event_branch(branch):
            y = jax.jit(layer.apply)(layer.weight.value, jnp.asarray(x))
            dw = jax.jit(jax.grad(loss))(layer.weight.value, jnp.asarray(x))['weight']
        np.testing.assert_allclose(y, _conv_oracle(layer, x.astype(np.float64)), **TOL)
        np.testing.assert_allclose(dw, expected_dw, rtol=1e-4, atol=1e-4)


def test_the_switch_reads_a_sample_of_large_inputs():
    """The density switch counts small inputs whole and estimates large ones from a strided sample
    (a prime stride, so channel periods cannot alias): within one point of density at 1% and 50% (the
    switch's thresholds sit at 0-12%), exact at 0 and 100%, and an input whose spikes all sit in one channel is
    still seen at its density."""
    small = jnp.asarray(_spikes((2, 8, 8, 4), 0.3, seed=1))
    assert float(_lowering.nonzero_estimate(small)) == int(small.sum())
    shape = (32, 32, 32, 64)
    for density in (0.0, 0.01, 0.5, 1.0):
        x = jnp.asarray(_spikes(shape, density, seed=2), jnp.float32)
        true = int(np.count_nonzero(np.asarray(x)))
        estimate = float(jax.jit(_lowering.nonzero_estimate)(x))
        assert abs(estimate - true) <= 0.01 * x.size, (density, estimate, true)
        if density in (0.0, 1.0):
            assert estimate == true
    one_channel = np.zeros(shape, np.float32)
    one_channel[..., 5] = 1.0
    estimate = float(_lowering.nonzero_estimate(jnp.asarray(one_channel)))
    assert abs(estimate - one_channel.sum()) <= 0.05 * one_channel.sum()


def test_a_nested_list_of_bools_is_spikes():
    """A list input becomes an array before the spike check: a nested list of bools takes the
    event path as the boolean array does, and gives its numbers."""
    layer = brainconv.Conv2d((5, 5, 2), 3, 3, w_init=cheap_init())
    x = _spikes((1, 5, 5, 2), 0.3, seed=4)
    as_list = x.astype(bool).tolist()
    assert _runs_event(layer, as_list)
    np.testing.assert_allclose(layer(as_list), _expected(layer, x), **TOL)


def test_a_binary_array_is_its_non_zeros():
    """brainevent's BinaryArray means what brainevent means: any non-zero is a spike of 1."""
    import brainevent

    layer = brainconv.Conv2d((5, 5, 2), 3, 3, w_init=cheap_init())
    x = _spikes((1, 5, 5, 2), 0.3, seed=5)
    marked = np.where(x != 0, np.float32(0.5), np.float32(0))          # spikes marked 0.5, and -2 below
    marked[0, 0, 0, 0] = -2.0
    ones = (marked != 0).astype(np.float32)
    assert _runs_event(layer, brainevent.BinaryArray(jnp.asarray(marked)))
    np.testing.assert_allclose(layer(brainevent.BinaryArray(jnp.asarray(marked))), _expected(layer, ones), **TOL)


def test_the_formulation_a_layer_runs_is_visible():
    """layer.formulation(x) says which formulation runs for an input (kind, batch, density) and,
    for the event switch, which branch: the same branch the switch takes when the program runs
    (report_branches records it)."""
    layer = brainconv.Conv2d((15, 15, 12), 32, 5, padding='VALID', w_init=cheap_init())
    sparse = _spikes((16, 15, 15, 12), 0.02, seed=7).astype(np.float32)
    dense = np.abs(np.random.default_rng(8).standard_normal((16, 15, 15, 12))).astype(np.float32)
    low, high = layer.formulation(sparse), layer.formulation(dense)
    assert low.formulation == high.formulation == 'event' and low.dense == 'lax_vjp'
    assert (low.forward, low.kernel_grad) == ('event kernel', 'event kernel') and high.forward == 'lax_vjp'
    assert 0 < low.forward_limit < 1 and 'lax_vjp' in repr(layer)
    assert str(low).startswith('event at 1.99% non-zero inputs: event kernel')
    shaped = layer.formulation(jax.ShapeDtypeStruct((16, 15, 15, 12), jnp.bool_))
    assert shaped.density is None and 'up to' in str(shaped)
    assert layer.formulation(density=0.9).forward == 'lax_vjp'
    assert brainconv.Conv2d((15, 15, 12), 32, 5, lowering='taps').formulation(sparse).forward == 'taps'
    assert brainconv.LocalConv2d((6, 6, 2), 3, 3).formulation().formulation == 'patches'
    with pytest.raises(ValueError, match='density'):
        layer.formulation(density=1.5)
    run = jax.jit(jax.value_and_grad(lambda p, a: jnp.sum(layer.apply(p, a) ** 2)))
    with _lowering.event_branch(None), _lowering.report_branches() as log:
        jax.block_until_ready(run(layer.weight.value, jnp.asarray(sparse)))   # a record comes when its
        jax.block_until_ready(run(layer.weight.value, jnp.asarray(dense)))    # program has run
    taken = [(r.kind, r.branch) for r in log]
    assert taken == [('forward', 'event'), ('weight_grad', 'event'), ('forward', 'lax_vjp'),
                     ('weight_grad', 'lax_vjp')], taken
    assert all(r.input_shape == (16, 15, 15, 12) and r.limit > 0 for r in log)
