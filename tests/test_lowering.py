"""Every formulation of :mod:`brainconv.lowering` against an independent NumPy oracle.

The oracle below is written here, in float64, as explicit sums over kernel
taps (strided slices of the padded input, one matmul per tap and group); its
gradients are the same sums transposed, not autodiff.  The property test draws
random configurations -- every padding form and mode, stride, both dilations,
groups, depthwise, channel_first, transposed with output_padding -- and checks
each formulation's output and gradients with respect to input and kernel.
"""

from __future__ import annotations

import itertools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _configs import in_share
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import brainconv
from brainconv import functional, lowering, shapes

NAMES = brainconv.lowering.LOWERINGS
NP_MODE = {'ZEROS': 'constant', 'REFLECT': 'reflect', 'REPLICATE': 'edge', 'CIRCULAR': 'wrap'}


# --------------------------------------------------------------------------- #
# The oracle
# --------------------------------------------------------------------------- #

def _tap_index(tap, stride, dilation, out):
    return (slice(None),) + tuple(slice(t * d, t * d + (o - 1) * s + 1, s)
                                  for t, d, o, s in zip(tap, dilation, out, stride)) + (slice(None),)


def _taps(k):
    return itertools.product(*(range(n) for n in k))


def taps_forward(xe, w, stride, dilation, out, groups):
    """y[b, o, g*og + j] = sum_t sum_i xe[b, o*s + t*d, g*ig + i] * w[t, i, g*og + j]."""
    k, ig, cout = w.shape[:-2], w.shape[-2], w.shape[-1]
    og = cout // groups
    y = np.zeros((xe.shape[0],) + tuple(out) + (cout,))
    for tap in _taps(k):
        xs = xe[_tap_index(tap, stride, dilation, out)]
        for g in range(groups):
            y[..., g * og:(g + 1) * og] += xs[..., g * ig:(g + 1) * ig] @ w[tap][:, g * og:(g + 1) * og]
    return y


def taps_adjoint(gy, w, stride, dilation, xe_shape, groups):
    """The transpose of :func:`taps_forward` in its input: scatter every tap back."""
    k, ig, cout = w.shape[:-2], w.shape[-2], w.shape[-1]
    og = cout // groups
    out = gy.shape[1:-1]
    dxe = np.zeros(xe_shape)
    for tap in _taps(k):
        index = _tap_index(tap, stride, dilation, out)
        for g in range(groups):
            dxe[index][..., g * ig:(g + 1) * ig] += gy[..., g * og:(g + 1) * og] @ w[tap][:, g * og:(g + 1) * og].T
    return dxe


def taps_weight_grad(xe, gy, stride, dilation, k, ig, groups):
    """The transpose of :func:`taps_forward` in its kernel."""
    cout = gy.shape[-1]
    og = cout // groups
    out = gy.shape[1:-1]
    dw = np.zeros(tuple(k) + (ig, cout))
    for tap in _taps(k):
        xs = xe[_tap_index(tap, stride, dilation, out)]
        for g in range(groups):
            a = xs[..., g * ig:(g + 1) * ig].reshape(-1, ig)
            b = gy[..., g * og:(g + 1) * og].reshape(-1, og)
            dw[tap][:, g * og:(g + 1) * og] = a.T @ b
    return dw


def _pad_maps(shape, pads, mode):
    """Per spatial axis, the source position of every padded position (-1: a zero)."""
    maps = []
    for n, (lo, hi) in zip(shape, pads):
        if mode == 'ZEROS':
            idx = np.concatenate([-np.ones(max(lo, 0), int), np.arange(n), -np.ones(max(hi, 0), int)])
            idx = idx[max(-lo, 0):len(idx) - max(-hi, 0)]
        else:
            idx = np.pad(np.arange(n), (lo, hi), mode=NP_MODE[mode])
        maps.append(idx)
    return maps


def pad_forward(x, pads, mode):
    """Pad (or crop, for negative ZEROS pads) the spatial axes by gathering through the maps."""
    for axis, idx in enumerate(_pad_maps(x.shape[1:-1], pads, mode), start=1):
        taken = np.take(x, np.maximum(idx, 0), axis=axis)
        mask = (idx >= 0).reshape((1,) * axis + (-1,) + (1,) * (x.ndim - axis - 1))
        x = taken * mask
    return x


def pad_adjoint(dxp, shape, pads, mode):
    """The transpose of :func:`pad_forward`: add every padded position onto its source."""
    maps = _pad_maps(shape, pads, mode)
    for axis in reversed(range(1, len(maps) + 1)):
        idx = maps[axis - 1]
        moved = np.moveaxis(dxp, axis, 0)
        acc = np.zeros((shape[axis - 1],) + moved.shape[1:])
        keep = idx >= 0
        np.add.at(acc, idx[keep], moved[keep])
        dxp = np.moveaxis(acc, 0, axis)
    return dxp


def dilate(x, ld):
    out = np.zeros((x.shape[0],) + tuple((n - 1) * d + 1 for n, d in zip(x.shape[1:-1], ld)) + (x.shape[-1],))
    out[(slice(None),) + tuple(slice(None, None, d) for d in ld)] = x
    return out


def undilate(x, ld):
    return x[(slice(None),) + tuple(slice(None, None, d) for d in ld)]


def oracle_conv(x, w, gy, stride, pads, ld, rd, groups, mode):
    """(y, dx, dw) of a convolution, channels-last, one batch axis, float64."""
    xd = dilate(x, ld)
    xe = pad_forward(xd, pads, mode)
    k = w.shape[:-2]
    out = [(n - (kk - 1) * d - 1) // s + 1 for n, kk, d, s in zip(xe.shape[1:-1], k, rd, stride)]
    y = taps_forward(xe, w, stride, rd, out, groups)
    dxe = taps_adjoint(gy, w, stride, rd, xe.shape, groups)
    dx = undilate(pad_adjoint(dxe, xd.shape[1:-1], pads, mode), ld)
    dw = taps_weight_grad(xe, gy, stride, rd, k, w.shape[-2], groups)
    return y, dx, dw


def _kernel_as_forward(kt, groups):
    """A transposed kernel (*k, C_out, C_in // g) as the kernel (*k, C_out // g, C_in) of the
    forward convolution it is the adjoint of: w[t, j, g*ig + i] = kt[t, g*og + j, i]."""
    k, cout, ig = kt.shape[:-2], kt.shape[-2], kt.shape[-1]
    og = cout // groups
    w = kt.reshape(k + (groups, og, ig))
    w = np.moveaxis(w, -3, -2)                       # (*k, og, groups, ig)
    return w.reshape(k + (og, groups * ig))


def _kernel_from_forward(w, groups, cout):
    k, og, cin = w.shape[:-2], w.shape[-2], w.shape[-1]
    kt = w.reshape(k + (og, groups, cin // groups))
    kt = np.moveaxis(kt, -2, -3)
    return kt.reshape(k + (cout, cin // groups))


def oracle_conv_transpose(y, kt, gz, stride, pads, rd, groups, out_spatial, mode):
    """(z, dy, dkt): the adjoint of the forward convolution with pads ``pads`` on ``out_spatial``,
    scattered tap by tap, then cropped (or, CIRCULAR, folded) onto ``out_spatial``."""
    w = _kernel_as_forward(kt, groups)
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(out_spatial, pads))
    zp = taps_adjoint(y, w, stride, rd, (y.shape[0],) + padded + (w.shape[-2] * groups,), groups)
    fold_mode = 'CIRCULAR' if mode == 'CIRCULAR' else 'ZEROS'
    z = pad_adjoint(zp, out_spatial, pads, fold_mode)
    gzp = pad_forward(gz, pads, fold_mode)
    dy = taps_forward(gzp, w, stride, rd, y.shape[1:-1], groups)
    dw = taps_weight_grad(gzp, y, stride, rd, kt.shape[:-2], w.shape[-2], groups)
    return z, dy, _kernel_from_forward(dw, groups, kt.shape[-2])


# --------------------------------------------------------------------------- #
# Running brainconv
# --------------------------------------------------------------------------- #

def _to_layout(a, channel_first):
    return np.moveaxis(a, -1, 1) if channel_first else a


def _from_layout(a, channel_first):
    a = np.asarray(a, np.float64)
    return np.moveaxis(a, 1, -1) if channel_first else a


def run_all(op, x, w, gy, names=NAMES):
    """(y, dx, dw) for every formulation, from one jitted function."""
    def one(x, w, gy):
        results = []
        for name in names:
            y, vjp = jax.vjp(lambda a, b, name=name: op(a, b, name), x, w)
            results.append((y,) + vjp(gy))
        return results
    return jax.jit(one)(x, w, gy)


def assert_close(actual, expected, what):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    err = float(np.max(np.abs(actual - expected), initial=0.0))
    assert err <= 2e-5 * scale, f"{what}: max abs error {err:.3g} (scale {scale:.3g})"


@st.composite
def conv_cases(draw):
    nd = draw(st.integers(1, 3))
    transposed = draw(st.booleans())
    small = nd == 3
    k = tuple(draw(st.integers(1, 2 if small else 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 2 if small else 3)) for _ in range(nd))
    rd = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    n = tuple(draw(st.integers(2, 4 if small else 7)) for _ in range(nd))
    depthwise = draw(st.booleans())
    if depthwise:
        groups = draw(st.integers(1, 3))
        cin, cout = groups, groups * draw(st.integers(1, 2))
    else:
        groups = draw(st.sampled_from([1, 1, 2]))
        cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    padding = draw(st.one_of(
        st.sampled_from(['SAME', 'VALID', 'CAUSAL', 'SAME_LOWER']),
        st.tuples(*[st.tuples(st.integers(0, 2), st.integers(0, 2)) for _ in range(nd)])))
    case = dict(nd=nd, transposed=transposed, k=k, stride=stride, rd=rd, n=n, groups=groups, cin=cin, cout=cout,
                padding=padding, channel_first=draw(st.booleans()), batch=draw(st.integers(1, 2)))
    if transposed:
        case['mode'] = draw(st.sampled_from(['ZEROS', 'CIRCULAR']))
        case['output_padding'] = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, rd))
        case['ld'] = (1,) * nd
    else:
        case['mode'] = draw(st.sampled_from(['ZEROS', 'REFLECT', 'REPLICATE', 'CIRCULAR']))
        case['ld'] = tuple(draw(st.integers(1, 2)) for _ in range(nd)) if case['mode'] == 'ZEROS' else (1,) * nd
        case['output_padding'] = (0,) * nd
    return case


def check_case(case, names=NAMES):
    nd, cf, groups, mode = case['nd'], case['channel_first'], case['groups'], case['mode']
    rng = np.random.default_rng(zlib.crc32(repr(sorted(case.items())).encode()))
    x = rng.standard_normal((case['batch'],) + case['n'] + (case['cin'],))
    if case['transposed']:
        spec_kw = dict(stride=case['stride'], padding=case['padding'], rhs_dilation=case['rd'], groups=groups,
                       output_padding=case['output_padding'], padding_mode=mode, channel_first=cf)
        kshape = case['k'] + (case['cout'], case['cin'] // groups)
    else:
        spec_kw = dict(stride=case['stride'], padding=case['padding'], lhs_dilation=case['ld'],
                       rhs_dilation=case['rd'], groups=groups, padding_mode=mode, channel_first=cf)
        kshape = case['k'] + (case['cin'] // groups, case['cout'])
    w = rng.standard_normal(kshape)
    in_size = (case['cin'],) + case['n'] if cf else case['n'] + (case['cin'],)
    try:
        if case['transposed']:
            spec = brainconv._args.conv_transpose_spec(
                nd, in_size, case['cout'], case['k'], case['stride'], case['padding'], case['rd'], groups,
                case['output_padding'], mode, cf)
        else:
            spec = brainconv._args.conv_spec(nd, in_size, case['cout'], case['k'], case['stride'], case['padding'],
                                             case['ld'], case['rd'], groups, mode, cf)
    except ValueError:
        return False  # an empty output or a REFLECT pad longer than the input: rejected at construction
    geom = spec.geometry
    gy = rng.standard_normal((case['batch'],) + geom.out_spatial + (case['cout'],))
    if case['transposed']:
        expected = oracle_conv_transpose(x, w, gy, geom.stride, geom.pads, geom.rhs_dilation, groups,
                                         geom.out_spatial, mode)
        op = (lambda a, b, name: functional.conv_transpose(a, b, lowering=name, **spec_kw))
    else:
        expected = oracle_conv(x, w, gy, geom.stride, geom.pads, geom.lhs_dilation, geom.rhs_dilation,
                               groups, mode)
        op = (lambda a, b, name: functional.conv(a, b, lowering=name, **spec_kw))
    f32 = (lambda a: jnp.asarray(a, jnp.float32))
    results = run_all(op, f32(_to_layout(x, cf)), f32(w), f32(_to_layout(gy, cf)), names)
    for name, (y, dx, dw) in zip(names, results):
        assert_close(_from_layout(y, cf), expected[0], f"{name} output")
        assert_close(_from_layout(dx, cf), expected[1], f"{name} input gradient")
        assert_close(dw, expected[2], f"{name} kernel gradient")
    return True


# --------------------------------------------------------------------------- #
# Tests
# --------------------------------------------------------------------------- #

@settings(max_examples=25, deadline=None)
@given(conv_cases())
def test_every_formulation_matches_the_oracle(case):
    if in_share(case):
        assume(check_case(case))


@pytest.mark.parametrize('case', [
    # depthwise with a depth multiplier, strided, channel_first
    dict(nd=2, transposed=False, k=(3, 3), stride=(2, 1), rd=(1, 1), n=(7, 6), groups=3, cin=3, cout=6,
         padding='SAME', channel_first=True, batch=2, mode='ZEROS', ld=(1, 1), output_padding=(0, 0)),
    # lhs and rhs dilation together with explicit pads, grouped
    dict(nd=2, transposed=False, k=(2, 3), stride=(1, 2), rd=(2, 1), n=(5, 6), groups=2, cin=4, cout=2,
         padding=((1, 2), (0, 1)), channel_first=False, batch=1, mode='ZEROS', ld=(2, 3), output_padding=(0, 0)),
    # REFLECT, 3-d, strided
    dict(nd=3, transposed=False, k=(2, 3, 2), stride=(1, 2, 1), rd=(1, 1, 2), n=(4, 5, 4), groups=1, cin=2,
         cout=3, padding='SAME', channel_first=False, batch=1, mode='REFLECT', ld=(1, 1, 1),
         output_padding=(0, 0, 0)),
    # transposed, CIRCULAR, grouped
    dict(nd=2, transposed=True, k=(3, 3), stride=(2, 2), rd=(1, 1), n=(4, 5), groups=2, cin=4, cout=2,
         padding='SAME', channel_first=True, batch=2, mode='CIRCULAR', ld=(1, 1), output_padding=(0, 0)),
    # transposed with output_padding, stride 3 and rhs dilation 2 (phases with several taps each)
    dict(nd=1, transposed=True, k=(3,), stride=(3,), rd=(2,), n=(5,), groups=1, cin=2, cout=3,
         padding=((1, 2),), channel_first=False, batch=2, mode='ZEROS', ld=(1,), output_padding=(1,)),
    # REPLICATE, VALID-free explicit pads, 1-d
    dict(nd=1, transposed=False, k=(3,), stride=(2,), rd=(2,), n=(9,), groups=1, cin=3, cout=2,
         padding=((2, 1),), channel_first=True, batch=1, mode='REPLICATE', ld=(1,), output_padding=(0,)),
], ids=['depthwise-mult', 'both-dilations', 'reflect-3d', 'transposed-circular', 'transposed-phases',
        'replicate-1d'])
def test_named_configurations(case):
    assert check_case(case)


def test_every_kernel_gradient_path_matches_the_oracle(monkeypatch):
    """Ungrouped kernel gradients run as one canonical convolution (1-d; 2-d on jaxlib >= 0.12), as
    a loop over the taps (small ones, lowering.kernel_grad.SMALL_MACS) or as stacked patches: force each path
    here whatever the jaxlib, through strides, kernel dilation and (as adjoint geometries have
    them) negative pads."""
    cases = [dict(nd=1, transposed=False, k=(3,), stride=(2,), rd=(2,), n=(11,), groups=1, cin=3, cout=2,
                  padding=((2, 1),), channel_first=False, batch=2, mode='ZEROS', ld=(1,), output_padding=(0,)),
             dict(nd=2, transposed=False, k=(3, 2), stride=(2, 1), rd=(1, 2), n=(7, 6), groups=1, cin=3, cout=2,
                  padding='SAME', channel_first=False, batch=2, mode='ZEROS', ld=(1, 1), output_padding=(0, 0)),
             dict(nd=3, transposed=True, k=(3, 2, 2), stride=(2, 1, 2), rd=(1, 1, 1), n=(3, 4, 3), groups=1, cin=2,
                  cout=3, padding='SAME', channel_first=False, batch=1, mode='ZEROS', ld=(1, 1, 1),
                  output_padding=(0, 0, 0))]
    negative = [((11,), (3,), (2,), ((-2, 3),), (2,)), ((6, 10), (2, 3), (1, 3), ((1, -1), (-1, 2)), (2, 1))]
    rng = np.random.default_rng(3)
    for single_threaded in (False, True):
        monkeypatch.setattr(lowering.cpu, 'YNN_SINGLE_THREADED', single_threaded)
        for small in (lowering.kernel_grad.SMALL_MACS, 0):
            monkeypatch.setattr(lowering.kernel_grad, 'SMALL_MACS', small)
            for case in cases:   # 'lax_vjp': its kernel gradient is _weight_grad_any, as im2col's, taps' and fold's
                assert check_case(case, names=('lax_vjp',))
            for n, k, stride, pads, rd in negative:
                geom = shapes.conv_geometry(n, k, stride, pads, (1,) * len(n), rd)
                x = rng.standard_normal((2,) + n + (3,))
                gy = rng.standard_normal((2,) + geom.out_spatial + (2,))
                expected = taps_weight_grad(pad_forward(x, pads, 'ZEROS'), gy, stride, rd, k, 3, 1)
                dw = lowering.kernel_grad._weight_grad_any(jnp.asarray(x, jnp.float32), jnp.asarray(gy, jnp.float32),
                                               geom, 1, None)
                assert_close(dw, expected, f"kernel gradient, pads {pads}")


def test_ynnpack_escape_matches_the_oracle(monkeypatch):
    """jaxlib < 0.12 runs XLA:CPU's YNNPACK convolutions on one thread, and 'lax_vjp' (and 'fold''s
    inner convolution, and every input gradient on that path) pads extra output rows to leave it
    (lowering.cpu._ynn_escape).  Force the escape on every 2-d convolution here, whatever the jaxlib,
    the channel count or the number of extra rows, and check it against the oracle."""
    monkeypatch.setattr(lowering.cpu, 'YNN_SINGLE_THREADED', True)
    monkeypatch.setattr(lowering.cpu, 'YNN_ESCAPE_MAX_EXTRA', 100.0)
    monkeypatch.setattr(lowering.cpu, 'YNN_ESCAPE_MIN_CHANNELS', 1)
    calls = []
    escape = lowering.cpu._ynn_escape
    monkeypatch.setattr(lowering.cpu, '_ynn_escape', lambda *a: calls.append(escape(*a)) or calls[-1])
    base = dict(nd=2, transposed=False, rd=(1, 1), groups=1, channel_first=False, batch=2, ld=(1, 1),
                output_padding=(0, 0))
    cases = [dict(base, k=(3, 3), stride=(1, 1), n=(6, 5), cin=3, cout=4, padding='SAME', mode='ZEROS'),
             dict(base, k=(3, 2), stride=(2, 1), n=(7, 6), cin=2, cout=3, padding='VALID', mode='REFLECT'),
             dict(base, k=(2, 3), stride=(1, 2), n=(5, 7), cin=2, cout=2, padding=((0, 1), (2, 0)), mode='ZEROS',
                  rd=(2, 1)),
             dict(base, k=(3, 3), stride=(2, 2), n=(6, 6), cin=4, cout=2, padding='SAME', mode='ZEROS',
                  transposed=True),
             dict(base, nd=3, k=(2, 3, 3), stride=(1, 1, 2), n=(3, 5, 6), cin=2, cout=3, padding='SAME',
                  mode='ZEROS', rd=(1, 1, 1), ld=(1, 1, 1), output_padding=(0, 0, 0))]
    for case in cases:
        assert check_case(case, names=('lax_vjp', 'fold'))
    assert any(c is not None for c in calls)
    # The rule itself: a 2-d SAME 3x3 convolution with 64 channels escapes by one row on one axis;
    # thin, 1x1, 16-bit, 1-d and 3-d ones do not, nor anything lowered for another backend.
    monkeypatch.setattr(lowering.cpu, 'YNN_ESCAPE_MAX_EXTRA', 0.25)
    monkeypatch.setattr(lowering.cpu, 'YNN_ESCAPE_MIN_CHANNELS', 16)
    g = _geometry(2, 32, 3)
    x, w = jnp.zeros((1, 32, 32, 64)), jnp.zeros((3, 3, 64, 64))
    assert escape(x, w, g.pads, g) is None
    token = lowering.context._LOWERING_FOR_CPU.set(True)
    try:
        _check_escape_rule(escape, x, w, g, monkeypatch)
    finally:
        lowering.context._LOWERING_FOR_CPU.reset(token)


def _check_escape_rule(escape, x, w, g, monkeypatch):
    assert escape(x, w, g.pads, g) in ((0, 1), (1, 1))
    assert escape(x[..., :8], w[:, :, :8], g.pads, g) is None
    assert escape(x.astype(jnp.bfloat16), w, g.pads, g) is None
    g1 = _geometry(2, 32, 1)
    assert escape(x, w[:1, :1], g1.pads, g1) is None
    g3 = _geometry(3, 8, 3)
    assert escape(jnp.zeros((1, 8, 8, 8, 64)), jnp.zeros((3, 3, 3, 64, 64)), g3.pads, g3) is None
    monkeypatch.setattr(lowering.cpu, 'YNN_SINGLE_THREADED', False)
    assert escape(x, w, g.pads, g) is None


def test_oracle_is_not_trivial():
    """The oracle itself against a direct quadruple loop on one small case."""
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((1, 5, 2)), rng.standard_normal((3, 2, 2))
    gy = rng.standard_normal((1, 3, 2))
    y, dx, dw = oracle_conv(x, w, gy, (2,), ((1, 1),), (1,), (1,), 1, 'ZEROS')
    xp = np.pad(x, ((0, 0), (1, 1), (0, 0)))
    manual = np.array([[sum(xp[0, 2 * o + t] @ w[t] for t in range(3)) for o in range(3)]])
    np.testing.assert_allclose(y, manual)
    # <conv(x), gy> is linear in x and in w: the gradients are the adjoints.
    eps = rng.standard_normal(x.shape)
    y2, _, _ = oracle_conv(x + eps, w, gy, (2,), ((1, 1),), (1,), (1,), 1, 'ZEROS')
    np.testing.assert_allclose(np.sum((y2 - y) * gy), np.sum(eps * dx))
    assert dw.shape == w.shape


# --------------------------------------------------------------------------- #
# Choosing and overriding a formulation
# --------------------------------------------------------------------------- #

def _geometry(nd=2, n=8, k=3):
    return shapes.conv_geometry((n,) * nd, (k,) * nd, (1,) * nd, 'SAME', (1,) * nd, (1,) * nd)


@pytest.mark.parametrize('backend', ['gpu', 'tpu', 'METAL'])
def test_unmeasured_backends_use_the_direct_call(backend):
    for nd in (1, 2, 3):
        assert lowering.choose(_geometry(nd), 4, 4, 4, backend) == 'lax'
        assert lowering.choose(_geometry(nd), 1, 16, 16, backend) == 'lax'


def test_cpu_rules(monkeypatch):
    assert lowering.choose(_geometry(2), 32, 32, 32, 'cpu') == 'taps'       # depthwise
    assert lowering.choose(_geometry(3), 1, 8, 16, 'cpu') == 'fold'         # 3-d
    assert lowering.choose(_geometry(2), 16, 64, 64, 'cpu') == 'im2col'     # grouped
    assert lowering.choose(_geometry(3), 2, 8, 16, 'cpu') == 'im2col'
    assert lowering.choose(_geometry(2), 1, 3, 32, 'cpu') == 'lax_vjp'
    assert lowering.choose(_geometry(2), 1, 1, 32, 'cpu') == 'lax_vjp'     # one input channel, not depthwise
    assert lowering.choose(_geometry(1), 1, 32, 64, 'cpu') == 'lax_vjp'
    assert lowering.choose(_geometry(2), 1, 64, 64, 'cpu') == 'lax_vjp'
    # long kernels: FFT where measured to win (config i, j), else a program that does not grow with the taps
    long_1d = shapes.conv_geometry((4096,), (257,), (1,), 'SAME', (1,), (1,))
    assert lowering.choose(long_1d, 1, 16, 16, 'cpu') == 'fft'
    large_dw = shapes.conv_geometry((64, 64), (31, 31), (1, 1), 'SAME', (1, 1), (1, 1))
    assert lowering.choose(large_dw, 32, 32, 32, 'cpu') == 'fft'
    strided_dw = shapes.conv_geometry((64, 64), (15, 15), (2, 2), 'SAME', (1, 1), (1, 1))
    assert lowering.choose(strided_dw, 32, 32, 32, 'cpu') == 'lax'
    assert lowering.choose(large_dw, 32, 32, 32, 'gpu') == 'lax'
    # thin strided 2-d convolutions (config b) fold to 1-d while YNNPACK runs on one thread
    strided = shapes.conv_geometry((64, 64), (3, 3), (2, 2), 'SAME', (1, 1), (1, 1))
    monkeypatch.setattr(lowering.cpu, 'YNN_SINGLE_THREADED', True)
    assert lowering.choose(strided, 1, 3, 32, 'cpu') == 'fold'
    assert lowering.choose(strided, 1, 8, 32, 'cpu') == 'lax_vjp'
    monkeypatch.setattr(lowering.cpu, 'YNN_SINGLE_THREADED', False)
    assert lowering.choose(strided, 1, 3, 32, 'cpu') == 'lax_vjp'


def test_global_setting_and_context_manager():
    geom = _geometry()
    assert lowering.get_lowering() == 'auto'
    with lowering.use_lowering('im2col'):
        assert lowering.get_lowering() == 'im2col'
        assert lowering.resolve(None, geom, 1, 8, 8) == 'im2col'
        assert lowering.resolve('taps', geom, 1, 8, 8) == 'taps'       # an explicit choice wins
        with brainconv.use_lowering('lax'):
            assert lowering.resolve(None, geom, 1, 8, 8) == 'lax'
        assert lowering.get_lowering() == 'im2col'
    assert lowering.get_lowering() == 'auto'
    brainconv.set_lowering('fold')
    try:
        assert lowering.resolve('auto', geom, 1, 8, 8, backend='gpu') == 'lax'
        assert lowering.resolve(None, geom, 1, 8, 8, backend='gpu') == 'fold'
    finally:
        brainconv.set_lowering(None)
    assert lowering.get_lowering() == 'auto'


def test_context_manager_restores_after_an_error():
    with pytest.raises(RuntimeError):
        with lowering.use_lowering('taps'):
            raise RuntimeError('boom')
    assert lowering.get_lowering() == 'auto'


@pytest.mark.parametrize('bad, exc', [('fast', ValueError), ('LAX', ValueError), (3, TypeError)])
def test_unknown_lowering_names_are_rejected(bad, exc):
    with pytest.raises(exc, match=r"lowering must be .*got " + repr(bad).replace("'", "'?")):
        brainconv.set_lowering(bad)
    with pytest.raises(exc, match='lowering'):
        brainconv.Conv2d((8, 8, 2), 4, 3, lowering=bad)
    with pytest.raises(exc, match='lowering'):
        functional.conv(jnp.ones((1, 8, 8, 2)), jnp.ones((3, 3, 2, 4)), lowering=bad)
    assert lowering.get_lowering() == 'auto'


def test_layer_reports_and_uses_its_lowering():
    auto = brainconv.Conv2d((8, 8, 4), 4, 3, groups=4)
    forced = brainconv.Conv2d((8, 8, 4), 4, 3, groups=4, lowering='im2col')
    expected = 'taps' if jax.default_backend() == 'cpu' else 'lax'
    assert auto.lowering == expected
    assert f'lowering={expected}' in repr(auto)
    assert forced.lowering == 'im2col' and 'lowering=im2col' in repr(forced)
    with brainconv.use_lowering('fold'):
        assert auto.lowering == 'fold' and forced.lowering == 'im2col'
    transposed = brainconv.ConvTranspose2d((4, 4, 8), 4, 3, stride=2, lowering='taps')
    assert transposed.lowering == 'taps'
    assert brainconv.Conv1d((8, 2), 3, 3, lowering='fold').transpose().lowering == 'fold'


def test_layer_lowering_changes_the_program_not_the_result():
    layer = brainconv.Conv2d((9, 9, 6), 4, 3, stride=2, groups=2, padding_mode='REFLECT')
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 9, 9, 6)), jnp.float32)
    results, programs = {}, {}
    for name in NAMES:
        with brainconv.use_lowering(name):
            results[name] = np.asarray(layer(x))
            programs[name] = jax.jit(lambda a: layer(a)).lower(x).as_text()  # a new function: a new trace
    for name in NAMES:
        np.testing.assert_allclose(results[name], results['lax'], rtol=1e-5, atol=1e-5)
    assert 'convolution' not in programs['taps']
    assert 'convolution' in programs['lax']
    jaxprs = {name: str(jax.make_jaxpr(
        lambda a, n=name: functional.conv(a, layer.weight.value['weight'], groups=2, lowering=n))(x))
        for name in ('lax', 'lax_vjp')}
    assert 'brainconv_conv' in jaxprs['lax_vjp'] and 'brainconv_conv' not in jaxprs['lax']


def test_positional_arguments_keep_brainstate_order():
    """``lowering`` comes after every brainstate argument (keyword or positional); only the dtypes follow it."""
    import inspect
    for cls in (brainconv.Conv2d, brainconv.ConvTranspose2d, brainconv.ScaledWSConv2d):
        params = list(inspect.signature(cls).parameters)
        assert params[-3:] == ['lowering', 'dtype', 'param_dtype'], cls


def test_weight_gradient_chunks_do_not_change_the_result(monkeypatch):
    """A chunk budget of one sample makes the weight gradient a scan over the batch."""
    x = jnp.asarray(np.random.default_rng(1).standard_normal((6, 7, 7, 4)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(2).standard_normal((3, 3, 2, 6)), jnp.float32)

    def grads():
        def f(a, b):
            return jnp.sum(functional.conv(a, b, groups=2, lowering='lax_vjp') ** 2)
        return jax.grad(f, argnums=(0, 1))(x, w)
    whole = grads()
    monkeypatch.setattr(lowering.common, 'CHUNK_BYTES', 1)
    chunked = grads()
    assert 'while' in jax.jit(jax.grad(
        lambda b: jnp.sum(functional.conv(x, b, groups=2, lowering='lax_vjp')) ** 2)).lower(w).as_text()
    for a, b in zip(chunked, whole):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', NAMES)
def test_an_empty_batch_has_zero_kernel_gradients(name):
    """A batch of zero examples: the forward is empty and every kernel gradient is zero, in every
    formulation (the loop over taps once divided by the batch size)."""
    layers = [brainconv.Conv2d((6, 6, 3), 4, 3, lowering=name), brainconv.Conv3d((4, 4, 4, 2), 3, 3, lowering=name),
              brainconv.ConvTranspose2d((4, 4, 3), 2, 3, stride=2, lowering=name),
              brainconv.Conv1d((8, 4), 4, 3, groups=2, lowering=name)]
    for layer in layers:
        x = jnp.zeros((0,) + layer.in_size)
        y, grads = jax.value_and_grad(lambda p, layer=layer, x=x: jnp.sum(layer.apply(p, x) ** 2))(layer.weight.value)
        assert float(y) == 0.0
        assert grads['weight'].shape == layer.weight.value['weight'].shape
        assert not np.any(np.asarray(grads['weight'])), type(layer).__name__
