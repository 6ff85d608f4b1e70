"""Bad input: a clear ValueError/TypeError naming the argument and the value, raised early."""

import re

import _reference as ref
import braintools
import brainunit as u
import jax.numpy as jnp
import numpy as np
import pytest
from _configs import cheap_init, init_array

import brainconv
from brainconv import functional

W = cheap_init()


def conv2d(**overrides):
    args = dict(in_size=(8, 8, 4), out_channels=6, kernel_size=3, w_init=W)
    args.update(overrides)
    return brainconv.Conv2d(**args)


@pytest.mark.parametrize('overrides,error,pattern', [
    (dict(in_size=(8, 8)), ValueError, r"in_size must be a sequence of 3 ints .*\(8, 8\)"),
    (dict(in_size=(8, 8, 4, 1)), ValueError, r"in_size .*\(8, 8, 4, 1\)"),
    (dict(in_size=(8, 8.0, 4)), TypeError, r"in_size must hold ints, got \(8, 8.0, 4\)"),
    (dict(in_size=(8, 0, 4)), ValueError, r"in_size entries must be positive, got \(8, 0, 4\)"),
    (dict(in_size=(8, -2, 4)), ValueError, r"in_size entries must be positive"),
    (dict(out_channels=0), ValueError, r"out_channels must be a positive int, got 0"),
    (dict(out_channels=2.5), TypeError, r"out_channels must be a positive int, got 2.5"),
    (dict(kernel_size=0), ValueError, r"kernel_size must be positive on every axis, got 0"),
    (dict(kernel_size=(3, 3, 3)), ValueError,
     r"kernel_size must be an int or a sequence of 1 or 2 ints .*\(3, 3, 3\)"),
    (dict(kernel_size='3'), TypeError, r"kernel_size must be an int or a sequence of 1 or 2 ints, got '3'"),
    (dict(kernel_size=()), TypeError, r"kernel_size must be an int or a sequence of 1 or 2 ints, got \(\)"),
    (dict(kernel_size=np.array([3.0, 3.0])), TypeError, r"kernel_size .* got array\(\[3., 3.\]\)"),
    (dict(stride=(1, 0)), ValueError, r"stride must be positive on every axis, got \(1, 0\)"),
    (dict(lhs_dilation=-1), ValueError, r"lhs_dilation must be positive on every axis, got -1"),
    (dict(rhs_dilation=(2, 2, 2)), ValueError, r"rhs_dilation must be an int or a sequence of 1 or 2 ints .*"),
    (dict(in_size=np.array([8.0, 8.0, 4.0])), TypeError, r"in_size must hold ints, got array\(\[8., 8., 4.\]\)"),
    (dict(in_size=np.array([8, 8])), ValueError, r"in_size must be a sequence of 3 ints .*array\(\[8, 8\]\)"),
    (dict(out_channels=np.array([6, 6])), TypeError, r"out_channels must be a positive int, got array"),
    (dict(padding=[]), ValueError,
     r"padding must be .*1 or 2 ints, or 1 or 2 \(low, high\) pairs, or 1 or 2 of these mixed .*got \[\]"),
    (dict(padding=(1.5, 2.5)), ValueError, r"padding\[0\] must be .* got 1.5 in padding=\(1.5, 2.5\)"),
    (dict(groups=0), ValueError, r"groups must be a positive int, got 0"),
    (dict(groups=3), ValueError, r"groups must divide in_channels 4, got groups=3"),
    (dict(groups=4), ValueError, r"groups must divide out_channels 6, got groups=4"),
    (dict(padding='FULL'), ValueError, r"padding must be one of \('SAME', 'SAME_LOWER', 'VALID', 'CAUSAL'\).*'FULL'"),
    (dict(padding=-1), ValueError, r"padding must be non-negative, got -1"),
    (dict(padding=((1, 1), (1, -2))), ValueError, r"padding must be non-negative, got \(\(1, 1\), \(1, -2\)\)"),
    (dict(padding=(1, 2, 3)), ValueError, r"padding must be .* got \(1, 2, 3\)"),
    (dict(padding=((1, 2, 3),)), ValueError, r"padding\[0\] must be .* got \(1, 2, 3\) in padding=\(\(1, 2, 3\),\)"),
    # Per-axis entries: the message names the entry and shows the whole value.
    (dict(padding=('CAUSAL', 'FULL')), ValueError,
     r"padding\[1\] must be one of \('SAME', 'SAME_LOWER', 'VALID', 'CAUSAL'\) \(any case\), an int or a \(low, "
     r"high\) pair, got 'FULL' in padding=\('CAUSAL', 'FULL'\)"),
    (dict(padding=('same', None)), ValueError, r"padding\[1\] must be .* got None in padding=\('same', None\)"),
    (dict(padding=('CAUSAL', 'SAME', 'SAME')), ValueError,
     r"padding must be .*1 or 2 of these mixed \(one per spatial axis\), got \('CAUSAL', 'SAME', 'SAME'\)"),
    (dict(padding=('CAUSAL', (2, -1))), ValueError,
     r"padding must be non-negative, got \('CAUSAL', \(2, -1\)\) \(\(2, -1\) on axis 1\)"),
    (dict(padding=('VALID', 'causal'), kernel_size=(9, 3)), ValueError,
     r"kernel 9 with rhs_dilation 1 spans 9 but the padded input has 8 on axis 0"),
    (dict(padding_mode='mirror'), ValueError, r"padding_mode must be one of .*'REFLECT'.* got 'mirror'"),
    (dict(padding=4, padding_mode='reflect', in_size=(4, 8, 4)), ValueError,
     r"REFLECT padding must be smaller than the input on each axis: pads \(4, 4\) on axis 0 with input length 4"),
    (dict(padding='SAME', padding_mode='CIRCULAR', lhs_dilation=2), ValueError,
     r"padding_mode 'CIRCULAR' .* lhs_dilation \(2, 2\)"),
    (dict(kernel_size=5, rhs_dilation=2, padding='VALID', in_size=(4, 9, 4)), ValueError,
     r"kernel 5 with rhs_dilation 2 spans 9 but the padded input has 4 on axis 0"),
    (dict(w_mask=np.ones((2, 3, 4, 6))), ValueError,
     r"w_mask must broadcast to the kernel shape \(3, 3, 4, 6\), got shape \(2, 3, 4, 6\)"),
    (dict(w_init=np.ones((3, 3, 4, 5))), ValueError, r"w_init must give an array of shape \(3, 3, 4, 6\)"),
])
def test_conv_construction_errors(overrides, error, pattern):
    with pytest.raises(error, match=pattern):
        conv2d(**overrides)


@pytest.mark.parametrize('overrides,error,pattern', [
    (dict(output_padding=2, stride=2), ValueError,
     r"output_padding must be in \[0, 2\) \(smaller than the stride\) on axis 0, which is padded 'SAME'.*got 2$"),
    (dict(output_padding=2, stride=2, padding=1), ValueError,
     r"output_padding must be smaller than max\(stride, rhs_dilation\) = 2 on axis 0, got 2"),
    # Per axis: below the stride on a string axis even where rhs_dilation is larger; PyTorch's bound elsewhere.
    (dict(output_padding=(0, 2), stride=2, rhs_dilation=3, padding=(1, 'causal')), ValueError,
     r"output_padding must be in \[0, 2\) .* on axis 1, which is padded 'CAUSAL'.*got \(0, 2\)"),
    (dict(output_padding=(3, 0), stride=2, rhs_dilation=3, padding=(1, 'causal')), ValueError,
     r"output_padding must be smaller than max\(stride, rhs_dilation\) = 3 on axis 0, got \(3, 0\)"),
    (dict(output_padding=(0, -1)), ValueError, r"output_padding must be >= 0 on every axis, got \(0, -1\)"),
    (dict(padding_mode='reflect'), ValueError, r"padding_mode must be one of \('ZEROS', 'CIRCULAR'\).*'reflect'"),
    (dict(padding=5, kernel_size=2, in_size=(2, 2, 4)), ValueError,
     r"output length -7 on axis 0 .*it must be at least 1"),
])
def test_conv_transpose_construction_errors(overrides, error, pattern):
    args = dict(in_size=(5, 5, 4), out_channels=2, kernel_size=3, w_init=W)
    args.update(overrides)
    with pytest.raises(error, match=pattern):
        brainconv.ConvTranspose2d(**args)


def test_generic_rank_errors():
    with pytest.raises(ValueError, match=r"num_spatial_dims must be a positive int, got 0"):
        brainconv.Conv(0, (4, 2), 2, 3, w_init=W)
    with pytest.raises(ValueError, match=r"eps must be a positive float, got -1.0"):
        brainconv.ScaledWSConv2d((5, 5, 2), 2, 3, eps=-1.0, w_init=W)


def _call_error(layer, x, error, pattern):
    before = {k: np.asarray(v).copy() for k, v in layer.weight.value.items()}
    with pytest.raises(error, match=pattern):
        layer(x)
    after = layer.weight.value
    assert before.keys() == after.keys()
    for k in before:  # nothing is lost
        np.testing.assert_array_equal(before[k], after[k])


def test_call_time_errors_leave_the_layer_unchanged():
    layer = conv2d(b_init=cheap_init(1))
    _call_error(layer, jnp.ones((2, 8, 8, 3)), ValueError,
                re.escape("Conv2d expects input of shape (*batch, *in_size) = (*batch, 8, 8, 4), "
                          "got shape (2, 8, 8, 3)"))
    _call_error(layer, jnp.ones((8, 4)), ValueError, r"\(\*batch, 8, 8, 4\), got shape \(8, 4\)")
    # Boolean and integer spikes are inputs; complex numbers are not.
    _call_error(layer, jnp.ones((2, 8, 8, 4), jnp.complex64), TypeError,
                r"Conv2d expects a real input \(floating point, or boolean / integer spikes\), got dtype complex64")
    # The dtype the user passed, not the one JAX would turn it into.
    _call_error(layer, np.ones((8, 8, 4), np.complex128), TypeError, r"got dtype complex128")
    # The layer still works afterwards.
    assert layer(jnp.ones((8, 8, 4))).shape == (8, 8, 6)


def test_functional_errors():
    x = jnp.ones((2, 6, 3))
    with pytest.raises(ValueError, match=r"kernel must have shape \(3, 3, 4\) .* got shape \(3, 2, 4\)"):
        functional.conv(x, jnp.asarray(init_array((3, 2, 4))))
    with pytest.raises(ValueError, match=r"groups must divide in_channels 3, got groups=2"):
        functional.conv(x, jnp.asarray(init_array((3, 1, 4))), groups=2)
    with pytest.raises(ValueError, match=r"padding_mode must be one of"):
        functional.pad(x, ((1, 1),), 'mirror')
    with pytest.raises(ValueError, match=r"x must have at least 2 axes"):
        functional.conv(jnp.ones((6,)), jnp.asarray(init_array((3, 1, 4))))


def test_a_bias_without_the_output_unit_says_how_to_fix_it():
    x = u.Quantity(np.ones((6, 2), np.float32), unit=u.mV)
    layer = brainconv.Conv1d((6, 2), 3, 3, w_init=W, b_init=np.zeros((1, 3), np.float32))
    _call_error(layer, x, TypeError, re.escape(
        "Conv1d: the bias unit dimensionless (no unit) does not match the output unit 'mV' (unit of the input "
        "times unit of the weight); give b_init that unit, e.g. b_init=braintools.init.ZeroInit(unit=u.mV)"))
    layer = brainconv.Conv1d((6, 2), 3, 3, w_init=W, b_init=braintools.init.ZeroInit(unit=u.mV))
    assert layer(x).unit == u.mV  # the fix the message gives works
    with_unit = brainconv.Conv1d((6, 2), 3, 3, w_init=W, b_init=braintools.init.ZeroInit(unit=u.mV))
    with pytest.raises(TypeError, match=r"give b_init no unit, or give the input or the weights a unit"):
        with_unit(np.ones((6, 2), np.float32))


def test_functional_takes_quantities_as_the_layers_do():
    """Once a TypeError that printed the whole array; now unit(x) * unit(kernel)."""
    x = init_array((2, 7, 2), seed=1)
    w = init_array((3, 2, 4), seed=2)
    y = functional.conv(u.Quantity(x, unit=u.mV), u.Quantity(w, unit=u.mS), stride=2)
    assert isinstance(y, u.Quantity) and y.unit.has_same_dim(u.mV * u.mS)
    expected = ref.conv(x, w, (2,), ((1, 1),), (1,), (1,), 1)
    np.testing.assert_allclose(np.asarray(y.to_decimal(u.mV * u.mS)), expected, rtol=1e-5, atol=1e-6)
    z = functional.conv_transpose(u.Quantity(x, unit=u.mV), w.transpose(0, 2, 1), padding='VALID')
    assert isinstance(z, u.Quantity) and z.unit == u.mV
    np.testing.assert_allclose(np.asarray(z.mantissa), ref.conv_transpose(x, w.transpose(0, 2, 1), (1,), ((0, 0),),
                                                                           (9,), (1,), 1), rtol=1e-5, atol=1e-6)
    padded = functional.pad(u.Quantity(x, unit=u.mV), ((1, 2),), 'REPLICATE')
    assert padded.unit == u.mV
    np.testing.assert_array_equal(np.asarray(padded.mantissa), np.pad(x, ((0, 0), (1, 2), (0, 0)), mode='edge'))
    assert not isinstance(functional.conv(x, w), u.Quantity)
