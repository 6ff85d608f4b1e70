"""brainconv as a drop-in for brainstate's convolution layers.

Each case builds brainstate's layer and brainconv's with the same arguments,
gives brainconv brainstate's weights, and compares sizes, attributes and
outputs.  brainstate is an independent implementation here (it calls
``lax.conv_general_dilated`` directly); its layers rely on implicit promotion,
so they run under :func:`lenient_promotion`.  The differences that remain are
listed in docs/brainstate_differences.md; the ones with a recipe (ConvTranspose
int padding, 'VALID' with a stride above the kernel span) are checked here.
"""

import contextlib

import _reference as ref
import brainstate
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _configs import init_array

import brainconv
from brainconv import functional

nn = brainstate.nn


@contextlib.contextmanager
def lenient_promotion():
    """brainstate adds its bias by rank promotion; conftest.py makes that an error."""
    with jax.numpy_rank_promotion('allow'), jax.numpy_dtype_promotion('standard'):
        yield


def seeded(seed):
    return lambda shape: jnp.asarray(init_array(shape, seed, scale=0.5))


def pair(stem, nd, bias=False, **kwargs):
    """brainstate's layer and brainconv's, the latter holding the former's weights."""
    name = f'{stem}{nd}d'
    with lenient_promotion():
        theirs = getattr(nn, name)(**kwargs, w_init=seeded(1), b_init=seeded(2) if bias else None)
    params = theirs.weight.value
    ours = getattr(brainconv, name)(**kwargs, w_init=np.asarray(params['weight']),
                                   b_init=np.asarray(params['bias']) if bias else None)
    if 'gain' in params:  # a gain that is not all ones, on both
        gain = seeded(3)(params['gain'].shape) + 1.0
        theirs.weight.value = {**params, 'gain': jnp.asarray(gain)}
        ours.weight.value = {**ours.weight.value, 'gain': jnp.asarray(gain)}
    return theirs, ours


def compare(theirs, ours, batch=(2,)):
    assert ours.out_size == tuple(theirs.out_size)
    assert ours.kernel_shape == tuple(theirs.kernel_shape)
    for name in ('in_size', 'in_channels', 'out_channels', 'kernel_size', 'stride', 'rhs_dilation', 'groups',
                 'channel_first', 'channels_last'):
        assert getattr(ours, name) == getattr(theirs, name), name
    x = init_array(batch + tuple(ours.in_size), seed=4)
    with lenient_promotion():
        expected = np.asarray(theirs(jnp.asarray(x)))
    y = np.asarray(ours(x))
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


CASES = {
    'conv1d valid stride': ('Conv', 1, dict(in_size=(9, 2), out_channels=4, kernel_size=3, stride=2,
                                            padding='VALID')),
    'conv2d one-element sequences, grouped': ('Conv', 2, dict(
        in_size=(7, 6, 4), out_channels=4, kernel_size=[3], stride=[2], rhs_dilation=[2], lhs_dilation=[1],
        groups=2), True),
    'conv2d channel-first, lhs dilation': ('Conv', 2, dict(
        in_size=(3, 5, 4), out_channels=2, kernel_size=(3, 2), stride=(1, 2), lhs_dilation=2,
        padding=((1, 2), (0, 1)), channel_first=True), True),
    'conv2d one pair for every axis': ('Conv', 2, dict(in_size=(5, 6, 2), out_channels=3, kernel_size=3,
                                                       padding=[(2, 0)])),
    'conv3d ints per axis': ('Conv', 3, dict(in_size=(4, 3, 5, 2), out_channels=2, kernel_size=2,
                                             padding=(1, 0, 2)), True),
    'scaled ws conv2d': ('ScaledWSConv', 2, dict(in_size=(6, 6, 2), out_channels=3, kernel_size=3, stride=[2]),
                         True),
    'scaled ws conv1d no gain': ('ScaledWSConv', 1, dict(in_size=(8, 2), out_channels=2, kernel_size=3,
                                                         ws_gain=False, eps=1e-3)),
    'conv transpose1d SAME stride 2': ('ConvTranspose', 1, dict(in_size=(5, 2), out_channels=3, kernel_size=3,
                                                                stride=2)),
    'conv transpose2d SAME grouped dilated': ('ConvTranspose', 2, dict(
        in_size=(4, 3, 4), out_channels=2, kernel_size=(3, 2), stride=[2], rhs_dilation=(1, 2), groups=2), True),
    'conv transpose1d VALID': ('ConvTranspose', 1, dict(in_size=(5, 2), out_channels=3, kernel_size=4, stride=2,
                                                        padding='VALID')),
    'conv transpose3d SAME stride 3': ('ConvTranspose', 3, dict(in_size=(2, 3, 2, 1), out_channels=2,
                                                                kernel_size=2, stride=(3, 1, 2))),
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_same_arguments_same_layer(case):
    stem, nd, kwargs, *bias = CASES[case]
    theirs, ours = pair(stem, nd, bias=bool(bias), **kwargs)
    compare(theirs, ours)
    if stem != 'ConvTranspose':
        assert ours.padding == theirs.padding and ours.lhs_dilation == theirs.lhs_dilation


def test_without_a_batch_axis():
    theirs, ours = pair('Conv', 2, in_size=(5, 5, 2), out_channels=2, kernel_size=3, bias=True)
    compare(theirs, ours, batch=())


def test_parameters_copy_across_both_ways():
    theirs, ours = pair('Conv', 1, in_size=(6, 2), out_channels=3, kernel_size=3, bias=True)
    assert theirs.weight.value.keys() == ours.weight.value.keys()
    ours.weight.value = {k: jnp.asarray(seeded(7)(np.shape(v))) for k, v in ours.weight.value.items()}
    theirs.weight.value = dict(ours.weight.value)
    compare(theirs, ours)


@pytest.mark.parametrize('k, s, d', [(3, 2, 1), (2, 3, 1), (2, 2, 2)])
def test_conv_transpose_int_padding_recipe(k, s, d):
    """brainstate's int padding q pads the stride-dilated input; brainconv's padding is
    the adjoint's: span - 1 - q, with whatever that leaves below 0 on the high side
    given as output_padding."""
    span = (k - 1) * d + 1
    for q in range(span + 1):
        with lenient_promotion():
            theirs = nn.ConvTranspose1d((4, 2), 3, k, stride=s, padding=q, rhs_dilation=d, w_init=seeded(q))
        lo = span - 1 - q
        w = np.asarray(theirs.weight.value['weight'])
        if lo >= 0:
            ours = brainconv.ConvTranspose1d((4, 2), 3, k, stride=s, padding=lo, rhs_dilation=d, w_init=w)
            compare(theirs, ours)
            continue
        # Beyond the span brainstate's outer outputs read only padding: padding=0, then pad the output.
        ours = brainconv.ConvTranspose1d((4, 2), 3, k, stride=s, padding=0, rhs_dilation=d, w_init=w)
        x = init_array((2, 4, 2), seed=5)
        with lenient_promotion():
            expected = np.asarray(theirs(jnp.asarray(x)))
        y = functional.pad(ours(x), ((-lo, -lo),))
        np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)


def test_conv_transpose_explicit_pairs_recipe():
    """A pair (q_lo, q_hi) is (span - 1 - q_lo, span - 1 - q_hi); a negative high pad is output_padding."""
    with lenient_promotion():
        theirs = nn.ConvTranspose2d((3, 4, 2), 2, 3, stride=2, padding=((1, 3), (0, 1)), w_init=seeded(0))
    ours = brainconv.ConvTranspose2d((3, 4, 2), 2, 3, stride=2, padding=((1, 0), (2, 1)), output_padding=(1, 0),
                                     w_init=np.asarray(theirs.weight.value['weight']))
    compare(theirs, ours)


@pytest.mark.parametrize('k, s', [(2, 3), (1, 2), (3, 5)])
def test_conv_transpose_valid_with_stride_above_the_span(k, s):
    """brainstate (like jax.lax.conv_transpose) gives n * s outputs; brainconv's VALID is the
    adjoint's (n - 1) * s + k: output_padding = s - k makes up the difference."""
    with lenient_promotion():
        theirs = nn.ConvTranspose1d((5, 2), 3, k, stride=s, padding='VALID', w_init=seeded(0))
    plain = brainconv.ConvTranspose1d((5, 2), 3, k, stride=s, padding='VALID', w_init=seeded(0))
    assert plain.out_size == ((5 - 1) * s + k, 3) != tuple(theirs.out_size)
    ours = brainconv.ConvTranspose1d((5, 2), 3, k, stride=s, padding='VALID', output_padding=s - k,
                                     w_init=np.asarray(theirs.weight.value['weight']))
    compare(theirs, ours)


# --- argument forms brainstate accepts -----------------------------------------------------------

@pytest.mark.parametrize('name, one, full', [
    ('kernel_size', [3], (3, 3)),
    ('stride', (2,), (2, 2)),
    ('lhs_dilation', [2], (2, 2)),
    ('rhs_dilation', (2,), (2, 2)),
    ('padding', [1], ((1, 1), (1, 1))),
    ('padding', np.array([2, 1]), ((2, 2), (1, 1))),
    ('stride', np.array([2]), (2, 2)),
    ('kernel_size', np.int64(3), (3, 3)),
])
def test_one_element_sequences_and_numpy_arrays(name, one, full):
    args = dict(in_size=(7, 6, 2), out_channels=2, kernel_size=3)
    layer = brainconv.Conv2d(**{**args, name: one}, w_init=seeded(0))
    if name == 'padding':
        assert layer.pads == full
    else:
        assert getattr(layer, name) == full


def test_one_element_sequences_in_conv_transpose():
    layer = brainconv.ConvTranspose2d((4, 4, 2), 2, [3], stride=[2], rhs_dilation=[1], output_padding=[1],
                                      padding=[1], w_init=seeded(0))
    assert layer.kernel_size == (3, 3) and layer.stride == (2, 2) and layer.output_padding == (1, 1)
    assert layer.pads == ((1, 1), (1, 1)) and layer.out_size == (8, 8, 2)


def test_numpy_in_size_and_channel_counts():
    layer = brainconv.Conv2d(np.array([8, 8, 3]), np.int64(4), np.array(3), groups=np.array(1), w_init=seeded(0))
    assert layer.in_size == (8, 8, 3) and layer.out_size == (8, 8, 4)
    assert all(type(v) is int for v in layer.in_size + layer.out_size + layer.kernel_size)
    assert brainconv.summary(layer, in_size=np.array([8, 8, 3])).in_size == (8, 8, 3)


def test_functional_takes_one_element_sequences():
    x = init_array((2, 9, 7, 2), seed=1)
    w = init_array((3, 3, 2, 4), seed=2)
    y = functional.conv(x, w, stride=[2], padding=[1], rhs_dilation=[2], lhs_dilation=[1])
    expected = ref.conv(x, w, (2, 2), ((1, 1), (1, 1)), (1, 1), (2, 2), 1)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)
    wt = init_array((2, 2, 3, 2), seed=3)
    z = functional.conv_transpose(x, wt, stride=[2], padding=[0], output_padding=[1])
    assert z.shape == (2, 19, 15, 3)
    expected = ref.conv_transpose(x, wt, (2, 2), ((0, 0), (0, 0)), (19, 15), (1, 1), 1)
    np.testing.assert_allclose(np.asarray(z), expected, rtol=1e-5, atol=1e-5)
