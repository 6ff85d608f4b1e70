"""Hypothesis strategies for random convolution configurations, and helpers shared by tests."""

import _reference as ref
import numpy as np
from hypothesis import strategies as st

MAX_SPATIAL = {1: 10, 2: 6, 3: 4}
MODE_SPELLINGS = {'ZEROS': ['ZEROS', 'zeros'], 'REFLECT': ['REFLECT', 'reflect'],
                  'REPLICATE': ['REPLICATE', 'replicate'], 'CIRCULAR': ['CIRCULAR', 'circular']}


def init_array(shape, seed=0, scale=None):
    """A cheap deterministic initializer (no JAX compilation)."""
    fan_in = int(np.prod(shape[:-1])) or 1
    scale = scale if scale is not None else 1.0 / np.sqrt(fan_in)
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def cheap_init(seed=0):
    return lambda shape: init_array(shape, seed)


@st.composite
def paddings(draw, nd, strings=('SAME', 'SAME_LOWER', 'VALID', 'CAUSAL'), max_pad=3):
    """(user padding, per-axis explicit pads or the upper-case string)."""
    kind = draw(st.sampled_from(['string', 'int', 'ints', 'pairs', 'one_pair']))
    if kind == 'string':
        s = draw(st.sampled_from(strings))
        return draw(st.sampled_from([s, s.lower()])), s
    p = st.integers(0, max_pad)
    if kind == 'int':
        v = draw(p)
        return v, ((v, v),) * nd
    if kind == 'ints':
        vs = draw(st.lists(p, min_size=nd, max_size=nd))
        return tuple(vs), tuple((v, v) for v in vs)
    if kind == 'pairs':
        pairs = draw(st.lists(st.tuples(p, p), min_size=nd, max_size=nd))
        return tuple(pairs), tuple(pairs)
    pair = draw(st.tuples(p, p))
    return (pair,), (pair,) * nd


def expected_pads(padding, spatial, kernel, stride, rhs, lhs):
    """Pads per axis from the test's own formulas."""
    if not isinstance(padding, str):
        return padding
    out = []
    for n, k, s, d, ld in zip(spatial, kernel, stride, rhs, lhs):
        n = (n - 1) * ld + 1
        if padding == 'VALID':
            out.append((0, 0))
        elif padding == 'CAUSAL':
            out.append(((k - 1) * d, 0))
        else:
            out.append(ref.same_pads(n, k, s, d, lower=padding == 'SAME_LOWER'))
    return tuple(out)


@st.composite
def conv_configs(draw, modes=('ZEROS', 'REFLECT', 'REPLICATE', 'CIRCULAR'), max_nd=3):
    nd = draw(st.integers(1, max_nd))
    spatial = tuple(draw(st.lists(st.integers(1, MAX_SPATIAL[nd]), min_size=nd, max_size=nd)))
    depthwise = draw(st.booleans())
    if depthwise:
        cin = draw(st.integers(1, 4))
        groups, cout = cin, cin * draw(st.integers(1, 2))
    else:
        groups = draw(st.integers(1, 3))
        cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 3))
    ints = lambda lo, hi: tuple(draw(st.lists(st.integers(lo, hi), min_size=nd, max_size=nd)))
    kernel, stride, rhs = ints(1, 4), ints(1, 3), ints(1, 3)
    mode = draw(st.sampled_from(modes))
    lhs = ints(1, 3) if mode == 'ZEROS' else (1,) * nd
    user_padding, padding = draw(paddings(nd))
    return dict(
        nd=nd, spatial=spatial, cin=cin, cout=cout, groups=groups, kernel=kernel, stride=stride, rhs=rhs,
        lhs=lhs, mode=mode, mode_spelling=draw(st.sampled_from(MODE_SPELLINGS[mode])),
        user_padding=user_padding, padding=padding,
        channel_first=draw(st.booleans()),
        batch=draw(st.sampled_from([(), (2,), (2, 1)])),
        bias=draw(st.booleans()),
        pads=expected_pads(padding, spatial, kernel, stride, rhs, lhs))


def conv_is_valid(c):
    """Would the test's own arithmetic give a non-empty output (and legal REFLECT pads)?"""
    for n, k, d, ld, (lo, hi) in zip(c['spatial'], c['kernel'], c['rhs'], c['lhs'], c['pads']):
        if (n - 1) * ld + 1 + lo + hi < (k - 1) * d + 1:
            return False
        if c['mode'] == 'REFLECT' and max(lo, hi) >= n:
            return False
    return True


@st.composite
def transpose_configs(draw, modes=('ZEROS', 'CIRCULAR'), max_nd=3):
    nd = draw(st.integers(1, max_nd))
    m = tuple(draw(st.lists(st.integers(1, MAX_SPATIAL[nd]), min_size=nd, max_size=nd)))
    groups = draw(st.integers(1, 3))
    cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    ints = lambda lo, hi: tuple(draw(st.lists(st.integers(lo, hi), min_size=nd, max_size=nd)))
    kernel, stride, rhs = ints(1, 4), ints(1, 3), ints(1, 2)
    op = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, rhs))
    user_padding, padding = draw(paddings(nd))
    mode = draw(st.sampled_from(modes))
    # Output length from the definition: torch's formula for explicit pads, m*s - op otherwise.
    if isinstance(padding, str) and padding != 'VALID':
        out = tuple(mm * s - o for mm, s, o in zip(m, stride, op))
    else:
        pairs = ((0, 0),) * nd if padding == 'VALID' else padding
        out = tuple((mm - 1) * s + (k - 1) * d + 1 - lo - hi + o
                    for mm, s, k, d, (lo, hi), o in zip(m, stride, kernel, rhs, pairs, op))
    pads = expected_pads(padding, out, kernel, stride, rhs, (1,) * nd) if min(out) >= 1 else None
    return dict(nd=nd, m=m, cin=cin, cout=cout, groups=groups, kernel=kernel, stride=stride, rhs=rhs,
                output_padding=op, user_padding=user_padding, padding=padding, mode=mode,
                channel_first=draw(st.booleans()), batch=draw(st.sampled_from([(), (2,), (1, 2)])),
                out=out, pads=pads)


def to_reference_layout(x, nb, channel_first):
    """(*batch, *in_size) -> (B, *spatial, C) channels-last for the NumPy oracle."""
    x = np.asarray(x, np.float64)
    x = x.reshape((-1,) + x.shape[nb:])
    return np.moveaxis(x, 1, -1) if channel_first else x


def from_reference_layout(y, batch, channel_first):
    y = np.moveaxis(y, -1, 1) if channel_first else y
    return y.reshape(tuple(batch) + y.shape[1:])
