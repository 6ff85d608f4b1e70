"""Hypothesis strategies for random convolution configurations, and helpers shared by tests."""

import os
import zlib

import _reference as ref
import numpy as np
from hypothesis import strategies as st

MAX_SPATIAL = {1: 10, 2: 6, 3: 4}
MODE_SPELLINGS = {'ZEROS': ['ZEROS', 'zeros'], 'REFLECT': ['REFLECT', 'reflect'],
                  'REPLICATE': ['REPLICATE', 'replicate'], 'CIRCULAR': ['CIRCULAR', 'circular']}


def _share_from_env():
    """``BRAINCONV_TEST_SHARE=i/n``: this run takes share ``i`` of ``n`` of the costliest generated
    and parametrised cases (default ``0/1``: all of them).  CI runs the suite under two Python lines
    (two jaxlib lines) side by side and gives each half of them, so that between the two every case
    runs; every test, formulation and transform still runs on both lines."""
    spec = os.environ.get('BRAINCONV_TEST_SHARE', '0/1')
    try:
        i, n = (int(v) for v in spec.split('/'))
    except ValueError:
        i, n = -1, 0
    if not 0 <= i < n:
        raise ValueError(f"BRAINCONV_TEST_SHARE must be 'i/n' with 0 <= i < n, got {spec!r}")
    return i, n


SHARE = _share_from_env()


def in_share(case) -> bool:
    """Whether this run takes ``case`` (a generated configuration: a dict of plain values), by a hash
    of its contents that both Python lines compute alike (see :func:`_share_from_env`)."""
    i, n = SHARE
    return n == 1 or zlib.crc32(repr(sorted(case.items())).encode()) % n == i


def in_share_by_index(index: int) -> bool:
    """Whether this run takes the ``index``-th of a list of parametrised cases (alternating)."""
    i, n = SHARE
    return index % n == i


def init_array(shape, seed=0, scale=None):
    """A cheap deterministic initializer (no JAX compilation)."""
    fan_in = int(np.prod(shape[:-1])) or 1
    scale = scale if scale is not None else 1.0 / np.sqrt(fan_in)
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def cheap_init(seed=0):
    return lambda shape: init_array(shape, seed)


@st.composite
def paddings(draw, nd, strings=('SAME', 'SAME_LOWER', 'VALID', 'CAUSAL'), max_pad=3):
    """(user padding, the upper-case string or one entry per axis: an upper-case string or a pair)."""
    kind = draw(st.sampled_from(['string', 'int', 'ints', 'pairs', 'one_pair', 'mixed']))
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
    if kind == 'mixed':  # one entry per axis: a string (any case), an int or a pair
        user, entries = [], []
        for _ in range(nd):
            entry = draw(st.sampled_from(['string', 'int', 'pair']))
            if entry == 'string':
                s = draw(st.sampled_from(strings))
                user.append(draw(st.sampled_from([s, s.lower()])))
                entries.append(s)
            elif entry == 'int':
                v = draw(p)
                user.append(v)
                entries.append((v, v))
            else:
                pair = draw(st.tuples(p, p))
                user.append(pair)
                entries.append(pair)
        return tuple(user), tuple(entries)
    pair = draw(st.tuples(p, p))
    return (pair,), (pair,) * nd


def axis_entries(padding, nd):
    """The padding entry of every axis: a string or a pair."""
    return (padding,) * nd if isinstance(padding, str) else tuple(padding)


def is_same_like(entry):
    """SAME, SAME_LOWER and CAUSAL: the strings whose transposed length is set by the stride alone."""
    return isinstance(entry, str) and entry != 'VALID'


def expected_pads(padding, spatial, kernel, stride, rhs, lhs):
    """Pads per axis from the test's own formulas."""
    out = []
    for entry, n, k, s, d, ld in zip(axis_entries(padding, len(spatial)), spatial, kernel, stride, rhs, lhs):
        n = (n - 1) * ld + 1
        if not isinstance(entry, str):
            out.append(tuple(entry))
        elif entry == 'VALID':
            out.append((0, 0))
        elif entry == 'CAUSAL':
            out.append(((k - 1) * d, 0))
        else:
            out.append(ref.same_pads(n, k, s, d, lower=entry == 'SAME_LOWER'))
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
    user_padding, padding = draw(paddings(nd))
    entries = axis_entries(padding, nd)
    # output_padding None or explicit: below the stride on SAME/SAME_LOWER/CAUSAL axes, below
    # max(stride, rhs_dilation) on the others (PyTorch's rule).
    op = None
    if draw(st.booleans()):
        op = tuple(draw(st.integers(0, (s if is_same_like(e) else max(s, d)) - 1))
                   for e, s, d in zip(entries, stride, rhs))
    mode = draw(st.sampled_from(modes))
    # Output lengths from the definitions: the smallest length the padding allows plus output_padding
    # ((m - 1) * s + 1 for the strings, PyTorch's formula for pads); None: m * s for the strings, 0 added
    # for pads.
    smallest = tuple((mm - 1) * s + 1 if is_same_like(e) else
                     (mm - 1) * s + (k - 1) * d + 1 - sum((0, 0) if e == 'VALID' else e)
                     for mm, s, k, d, e in zip(m, stride, kernel, rhs, entries))
    if op is None:
        out = tuple(mm * s if is_same_like(e) else n for mm, s, e, n in zip(m, stride, entries, smallest))
    else:
        out = tuple(n + o for n, o in zip(smallest, op))
    effective_op = tuple(n - small for n, small in zip(out, smallest))
    pads = expected_pads(padding, out, kernel, stride, rhs, (1,) * nd) if min(out) >= 1 else None
    return dict(nd=nd, m=m, cin=cin, cout=cout, groups=groups, kernel=kernel, stride=stride, rhs=rhs,
                output_padding=op, effective_output_padding=effective_op, user_padding=user_padding,
                padding=padding, mode=mode,
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
