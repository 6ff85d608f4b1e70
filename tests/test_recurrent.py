"""ConvLSTMCell and ConvGRUCell against an independent NumPy reference of the gate equations.

The convolutions of the reference are ``_reference.conv`` (sums over kernel taps, float64);
pads come from the tests' own formulas.  Gradients and forward-mode derivatives are compared
with a plain-JAX version of the same equations on ``jax.lax.conv_general_dilated``.
"""

import os

import brainstate
import braintools
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _reference import conv as ref_conv
from _reference import same_pads

import brainconv
from brainconv import _init, recurrent


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def to_last(a, nd, channel_first):
    """(*batch, C, *spatial) -> (*batch, *spatial, C) when channel_first."""
    return np.moveaxis(a, -nd - 1, -1) if channel_first else a


def to_layout(a, nd, channel_first):
    return np.moveaxis(a, -1, -nd - 1) if channel_first else a


def rconv(x, w, stride=None, pads=None, ld=None, rd=None, mode='ZEROS'):
    """_reference.conv on channels-last x with any number of batch axes."""
    nd = w.ndim - 2
    one = (1,) * nd
    batch = x.shape[:x.ndim - nd - 1]
    flat = np.reshape(x, (-1,) + x.shape[len(batch):])
    y = ref_conv(flat, w, stride or one, pads, ld or one, rd or one, 1, mode)
    return y.reshape(batch + y.shape[1:])


def rec_pads(spatial, k):
    """'SAME' with stride 1 on the state's own size: extra pad at the end for even kernels."""
    return [same_pads(n, kk, 1, 1) for n, kk in zip(spatial, k)]


def np_lstm(xs, h, c, p, case):
    """Run the ConvLSTM gate equations (order i, f, g, o) over xs[t]; channels-last float64."""
    hs = []
    for x in xs:
        z = rconv(x, p['wx'], case['stride'], case['pads'], None, case['rd'], case['mode']) + p['b']
        z = z + rconv(h, p['wh'], pads=case['rpads'], mode=case['rmode'])
        i, f, g, o = np.split(z, 4, axis=-1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        hs.append(h)
    return np.stack(hs), c


def np_gru(xs, h, p, case):
    """The ConvGRU equations (order r, z, n; reset before the candidate convolution)."""
    hs = []
    for x in xs:
        zx = rconv(x, p['wx'], case['stride'], case['pads'], None, case['rd'], case['mode']) + p['b']
        xr, xz, xn = np.split(zx, 3, axis=-1)
        hr, hz = np.split(rconv(h, p['wh'], pads=case['rpads'], mode=case['rmode']), 2, axis=-1)
        r, z = sigmoid(xr + hr), sigmoid(xz + hz)
        n = np.tanh(xn + rconv(r * h, p['wn'], pads=case['rpads'], mode=case['rmode']))
        h = (1 - z) * h + z * n
        hs.append(h)
    return np.stack(hs)


# Each case: rank, layout, batch axes, input geometry and the pads the reference uses.
CASES = {
    '1d-valid-stride-dilation': dict(nd=1, spatial=(9,), cin=2, hidden=3, k=(3,), rk=(2,), stride=(2,),
                                     padding='VALID', rd=(2,), mode='ZEROS', rmode='ZEROS', batch=(2,),
                                     channel_first=False),
    '2d-channel-first-reflect': dict(nd=2, spatial=(5, 4), cin=2, hidden=2, k=(3, 2), rk=(3, 3), stride=(1, 1),
                                     padding='SAME', rd=(1, 1), mode='REFLECT', rmode='CIRCULAR', batch=(2, 1),
                                     channel_first=True),
    '2d-per-axis-causal-same': dict(nd=2, spatial=(5, 6), cin=2, hidden=2, k=(3, 3), rk=(2, 3), stride=(1, 2),
                                    padding=('causal', 'SAME'), rd=(1, 1), mode='ZEROS', rmode='ZEROS', batch=(2,),
                                    channel_first=False),
    '3d-no-batch': dict(nd=3, spatial=(3, 4, 3), cin=1, hidden=2, k=(2, 2, 2), rk=(2, 3, 1), stride=(1, 2, 1),
                        padding=1, rd=(1, 1, 1), mode='REPLICATE', rmode='ZEROS', batch=(),
                        channel_first=False),
}


def resolve(case):
    """The reference's own pads and output size for a case."""
    case = dict(case)
    padding = case['padding']
    pads = []
    for axis, (n, k, s, d) in enumerate(zip(case['spatial'], case['k'], case['stride'], case['rd'])):
        entry = padding[axis] if isinstance(padding, tuple) else padding
        entry = entry.upper() if isinstance(entry, str) else entry
        pads.append(same_pads(n, k, s, d) if entry == 'SAME' else (0, 0) if entry == 'VALID' else
                    ((k - 1) * d, 0) if entry == 'CAUSAL' else (entry, entry))
    out = tuple((n + lo + hi - (k - 1) * d - 1) // s + 1
                for n, (lo, hi), k, s, d in zip(case['spatial'], pads, case['k'], case['stride'], case['rd']))
    case.update(pads=pads, out=out, rpads=rec_pads(out, case['rk']))
    return case


def make(kind, case, rng, **kwargs):
    """A cell with random weights and biases (given as arrays) and its weights in float64, channels-last."""
    nd, h = case['nd'], case['hidden']
    n = 4 if kind == 'lstm' else 3
    p = {'wx': rng.normal(0, 0.5, case['k'] + (case['cin'], n * h)),
         'b': rng.normal(0, 0.5, (n * h,))}
    if kind == 'lstm':
        p['wh'] = rng.normal(0, 0.5, case['rk'] + (h, 4 * h))
    else:
        p['wh'] = rng.normal(0, 0.5, case['rk'] + (h, 2 * h))
        p['wn'] = rng.normal(0, 0.5, case['rk'] + (h, h))
    cf = case['channel_first']
    in_size = (case['cin'],) + case['spatial'] if cf else case['spatial'] + (case['cin'],)
    cls = recurrent.ConvLSTMCell if kind == 'lstm' else recurrent.ConvGRUCell
    # The recurrent kernels are arrays too; the GRU has two of different shapes, so draw them by shape.
    kernels = {p['wh'].shape: p['wh'].astype(np.float32)}
    if 'wn' in p:
        kernels[p['wn'].shape] = p['wn'].astype(np.float32)
    cell = cls(nd, in_size, h, case['k'], stride=case['stride'], padding=case['padding'], rhs_dilation=case['rd'],
               recurrent_kernel_size=case['rk'], w_init=p['wx'].astype(np.float32),
               recurrent_w_init=lambda shape: jnp.asarray(kernels[tuple(shape)]),
               b_init=p['b'].astype(np.float32), channel_first=cf, padding_mode=case['mode'],
               recurrent_padding_mode=case['rmode'], **kwargs)
    return cell, p


@pytest.mark.parametrize('name', list(CASES))
@pytest.mark.parametrize('kind', ['lstm', 'gru'])
def test_cell_matches_the_reference_over_steps(kind, name, rng):
    case = resolve(CASES[name])
    nd, cf = case['nd'], case['channel_first']
    cell, p = make(kind, case, rng)
    state_last = case['batch'] + case['out'] + (case['hidden'],)
    assert cell.out_size == cell.state_size == (to_layout(np.zeros(state_last), nd, cf).shape[len(case['batch']):])
    steps = 3
    xs_last = rng.normal(size=(steps,) + case['batch'] + case['spatial'] + (case['cin'],))
    h0 = rng.normal(0, 0.5, state_last)
    c0 = rng.normal(0, 0.5, state_last)
    cell.init_state(batch_size=case['batch'] or None)
    assert cell.h.value.shape == case['batch'] + cell.state_size
    cell.h.value = jnp.asarray(to_layout(h0, nd, cf), jnp.float32)
    if kind == 'lstm':
        cell.c.value = jnp.asarray(to_layout(c0, nd, cf), jnp.float32)
    got = [np.asarray(cell(jnp.asarray(to_layout(x, nd, cf), jnp.float32))) for x in xs_last]
    got = np.stack([to_last(g, nd, cf) for g in got])
    if kind == 'lstm':
        want, c_want = np_lstm(xs_last, h0, c0, p, case)
        np.testing.assert_allclose(to_last(np.asarray(cell.c.value), nd, cf), c_want, rtol=2e-4, atol=2e-5)
    else:
        want = np_gru(xs_last, h0, p, case)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(to_last(np.asarray(cell.h.value), nd, cf), want[-1], rtol=2e-4, atol=2e-5)
    assert np.abs(want[-1] - want[0]).max() > 1e-2  # the steps differ: the recurrence is exercised


def test_default_initialisation(rng):
    cell = brainconv.ConvLSTMCell2d((6, 6, 2), 3, 3)
    b = np.asarray(cell.input_conv.weight.value['bias']).reshape(-1)
    np.testing.assert_array_equal(b, np.repeat([0.0, 1.0, 0.0, 0.0], 3))  # gate order i, f, g, o
    w = np.asarray(cell.hidden_conv.weight.value['weight']).reshape(-1, 12)  # (3*3*3, 12): orthogonal columns
    np.testing.assert_allclose(w.T @ w, np.eye(12), atol=1e-5)
    fan = 9 * 2 + 12 * 9  # Xavier: variance 2 / (fan_in + fan_out)
    assert 0.5 < np.var(np.asarray(cell.input_conv.weight.value['weight'])) * fan / 2 < 1.5
    given = rng.normal(size=12).astype(np.float32)
    cell = brainconv.ConvLSTMCell1d((6, 2), 3, 3, b_init=given, forget_bias=5.0)
    np.testing.assert_array_equal(np.asarray(cell.input_conv.weight.value['bias']).reshape(-1), given)
    cell = brainconv.ConvLSTMCell1d((6, 2), 3, 3, b_init=None)
    assert 'bias' not in cell.input_conv.weight.value
    cell = brainconv.ConvLSTMCell1d((2, 6), 3, 3, forget_bias=-2.0, channel_first=True)
    np.testing.assert_array_equal(np.asarray(cell.input_conv.weight.value['bias']).reshape(-1),
                                  np.repeat([0.0, -2.0, 0.0, 0.0], 3))
    gru = brainconv.ConvGRUCell1d((6, 2), 3, 3)
    assert gru.num_params == 3 * 2 * 9 + 9 + 3 * 3 * 6 + 3 * 3 * 3
    assert set(gru.states(brainstate.ParamState)) == {('input_conv', 'weight'), ('hidden_conv', 'weight'),
                                                      ('candidate_conv', 'weight')}


def test_states_batch_axes_and_reset():
    cell = brainconv.ConvLSTMCell1d((5, 1), 2, 3, state_init=braintools.init.Constant(0.25))
    cell.init_state()
    assert cell.h.value.shape == cell.c.value.shape == (5, 2)
    np.testing.assert_array_equal(np.asarray(cell.h.value), 0.25)
    cell.reset_state(batch_size=(3, 2))
    assert cell.h.value.shape == (3, 2, 5, 2)
    cell(jnp.ones((3, 2, 5, 1)))
    assert not np.allclose(np.asarray(cell.c.value), 0.25)
    cell.reset_state(batch_size=(3, 2))
    np.testing.assert_array_equal(np.asarray(cell.c.value), 0.25)
    net = brainstate.nn.Sequential(brainconv.ConvGRUCell1d((5, 1), 2, 3), brainconv.Conv1d((5, 2), 1, 1))
    brainstate.nn.init_all_states(net, batch_size=4)
    assert net.layers[0].h.value.shape == (4, 5, 2)
    assert net(jnp.ones((4, 5, 1))).shape == (4, 5, 1)
    array_init = np.arange(10, dtype=np.float32).reshape(5, 2)
    cell = brainconv.ConvGRUCell1d((5, 1), 2, 3, state_init=array_init)
    cell.init_state(batch_size=3)
    np.testing.assert_array_equal(np.asarray(cell.h.value), np.broadcast_to(array_init, (3, 5, 2)))


# --- the same equations in plain JAX, for gradients and forward mode ------------------------

def jax_lstm(params, xs, h, c):
    dn = ('NWC', 'WIO', 'NWC')
    conv = lambda a, w: jax.lax.conv_general_dilated(a, w, (1,), 'SAME', dimension_numbers=dn)
    for x in xs:
        z = conv(x, params['wx']) + jnp.reshape(params['b'], (1, 1, -1)) + conv(h, params['wh'])
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return jnp.sum(h ** 2)


@pytest.fixture(scope='module')
def loop_setup():
    """Weights, inputs and zero states for a 1-d ConvLSTM, and a maker of cells with those weights."""
    rng = np.random.default_rng(1)
    params = {'wx': jnp.asarray(rng.normal(0, 0.4, (3, 2, 12)), jnp.float32),
              'b': jnp.asarray(rng.normal(size=12), jnp.float32),
              'wh': jnp.asarray(rng.normal(0, 0.4, (3, 3, 12)), jnp.float32)}
    xs = jnp.asarray(rng.normal(size=(4, 2, 6, 2)), jnp.float32)
    zeros = jnp.zeros((2, 6, 3), jnp.float32)

    def make_cell(lowering):
        cell = brainconv.ConvLSTMCell1d((6, 2), 3, 3, w_init=params['wx'], recurrent_w_init=params['wh'],
                                        b_init=params['b'], lowering=lowering)
        cell.init_state(batch_size=2)  # outside any transform
        return cell

    return make_cell, xs, params, zeros


def test_gradient_through_time_under_jit(loop_setup):
    make_cell, xs, params, zeros = loop_setup
    cell = make_cell(None)  # the default lowering: reverse mode is what it must support
    weights = cell.states(brainstate.ParamState)

    def loss():
        cell.reset_state(batch_size=2)
        hs = brainstate.transform.for_loop(cell, xs)
        return jnp.sum(hs[-1] ** 2)

    grads = brainstate.transform.jit(brainstate.transform.grad(loss, weights))()
    want = jax.grad(jax_lstm)(params, xs, zeros, zeros)
    got_in, got_h = grads[('input_conv', 'weight')], grads[('hidden_conv', 'weight')]
    np.testing.assert_allclose(got_in['weight'], want['wx'], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_in['bias'].reshape(-1), want['b'], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_h['weight'], want['wh'], rtol=1e-4, atol=1e-5)
    assert np.abs(np.asarray(want['wh'])).max() > 1e-3
    np.testing.assert_allclose(brainstate.transform.jit(loss)(), jax_lstm(params, xs, zeros, zeros), rtol=1e-5)


def test_forward_mode(loop_setup):
    make_cell, xs, params, zeros = loop_setup
    cell = make_cell(None)  # the default lowering
    tangent = jnp.asarray(np.random.default_rng(2).normal(size=xs.shape), jnp.float32)

    def run(seq):
        cell.reset_state(batch_size=2)
        for x in seq:
            h = cell(x)
        return jnp.sum(h ** 2)

    value, derivative = brainstate.transform.jvp(run, (xs,), (tangent,))
    want_value, want_derivative = jax.jvp(lambda s: jax_lstm(params, s, zeros, zeros), (xs,), (tangent,))
    np.testing.assert_allclose(value, want_value, rtol=1e-5)
    np.testing.assert_allclose(derivative, want_derivative, rtol=1e-4, atol=1e-5)


# --- loading Keras / flax weights (the recipes of docs/recurrent.md) ---------------------------

def test_keras_conv_lstm_weights_give_the_same_numbers(rng):
    os.environ.setdefault('KERAS_BACKEND', 'jax')
    keras = pytest.importorskip('keras')
    if keras.backend.backend() != 'jax':
        pytest.skip('keras is set up for another backend')
    layer = keras.layers.ConvLSTM2D(3, (3, 2), strides=(2, 1), padding='same', return_sequences=True)
    xs = rng.normal(size=(2, 3, 7, 5, 2)).astype(np.float32)  # (batch, time, H, W, C)
    with jax.numpy_rank_promotion('allow'), jax.numpy_dtype_promotion('standard'):  # keras's own code
        want = np.asarray(layer(xs))
    # The recipe: the gate order (i, f, c, o) and the kernel layouts are the same.
    kernel, recurrent_kernel, bias = layer.get_weights()
    cell = brainconv.ConvLSTMCell2d((7, 5, 2), 3, (3, 2), stride=(2, 1), padding='SAME')
    cell.input_conv.weight.value = {'weight': jnp.asarray(kernel),
                                    'bias': jnp.asarray(bias).reshape(cell.input_conv.spec.bias_shape)}
    cell.hidden_conv.weight.value = {'weight': jnp.asarray(recurrent_kernel)}
    cell.init_state(batch_size=2)
    got = np.stack([np.asarray(cell(jnp.asarray(xs[:, t]))) for t in range(3)], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_flax_conv_lstm_weights_give_the_same_numbers(rng):
    nn = pytest.importorskip('flax.linen')
    flax_cell = nn.ConvLSTMCell(features=3, kernel_size=(3, 3))
    xs = rng.normal(size=(3, 2, 6, 5, 2)).astype(np.float32)  # (time, batch, H, W, C)
    # Random parameters in flax's layout (drawn here: flax's own init costs a compile).
    shapes = {'ih': (3, 3, 2, 12), 'hh': (3, 3, 3, 12)}
    variables = {'params': {name: {'kernel': rng.normal(0, 0.3, shape).astype(np.float32),
                                   'bias': rng.normal(0, 0.3, (12,)).astype(np.float32)}
                            for name, shape in shapes.items()}}
    carry = (jnp.zeros((2, 6, 5, 3)), jnp.zeros((2, 6, 5, 3)))  # flax's zero (c, h)
    step = lambda carry, x: flax_cell.apply(variables, carry, x)
    want = np.asarray(jax.jit(lambda c, s: jax.lax.scan(step, c, s)[1])(carry, jnp.asarray(xs)))
    # The recipe: flax's gate order is (i, g, f, o), it has a bias on both convolutions and adds 1
    # to the forget gate's pre-activation at every step.
    p = variables['params']
    hidden = 3

    def reorder(a):  # (i, g, f, o) -> (i, f, g, o) along the last axis
        i, g, f, o = np.split(np.asarray(a), 4, axis=-1)
        return np.concatenate([i, f, g, o], axis=-1)

    bias = reorder(p['ih']['bias'] + p['hh']['bias'])
    bias[hidden:2 * hidden] += 1.0
    cell = brainconv.ConvLSTMCell2d((6, 5, 2), hidden, 3)
    cell.input_conv.weight.value = {'weight': jnp.asarray(reorder(p['ih']['kernel'])),
                                    'bias': jnp.asarray(bias).reshape(cell.input_conv.spec.bias_shape)}
    cell.hidden_conv.weight.value = {'weight': jnp.asarray(reorder(p['hh']['kernel']))}
    cell.init_state(batch_size=2)
    got = [np.asarray(cell(jnp.asarray(x))) for x in xs]
    np.testing.assert_allclose(np.stack(got), want, rtol=1e-4, atol=1e-5)


# --- units, bad input and bad arguments ---------------------------------------------------------

def test_units_are_refused_with_a_type_error():
    cell = brainconv.ConvGRUCell1d((5, 1), 2, 3)
    cell.init_state(batch_size=2)
    before = np.asarray(cell.h.value)
    with pytest.raises(TypeError, match=r'x must be dimensionless.*mV'):
        cell(jnp.ones((2, 5, 1)) * u.mV)
    np.testing.assert_array_equal(np.asarray(cell.h.value), before)
    out = cell(u.Quantity(jnp.ones((2, 5, 1))))  # a dimensionless Quantity is a plain number
    assert out.shape == (2, 5, 2)
    with pytest.raises(TypeError, match='w_init must be dimensionless'):
        brainconv.ConvGRUCell1d((5, 1), 2, 3, w_init=braintools.init.XavierNormal(unit=u.mV))
    with pytest.raises(TypeError, match='state_init must be dimensionless'):
        brainconv.ConvGRUCell1d((5, 1), 2, 3, state_init=np.zeros((5, 2)) * u.mV).init_state()


@pytest.mark.parametrize('kwargs, exc, match', [
    (dict(out_channels=0), ValueError, 'out_channels must be a positive int, got 0'),
    (dict(out_channels=2.0), TypeError, 'out_channels must be a positive int, got 2.0'),
    (dict(in_size=(5,)), ValueError, 'in_size must be a sequence of 2 ints'),
    (dict(kernel_size=(3, 3)), ValueError, 'kernel_size must be an int or a sequence of 1 ints'),
    (dict(recurrent_kernel_size=0), ValueError, 'recurrent_kernel_size must be positive'),
    (dict(recurrent_padding_mode='mirror'), ValueError, "recurrent_padding_mode must be one of .*'mirror'"),
    (dict(padding_mode='mirror'), ValueError, "padding_mode must be one of .*'mirror'"),
    (dict(activation='nope'), ValueError, "activation must be a callable or the name .*'nope'"),
    (dict(recurrent_activation=3), TypeError, 'recurrent_activation must be a callable or a string .*3'),
    (dict(forget_bias='1'), TypeError, "forget_bias must be a real number, got '1'"),
    (dict(forget_bias=float('nan')), ValueError, 'forget_bias must be finite'),
    (dict(w_init=np.zeros((3, 1, 7))), ValueError, r'w_init must give an array of shape \(3, 1, 8\)'),
    (dict(recurrent_w_init=np.zeros((3, 3, 8))), ValueError, r'recurrent_w_init must give an array of shape'),
    (dict(b_init=np.zeros(5)), ValueError, 'b_init must give an array of shape'),
    (dict(state_init=np.zeros((4, 2))), ValueError, r'state_init must broadcast to the state shape \(5, 2\)'),
    (dict(lowering='fast'), ValueError, "lowering must be one of .*'fast'"),
    (dict(stride=2, padding='bad'), ValueError, "padding must be one of .*'bad'"),
])
def test_bad_arguments(kwargs, exc, match):
    args = dict(in_size=(5, 1), out_channels=2, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        brainconv.ConvLSTMCell1d(**args)


def test_bad_input_leaves_the_state_alone():
    cell = brainconv.ConvLSTMCell1d((5, 1), 2, 3)
    with pytest.raises(RuntimeError, match='init_state'):
        cell(jnp.ones((5, 1)))
    with pytest.raises(RuntimeError, match='init_state'):
        cell.reset_state(batch_size=2)
    with pytest.raises(TypeError, match='batch_size must be'):
        cell.init_state(batch_size=2.5)
    with pytest.raises(ValueError, match='batch_size must be positive'):
        cell.init_state(batch_size=(2, 0))
    cell.init_state(batch_size=2)
    cell(jnp.ones((2, 5, 1)))
    before = [np.asarray(cell.h.value), np.asarray(cell.c.value)]
    bad = [
        (jnp.ones((2, 4, 1)), ValueError, r'ConvLSTMCell1d expects input of shape \(\*batch, \*in_size\)'),
        (jnp.ones((3, 5, 1)), ValueError, r'batch shape \(3,\) but its state has batch shape \(2,\)'),
        (jnp.ones((5, 1)), ValueError, r'batch shape \(\) but its state has batch shape \(2,\); '
                                       r'call init_state\(batch_size=None\)'),
        (jnp.ones((3, 1, 5, 1)), ValueError, r'batch shape \(3, 1\) but its state has batch shape \(2,\)'),
        (jnp.ones((2, 5, 1), jnp.complex64), TypeError, 'real input'),
    ]
    for x, exc, match in bad:
        with pytest.raises(exc, match=match):
            cell(x)
    np.testing.assert_array_equal(np.asarray(cell.h.value), before[0])
    np.testing.assert_array_equal(np.asarray(cell.c.value), before[1])


@pytest.mark.parametrize('time_axis', [0, 1])
def test_a_whole_sequence_gets_a_message_that_leads_to_the_fix(time_axis):
    cell = brainconv.ConvGRUCell2d((5, 4, 1), 2, 3, padding=('CAUSAL', 'SAME'))
    cell.init_state(batch_size=3)
    xs = np.random.default_rng(4).normal(size=(7, 3, 5, 4, 1)).astype(np.float32)  # (T, B, ...)
    given = xs if time_axis == 0 else np.moveaxis(xs, 0, 1)
    fix = 'for_loop(cell, xs)' if time_axis == 0 else 'for_loop(cell, jnp.moveaxis(xs, 1, 0))'
    with pytest.raises(ValueError) as info:
        cell(jnp.asarray(given))
    message = str(info.value)
    assert message.startswith('ConvGRUCell2d takes one time step of shape (*batch, *in_size) = (3, 5, 4, 1) per call')
    assert f'time on axis {time_axis}.' in message and f'brainstate.transform.{fix}' in message
    assert 'init_state' not in message
    # The fix it gives runs the sequence: the same as stepping by hand.
    ys = brainstate.transform.for_loop(cell, jnp.asarray(given) if time_axis == 0 else
                                       jnp.moveaxis(jnp.asarray(given), 1, 0))
    cell.reset_state(batch_size=3)
    by_hand = np.stack([np.asarray(cell(jnp.asarray(x))) for x in xs])
    np.testing.assert_allclose(ys, by_hand, rtol=1e-5, atol=1e-6)


def test_ranked_classes_share_the_generic_signature_and_docstring():
    import inspect
    for base, ranked in [(brainconv.ConvLSTMCell, brainconv.ConvLSTMCell2d),
                         (brainconv.ConvGRUCell, brainconv.ConvGRUCell3d)]:
        generic = list(inspect.signature(base).parameters)
        assert generic[0] == 'num_spatial_dims'
        assert list(inspect.signature(ranked).parameters) == generic[1:]
        assert 'num_spatial_dims' not in ranked.__doc__ and 'sequence of' in ranked.__doc__
    cell = brainconv.ConvLSTMCell(4, (3, 3, 3, 3, 1), 2, 2)
    assert cell.out_size == (3, 3, 3, 3, 2) and cell.num_spatial_dims == 4


def test_summary_row_of_a_cell():
    net = brainstate.nn.Sequential(brainconv.ConvGRUCell2d((8, 6, 2), 4, 3, stride=2, recurrent_kernel_size=(1, 3)),
                                   brainconv.Conv2d((4, 3, 4), 1, 1))
    s = brainconv.summary(net)
    row = s.rows[0].to_dict()
    positions = 4 * 3  # the state's spatial size: ceil(8 / 2) x ceil(6 / 2)
    # One MAC per kernel tap, input channel and output: input conv 3*4 outputs per position over 3x3x2 taps;
    # hidden conv 2*4 outputs and candidate conv 4 outputs over 1x3x4 taps.
    macs = positions * (12 * 9 * 2 + 8 * 3 * 4 + 4 * 3 * 4)
    params = sum(int(np.size(v)) for st in net.layers[0].states(brainstate.ParamState).values()
                 for v in st.value.values())
    assert row['type'] == 'ConvGRUCell2d' and row['out_size'] == (4, 3, 4)
    assert row['macs'] == macs and row['params'] == params == 3 * 3 * 2 * 12 + 12 + 3 * 4 * 8 + 3 * 4 * 4
    assert row['states'] == {'h': (4, 3, 4)} and row['stride'] == (2, 2) and row['pads'] == ((0, 1), (0, 1))
    assert 'h(4, 3, 4)' in str(s) and s.total_macs == macs + positions * 4
    with pytest.raises(ValueError, match='recurrent'):
        brainconv.receptive_field(net)


def test_orthogonal_kernels_are_drawn_without_compiling(caplog):
    import logging
    brainstate.random.seed(3)
    previous = jax.config.jax_log_compiles
    jax.config.update('jax_log_compiles', True)
    caplog.set_level(logging.WARNING)
    try:
        caplog.clear()
        for i in range(2):  # new kernel shapes each time
            brainconv.ConvLSTMCell2d((6, 6, 1 + i), 2 + i, 3)
            brainconv.ConvGRUCell1d((7, 2), 3 + i, 2, recurrent_w_init=braintools.init.Orthogonal(scale=0.5))
        assert [r.getMessage() for r in caplog.records if 'Compiling' in r.getMessage()] == []
    finally:
        jax.config.update('jax_log_compiles', previous)
    tall = np.asarray(_init.sample(braintools.init.Orthogonal(scale=0.5), (3, 4, 6))).reshape(12, 6)
    np.testing.assert_allclose(tall.T @ tall, 0.25 * np.eye(6), atol=1e-6)
    wide = np.asarray(_init.sample(braintools.init.Orthogonal(), (2, 5)))
    np.testing.assert_allclose(wide @ wide.T, np.eye(2), atol=1e-6)
