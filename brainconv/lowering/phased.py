"""Sub-pixel phases: an lhs-dilated core convolution (every transposed convolution with stride
> 1, the input gradient of every strided one) as plain convolutions of the undilated input, one
per phase, each with the subset of the taps that meets real inputs
(:func:`brainconv.shapes.axis_phases`), so that no multiply touches an inserted zero."""

from __future__ import annotations

import itertools
from typing import Any, Callable, List, Sequence, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from ..shapes import ConvGeometry, Phase, axis_phases
from .common import _lhs_dilated, _pad
from .dense import _forward_lax


def _phase_plan(g: ConvGeometry, split: Sequence[int] | None = None) -> Tuple[List[int], list]:
    """The sub-pixel phases of an lhs-dilated core convolution, along the axes ``split``
    (default: every axis; the others keep their lhs dilation).

    Returns the period of every axis and, per combination of per-axis phases,
    ``None`` (every tap of it reads inserted zeros) or ``(kernel index, output
    index, sub-geometry)``: the taps it uses, the outputs it gives, and the
    convolution of the undilated (along ``split``) input that gives them.
    """
    nd = g.num_spatial_dims
    split = range(nd) if split is None else split
    per_axis = []
    for a, (n, k, s, d, ld, (lo, hi), out) in enumerate(zip(
            g.in_spatial, g.kernel_size, g.stride, g.rhs_dilation, g.lhs_dilation, g.pads, g.out_spatial)):
        per_axis.append(axis_phases(n, k, s, d, ld, lo, out) if a in split
                        else (1, [Phase(0, out, 0, k, 1, s, d, (lo, hi))]))
    periods = [p for p, _ in per_axis]
    lhs = tuple(1 if a in split else ld for a, ld in enumerate(g.lhs_dilation))
    plan = []
    for combo in itertools.product(*(phases for _, phases in per_axis)):
        if any(ph.empty for ph in combo):
            plan.append(None)
            continue
        taps = tuple(slice(ph.first_tap, ph.first_tap + (ph.num_taps - 1) * ph.tap_step + 1, ph.tap_step)
                     for ph in combo)
        outs = (slice(None),) + tuple(slice(ph.residue, None, p) for ph, p in zip(combo, periods))
        sub = ConvGeometry(g.in_spatial, tuple(ph.count for ph in combo), tuple(ph.num_taps for ph in combo),
                           tuple(ph.stride for ph in combo), tuple(ph.pads for ph in combo), lhs,
                           tuple(ph.rhs_dilation for ph in combo))
        plan.append((taps, outs, sub))
    return periods, plan


def _phased(forward: Callable, x: jax.Array, w: jax.Array, g: ConvGeometry, groups: int,
            precision: Any, split: Sequence[int] | None = None) -> jax.Array:
    """An lhs-dilated core convolution as its sub-pixel phases along ``split`` (default: every
    axis), each by ``forward``, interleaved."""
    nd = g.num_spatial_dims
    periods, plan = _phase_plan(g, split)
    q = [-(-out // p) for out, p in zip(g.out_spatial, periods)]
    pieces: List[jax.Array] = []
    for entry in plan:
        if entry is None:
            pieces.append(jnp.zeros((x.shape[0],) + tuple(q) + (w.shape[-1],), x.dtype))
            continue
        taps, _, sub = entry
        piece = forward(x, w[taps], sub, groups, precision)
        pieces.append(_pad(piece, [(0, qa - c) for qa, c in zip(q, sub.out_spatial)]))
    y = jnp.stack(pieces).reshape(tuple(periods) + pieces[0].shape)
    order = [nd] + [i for a in range(nd) for i in (nd + 1 + a, a)] + [2 * nd + 1]
    y = jnp.transpose(y, order).reshape((x.shape[0],) + tuple(qa * p for qa, p in zip(q, periods)) + (w.shape[-1],))
    return lax.slice(y, (0,) * y.ndim, (y.shape[0],) + tuple(g.out_spatial) + (y.shape[-1],))


def _forward_phased(forward: Callable, keep_2d_lhs_dilation: bool = False, first_axis_only: bool = False) -> Callable:
    """``forward`` for any core geometry: lhs-dilated ones split into phases first (along the
    first axis only for ``'fold'``, whose (N-1)-d rest XLA runs lhs-dilated: 2 phases instead of 8
    for a stride-2 3-d transposed convolution: a 3-d U-Net's step compiles in 4.9 -> 3.9 s)."""
    def run(x, w, g, groups, precision):
        if not _lhs_dilated(g):
            return forward(x, w, g, groups, precision)
        if keep_2d_lhs_dilation and g.num_spatial_dims == 2:
            return _forward_lax(x, w, g, groups, precision)
        if first_axis_only and g.num_spatial_dims > 1:
            if g.lhs_dilation[0] == 1:
                return forward(x, w, g, groups, precision)
            return _phased(forward, x, w, g, groups, precision, split=(0,))
        return _phased(forward, x, w, g, groups, precision)
    return run
