"""The plan: which ``(tap, output)`` pairs every input position reaches, as the one small int32
operand an event kernel reads the geometry from.

Computed once per geometry with NumPy: for the first ``nd - 1`` spatial axes flattened together
("lead") and for the last axis, per input position the list of ``(tap, output)`` pairs it
reaches (pre-multiplied into flat offsets).  A position's pairs are the product of its lead and
last-axis lists, so the table stays small (``P_lead * K_lead + n_last * k_last`` entries) for
any rank, and one compiled kernel per dtype serves every geometry.
"""

from __future__ import annotations

import functools
import math
from typing import Tuple

import numpy as np

from ...shapes import ConvGeometry

__all__ = ['plan']

#: Entries of the plan's header (int32): lead positions, last-axis length, the start of the lead
#: offsets, lead pairs, last offsets and last pairs in the plan, and (set per call) the number of
#: partial sums the kernel gradient splits its work into.
_HEADER = 7
_PARTS = 6


def _axis_pairs(n: int, k: int, s: int, d: int, ld: int, lo: int, out: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(valid, o)``, both ``(n, k)``: input ``p`` and tap ``t`` reach output ``o`` where
    ``p * ld + lo == o * s + t * d`` with ``0 <= o < out``."""
    q = np.arange(n)[:, None] * ld + lo - np.arange(k)[None, :] * d
    valid = (q >= 0) & (q % s == 0) & (q < out * s)
    return valid, np.where(valid, q // s, 0)


def _pair_lists(g: ConvGeometry, axes: range) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the positions of ``axes`` (flattened, row-major): CSR offsets, and the flat tap and
    output indices (within those axes) of every pair, in position order."""
    valid = np.ones((1, 1), bool)
    taps = np.zeros((1, 1), np.int64)
    outs = np.zeros((1, 1), np.int64)
    for a in axes:
        va, oa = _axis_pairs(g.in_spatial[a], g.kernel_size[a], g.stride[a], g.rhs_dilation[a],
                             g.lhs_dilation[a], g.pads[a][0], g.out_spatial[a])
        n, k = va.shape
        full = (valid.shape[0], n, valid.shape[1], k)
        shape = (full[0] * n, full[2] * k)
        valid = np.broadcast_to(valid[:, None, :, None] & va[None, :, None, :], full).reshape(shape)
        outs = np.broadcast_to(outs[:, None, :, None] * g.out_spatial[a] + oa[None, :, None, :], full).reshape(shape)
        taps = np.broadcast_to(taps[:, None, :, None] * k + np.arange(k)[None, None, None, :], full).reshape(shape)
    offsets = np.concatenate([[0], np.cumsum(valid.sum(axis=1))])
    return offsets, taps[valid], outs[valid]


@functools.lru_cache(maxsize=256)
def _plan(g: ConvGeometry) -> np.ndarray:
    nd = g.num_spatial_dims
    lead_offsets, lead_taps, lead_outs = _pair_lists(g, range(nd - 1))
    last_offsets, last_taps, last_outs = _pair_lists(g, range(nd - 1, nd))
    k_last, out_last = g.kernel_size[-1], g.out_spatial[-1]
    lead_pairs = np.stack([lead_taps * k_last, lead_outs * out_last], axis=1).ravel()
    last_pairs = np.stack([last_taps, last_outs], axis=1).ravel()
    parts = [lead_offsets, lead_pairs, last_offsets, last_pairs]
    starts = np.cumsum([_HEADER] + [len(p) for p in parts])
    header = [len(lead_offsets) - 1, g.in_spatial[-1]] + list(starts[:4]) + [1]
    table = np.concatenate([np.asarray(header, np.int64)] + parts)
    if math.prod(g.out_spatial) >= 2 ** 31 or table.size >= 2 ** 31:
        raise ValueError(f"event kernels index with int32: {g} is too large")
    table = table.astype(np.int32)
    table.flags.writeable = False
    return table


def plan(g: ConvGeometry) -> np.ndarray:
    """The int32 table a kernel reads the geometry from (see the module docstring); cached."""
    return _plan(g)

