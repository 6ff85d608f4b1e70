"""Every layer against the NumPy oracle over random configurations, plus the adjoint identity."""

import importlib.util
import os

import _reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _configs import (
    cheap_init,
    conv_configs,
    conv_is_valid,
    from_reference_layout,
    in_share,
    to_reference_layout,
    transpose_configs,
)
from hypothesis import given, settings
from jax.test_util import check_grads

import brainconv

TOL = dict(rtol=2e-4, atol=2e-4)


def _in_size(spatial, channels, channel_first):
    return (channels,) + tuple(spatial) if channel_first else tuple(spatial) + (channels,)


def _build_conv(c, seed=0):
    in_size = _in_size(c['spatial'], c['cin'], c['channel_first'])
    return brainconv.Conv(
        c['nd'], in_size, c['cout'], c['kernel'], stride=c['stride'], padding=c['user_padding'],
        lhs_dilation=c['lhs'], rhs_dilation=c['rhs'], groups=c['groups'], w_init=cheap_init(seed),
        b_init=cheap_init(seed + 1) if c['bias'] else None, channel_first=c['channel_first'],
        padding_mode=c['mode_spelling'])


@settings(max_examples=150)
@given(conv_configs())
def test_conv_matches_reference(c):
    if not in_share(c):
        return
    if not conv_is_valid(c):
        with pytest.raises(ValueError):
            _build_conv(c)
        return
    layer = _build_conv(c)
    x = np.random.default_rng(1).standard_normal(c['batch'] + layer.in_size).astype(np.float32)
    y = jax.jit(layer)(jnp.asarray(x))   # one program (op by op, each example compiled ~4)
    assert y.shape == c['batch'] + layer.out_size
    params = layer.weight.value
    expected = ref.conv(to_reference_layout(x, len(c['batch']), c['channel_first']), params['weight'],
                        c['stride'], c['pads'], c['lhs'], c['rhs'], c['groups'], c['mode'])
    if c['bias']:
        expected = expected + np.asarray(params['bias']).reshape(-1)
    np.testing.assert_allclose(y, from_reference_layout(expected, c['batch'], c['channel_first']), **TOL)


def _build_transpose(c, seed=0):
    in_size = _in_size(c['m'], c['cin'], c['channel_first'])
    return brainconv.ConvTranspose(
        c['nd'], in_size, c['cout'], c['kernel'], stride=c['stride'], padding=c['user_padding'],
        rhs_dilation=c['rhs'], groups=c['groups'], w_init=cheap_init(seed), channel_first=c['channel_first'],
        padding_mode=c['mode'], output_padding=c['output_padding'])


@settings(max_examples=100)
@given(transpose_configs())
def test_conv_transpose_matches_reference(c):
    if not in_share(c):
        return
    if min(c['out']) < 1:
        with pytest.raises(ValueError, match='output length'):
            _build_transpose(c)
        return
    layer = _build_transpose(c)
    assert layer.out_size == _in_size(c['out'], c['cout'], c['channel_first'])
    assert layer.output_padding == c['effective_output_padding']
    x = np.random.default_rng(1).standard_normal(c['batch'] + layer.in_size).astype(np.float32)
    y = jax.jit(layer)(jnp.asarray(x))
    expected = ref.conv_transpose(to_reference_layout(x, len(c['batch']), c['channel_first']),
                                  layer.weight.value['weight'], c['stride'], c['pads'], c['out'], c['rhs'],
                                  c['groups'], c['mode'])
    np.testing.assert_allclose(y, from_reference_layout(expected, c['batch'], c['channel_first']), **TOL)


def _inner(a, b):
    return float(np.sum(np.asarray(a, np.float64) * np.asarray(b, np.float64)))


@settings(max_examples=40)
@given(conv_configs(modes=('ZEROS', 'CIRCULAR')))
def test_transpose_method_is_the_adjoint(c):
    if not in_share(c):
        return
    c = dict(c, lhs=(1,) * c['nd'], bias=False)
    c['pads'] = c['pads'] if not isinstance(c['padding'], str) else None
    try:
        conv = _build_conv(c)
    except ValueError:
        return  # empty output: covered by test_conv_matches_reference
    convT = conv.transpose()
    assert convT.in_size == conv.out_size and convT.out_size == conv.in_size
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2,) + conv.in_size).astype(np.float32)
    y = rng.standard_normal((2,) + conv.out_size).astype(np.float32)
    lhs, rhs = _inner(jax.jit(conv)(x), y), _inner(x, jax.jit(convT)(y))   # one program each
    assert lhs == pytest.approx(rhs, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize('nd', [1, 2, 3])
@pytest.mark.parametrize('padding', ['SAME', 'SAME_LOWER', 'VALID', 'CAUSAL', 1])
@pytest.mark.parametrize('mode', ['ZEROS', 'CIRCULAR'])
def test_conv_transpose_with_same_arguments_is_adjoint(nd, padding, mode):
    """A ConvTranspose built from the Conv's own arguments (channels swapped) is its adjoint."""
    n, k, s, d = (7, 6, 5)[:nd], 3, 2, (1, 2, 1)[:nd]
    conv = brainconv.Conv(nd, n + (2,), 3, k, stride=s, padding=padding, rhs_dilation=d,
                          w_init=cheap_init(), padding_mode=mode)
    # output_padding from the test's own arithmetic: what the input length adds to the smallest length
    # the padding allows ((m - 1) * s + 1 for the strings), or the remainder the stride dropped.
    pads = conv.pads
    if isinstance(padding, str) and padding != 'VALID':
        op = tuple(nn - (m - 1) * s - 1 for m, nn in zip(conv.out_size[:-1], n))
    else:
        op = tuple((nn + lo + hi - ((k - 1) * dd + 1)) % s for nn, dd, (lo, hi) in zip(n, d, pads))
    convT = brainconv.ConvTranspose(nd, conv.out_size, 2, k, stride=s, padding=padding, rhs_dilation=d,
                                    w_init=conv.weight.value['weight'], padding_mode=mode, output_padding=op)
    assert convT.out_size == conv.in_size
    rng = np.random.default_rng(3)
    x = rng.standard_normal(conv.in_size).astype(np.float32)
    y = rng.standard_normal(conv.out_size).astype(np.float32)
    assert _inner(conv(x), y) == pytest.approx(_inner(x, convT(y)), rel=1e-4, abs=1e-4)


@pytest.mark.parametrize('groups,cin,cout', [(2, 4, 6), (3, 3, 3), (3, 3, 6)])
def test_grouped_transpose_is_adjoint(groups, cin, cout):
    conv = brainconv.Conv2d((6, 5, cin), cout, (3, 2), stride=(2, 1), groups=groups, w_init=cheap_init())
    convT = conv.transpose()
    assert convT.kernel_shape == (3, 2, cin, cout // groups)
    rng = np.random.default_rng(4)
    x = rng.standard_normal(conv.in_size).astype(np.float32)
    y = rng.standard_normal(conv.out_size).astype(np.float32)
    assert _inner(conv(x), y) == pytest.approx(_inner(x, convT(y)), rel=1e-4, abs=1e-4)


def test_transpose_uses_the_kernel_unflipped_for_one_group():
    conv = brainconv.Conv1d((9, 2), 3, 4, stride=2, w_init=cheap_init())
    np.testing.assert_array_equal(conv.transpose().weight.value['weight'], conv.weight.value['weight'])


@pytest.mark.parametrize('make', [
    lambda: brainconv.Conv2d((5, 4, 2), 3, 3, stride=2, rhs_dilation=(1, 2), w_init=cheap_init(),
                             b_init=cheap_init(1)),
    lambda: brainconv.Conv1d((7, 2), 4, 3, groups=2, padding='CAUSAL', padding_mode='REFLECT', w_init=cheap_init()),
    lambda: brainconv.Conv2d((2, 5, 5), 2, 2, lhs_dilation=2, channel_first=True, w_init=cheap_init()),
    lambda: brainconv.ConvTranspose2d((3, 4, 2), 3, 3, stride=2, output_padding=1, w_init=cheap_init()),
    lambda: brainconv.ConvTranspose1d((5, 2), 2, 3, stride=2, padding_mode='CIRCULAR', w_init=cheap_init()),
    lambda: brainconv.ScaledWSConv2d((4, 4, 2), 3, 3, w_init=cheap_init(), b_init=cheap_init(1)),
])
def test_gradients(make):
    layer = make()
    x = jnp.asarray(np.random.default_rng(5).standard_normal((2,) + layer.in_size), jnp.float32)
    check_grads(lambda x, p: layer.apply(p, x), (x, layer.weight.value), order=1, modes=('rev',),
                atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize('ws_gain', [True, False])
def test_scaled_ws_conv_matches_reference(ws_gain):
    layer = brainconv.ScaledWSConv2d((5, 6, 3), 4, (3, 2), stride=(1, 2), ws_gain=ws_gain, eps=1e-4,
                                     w_init=cheap_init())
    params = layer.weight.value
    assert ('gain' in params) == ws_gain
    if ws_gain:
        assert params['gain'].shape == (1, 1, 1, 4)
        layer.weight.value = dict(params, gain=jnp.arange(1.0, 5.0).reshape(1, 1, 1, 4))
    x = np.random.default_rng(6).standard_normal((2, 5, 6, 3)).astype(np.float32)
    gain = layer.weight.value.get('gain')
    w = ref.weight_standardize(params['weight'], 1e-4, gain)
    expected = ref.conv(x, w, (1, 2), ((1, 1), (0, 1)), (1, 1), (1, 1), 1)
    np.testing.assert_allclose(layer(x), expected, **TOL)


def test_w_mask_zeroes_kernel_entries_and_their_gradients():
    mask = np.zeros((3, 3, 2, 4), np.float32)
    mask[1, 1] = 1.0  # only the centre tap is connected
    layer = brainconv.Conv2d((5, 5, 2), 4, 3, w_init=cheap_init(), w_mask=mask)
    x = np.random.default_rng(7).standard_normal((2, 5, 5, 2)).astype(np.float32)
    w = np.asarray(layer.weight.value['weight'])
    expected = ref.conv(x, w * mask, (1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1), 1)
    np.testing.assert_allclose(layer(x), expected, **TOL)

    grads = jax.grad(lambda p: jnp.sum(layer.apply(p, x) ** 2))(layer.weight.value)
    assert np.all(np.asarray(grads['weight'])[mask == 0] == 0)
    assert np.any(np.asarray(grads['weight'])[mask == 1] != 0)


def test_w_mask_broadcasts_and_accepts_an_initializer():
    per_out = np.array([1.0, 0.0, 1.0], np.float32)  # broadcasts over (*k, Cin/g, Cout)
    layer = brainconv.Conv1d((6, 2), 3, 3, w_init=cheap_init(), w_mask=per_out)
    x = np.random.default_rng(8).standard_normal((6, 2)).astype(np.float32)
    assert np.all(np.asarray(layer(x))[:, 1] == 0)
    layer2 = brainconv.Conv1d((6, 2), 3, 3, w_init=cheap_init(), w_mask=lambda shape: np.ones(shape) * per_out)
    np.testing.assert_allclose(layer2(x), layer(x))


def test_default_xavier_init_statistics():
    """The default w_init is braintools' XavierNormal: the kernel has the spread braintools gives
    that shape (braintools 0.3 and 0.4 differ in their fan convention for conv kernels)."""
    import braintools
    layer = brainconv.Conv2d((8, 8, 16), 32, 3)
    w = np.asarray(layer.weight.value['weight'])
    assert w.shape == (3, 3, 16, 32)
    direct = np.asarray(braintools.init.XavierNormal()((3, 3, 16, 32)))
    assert np.var(w) == pytest.approx(np.var(direct), rel=0.1)
    assert abs(np.mean(w)) < 0.1 * np.std(direct)


@pytest.mark.skipif(importlib.util.find_spec('keras') is None, reason='keras is not installed')
@pytest.mark.parametrize('k, s, op, padding, ours', [
    # Keras's arguments, and brainconv's output_padding for the same layer (docs/padding.md's table)
    (3, 2, 1, 'same', 1),        # odd span: the same output_padding, (m - 1) * s + 1 + op
    (3, 2, 0, 'same', 0),
    (5, 3, 2, 'same', 2),
    (3, 2, None, 'same', None),  # None: m * s
    (4, 2, None, 'same', None),
    (4, 2, 1, 'same', 0),        # even span: Keras's length is (m - 1) * s + op, brainconv's op - 1
    (2, 3, 1, 'valid', 1),       # explicit: PyTorch's formula in both
    (2, 3, None, 'valid', 1),    # None: Keras (m - 1) * s + max(span, s), brainconv's output_padding s - span
])
def test_output_padding_matches_keras(k, s, op, padding, ours):
    os.environ.setdefault('KERAS_BACKEND', 'jax')
    keras = pytest.importorskip('keras')
    if keras.backend.backend() != 'jax':
        pytest.skip(f"keras runs on {keras.backend.backend()}, not jax")
    m = 4
    theirs = keras.layers.Conv1DTranspose(3, k, strides=s, padding=padding, output_padding=op, use_bias=False)
    x = np.random.default_rng(9).standard_normal((2, m, 2)).astype(np.float32)
    with jax.numpy_rank_promotion('allow'), jax.numpy_dtype_promotion('standard'):  # keras's own code
        expected = np.asarray(theirs(x))
    (kernel,) = theirs.get_weights()  # (k, C_out, C_in): brainconv's ConvTranspose layout
    layer = brainconv.ConvTranspose1d((m, 2), 3, k, stride=s, padding=padding, output_padding=ours, w_init=kernel,
                                      precision=jax.lax.Precision.HIGHEST)
    if padding == 'same':
        length = m * s if op is None else (m - 1) * s + k % 2 + op  # Keras's formula
    else:
        length = (m - 1) * s + (max(k, s) if op is None else k + op)
    assert expected.shape == (2, length, 3) == (2,) + layer.out_size
    np.testing.assert_allclose(layer(x), expected, **TOL)


# One entry per axis, mixing strings, ints and pairs; the pads written out from the definitions
# (CAUSAL: (span - 1, 0); SAME: ceil(n / s) outputs, the odd pad at the end; SAME_LOWER: at the start).
PER_AXIS = {
    '1d-causal': dict(spatial=(9,), kernel=(3,), stride=(2,), rhs=(2,), padding=('causal',), pads=((4, 0),)),
    '2d-causal-same-lower': dict(spatial=(7, 6), kernel=(3, 3), stride=(1, 2), rhs=(1, 1),
                                 padding=('CAUSAL', 'same_lower'), pads=((2, 0), (1, 0))),
    '3d-causal-same-pair': dict(spatial=(5, 4, 6), kernel=(3, 3, 2), stride=(1, 2, 1), rhs=(1, 1, 2),
                                padding=('CAUSAL', 'SAME', (1, 0)), pads=((2, 0), (0, 1), (1, 0))),
    '3d-valid-int-causal': dict(spatial=(5, 4, 6), kernel=(2, 3, 3), stride=(2, 1, 3), rhs=(1, 1, 1),
                                padding=['VALID', 1, 'Causal'], pads=((0, 0), (1, 1), (2, 0))),
}


@pytest.mark.parametrize('name', list(PER_AXIS))
def test_per_axis_padding_matches_reference(name):
    c = PER_AXIS[name]
    nd = len(c['spatial'])
    layer = brainconv.Conv(nd, c['spatial'] + (2,), 3, c['kernel'], stride=c['stride'], padding=c['padding'],
                           rhs_dilation=c['rhs'], w_init=cheap_init())
    assert layer.pads == c['pads']
    x = np.random.default_rng(10).standard_normal((2,) + layer.in_size).astype(np.float32)
    w = np.asarray(layer.weight.value['weight'])
    expected = ref.conv(x, w, c['stride'], c['pads'], (1,) * nd, c['rhs'], 1)
    np.testing.assert_allclose(layer(x), expected, **TOL)
    args = dict(stride=c['stride'], padding=c['padding'], rhs_dilation=c['rhs'])
    np.testing.assert_allclose(brainconv.functional.conv(x, w, **args), expected, **TOL)
    # The transposed convolution with the same padding is the adjoint of this one, output_padding chosen so
    # that it returns the input length: n - ((m - 1) * s + 1) on string axes, the dropped remainder on pads.
    m = layer.out_size[:-1]
    op = tuple(n - (mm - 1) * s - 1 if isinstance(p, str) and p.upper() != 'VALID' else
               (n + lo + hi - (k - 1) * d - 1) % s
               for n, mm, s, k, d, p, (lo, hi) in zip(c['spatial'], m, c['stride'], c['kernel'], c['rhs'],
                                                     c['padding'], c['pads']))
    wt = w  # the adjoint uses the kernel as it is: (*k, C_in, C_out) is its (*k, C_out, C_in)
    convT = brainconv.ConvTranspose(nd, layer.out_size, 2, c['kernel'], output_padding=op, w_init=wt, **args)
    assert convT.out_size == layer.in_size and convT.pads == c['pads']
    y = np.random.default_rng(11).standard_normal((2,) + layer.out_size).astype(np.float32)
    expected_t = ref.conv_transpose(y, wt, c['stride'], c['pads'], c['spatial'], c['rhs'], 1)
    np.testing.assert_allclose(convT(y), expected_t, **TOL)
    np.testing.assert_allclose(brainconv.functional.conv_transpose(y, wt, output_padding=op, **args), expected_t,
                               **TOL)
    assert _inner(layer(x), y) == pytest.approx(_inner(x, convT(y)), rel=1e-4, abs=1e-4)


def test_python_lists_are_inputs():
    """Nested lists (and tuples) are read as jax.numpy reads them, by every layer and op."""
    x = np.random.default_rng(12).standard_normal((2, 6, 2)).astype(np.float32)
    xl = x.tolist()
    layer = brainconv.Conv1d((6, 2), 3, 3, stride=2, w_init=cheap_init())
    w = np.asarray(layer.weight.value['weight'])
    expected = ref.conv(x, w, (2,), ((0, 1),), (1,), (1,), 1)  # SAME: 3 outputs, the odd pad at the end
    np.testing.assert_allclose(layer(xl), expected, **TOL)
    np.testing.assert_allclose(layer.apply(layer.weight.value, tuple(map(tuple, xl[0]))), expected[0], **TOL)
    np.testing.assert_allclose(brainconv.functional.conv(xl, w.tolist(), stride=2), expected, **TOL)
    wt = w  # the adjoint uses the kernel as it is: (*k, C_in, C_out) is its (*k, C_out, C_in)
    np.testing.assert_allclose(brainconv.functional.conv_transpose(expected.tolist(), wt.tolist(), stride=2),
                               ref.conv_transpose(expected, wt, (2,), ((0, 1),), (6,), (1,), 1), **TOL)
    np.testing.assert_array_equal(brainconv.functional.pad(xl, ((1, 2),)), np.pad(x, ((0, 0), (1, 2), (0, 0))))
    for other in (brainconv.ConvTranspose1d((6, 2), 2, 3, w_init=cheap_init()),
                  brainconv.ScaledWSConv1d((6, 2), 2, 3, w_init=cheap_init()),
                  brainconv.LocalConv1d((6, 2), 2, 3), brainconv.SeparableConv1d((6, 2), 2, 3)):
        np.testing.assert_allclose(other(xl), other(x), rtol=1e-6, atol=1e-6)
    local = brainconv.LocalConv1d((6, 2), 2, 3)
    kernel = np.asarray(local.weight.value['weight'])
    np.testing.assert_allclose(brainconv.local_conv(xl, kernel.tolist(), kernel_size=3),
                               brainconv.local_conv(x, kernel, kernel_size=3), rtol=1e-6, atol=1e-6)
    step = brainconv.Conv1d((6, 2), 3, 3, padding='CAUSAL', w_init=cheap_init()).streaming()
    step.init_state(batch_size=2)
    np.testing.assert_allclose(step(x[:, 0].tolist()), x[:, 0] @ np.asarray(step.conv.weight.value['weight'])[2],
                               **TOL)  # the first frame meets only the last tap
    cell = brainconv.ConvGRUCell1d((6, 2), 2, 3)
    cell.init_state(batch_size=2)
    assert cell(xl).shape == (2, 6, 2)
    ints = [[1, 0]] * 6  # ints stay ints, as in jax.numpy: integer spikes, read as numbers
    np.testing.assert_allclose(layer(ints), layer(np.asarray(ints, np.float32)), rtol=1e-6, atol=1e-6)
