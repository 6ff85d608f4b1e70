"""Closed-form shapes against the shapes of real outputs (jax.eval_shape), and the formulas."""

import ast
import itertools
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _configs import cheap_init, conv_configs, conv_is_valid, in_share, transpose_configs
from hypothesis import given, settings
from hypothesis import strategies as st

import brainconv
from brainconv import shapes


def _in_size(spatial, channels, channel_first):
    return (channels,) + tuple(spatial) if channel_first else tuple(spatial) + (channels,)


@settings(max_examples=1500)
@given(conv_configs())
def test_conv_out_size_is_the_real_output_shape(c):
    if not in_share(c):
        return
    in_size = _in_size(c['spatial'], c['cin'], c['channel_first'])
    # lowering='lax': XLA's own shape rule gives the real shape (the other formulations' primitive
    # takes its output shape from the very arithmetic under test)
    args = dict(stride=c['stride'], padding=c['user_padding'], lhs_dilation=c['lhs'], rhs_dilation=c['rhs'],
                groups=c['groups'], w_init=cheap_init(), channel_first=c['channel_first'],
                padding_mode=c['mode_spelling'], lowering='lax')
    if not conv_is_valid(c):
        with pytest.raises(ValueError):
            brainconv.Conv(c['nd'], in_size, c['cout'], c['kernel'], **args)
        return
    layer = brainconv.Conv(c['nd'], in_size, c['cout'], c['kernel'], **args)
    real = jax.eval_shape(layer, jax.ShapeDtypeStruct(c['batch'] + in_size, jnp.float32))
    assert real.shape == c['batch'] + layer.out_size
    assert layer.pads == c['pads']


@settings(max_examples=1500)
@given(transpose_configs())
def test_conv_transpose_out_size_is_the_real_output_shape(c):
    if not in_share(c):
        return
    in_size = _in_size(c['m'], c['cin'], c['channel_first'])
    args = dict(stride=c['stride'], padding=c['user_padding'], rhs_dilation=c['rhs'], groups=c['groups'],
                w_init=cheap_init(), channel_first=c['channel_first'], padding_mode=c['mode'],
                output_padding=c['output_padding'], lowering='lax')   # XLA's shape rule, as above
    if min(c['out']) < 1:
        with pytest.raises(ValueError):
            brainconv.ConvTranspose(c['nd'], in_size, c['cout'], c['kernel'], **args)
        return
    layer = brainconv.ConvTranspose(c['nd'], in_size, c['cout'], c['kernel'], **args)
    real = jax.eval_shape(layer, jax.ShapeDtypeStruct(c['batch'] + in_size, jnp.float32))
    assert real.shape == c['batch'] + layer.out_size
    assert layer.out_size == _in_size(c['out'], c['cout'], c['channel_first'])


@given(st.integers(1, 60), st.integers(1, 7), st.integers(1, 5), st.integers(1, 4), st.booleans())
def test_same_padding_formula(n, k, s, d, lower):
    lo, hi = shapes.resolve_pads('SAME_LOWER' if lower else 'SAME', (n,), (k,), (s,), (d,))[0]
    out = -(-n // s)  # ceil
    assert lo + hi == max((out - 1) * s + (k - 1) * d + 1 - n, 0)
    assert (lo - hi) in ((0, 1) if lower else (0, -1))
    assert shapes.conv_out_length(n, k, s, lo, hi, 1, d) == out


@given(st.integers(1, 30), st.integers(1, 6), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3))
def test_same_padding_uses_the_lhs_dilated_length(n, k, s, d, ld):
    (lo, hi), = shapes.resolve_pads('SAME', (n,), (k,), (s,), (d,), (ld,))
    dilated = (n - 1) * ld + 1
    assert shapes.conv_out_length(n, k, s, lo, hi, ld, d) == -(-dilated // s)


@given(st.integers(1, 30), st.integers(1, 6), st.integers(1, 4), st.integers(1, 3))
def test_causal_pads_everything_before(n, k, s, d):
    assert shapes.resolve_pads('CAUSAL', (n,), (k,), (s,), (d,)) == (((k - 1) * d, 0),)


@given(st.integers(1, 20), st.integers(1, 6), st.integers(1, 4), st.integers(1, 3), st.integers(0, 3),
       st.integers(0, 3))
def test_transpose_length_is_torchs_formula_for_explicit_pads(m, k, s, d, lo, hi):
    op = min(max(s, d) - 1, 1)
    expected = (m - 1) * s - (lo + hi) + d * (k - 1) + op + 1  # torch.nn.ConvTranspose1d docs
    assert shapes.transpose_out_length(m, k, s, d, (lo, hi), op) == expected
    assert shapes.transpose_out_length(m, k, s, d, 'VALID', op) == (m - 1) * s + d * (k - 1) + op + 1


def test_receptive_field_recurrence_by_hand():
    # Two 3-taps, the second with stride 2, then a dilated 3-tap: sizes 3, 5, 5 + 2*2*2 = 13.
    g1 = shapes.conv_geometry((32,), (3,), (1,), 'SAME', (1,), (1,))
    g2 = shapes.conv_geometry((32,), (3,), (2,), 'VALID', (1,), (1,))
    g3 = shapes.conv_geometry((15,), (3,), (1,), 'VALID', (1,), (2,))
    rf = shapes.ReceptiveField.identity(1)
    sizes, jumps, starts = [], [], []
    for g in (g1, g2, g3):
        rf = shapes.receptive_field_step(rf, g)
        sizes.append(rf.size[0])
        jumps.append(rf.jump[0])
        starts.append(rf.start[0])
    assert sizes == [3, 5, 13] and jumps == [1, 2, 2]
    # Centre of the first output: SAME keeps 0; VALID 3-tap moves it to 1; dilated 3-tap by 2 jumps of 2.
    assert starts == [0, 1, 5]


def test_shapes_module_imports_no_jax():
    tree = ast.parse(pathlib.Path(shapes.__file__).read_text())
    imported = {alias.name.split('.')[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or '').split('.')[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not imported & {'jax', 'jaxlib', 'brainstate', 'brainunit', 'numpy'}


@given(st.integers(1, 20), st.integers(1, 6), st.integers(1, 4), st.integers(1, 3), st.data())
def test_transpose_length_for_the_strings(m, k, s, d, data):
    """None: m * s (lax.conv_transpose's SAME); an explicit output_padding p < s: (m - 1) * s + 1 + p, the
    smallest length a stride-s SAME/CAUSAL convolution maps to m, plus p.  Either way that convolution maps
    the output length back to m."""
    p = data.draw(st.integers(0, s - 1))
    for padding in ('SAME', 'SAME_LOWER', 'CAUSAL'):
        assert shapes.transpose_out_length(m, k, s, d, padding, None) == m * s
        n = shapes.transpose_out_length(m, k, s, d, padding, p)
        assert n == (m - 1) * s + 1 + p
        assert -(-n // s) == m  # SAME and CAUSAL give ceil(n / s) outputs
        g = shapes.conv_transpose_geometry((m,), (k,), (s,), padding, (d,), None)
        assert g.out_spatial == (m * s,) and g.output_padding == (s - 1,)  # the explicit value that gives m * s


@pytest.mark.parametrize('nd, value, expected', [
    (1, 'causal', 'CAUSAL'),
    (1, ('causal',), 'CAUSAL'),
    (1, ['Same'], 'SAME'),
    (1, (2, 1), ((2, 1),)),
    (1, ((2, 1),), ((2, 1),)),
    (2, ('SAME', 'same'), 'SAME'),
    (2, ('VALID',), 'VALID'),
    (2, (1, 2), ((1, 1), (2, 2))),
    (2, ('CAUSAL', 1), ('CAUSAL', (1, 1))),
    (2, (1, (2, 0)), ((1, 1), (2, 0))),
    (3, ('CAUSAL', 'SAME', 'same_lower'), ('CAUSAL', 'SAME', 'SAME_LOWER')),
    (3, ['causal', np.array([1, 0]), np.int64(2)], ('CAUSAL', (1, 0), (2, 2))),
    (3, np.array([[1, 0], [0, 1], [2, 2]]), ((1, 0), (0, 1), (2, 2))),
])
def test_padding_normal_forms(nd, value, expected):
    """One string for every axis stays a string; pairs stay pairs; a mix keeps one entry per axis."""
    from brainconv import _args
    assert _args.padding(value, nd) == expected


@pytest.mark.parametrize('padding, expected', [
    # n = 9, k = 4, s = 2 on every axis (docs/padding.md's example): SAME (1, 2), SAME_LOWER (2, 1), CAUSAL (3, 0)
    (('CAUSAL', 'SAME', 'SAME_LOWER'), ((3, 0), (1, 2), (2, 1))),
    (('VALID', (2, 2), (0, 3)), ((0, 0), (2, 2), (0, 3))),
])
def test_resolve_pads_per_axis(padding, expected):
    assert shapes.resolve_pads(padding, (9, 9, 9), (4, 4, 4), (2, 2, 2), (1, 1, 1)) == expected
    g = shapes.conv_geometry((9, 9, 9), (4, 4, 4), (2, 2, 2), padding, (1, 1, 1), (1, 1, 1))
    assert g.out_spatial == tuple((9 + lo + hi - 4) // 2 + 1 for lo, hi in expected)


# --- synaptic connections ----------------------------------------------------------------------

def brute_connections(in_spatial, out_spatial, kernel, stride, rhs, lhs, pads):
    """Taps that read a real input, counted tap by tap on a marker array of the padded, lhs-dilated input."""
    shape = tuple((n - 1) * ld + 1 + lo + hi for n, ld, (lo, hi) in zip(in_spatial, lhs, pads))
    real = np.zeros(shape, bool)
    real[tuple(slice(lo, lo + (n - 1) * ld + 1, ld) for n, ld, (lo, _) in zip(in_spatial, lhs, pads))] = True
    count = 0
    for tap in itertools.product(*(range(k) for k in kernel)):
        window = real[tuple(slice(t * d, t * d + (o - 1) * s + 1, s)
                            for t, d, o, s in zip(tap, rhs, out_spatial, stride))]
        assert window.shape == tuple(out_spatial)
        count += np.count_nonzero(window)
    return count


def brute_transpose_connections(m, n, kernel, stride, rhs, pads):
    """A transposed convolution as a scatter: input i and tap t land on output i * s + t * d - lo; count
    the landings inside the n outputs."""
    positions = np.indices(m).reshape(len(m), -1).T
    count = 0
    for tap in itertools.product(*(range(k) for k in kernel)):
        target = positions * np.array(stride) + np.array(tap) * np.array(rhs) - np.array([lo for lo, _ in pads])
        count += np.count_nonzero(np.all((target >= 0) & (target < np.array(n)), axis=1))
    return count


@settings(max_examples=400)
@given(conv_configs(modes=('ZEROS',)))
def test_connections_of_a_convolution_by_brute_force(c):
    if not conv_is_valid(c):
        return
    g = shapes.conv_geometry(c['spatial'], c['kernel'], c['stride'], c['padding'], c['lhs'], c['rhs'])
    expected = brute_connections(c['spatial'], g.out_spatial, c['kernel'], c['stride'], c['rhs'], c['lhs'],
                                 c['pads'])
    assert shapes.connections(g) == expected
    assert shapes.connections(g) <= math.prod(g.out_spatial) * math.prod(g.kernel_size)  # MACs' taps
    # With the pads holding copies of inputs (and no lhs dilation) every tap of every window counts.
    if all(ld == 1 for ld in c['lhs']):
        assert shapes.connections(g, padded=True) == math.prod(g.out_spatial) * math.prod(g.kernel_size)


@settings(max_examples=400)
@given(transpose_configs(modes=('ZEROS',)))
def test_connections_of_a_transposed_convolution_by_brute_force(c):
    if min(c['out']) < 1:
        return
    g = shapes.conv_transpose_geometry(c['m'], c['kernel'], c['stride'], c['padding'], c['rhs'],
                                       c['output_padding'])
    assert shapes.connections(g) == brute_transpose_connections(c['m'], c['out'], c['kernel'], c['stride'],
                                                                c['rhs'], c['pads'])
    # CIRCULAR wraps the pads onto the output: every input meets every tap.
    assert shapes.connections(g, padded=True) == math.prod(c['m']) * math.prod(c['kernel'])


@pytest.mark.parametrize('n, k, s, d, ld, padding, expected', [
    (5, 3, 1, 1, 1, 'SAME', 13),        # 5 outputs x 3 taps, less the pad each end reads
    (5, 3, 1, 1, 1, 'VALID', 9),
    (5, 3, 1, 1, 1, 'CAUSAL', 12),      # two pads before: output 0 reads 2 of them, output 1 one
    (6, 3, 2, 1, 1, 'SAME', 8),         # pads (0, 1): outputs 0, 2, 4 read 0-2, 2-4, 4-6; 6 is the pad
    (4, 2, 1, 1, 2, 'VALID', 6),        # dilated x.x.x.x (7): 6 windows, each reads exactly one input
    (4, 2, 1, 2, 2, 'VALID', 6),        # taps 2 apart on x.x.x.x: windows at 0, 2, 4 read 2 inputs, 1, 3 none
])
def test_connections_by_hand(n, k, s, d, ld, padding, expected):
    g = shapes.conv_geometry((n,), (k,), (s,), padding, (ld,), (d,))
    assert shapes.connections(g) == expected


def test_connections_multiply_over_axes():
    g = shapes.conv_geometry((5, 6), (3, 3), (1, 2), 'SAME', (1, 1), (1, 1))
    assert shapes.connections(g) == 13 * 8


def test_padded_connections_refuse_lhs_dilation():
    g = shapes.conv_geometry((5,), (3,), (1,), 'SAME', (2,), (1,))
    with pytest.raises(ValueError, match='lhs_dilation'):
        shapes.connections(g, padded=True)
