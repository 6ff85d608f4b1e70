"""Loading PyTorch convolution weights into brainconv gives PyTorch's outputs.

The recipe the "coming from PyTorch" docs page gives, checked numerically.
Skipped where torch is not installed (CI does not install it).
"""

import jax
import numpy as np
import pytest

import brainconv

torch = pytest.importorskip('torch')


def to_torch(x):
    return torch.from_numpy(np.ascontiguousarray(x))


def conv_kernel_from_torch(weight):
    """torch Conv weight (O, I/g, *k) -> brainconv Conv kernel (*k, I/g, O)."""
    nd = weight.ndim - 2
    return np.transpose(weight, tuple(range(2, 2 + nd)) + (1, 0))


def conv_transpose_kernel_from_torch(weight, groups):
    """torch ConvTranspose weight (I, O/g, *k) -> brainconv ConvTranspose kernel (*k, O, I/g)."""
    cin, cout_g, *k = weight.shape
    nd = len(k)
    w = weight.reshape((groups, cin // groups, cout_g) + tuple(k))          # (g, I/g, O/g, *k)
    w = np.transpose(w, tuple(range(3, 3 + nd)) + (0, 2, 1))                # (*k, g, O/g, I/g)
    return w.reshape(tuple(k) + (groups * cout_g, cin // groups))


CONV_CASES = [
    # nd, torch kwargs (besides channels and kernel), brainconv padding
    (1, dict(stride=2, padding=2), 2),
    (2, dict(padding=1, dilation=2, groups=2), 1),
    (2, dict(padding='same', dilation=(1, 2)), 'SAME'),
    (2, dict(stride=(2, 1), padding=(1, 2), padding_mode='reflect'), (1, 2)),
    (2, dict(padding=2, padding_mode='replicate'), 2),
    (2, dict(padding=1, padding_mode='circular', groups=4), 1),
    (3, dict(stride=2), 'VALID'),
]


@pytest.mark.parametrize('nd, kwargs, padding', CONV_CASES)
@pytest.mark.parametrize('channel_first', [False, True])
def test_conv_matches_torch(nd, kwargs, padding, channel_first):
    rng = np.random.default_rng(0)
    cin, cout, k = 4, 8, 3
    spatial = (9, 8, 7)[:nd]
    tconv = getattr(torch.nn, f'Conv{nd}d')(cin, cout, k, **kwargs)
    weight, bias = tconv.weight.detach().numpy(), tconv.bias.detach().numpy()
    dilation = kwargs.get('dilation', 1)
    layer = getattr(brainconv, f'Conv{nd}d')(
        (cin,) + spatial if channel_first else spatial + (cin,), cout, k,
        stride=kwargs.get('stride', 1), padding=padding, rhs_dilation=dilation, groups=kwargs.get('groups', 1),
        padding_mode=kwargs.get('padding_mode', 'zeros'), channel_first=channel_first,
        w_init=conv_kernel_from_torch(weight),
        b_init=bias.reshape((1, cout) + (1,) * nd if channel_first else (1,) * nd + (cout,)),
        precision=jax.lax.Precision.HIGHEST)
    x = rng.normal(size=(2, cin) + spatial).astype(np.float32)          # torch layout: (N, C, *spatial)
    expected = tconv(to_torch(x)).detach().numpy()
    if channel_first:
        y = np.asarray(layer(x))
    else:
        y = np.moveaxis(np.asarray(layer(np.moveaxis(x, 1, -1))), -1, 1)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


TRANSPOSE_CASES = [
    (1, dict(stride=2, padding=1, output_padding=1), 1),
    (2, dict(stride=2, padding=0, groups=2), 'VALID'),
    (2, dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), dilation=(1, 2)), (1, 0)),
    (3, dict(stride=2, padding=1, groups=4), 1),
]


@pytest.mark.parametrize('nd, kwargs, padding', TRANSPOSE_CASES)
def test_conv_transpose_matches_torch(nd, kwargs, padding):
    rng = np.random.default_rng(1)
    cin, cout, k, groups = 4, 8, 3, kwargs.get('groups', 1)
    spatial = (5, 4, 3)[:nd]
    tconv = getattr(torch.nn, f'ConvTranspose{nd}d')(cin, cout, k, **kwargs)
    weight, bias = tconv.weight.detach().numpy(), tconv.bias.detach().numpy()
    assert weight.shape == (cin, cout // groups) + (k,) * nd
    layer = getattr(brainconv, f'ConvTranspose{nd}d')(
        spatial + (cin,), cout, k, stride=kwargs.get('stride', 1), padding=padding,
        rhs_dilation=kwargs.get('dilation', 1), groups=groups, output_padding=kwargs.get('output_padding'),
        w_init=conv_transpose_kernel_from_torch(weight, groups), b_init=bias.reshape((1,) * nd + (cout,)),
        precision=jax.lax.Precision.HIGHEST)
    x = rng.normal(size=(2, cin) + spatial).astype(np.float32)
    expected = tconv(to_torch(x)).detach().numpy()
    y = np.moveaxis(np.asarray(layer(np.moveaxis(x, 1, -1))), -1, 1)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_the_transposed_kernel_recipe_is_the_adjoint_layout():
    """torch's ConvTranspose weight is the weight of the Conv it is the adjoint of; mapped through the
    Conv recipe and brainconv's transpose_kernel it gives the ConvTranspose recipe."""
    rng = np.random.default_rng(2)
    groups, cin, cout = 2, 4, 6
    weight = rng.normal(size=(cin, cout // groups, 3, 3)).astype(np.float32)
    via_conv = brainconv.functional.transpose_kernel(conv_kernel_from_torch(weight), groups)
    np.testing.assert_array_equal(np.asarray(via_conv), conv_transpose_kernel_from_torch(weight, groups))


@pytest.mark.parametrize('m, k, s, d, op', [(4, 3, 2, 1, 1), (4, 3, 2, 1, 0), (5, 5, 3, 1, 2), (3, 3, 2, 2, 1)])
def test_output_padding_adds_to_the_length_as_in_torch(m, k, s, d, op):
    """torch's ConvTranspose with padding = (span - 1) // 2 (span odd) has length (m - 1) * s + 1 + op, that of
    brainconv's 'SAME' with the same output_padding.  Its values are brainconv's with the same int padding (the
    pads of the forward convolution, torch's meaning), and with 'SAME' where op is 0: torch takes all op extra
    positions off the forward convolution's high pad, 'SAME' splits the pads evenly (as Keras does)."""
    span = (k - 1) * d + 1
    tconv = torch.nn.ConvTranspose1d(2, 3, k, stride=s, padding=(span - 1) // 2, output_padding=op, dilation=d,
                                     bias=False)
    x = np.random.default_rng(3).normal(size=(2, 2, m)).astype(np.float32)
    expected = tconv(to_torch(x)).detach().numpy()
    w = conv_transpose_kernel_from_torch(tconv.weight.detach().numpy(), 1)
    for padding in ('SAME', (span - 1) // 2):
        layer = brainconv.ConvTranspose1d((m, 2), 3, k, stride=s, padding=padding, rhs_dilation=d, output_padding=op,
                                          w_init=w, precision=jax.lax.Precision.HIGHEST)
        assert layer.out_size == ((m - 1) * s + 1 + op, 3) == expected.shape[:0:-1]
        if padding != 'SAME' or op == 0:
            y = np.moveaxis(np.asarray(layer(np.moveaxis(x, 1, -1))), -1, 1)
            np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
