"""StreamingConv: stepping through time against the NumPy oracle (causal pads) and the full-sequence call."""

import itertools
import re

import _reference as ref
import brainstate
import brainunit as u
import jax.numpy as jnp
import numpy as np
import pytest
from _configs import cheap_init, from_reference_layout, init_array, to_reference_layout

import brainconv

TOL = dict(rtol=2e-4, atol=2e-5)

# Each: the layer's arguments (time is the first spatial axis) and the pads of every axis, written out from the
# definitions (CAUSAL: (k - 1) * d before the axis).
CONFIGS = {
    'conv1d-dilated-bias': dict(
        nd=1, spatial=(9,), cin=3, cout=4, kernel=(3,), stride=(1,), rhs=(2,), lhs=(1,), groups=1,
        padding='CAUSAL', pads=((4, 0),), channel_first=False, batch=(2,), bias=True),
    'conv1d-depthwise-channel-first-unbatched': dict(
        nd=1, spatial=(8,), cin=4, cout=8, kernel=(2,), stride=(1,), rhs=(3,), lhs=(1,), groups=4,
        padding=((3, 0),), pads=((3, 0),), channel_first=True, batch=(), bias=False),
    'conv2d-grouped-strided-masked-two-batch-axes': dict(
        nd=2, spatial=(6, 7), cin=4, cout=6, kernel=(3, 2), stride=(1, 2), rhs=(2, 1), lhs=(1, 1), groups=2,
        padding=((4, 0), (1, 0)), pads=((4, 0), (1, 0)), channel_first=False, batch=(2, 3), bias=True,
        mask=True),
    'conv3d-channel-first-lhs-dilated': dict(
        nd=3, spatial=(5, 4, 3), cin=2, cout=3, kernel=(2, 3, 2), stride=(1, 2, 1), rhs=(1, 1, 2),
        lhs=(1, 1, 2), groups=1, padding='CAUSAL', pads=((1, 0), (2, 0), (2, 0)), channel_first=True,
        batch=(2,), bias=True),
    'conv2d-reflect-time-kernel-1': dict(
        nd=2, spatial=(4, 6), cin=2, cout=2, kernel=(1, 3), stride=(1, 1), rhs=(1, 1), lhs=(1, 1), groups=1,
        padding='SAME', pads=((0, 0), (1, 1)), channel_first=False, batch=(2,), bias=False, mode='REFLECT'),
    'conv2d-replicate': dict(
        nd=2, spatial=(6, 4), cin=2, cout=3, kernel=(3, 2), stride=(1, 1), rhs=(2, 1), lhs=(1, 1), groups=1,
        padding='CAUSAL', pads=((4, 0), (1, 0)), channel_first=False, batch=(2,), bias=True, mode='REPLICATE'),
    # Per-axis padding: causal in time, centred in space (SAME: ceil(n / s) outputs, the odd pad at the end).
    'conv3d-causal-time-same-space': dict(
        nd=3, spatial=(5, 4, 5), cin=2, cout=3, kernel=(3, 3, 2), stride=(1, 2, 1), rhs=(2, 1, 1),
        lhs=(1, 1, 1), groups=1, padding=('CAUSAL', 'same', 'SAME'), pads=((4, 0), (0, 1), (0, 1)),
        channel_first=False, batch=(2,), bias=True),
    'conv2d-causal-time-pair-channel-first': dict(
        nd=2, spatial=(6, 5), cin=2, cout=2, kernel=(2, 3), stride=(1, 1), rhs=(1, 1), lhs=(1, 1), groups=2,
        padding=['causal', (2, 0)], pads=((1, 0), (2, 0)), channel_first=True, batch=(), bias=False),
    'conv4d': dict(
        nd=4, spatial=(4, 3, 3, 2), cin=1, cout=2, kernel=(2, 2, 1, 2), stride=(1, 1, 2, 1), rhs=(2, 1, 1, 1),
        lhs=(1, 1, 1, 1), groups=1, padding='CAUSAL', pads=((2, 0), (1, 0), (0, 0), (1, 0)), channel_first=False,
        batch=(1,), bias=False),
}


def _in_size(c):
    return (c['cin'],) + c['spatial'] if c['channel_first'] else c['spatial'] + (c['cin'],)


def _mask(shape):
    return (np.arange(int(np.prod(shape))).reshape(shape) % 3 != 1).astype(np.float32)


def _build(c, cls=brainconv.Conv, **extra):
    return cls(c['nd'], _in_size(c), c['cout'], c['kernel'], stride=c['stride'], padding=c['padding'],
               lhs_dilation=c['lhs'], rhs_dilation=c['rhs'], groups=c['groups'], w_init=cheap_init(0),
               b_init=cheap_init(1) if c['bias'] else None, w_mask=_mask if c.get('mask') else None,
               channel_first=c['channel_first'], padding_mode=c.get('mode', 'ZEROS'), **extra)


def _input(c, seed=2):
    return np.random.default_rng(seed).standard_normal(c['batch'] + _in_size(c)).astype(np.float32)


def _oracle(c, conv, x):
    """The full causal convolution of the sequence, from the NumPy oracle."""
    nb = len(c['batch'])
    w = np.asarray(u.get_mantissa(conv.kernel()))
    y = ref.conv(to_reference_layout(x, nb, c['channel_first']), w, c['stride'], c['pads'], c['lhs'], c['rhs'],
                 c['groups'], c.get('mode', 'ZEROS'))
    if c['bias']:
        y = y + np.asarray(u.get_mantissa(conv.weight.value['bias'])).reshape(-1)
    return from_reference_layout(y, c['batch'], c['channel_first'])


def _stream(step, xs_time_first):
    """Step through the leading (time) axis in a jitted for_loop; outputs stacked on a leading axis."""
    return brainstate.transform.jit(lambda xs: brainstate.transform.for_loop(step, xs))(xs_time_first)


def _run_stream(step, x, nb):
    t = nb + step.time_axis
    y = _stream(step, u.math.moveaxis(x if isinstance(x, u.Quantity) else jnp.asarray(x), t, 0))
    return u.math.moveaxis(y, 0, t)


@pytest.mark.parametrize('name', list(CONFIGS))
def test_stepping_equals_full_sequence_and_oracle(name):
    c = CONFIGS[name]
    conv = _build(c)
    step = conv.streaming()
    nb = len(c['batch'])
    step.init_state(batch_size=c['batch'] or None)
    t = conv.spec.channel_first
    assert step.in_size == conv.in_size[:t] + conv.in_size[t + 1:]
    assert step.out_size == conv.out_size[:t] + conv.out_size[t + 1:]
    assert step.buffer.value.shape == c['batch'] + step.state_size
    assert step.state_size[t] == (c['kernel'][0] - 1) * c['rhs'][0] + 1  # span frames, the newest included
    x = _input(c)
    y = _run_stream(step, x, nb)
    assert y.shape == c['batch'] + conv.out_size
    np.testing.assert_allclose(y, _oracle(c, conv, x), **TOL)
    np.testing.assert_allclose(y, conv(jnp.asarray(x)), **TOL)


@pytest.mark.parametrize('name', ['conv2d-grouped-strided-masked-two-batch-axes', 'conv4d'])
@pytest.mark.parametrize('lowering', brainconv.LOWERINGS)
def test_every_lowering(lowering, name):
    c = CONFIGS[name]
    conv = _build(c, lowering=lowering)
    step = conv.streaming()
    step.init_state(batch_size=c['batch'])
    x = _input(c)
    np.testing.assert_allclose(_run_stream(step, x, len(c['batch'])), _oracle(c, conv, x), **TOL)


def test_time_stride_is_every_sth_step():
    # What the refusal message promises: a stride-s causal convolution's outputs are the stride-1
    # layer's outputs at steps 0, s, 2s, ... (same kernel).
    strided = brainconv.Conv1d((9, 2), 3, 3, stride=2, padding='CAUSAL', w_init=cheap_init(0))
    plain = brainconv.Conv1d((9, 2), 3, 3, padding='CAUSAL', w_init=cheap_init(0))
    step = plain.streaming()
    step.init_state(batch_size=1)
    x = np.random.default_rng(3).standard_normal((1, 9, 2)).astype(np.float32)
    np.testing.assert_allclose(_run_stream(step, x, 1)[:, ::2], strided(jnp.asarray(x)), **TOL)


def test_scaled_ws_conv_and_reset():
    c = CONFIGS['conv1d-dilated-bias']
    conv = _build(c, cls=brainconv.ScaledWSConv)
    step = conv.streaming()
    step.init_state(batch_size=2)
    x = _input(c)
    first = _run_stream(step, x, 1)
    np.testing.assert_allclose(first, _oracle(c, conv, x), **TOL)
    assert np.abs(np.asarray(step.buffer.value)).max() > 0
    brainstate.nn.reset_all_states(step)
    np.testing.assert_array_equal(step.buffer.value, np.zeros((2,) + step.state_size, np.float32))
    np.testing.assert_allclose(_run_stream(step, x, 1), first, rtol=0, atol=0)


def test_replicate_fills_the_buffer_after_every_reset():
    c = CONFIGS['conv2d-replicate']
    conv = _build(c)
    step = conv.streaming()
    step.init_state(batch_size=2)
    _run_stream(step, _input(c, seed=7), 1)
    brainstate.nn.reset_all_states(step)
    assert bool(step.first.value) and int(step.position.value) == 0
    x = _input(c, seed=8)
    np.testing.assert_allclose(_run_stream(step, x, 1), _oracle(c, conv, x), **TOL)


def _weight_grad_oracle(c, x, g):
    """d sum(y * g) / d kernel = sum over batch and outputs of the padded input window times g, per tap."""
    xp = np.pad(to_reference_layout(x, len(c['batch']), c['channel_first']),
                [(0, 0)] + list(c['pads']) + [(0, 0)])
    g = to_reference_layout(g, len(c['batch']), c['channel_first'])
    cin_g, cout_g = c['cin'] // c['groups'], c['cout'] // c['groups']
    out = g.shape[1:-1]
    grad = np.zeros(tuple(c['kernel']) + (cin_g, c['cout']))
    for tap in itertools.product(*[range(k) for k in c['kernel']]):
        index = tuple(slice(t * d, t * d + (o - 1) * s + 1, s) for t, d, s, o in zip(tap, c['rhs'], c['stride'], out))
        patch = xp[(slice(None),) + index]
        for gr in range(c['groups']):
            xi = patch[..., gr * cin_g:(gr + 1) * cin_g].reshape(-1, cin_g)
            gi = g[..., gr * cout_g:(gr + 1) * cout_g].reshape(-1, cout_g)
            grad[tap][:, gr * cout_g:(gr + 1) * cout_g] = xi.T @ gi
    return grad


def test_gradients_through_time():
    c = CONFIGS['conv1d-dilated-bias']
    conv = _build(c)
    step = conv.streaming()
    step.init_state(batch_size=2)
    x = _input(c)
    g = np.random.default_rng(5).standard_normal(c['batch'] + conv.out_size).astype(np.float32)
    xs, gs = jnp.moveaxis(jnp.asarray(x), 1, 0), jnp.moveaxis(jnp.asarray(g), 1, 0)
    params = conv.states(brainstate.ParamState)

    def stepped(xs):
        step.reset_state()
        return jnp.sum(brainstate.transform.for_loop(step, xs) * gs)

    def full(xs):
        return jnp.sum(conv(jnp.moveaxis(xs, 0, 1)) * jnp.moveaxis(gs, 0, 1))

    grad_step = brainstate.transform.jit(brainstate.transform.grad(stepped, params, argnums=0))
    (gw_step, gx_step) = grad_step(xs)
    gw_full, gx_full = brainstate.transform.grad(full, params, argnums=0)(xs)
    (key,) = gw_step.keys()
    np.testing.assert_allclose(gw_step[key]['weight'], _weight_grad_oracle(c, x, g), **TOL)
    np.testing.assert_allclose(gw_step[key]['bias'].reshape(-1), g.sum(axis=(0, 1)), **TOL)
    for name in ('weight', 'bias'):
        np.testing.assert_allclose(gw_step[key][name], gw_full[key][name], **TOL)
    np.testing.assert_allclose(gx_step, gx_full, **TOL)


def test_shares_weights_with_the_conv():
    c = CONFIGS['conv1d-dilated-bias']
    conv = _build(c)
    step = conv.streaming()
    (state,) = step.states(brainstate.ParamState).values()
    assert state is conv.weight
    conv.weight.value = {**conv.weight.value, 'weight': conv.weight.value['weight'] * 2.0}
    step.init_state(batch_size=2)
    x = _input(c)
    np.testing.assert_allclose(_run_stream(step, x, 1), _oracle(c, conv, x), **TOL)


def test_units():
    c = CONFIGS['conv1d-dilated-bias']
    conv = brainconv.Conv1d(_in_size(c), c['cout'], c['kernel'], padding=c['padding'], rhs_dilation=c['rhs'],
                            w_init=lambda shape: init_array(shape, 0) * u.nS,
                            b_init=lambda shape: init_array(shape, 1) * u.nS * u.mV)
    step = conv.streaming()
    step.init_state(batch_size=2, unit=u.mV)
    x = _input(c)
    y = _run_stream(step, x * u.mV, 1)
    assert isinstance(y, u.Quantity) and y.unit.has_same_dim(u.nS * u.mV)
    expected = _oracle(c, conv, x)  # mantissas: mV times nS
    np.testing.assert_allclose(y.to_decimal(u.nS * u.mV), expected, **TOL)
    # A frame in volts is converted to the state's millivolts.
    step.reset_state()
    y0 = step(jnp.asarray(x[:, 0]) * 1e-3 * u.volt)
    np.testing.assert_allclose(y0.to_decimal(u.nS * u.mV), expected[:, 0], **TOL)
    with pytest.raises(TypeError, match='unit'):
        step(jnp.asarray(x[:, 0]) * u.second)
    with pytest.raises(TypeError, match='unit'):
        step(jnp.asarray(x[:, 0]))


def test_init_all_states_and_vmap_init_all_states():
    c = CONFIGS['conv1d-dilated-bias']
    conv = _build(c)
    x = _input(c)
    expected = _oracle(c, conv, x)

    class Net(brainstate.nn.Module):
        def __init__(self):
            super().__init__()
            self.filter = conv.streaming()

        def update(self, xt):
            return self.filter(xt)

    net = Net()
    brainstate.nn.init_all_states(net, 2)
    assert net.filter.buffer.value.shape == (2,) + net.filter.state_size
    np.testing.assert_allclose(_run_stream(net.filter, x, 1), expected, **TOL)

    # One unbatched state per vmapped instance: the batch axis comes from the vmap.
    brainstate.nn.vmap_init_all_states(net, axis_size=2)
    assert net.filter.buffer.value.shape == (2,) + net.filter.state_size
    hidden = net.states(brainstate.HiddenState)
    one_step = brainstate.transform.vmap(net, in_states=hidden, out_states=hidden)
    ys = brainstate.transform.for_loop(one_step, jnp.moveaxis(jnp.asarray(x), 1, 0))
    np.testing.assert_allclose(jnp.moveaxis(ys, 0, 1), expected, **TOL)


def test_summary_row():
    conv = brainconv.Conv1d((50, 3), 4, kernel_size=3, rhs_dilation=2, padding='CAUSAL', w_init=cheap_init(0))
    s = brainconv.summary(conv.streaming())
    (row,) = s.rows
    d = row.to_dict()
    assert d['in_size'] == (3,) and d['out_size'] == (4,) and d['params'] == 36
    assert d['state'] == 5 * 3  # (k - 1) * d + 1 = 5 frames of 3 channels
    assert d['macs'] == 3 * 3 * 4  # per step: 3 taps x 3 in x 4 out
    assert 'State' in str(s) and 'State per example: 15 values' in str(s)


@pytest.mark.parametrize('kwargs, match', [
    (dict(stride=2), 'stride on the time axis must be 1, got 2'),
    (dict(padding='SAME'), r'padded causally.*got pads \(1, 1\)'),
    (dict(padding=((1, 0),)), r'padded causally.*\(2, 0\)'),
    (dict(lhs_dilation=2), 'lhs_dilation on the time axis must be 1, got 2'),
    (dict(padding_mode='REFLECT'), "padding_mode must be 'ZEROS' or 'REPLICATE'.*got 'REFLECT'"),
    (dict(padding_mode='circular'), "padding_mode must be 'ZEROS' or 'REPLICATE'.*got 'CIRCULAR'"),
])
def test_refused_at_construction(kwargs, match):
    args = dict(kernel_size=3, padding='CAUSAL', w_init=cheap_init(0))
    args.update(kwargs)
    conv = brainconv.Conv1d((12, 2), 2, **args)
    with pytest.raises(ValueError, match=match):
        conv.streaming()


def test_bad_calls():
    with pytest.raises(TypeError, match='conv must be a brainconv Conv'):
        brainconv.StreamingConv(brainconv.ConvTranspose1d((8, 2), 2, 3, w_init=cheap_init(0)))
    step = brainconv.Conv1d((12, 2), 3, 3, padding='CAUSAL', w_init=cheap_init(0)).streaming()
    with pytest.raises(RuntimeError, match='init_state'):
        step(jnp.ones((2, 2)))
    with pytest.raises(ValueError, match='batch_size must be a positive int'):
        step.init_state(batch_size=0)
    step.init_state(batch_size=2)
    with pytest.raises(ValueError, match=r'expects input of shape \(\*batch, \*in_size\) = \(\*batch, 2\)'):
        step(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"batch shape \(3,\) but its state has batch shape \(2,\); "
                                         r"call init_state\(batch_size=3\)"):
        step(jnp.ones((3, 2)))
    with pytest.raises(TypeError, match='real input'):
        step(jnp.ones((2, 2), jnp.complex64))
    np.testing.assert_array_equal(step.buffer.value, np.zeros((2, 3, 2), np.float32))  # nothing changed


@pytest.mark.parametrize('time_axis', [0, 1])
def test_a_whole_sequence_gets_a_message_that_leads_to_the_fix(time_axis):
    """(T, B, ...) or (B, T, ...) given to a step: the message names the time axis and the for_loop call,
    and that call gives the causal convolution of the sequence."""
    c = CONFIGS['conv3d-causal-time-same-space']
    conv = _build(c)
    step = conv.streaming()
    step.init_state(batch_size=2)
    x = _input(c)  # (B, T, H, W, C)
    xs = np.moveaxis(x, 1, 0) if time_axis == 0 else x
    fix = 'for_loop(layer, xs)' if time_axis == 0 else 'for_loop(layer, jnp.moveaxis(xs, 1, 0))'
    with pytest.raises(ValueError, match=rf"takes one time step of shape \(\*batch, \*in_size\) = \(2, 4, 5, 2\) "
                                         rf".*got shape {re.escape(str(xs.shape))}: .*time on axis {time_axis}\. "
                                         rf".*brainstate\.transform\.{re.escape(fix)}"):
        step(jnp.asarray(xs))
    assert 'init_state' not in _message(step, xs)
    layer = step  # what the message calls it
    ys = eval('brainstate.transform.' + fix, {'brainstate': brainstate, 'jnp': jnp, 'layer': layer,
                                              'xs': jnp.asarray(xs)})
    np.testing.assert_allclose(jnp.moveaxis(ys, 0, 1), _oracle(c, conv, x), **TOL)


def _message(layer, x):
    try:
        layer(jnp.asarray(x))
    except ValueError as e:
        return str(e)
    raise AssertionError('no error')
