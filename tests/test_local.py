"""LocalConv (locally connected, unshared weights) against a NumPy oracle that sums each position's own kernel."""

import itertools
import math

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


def expected_pads(padding, n, k, s, d, ld):
    """(low, high) per axis, from the definitions (written out here, not read from brainconv)."""
    n = (n - 1) * ld + 1
    if padding == 'VALID':
        return 0, 0
    if padding == 'CAUSAL':
        return (k - 1) * d, 0
    if padding in ('SAME', 'SAME_LOWER'):
        return ref.same_pads(n, k, s, d, lower=padding == 'SAME_LOWER')
    return padding


def local_reference(x, w, stride, pads, lhs_dilation, rhs_dilation, groups, mode='ZEROS'):
    """y[b, p, o] = sum over taps t and o's group's in-channels c of xp[b, p*s + t*d, c] * w[p, t, c, o].

    ``x`` is ``(B, *spatial, C)``; ``w`` is ``(*out_spatial, *kernel_size, C // groups, C_out)``.
    """
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    nd = x.ndim - 2
    if mode == 'ZEROS':
        x = ref.lhs_dilate(x, lhs_dilation)
    xp = np.pad(x, [(0, 0)] + [tuple(p) for p in pads] + [(0, 0)], mode=ref.NP_MODE[mode])
    out_sp, ksize = w.shape[:nd], w.shape[nd:2 * nd]
    cin_g, cout = w.shape[-2], w.shape[-1]
    cout_g = cout // groups
    y = np.zeros((x.shape[0],) + out_sp + (cout,))
    for pos in itertools.product(*(range(o) for o in out_sp)):
        for tap in itertools.product(*(range(k) for k in ksize)):
            at = tuple(p * s + t * d for p, s, t, d in zip(pos, stride, tap, rhs_dilation))
            for o in range(cout):
                g = o // cout_g
                y[(slice(None),) + pos + (o,)] += xp[(slice(None),) + at + (slice(g * cin_g, (g + 1) * cin_g),)] \
                    @ w[pos + tap + (slice(None), o)]
    return y


# (nd, spatial, cin, cout, kernel, stride, padding, lhs, rhs, groups, mode, channel_first, batch)
CASES = [
    (1, (9,), 2, 3, 3, 2, 'SAME', 1, 1, 1, 'ZEROS', False, (2,)),
    (1, (8,), 4, 2, 2, 1, 'CAUSAL', 1, 2, 2, 'CIRCULAR', True, ()),
    (2, (5, 6), 3, 2, (2, 3), (1, 2), 'VALID', 1, 1, 1, 'ZEROS', False, (2, 1)),
    (2, (5, 5), 2, 4, 3, 2, ((1, 0), (2, 1)), 1, 1, 2, 'REFLECT', True, (1,)),
    (2, (4, 4), 2, 2, 3, 1, 'SAME_LOWER', 2, 1, 1, 'ZEROS', False, (1,)),
    (2, (6, 5), 2, 3, 2, 1, 1, 1, (2, 1), 1, 'REPLICATE', False, (2,)),
    (3, (3, 4, 3), 2, 2, 2, 1, 'SAME', 1, 1, 1, 'ZEROS', False, (1,)),
    (3, (3, 5, 4), 2, 2, (2, 3, 2), (1, 2, 1), ('causal', 'SAME', (1, 0)), 1, 1, 1, 'ZEROS', False, (2,)),
]


def _build(case, seed=0, **kw):
    nd, spatial, cin, cout, kernel, stride, padding, lhs, rhs, groups, mode, cf, _ = case
    in_size = (cin,) + spatial if cf else spatial + (cin,)
    return brainconv.LocalConv(nd, in_size, cout, kernel, stride=stride, padding=padding, lhs_dilation=lhs,
                               rhs_dilation=rhs, groups=groups, padding_mode=mode, channel_first=cf,
                               b_init=braintools.init.Normal(0.0, 1.0), **kw)


def _tuple(v, nd):
    return (v,) * nd if isinstance(v, int) else tuple(v)


def _case_reference(case, layer, x):
    nd, spatial, cin, cout, kernel, stride, padding, lhs, rhs, groups, mode, cf, batch = case
    k, s, ld, d = (_tuple(v, nd) for v in (kernel, stride, lhs, rhs))
    entries = (padding,) * nd if isinstance(padding, (int, str)) else tuple(padding)  # one per axis
    pads = tuple((e, e) if isinstance(e, int) else expected_pads(e.upper(), n, kk, ss, dd, ll) if isinstance(e, str)
                 else tuple(e) for e, n, kk, ss, dd, ll in zip(entries, spatial, k, s, d, ld))
    assert layer.pads == pads
    xr = np.moveaxis(x, len(batch), -1) if cf else x
    xr = xr.reshape((-1,) + xr.shape[len(batch):])
    y = local_reference(xr, layer.weight.value['weight'], s, pads, ld, d, groups, mode)
    y = y + np.asarray(layer.weight.value['bias'] if not cf else np.moveaxis(layer.weight.value['bias'], 0, -1))
    y = y.reshape(batch + y.shape[1:])
    return np.moveaxis(y, -1, len(batch)) if cf else y


@pytest.mark.parametrize('case', CASES, ids=lambda c: f'{c[0]}d-{c[6]}-{c[10]}-cf{int(c[11])}')
def test_local_conv_matches_reference(case):
    layer = _build(case)
    batch = case[-1]
    x = np.random.default_rng(1).standard_normal(batch + layer.in_size).astype(np.float32)
    y = jax.jit(layer.apply)(layer.weight.value, jnp.asarray(x))  # one compile, not one per tap
    assert y.shape == batch + layer.out_size
    # The geometry is a convolution's: the same out_size as Conv with the same arguments.
    nd, spatial, cin, cout, kernel, stride, padding, lhs, rhs, groups, mode, cf, _ = case
    conv = brainconv.Conv(nd, layer.in_size, cout, kernel, stride=stride, padding=padding, lhs_dilation=lhs,
                          rhs_dilation=rhs, groups=groups, padding_mode=mode, channel_first=cf)
    assert layer.out_size == conv.out_size
    np.testing.assert_allclose(y, _case_reference(case, layer, x), **TOL)


def test_kernel_layout_parameter_count_and_bias():
    layer = brainconv.LocalConv2d((7, 6, 4), 6, (3, 2), stride=2, groups=2, b_init=jnp.arange(6.0))
    out = (4, 3)
    assert layer.out_size == out + (6,)
    assert layer.kernel_shape == out + (3, 2, 2, 6)
    assert layer.weight.value['bias'].shape == out + (6,)
    # a (C_out,) vector gives every position the same per-channel bias
    np.testing.assert_array_equal(layer.weight.value['bias'], np.broadcast_to(np.arange(6.0), out + (6,)))
    assert layer.num_params == math.prod(out) * (3 * 2 * (4 // 2) * 6 + 6)
    cf = brainconv.LocalConv1d((3, 8), 2, 3, channel_first=True, b_init=jnp.array([1.0, 2.0]))
    np.testing.assert_array_equal(cf.weight.value['bias'], [[1.0] * 8, [2.0] * 8])


def test_weights_differ_per_position():
    """A kernel that is non-zero at one position only changes only that output."""
    layer = brainconv.LocalConv1d((6, 1), 1, 3, w_init=lambda s: jnp.zeros(s))
    w = np.zeros(layer.kernel_shape, np.float32)
    w[2, :, 0, 0] = 1.0
    y = layer.apply({'weight': jnp.asarray(w)}, jnp.ones((6, 1)))
    np.testing.assert_array_equal(y[:, 0], [0, 0, 3, 0, 0, 0])


def test_variance_scaling_uses_one_positions_fans():
    """Each position's kernel is drawn as a convolution's kernel: same spread as Conv2d's (whose fans
    exclude the 144 positions; with them the spread would be 12 times smaller)."""
    brainstate.random.seed(0)
    local = brainconv.LocalConv2d((12, 12, 8), 8, 3, w_init=braintools.init.XavierNormal())
    conv = brainconv.Conv2d((12, 12, 8), 8, 3, w_init=braintools.init.XavierNormal())
    np.testing.assert_allclose(np.std(local.weight.value['weight']), np.std(conv.weight.value['weight']), rtol=0.1)


def test_w_mask_zeroes_taps_and_gradients():
    mask = np.array([1.0, 0.0, 1.0], np.float32).reshape(3, 1, 1)
    layer = brainconv.LocalConv1d((8, 2), 3, 3, w_mask=mask)
    x = np.random.default_rng(0).standard_normal((2, 8, 2)).astype(np.float32)
    w = np.asarray(layer.weight.value['weight'])
    expected = local_reference(x, w * mask, (1,), ((1, 1),), (1,), (1,), 1)
    np.testing.assert_allclose(layer(jnp.asarray(x)), expected, **TOL)
    grads = jax.grad(lambda p: jnp.sum(layer.apply(p, jnp.asarray(x)) ** 2))(layer.weight.value)
    assert np.all(np.asarray(grads['weight'])[:, 1] == 0) and np.any(np.asarray(grads['weight'])[:, 0] != 0)


def test_transforms():
    layer = brainconv.LocalConv2d((5, 4, 2), 3, 3, stride=(2, 1), groups=1, b_init=braintools.init.Normal(0.0, 1.0),
                                  channel_first=False)
    params = layer.weight.value
    x = jnp.asarray(np.random.default_rng(2).standard_normal((3, 5, 4, 2)).astype(np.float32))
    f = jax.jit(layer.apply)
    np.testing.assert_allclose(f(params, x), layer(x), **TOL)
    # reverse mode: <grad, direction> equals the reference applied to the direction (the layer is bilinear)
    rng = np.random.default_rng(3)
    cot = rng.standard_normal((3,) + layer.out_size)
    dw, dx = rng.standard_normal(layer.kernel_shape), rng.standard_normal(x.shape)
    gw, gx = jax.jit(jax.grad(lambda w, xx: jnp.sum(layer.apply({'weight': w}, xx) * cot.astype(np.float32)),
                              argnums=(0, 1)))(params['weight'], x)
    pads, w = ((1, 1), (1, 1)), np.asarray(params['weight'])
    np.testing.assert_allclose(np.sum(gw * dw), np.sum(cot * local_reference(x, dw, (2, 1), pads, (1, 1), (1, 1), 1)),
                               rtol=1e-4)
    np.testing.assert_allclose(np.sum(gx * dx), np.sum(cot * local_reference(dx, w, (2, 1), pads, (1, 1), (1, 1), 1)),
                               rtol=1e-4)
    # jvp in x is the layer itself (linear in x, minus the bias)
    _, tangent = jax.jvp(lambda xx: layer.apply(params, xx), (x,), (x,))
    np.testing.assert_allclose(tangent, layer(x) - params['bias'][None], **TOL)
    # vmap over a stack of kernels equals one call per kernel
    kernels = jnp.stack([params['weight'], 2 * params['weight']])
    ys = jax.vmap(lambda w: layer.apply({'weight': w}, x))(kernels)
    np.testing.assert_allclose(ys[1], 2 * ys[0], **TOL)
    np.testing.assert_allclose(ys[0], layer.apply({'weight': params['weight']}, x), **TOL)


def test_units_and_functional():
    layer = brainconv.LocalConv1d((6, 2), 2, 3, w_init=_random_in(u.siemens))
    x = np.random.default_rng(3).standard_normal((6, 2)).astype(np.float32)
    y = layer(x * u.mV)
    assert u.get_unit(y) == u.mV * u.siemens
    w = layer.weight.value['weight'].mantissa
    np.testing.assert_allclose(u.get_mantissa(y), local_reference(x[None], w, (1,), ((1, 1),), (1,), (1,), 1)[0],
                               **TOL)
    np.testing.assert_allclose(brainconv.local_conv(jnp.asarray(x), w, kernel_size=3), u.get_mantissa(y), **TOL)


def test_summary_and_receptive_field():
    net = brainstate.nn.Sequential(
        brainconv.LocalConv2d((8, 8, 2), 4, 3, stride=2, b_init=braintools.init.ZeroInit()),
        brainstate.nn.ReLU(),
        brainconv.LocalConv2d.desc(out_channels=3, kernel_size=3, padding='VALID'),
    )
    s = brainconv.summary(net)
    assert [r.params for r in s.rows] == [16 * (9 * 2 * 4 + 4), 0, 4 * 9 * 4 * 3]
    assert [r.macs for r in s.rows] == [16 * 4 * 9 * 2, 0, 4 * 3 * 9 * 4]
    rf = brainconv.receptive_field(net)
    assert [int(v) for v in rf.size + rf.jump] == [7, 7, 2, 2]
    assert 'LocalConv2d((8, 8, 2) -> (4, 4, 4)' in repr(net.layers[0]) and 'lowering' not in repr(net.layers[0])


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(groups=3), ValueError, 'groups must divide in_channels'),
    (dict(padding='FULL'), ValueError, 'padding must be one of'),
    (dict(kernel_size=0), ValueError, 'kernel_size must be positive'),
    (dict(padding_mode='REFLECT', padding=4), ValueError, 'REFLECT padding must be smaller'),
    (dict(w_init=np.zeros((3, 4))), ValueError, 'w_init must give an array of shape'),
    (dict(dtype=jnp.int32), TypeError, 'dtype must be a floating dtype'),
])
def test_bad_arguments(kwargs, error, match):
    args = dict(in_size=(4, 4), out_channels=2, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        brainconv.LocalConv1d(**args)


def test_bad_calls():
    layer = brainconv.LocalConv1d((4, 4), 2, 3)
    with pytest.raises(ValueError, match='expects input of shape'):
        layer(jnp.ones((4, 3)))
    with pytest.raises(TypeError, match='real input'):
        layer(jnp.ones((4, 4), jnp.complex64))
    with pytest.raises(ValueError, match='kernel must have shape'):
        brainconv.local_conv(jnp.ones((4, 4)), jnp.ones((4, 2, 4, 2)), kernel_size=3)
