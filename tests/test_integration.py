"""Layers in use: transforms, Sequential, several batch axes, units, brainstate compatibility."""

import _reference as ref
import brainstate
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _configs import cheap_init, init_array

import brainconv
from brainconv import functional

TOL = dict(rtol=2e-4, atol=2e-4)


def _x(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.mark.parametrize('channel_first', [False, True])
def test_several_batch_axes_time_major(channel_first):
    in_size = (2, 6, 5) if channel_first else (6, 5, 2)
    layer = brainconv.Conv2d(in_size, 3, 3, stride=2, w_init=cheap_init(), channel_first=channel_first)
    x = _x((4, 3) + in_size)  # (T, B, *in_size)
    y = layer(x)
    assert y.shape == (4, 3) + layer.out_size
    for t in range(4):  # each time step is an ordinary batch
        np.testing.assert_allclose(y[t], layer(x[t]), **TOL)
    np.testing.assert_allclose(y[1, 2], layer(x[1, 2]), **TOL)


def test_jax_transforms_with_apply():
    layer = brainconv.Conv1d((12, 3), 4, 3, stride=2, w_init=cheap_init(), b_init=cheap_init(1))
    x = _x((5, 12, 3))
    params = layer.weight.value
    y = layer(x)
    np.testing.assert_allclose(jax.jit(layer.apply)(params, x), y, **TOL)
    np.testing.assert_allclose(jax.vmap(layer.apply, in_axes=(None, 0))(params, x), y, **TOL)
    g = jax.grad(lambda p: jnp.sum(layer.apply(p, x)))(params)
    # d/d bias of sum(y) is the number of output positions per channel, times the batch.
    np.testing.assert_allclose(g['bias'], np.full((1, 4), 5 * 6.0), **TOL)


def test_brainstate_transforms():
    layer = brainconv.Conv2d((6, 6, 2), 3, 3, w_init=cheap_init(), b_init=cheap_init(1))
    x = _x((2, 6, 6, 2))
    y = layer(x)
    np.testing.assert_allclose(brainstate.transform.jit(layer)(x), y, **TOL)
    np.testing.assert_allclose(brainstate.transform.vmap(layer)(x), y, **TOL)

    def loss():
        return jnp.sum(layer(x) ** 2)

    grads = brainstate.transform.grad(loss, layer.states(brainstate.ParamState))()
    (g,) = grads.values()
    expected = jax.grad(lambda p: jnp.sum(layer.apply(p, x) ** 2))(layer.weight.value)
    np.testing.assert_allclose(g['weight'], expected['weight'], **TOL)
    np.testing.assert_allclose(g['bias'], expected['bias'], **TOL)


def test_sequential_with_desc_gets_in_size_from_the_previous_layer():
    net = brainstate.nn.Sequential(
        brainconv.Conv2d((12, 12, 1), 4, 3, w_init=cheap_init()),
        jax.nn.relu,
        brainconv.Conv2d.desc(out_channels=6, kernel_size=3, stride=2, w_init=cheap_init(1)),
        brainconv.ConvTranspose2d.desc(out_channels=2, kernel_size=3, stride=2, output_padding=(1, 0),
                                       w_init=cheap_init(2)),
    )
    assert net.out_size == (12, 11, 2)  # SAME: (m - 1) * stride + 1 + output_padding
    assert net.layers[2].in_size == (12, 12, 4) and net.layers[2].out_size == (6, 6, 6)
    y = net(_x((3, 12, 12, 1)))
    assert y.shape == (3, 12, 11, 2)


def test_same_state_dict_as_brainstate_conv2d():
    """A brainstate.nn.Conv2d state moves into brainconv.Conv2d (same keys, shapes) and back."""
    kw = dict(stride=(2, 1), padding='SAME', rhs_dilation=(1, 2), groups=2)
    with jax.numpy_rank_promotion('allow'):  # brainstate's own bias add relies on rank promotion
        theirs = brainstate.nn.Conv2d((9, 8, 4), 6, (3, 2), w_init=cheap_init(), b_init=cheap_init(1), **kw)
    ours = brainconv.Conv2d((9, 8, 4), 6, (3, 2), w_init=cheap_init(5), b_init=cheap_init(6), **kw)
    assert {k: v.shape for k, v in ours.weight.value.items()} == {k: v.shape for k, v in theirs.weight.value.items()}
    assert ours.out_size == tuple(theirs.out_size)
    ours.weight.value = dict(theirs.weight.value)
    x = _x((2, 9, 8, 4))
    # Independent oracle for both.
    w = np.asarray(theirs.weight.value['weight'])
    expected = ref.conv(np.asarray(x), w, (2, 1), ref_pads := (ref.same_pads(9, 3, 2, 1), ref.same_pads(8, 2, 1, 2)),
                        (1, 1), (1, 2), 2) + np.asarray(theirs.weight.value['bias']).reshape(-1)
    np.testing.assert_allclose(ours(x), expected, **TOL)
    assert ours.pads == ref_pads


def test_conv_transpose_state_layout_matches_brainstate():
    theirs = brainstate.nn.ConvTranspose2d((5, 5, 4), 6, 3, stride=2, groups=2, w_init=cheap_init())
    ours = brainconv.ConvTranspose2d((5, 5, 4), 6, 3, stride=2, groups=2, w_init=cheap_init())
    assert ours.kernel_shape == theirs.kernel_shape == (3, 3, 6, 2)


@pytest.mark.parametrize('channel_first', [False, True])
def test_units_flow_through(channel_first):
    in_size = (2, 7) if channel_first else (7, 2)
    w = init_array((3, 2, 4)) * u.mS
    layer = brainconv.Conv1d(in_size, 4, 3, w_init=w, b_init=np.full(4, 0.5) * u.uA,
                             channel_first=channel_first)
    x = np.asarray(_x((3,) + in_size)) * u.mV
    y = layer(x)
    assert isinstance(y, u.Quantity) and y.unit.has_same_dim(u.uA)
    plain = brainconv.Conv1d(in_size, 4, 3, w_init=w.mantissa, b_init=np.full(4, 0.5),
                             channel_first=channel_first)
    xm = x.to_decimal(u.mV)
    # mV * mS = uA, and the bias is in uA: mantissas line up.
    np.testing.assert_allclose(y.to_decimal(u.uA), plain(xm), **TOL)


def test_units_bias_in_another_scale_is_converted():
    layer = brainconv.Conv1d((5, 1), 1, 1, w_init=np.ones((1, 1, 1), np.float32) * u.mS,
                             b_init=np.ones((1, 1), np.float32) * u.nA)
    y = layer(np.ones((5, 1), np.float32) * u.mV)
    np.testing.assert_allclose(y.to_decimal(u.uA), np.full((5, 1), 1.001), rtol=1e-5)


def test_units_errors_name_both_units():
    layer = brainconv.Conv1d((5, 1), 1, 1, w_init=np.ones((1, 1, 1), np.float32) * u.mS,
                             b_init=np.ones((1, 1), np.float32) * u.mV)
    with pytest.raises(TypeError, match=r"bias unit 'mV' does not match the output unit 'uA'"):
        layer(np.ones((5, 1), np.float32) * u.mV)
    with pytest.raises(TypeError, match=r"bias unit 'mV' does not match the output unit 'mS'"):
        layer(np.ones((5, 1), np.float32))


def test_quantity_input_with_plain_weights_keeps_the_input_unit():
    layer = brainconv.Conv2d((4, 4, 1), 2, 3, w_init=cheap_init())
    x = _x((4, 4, 1))
    y = layer(x * u.mV)
    assert y.unit == u.mV
    np.testing.assert_allclose(y.to_decimal(u.mV), layer(x), **TOL)
    assert not isinstance(layer(x), u.Quantity)


def test_default_xavier_with_unit():
    import braintools
    layer = brainconv.Conv1d((6, 2), 3, 3, w_init=braintools.init.XavierNormal(unit=u.mS))
    assert layer.weight.value['weight'].unit == u.mS
    assert layer(np.ones((6, 2), np.float32) * u.mV).unit.has_same_dim(u.uA)


@pytest.mark.parametrize('nd', [1, 2, 3])
def test_functional_conv_matches_reference(nd):
    spatial = (9, 7, 5)[:nd]
    x = _x((2,) + spatial + (4,))
    w = jnp.asarray(init_array((3,) * nd + (2, 6)))
    y = functional.conv(x, w, stride=2, padding='SAME_LOWER', rhs_dilation=2, groups=2)
    pads = tuple(ref.same_pads(n, 3, 2, 2, lower=True) for n in spatial)
    expected = ref.conv(x, w, (2,) * nd, pads, (1,) * nd, (2,) * nd, 2)
    np.testing.assert_allclose(y, expected, **TOL)


def test_functional_pad_modes_by_hand():
    x = jnp.arange(1.0, 5.0).reshape(1, 4, 1)
    rows = {mode: np.asarray(functional.pad(x, ((2, 2),), mode))[0, :, 0].tolist()
            for mode in ('ZEROS', 'REFLECT', 'REPLICATE', 'CIRCULAR')}
    assert rows == {'ZEROS': [0, 0, 1, 2, 3, 4, 0, 0], 'REFLECT': [3, 2, 1, 2, 3, 4, 3, 2],
                    'REPLICATE': [1, 1, 1, 2, 3, 4, 4, 4], 'CIRCULAR': [3, 4, 1, 2, 3, 4, 1, 2]}


def test_functional_conv_transpose_matches_reference():
    y = _x((2, 5, 4))
    w = jnp.asarray(init_array((3, 6, 2)))  # (k, C_out, C_in // groups), groups=2
    out = functional.conv_transpose(y, w, stride=2, padding='VALID', groups=2, output_padding=1)
    assert out.shape == (2, 12, 6)
    expected = ref.conv_transpose(y, w, (2,), ((0, 0),), (12,), (1,), 2)
    np.testing.assert_allclose(out, expected, **TOL)


def test_precision_is_passed_to_lax():
    layer = brainconv.Conv1d((6, 2), 3, 3, w_init=cheap_init(), precision=jax.lax.Precision.HIGHEST)
    text = jax.jit(layer.apply).lower(layer.weight.value, _x((6, 2))).as_text()
    assert 'HIGHEST' in text.upper()
