"""The dtype policy: ``param_dtype`` (weights) and ``dtype`` (compute; 16-bit accumulates in float32)."""

import importlib.util

import _reference as ref
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import brainconv

BF16 = np.dtype(jnp.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)

LAYERS = {
    'Conv': lambda **kw: brainconv.Conv2d((5, 5, 2), 3, 3, b_init=jnp.ones(3), **kw),
    'ConvTranspose': lambda **kw: brainconv.ConvTranspose2d((5, 5, 2), 3, 3, stride=2, b_init=jnp.ones(3), **kw),
    'ScaledWSConv': lambda **kw: brainconv.ScaledWSConv2d((5, 5, 2), 3, 3, b_init=jnp.ones(3), **kw),
    'LocalConv': lambda **kw: brainconv.LocalConv2d((5, 5, 2), 3, 3, b_init=jnp.ones(3), **kw),
    'SeparableConv': lambda **kw: brainconv.SeparableConv2d((5, 5, 2), 3, 3, depth_multiplier=2,
                                                            b_init=jnp.ones(3), **kw),
}


@pytest.mark.parametrize('name', LAYERS)
@pytest.mark.parametrize('dtype, param_dtype, out, params', [
    (None, None, F32, F32),
    (jnp.bfloat16, None, BF16, F32),
    ('float16', jnp.bfloat16, F16, BF16),
])
def test_output_and_parameter_dtypes(name, dtype, param_dtype, out, params):
    layer = LAYERS[name](dtype=dtype, param_dtype=param_dtype)
    assert {np.dtype(v.dtype) for v in layer.weight.value.values()} == {params}
    x = jnp.ones((2,) + layer.in_size, jnp.float32)
    assert np.dtype(jax.jit(layer.apply)(layer.weight.value, x).dtype) == out
    shown = repr(layer)
    assert ('dtype=' + out.name in shown) == (dtype is not None)
    assert ('param_dtype=' + params.name in shown) == (param_dtype is not None)


def _round(a, dtype):
    return np.asarray(a, np.float32).astype(dtype).astype(np.float64)


def test_bfloat16_accuracy_against_float32_reference():
    """At bf16 the result is the exact convolution of the bf16-rounded input and kernel, rounded once to
    bf16: within 2**-8 (bf16's unit roundoff) of it relatively, plus float32 summation noise."""
    layer = brainconv.Conv2d((6, 6, 16), 8, 3, stride=2, dtype=jnp.bfloat16)
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 16)).astype(np.float32)
    w = np.asarray(layer.weight.value['weight'])
    y = np.asarray(layer(jnp.asarray(x)), np.float64)
    pads = ((0, 1), (0, 1))
    exact = ref.conv(_round(x, BF16), _round(w, BF16), (2, 2), pads, (1, 1), (1, 1), 1)
    np.testing.assert_allclose(y, exact, rtol=2 ** -8, atol=1e-5)
    # and against the float32 operands: the operands' rounding adds at most 2**-8 of sum |x| |w| per output
    unrounded = ref.conv(x, w, (2, 2), pads, (1, 1), (1, 1), 1)
    bound = 2 ** -8 * ref.conv(np.abs(x), np.abs(w), (2, 2), pads, (1, 1), (1, 1), 1) * 2.01 + 2 ** -8 * np.abs(exact)
    assert np.all(np.abs(y - unrounded) <= bound + 1e-6)


@pytest.mark.parametrize('name', ['Conv', 'ConvTranspose', 'LocalConv', 'SeparableConv'])
def test_16bit_accumulates_in_float32(name):
    """1536 products of 1 * 1: exact in float32 accumulation; a bfloat16 accumulator stalls at 256."""
    make = {
        'Conv': lambda: brainconv.Conv1d((3, 512), 1, 3, padding='VALID', w_init=np.ones, dtype=jnp.bfloat16),
        'ConvTranspose': lambda: brainconv.ConvTranspose1d((3, 512), 1, 3, padding='VALID', w_init=np.ones,
                                                           dtype=jnp.bfloat16),
        'LocalConv': lambda: brainconv.LocalConv1d((3, 512), 1, 3, padding='VALID', w_init=np.ones,
                                                   dtype=jnp.bfloat16),
        'SeparableConv': lambda: brainconv.SeparableConv1d((3, 512), 1, 3, padding='VALID', depthwise_init=np.ones,
                                                           pointwise_init=np.ones, dtype=jnp.bfloat16),
    }[name]
    y = make()(jnp.ones((3, 512), jnp.bfloat16))
    assert y.dtype == jnp.bfloat16 and float(jnp.max(y)) == 1536.0


@pytest.mark.parametrize('value', ['int32', np.int8, jnp.complex64, 'not a dtype', 3, bool])
@pytest.mark.parametrize('arg', ['dtype', 'param_dtype'])
def test_bad_dtype(arg, value):
    for make in (lambda **kw: brainconv.Conv1d((4, 2), 2, 3, **kw),
                 lambda **kw: brainconv.ConvTranspose1d((4, 2), 2, 3, **kw),
                 lambda **kw: brainconv.ScaledWSConv1d((4, 2), 2, 3, **kw)):
        with pytest.raises(TypeError, match=f"^{arg} must be a floating dtype .* got {value!r}".replace('(', r'\(')
                           .replace(')', r'\)').replace('[', r'\[').replace(']', r'\]')):
            make(**{arg: value})


def test_transpose_keeps_dtypes_and_float64_is_accepted():
    conv = brainconv.Conv1d((6, 2), 3, 3, dtype=jnp.float16, param_dtype=ml_dtypes.bfloat16)
    t = conv.transpose()
    assert (t.dtype, t.param_dtype) == (F16, BF16)
    assert brainconv.Conv1d((6, 2), 3, 3, dtype='float64').dtype == np.dtype('float64')


@pytest.mark.skipif(importlib.util.find_spec('sklearn') is None, reason='needs scikit-learn (the demo extra)')
def test_bfloat16_training_matches_float32_on_digits():
    """The digits CNN (width 4, 3 epochs) trained with bf16 convolutions reaches float32's test accuracy
    within 2 points; both reach 90%."""
    from brainconv.examples import digits

    data = digits.load_digits(seed=0)
    accuracy = {}
    for dtype in (None, jnp.bfloat16):
        model = digits.make_cnn(seed=0, width=4, dtype=dtype)
        # brainstate's Linear and braintools' Adam rely on promotion (brainconv's layers do not: tests above)
        with jax.numpy_rank_promotion('allow'), jax.numpy_dtype_promotion('standard'):
            history = digits.fit(model, data, epochs=3, batch_size=64, lr=1e-2, seed=0)
        accuracy[dtype] = history.test_accuracy[-1]
    assert accuracy[None] >= 0.9 and accuracy[jnp.bfloat16] >= 0.9, accuracy
    assert accuracy[jnp.bfloat16] >= accuracy[None] - 0.02, accuracy
