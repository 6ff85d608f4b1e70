"""SeparableConv: a NumPy oracle (depthwise tap sums, then a matmul), Keras's SeparableConv where importable."""

import importlib.util
import itertools
import os

import _reference as ref
import brainstate
import braintools
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import brainconv

TOL = dict(rtol=2e-4, atol=2e-4)


def _random_in(unit):
    """An initializer drawing standard normal weights in ``unit``."""
    return lambda shape: jnp.asarray(np.random.default_rng(7).standard_normal(shape), jnp.float32) * unit


def separable_reference(x, depthwise, pointwise, bias, stride, pads, rhs_dilation, mode='ZEROS'):
    """``h[b, p, c*m + j] = sum_t xp[b, p*s + t*d, c] * depthwise[t, 0, c*m + j]``, then ``h @ pointwise + bias``.

    ``x`` is ``(B, *spatial, C)``; ``depthwise`` ``(*k, 1, C * m)``; ``pointwise`` ``(1, ..., 1, C * m, C_out)``.
    """
    x = np.asarray(x, np.float64)
    dw = np.asarray(depthwise, np.float64)
    nd = x.ndim - 2
    xp = np.pad(x, [(0, 0)] + [tuple(p) for p in pads] + [(0, 0)], mode=ref.NP_MODE[mode])
    ksize, cin = dw.shape[:nd], x.shape[-1]
    mult = dw.shape[-1] // cin
    out = [(xp.shape[1 + a] - (ksize[a] - 1) * rhs_dilation[a] - 1) // stride[a] + 1 for a in range(nd)]
    h = np.zeros((x.shape[0], *out, cin * mult))
    for tap in itertools.product(*(range(k) for k in ksize)):
        index = tuple(slice(t * d, t * d + (o - 1) * s + 1, s) for t, d, s, o in zip(tap, rhs_dilation, stride, out))
        patch = xp[(slice(None),) + index]  # (B, *out, C)
        h += np.repeat(patch, mult, axis=-1) * dw[tap][0]
    y = h @ np.asarray(pointwise, np.float64).reshape(cin * mult, -1)
    return y if bias is None else y + np.asarray(bias, np.float64).reshape(-1)


# (nd, spatial, cin, cout, kernel, stride, padding, pads, rhs, mult, mode, channel_first)
CASES = [
    (1, (9,), 2, 3, 3, 2, 'SAME', ((1, 1),), 1, 2, 'ZEROS', False),
    (1, (8,), 3, 2, 2, 1, 'CAUSAL', ((2, 0),), 2, 1, 'CIRCULAR', True),
    (2, (6, 5), 2, 4, 3, (2, 1), 'VALID', ((0, 0), (0, 0)), 1, 3, 'ZEROS', False),
    (2, (5, 5), 3, 2, (3, 2), 1, ((1, 1), (0, 1)), ((1, 1), (0, 1)), 1, 1, 'REFLECT', True),
    (3, (4, 3, 4), 2, 2, 2, 1, 'SAME', ((0, 1), (0, 1), (0, 1)), 1, 2, 'ZEROS', False),
]


def _build(case, **kw):
    nd, spatial, cin, cout, kernel, stride, padding, _, rhs, mult, mode, cf = case
    in_size = (cin,) + spatial if cf else spatial + (cin,)
    return brainconv.SeparableConv(nd, in_size, cout, kernel, stride=stride, padding=padding, rhs_dilation=rhs,
                                   depth_multiplier=mult, padding_mode=mode, channel_first=cf,
                                   b_init=braintools.init.Normal(0.0, 1.0), **kw)


def _tuple(v, nd):
    return (v,) * nd if isinstance(v, int) else tuple(v)


@pytest.mark.parametrize('case', CASES, ids=lambda c: f'{c[0]}d-{c[6]}-{c[10]}-cf{int(c[11])}')
def test_separable_matches_reference(case):
    nd, spatial, cin, cout, kernel, stride, padding, pads, rhs, mult, mode, cf = case
    layer = _build(case)
    assert layer.pads == pads
    x = np.random.default_rng(1).standard_normal((2,) + layer.in_size).astype(np.float32)
    p = layer.weight.value
    y = jax.jit(layer.apply)(p, jnp.asarray(x))
    assert y.shape == (2,) + layer.out_size
    xr = np.moveaxis(x, 1, -1) if cf else x
    expected = separable_reference(xr, p['depthwise'], p['pointwise'], p['bias'], _tuple(stride, nd), pads,
                                   _tuple(rhs, nd), mode)
    np.testing.assert_allclose(y, np.moveaxis(expected, -1, 1) if cf else expected, **TOL)


def test_weights_and_parameter_count():
    layer = brainconv.SeparableConv2d((8, 7, 3), 5, (3, 2), depth_multiplier=2, b_init=braintools.init.ZeroInit())
    shapes = {k: v.shape for k, v in layer.weight.value.items()}
    assert shapes == {'depthwise': (3, 2, 1, 6), 'pointwise': (1, 1, 6, 5), 'bias': (1, 1, 5)}
    assert layer.num_params == 3 * 2 * 3 * 2 + 3 * 2 * 5 + 5
    assert layer.kernel_shape == (3, 2, 1, 6) and layer.pointwise_shape == (1, 1, 6, 5)
    assert (layer.in_channels, layer.out_channels, layer.depth_multiplier) == (3, 5, 2)
    assert 'depth_multiplier=2' in repr(layer)


@pytest.mark.parametrize('lowering', brainconv.LOWERINGS)
def test_every_lowering(lowering):
    layer = brainconv.SeparableConv1d((7, 2), 3, 3, stride=2, depth_multiplier=2, lowering=lowering)
    x = np.random.default_rng(2).standard_normal((2, 7, 2)).astype(np.float32)
    p = layer.weight.value
    expected = separable_reference(x, p['depthwise'], p['pointwise'], None, (2,), ((1, 1),), (1,))
    np.testing.assert_allclose(jax.jit(layer.apply)(p, jnp.asarray(x)), expected, **TOL)
    assert layer.lowering == lowering


def test_transforms_and_units():
    layer = brainconv.SeparableConv2d((5, 5, 2), 3, 3, depth_multiplier=2)  # the default lowering
    p = layer.weight.value
    x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 5, 5, 2)).astype(np.float32))
    # reverse mode against the oracle: the output is linear in each of x, depthwise, pointwise
    rng = np.random.default_rng(4)
    cot = rng.standard_normal((2,) + layer.out_size)
    dd = rng.standard_normal(layer.kernel_shape)
    gx, gd = jax.jit(jax.grad(lambda xx, d: jnp.sum(layer.apply({**p, 'depthwise': d}, xx) * cot.astype(np.float32)),
                              argnums=(0, 1)))(x, p['depthwise'])
    pads = ((1, 1), (1, 1))
    np.testing.assert_allclose(np.sum(gd * dd), np.sum(cot * separable_reference(
        x, dd, p['pointwise'], None, (1, 1), pads, (1, 1))), rtol=1e-4)
    np.testing.assert_allclose(np.sum(gx * np.asarray(x)), np.sum(cot * np.asarray(layer(x))), rtol=1e-4)
    _, tangent = jax.jvp(lambda w: layer.apply({**p, 'pointwise': w}, x), (p['pointwise'],), (2 * p['pointwise'],))
    np.testing.assert_allclose(tangent, 2 * layer(x), **TOL)
    ys = jax.vmap(layer.apply, in_axes=(None, 0))(p, jnp.stack([x, -x]))
    np.testing.assert_allclose(ys[1], -ys[0], **TOL)
    with_units = brainconv.SeparableConv1d((6, 2), 2, 3, depthwise_init=_random_in(u.siemens),
                                           pointwise_init=_random_in(u.ohm))
    y = with_units(jnp.ones((6, 2)) * u.mV)
    assert u.get_unit(y).has_same_dim(u.mV)


def test_summary():
    net = brainstate.nn.Sequential(
        brainconv.SeparableConv2d((8, 8, 3), 4, 3, stride=2, depth_multiplier=2),
        brainstate.nn.ReLU(),
        brainconv.SeparableConv2d.desc(out_channels=5, kernel_size=3, rhs_dilation=2,
                                       b_init=braintools.init.ZeroInit()),
    )
    s = brainconv.summary(net)
    assert [r.params for r in s.rows] == [9 * 6 + 6 * 4, 0, 9 * 4 + 4 * 5 + 5]
    assert [r.macs for r in s.rows] == [16 * 6 * 9 + 16 * 6 * 4, 0, 16 * 4 * 9 + 16 * 4 * 5]
    rf = brainconv.receptive_field(net)
    assert [int(v) for v in rf.size + rf.jump] == [11, 11, 2, 2]


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(depth_multiplier=0), ValueError, 'depth_multiplier must be a positive int'),
    (dict(depth_multiplier=1.5), TypeError, 'depth_multiplier must be a positive int'),
    (dict(out_channels=0), ValueError, 'out_channels must be a positive int'),
    (dict(padding='FULL'), ValueError, 'padding must be one of'),
    (dict(in_size=(4,)), ValueError, 'in_size must be a sequence of 2 ints'),
    (dict(pointwise_init=np.zeros((1, 3, 2))), ValueError, 'pointwise_init must give an array of shape'),
    (dict(lowering='fast'), ValueError, 'lowering must be one of'),
    (dict(param_dtype='int8'), TypeError, 'param_dtype must be a floating dtype'),
])
def test_bad_arguments(kwargs, error, match):
    args = dict(in_size=(6, 2), out_channels=2, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        brainconv.SeparableConv1d(**args)


def test_bad_calls():
    layer = brainconv.SeparableConv1d((6, 2), 2, 3)
    with pytest.raises(ValueError, match='expects input of shape'):
        layer(jnp.ones((6, 3)))
    with pytest.raises(TypeError, match='real input'):
        layer(jnp.ones((6, 2), jnp.complex64))


@pytest.mark.skipif(importlib.util.find_spec('keras') is None, reason='keras is not installed')
@pytest.mark.parametrize('nd, kwargs', [
    (2, dict(strides=2, padding='same', depth_multiplier=2)),
    (1, dict(dilation_rate=2, padding='valid', depth_multiplier=3)),
])
def test_matches_keras(nd, kwargs):
    os.environ.setdefault('KERAS_BACKEND', 'jax')
    keras = pytest.importorskip('keras')
    if keras.backend.backend() != 'jax':
        pytest.skip(f"keras runs on {keras.backend.backend()}, not jax")
    cls = {1: keras.layers.SeparableConv1D, 2: keras.layers.SeparableConv2D}[nd]
    spatial, cin, cout = (7,) * nd, 3, 4
    theirs = cls(cout, 3, bias_initializer='random_normal', **kwargs)
    x = np.random.default_rng(5).standard_normal((2,) + spatial + (cin,)).astype(np.float32)
    expected = np.asarray(theirs(x))
    depthwise, pointwise, bias = theirs.get_weights()
    mult = kwargs['depth_multiplier']
    ours = brainconv.SeparableConv(
        nd, spatial + (cin,), cout, 3, stride=kwargs.get('strides', 1), padding=kwargs['padding'],
        rhs_dilation=kwargs.get('dilation_rate', 1), depth_multiplier=mult,
        depthwise_init=depthwise.reshape((3,) * nd + (1, cin * mult)), pointwise_init=pointwise, b_init=bias)
    np.testing.assert_allclose(ours(jnp.asarray(x)), expected, **TOL)
