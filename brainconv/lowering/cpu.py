"""What XLA:CPU does that the formulations work around: its YNNPACK convolutions, which
jaxlib < 0.12 runs on one thread, and the escape from them (a few extra output rows).

The one switch between the two jaxlib lines is :data:`YNN_SINGLE_THREADED`; every rule that
depends on the line (here, :mod:`brainconv.lowering.auto`, :mod:`brainconv.lowering.kernel_grad`)
reads it from this module when it runs, so a test can set it.
"""

from __future__ import annotations

import math
import os
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp

from ..shapes import ConvGeometry, conv_out_length, kernel_span
from .common import _lhs_dilated
from .context import _LOWERING_FOR_CPU

#: jaxlib releases before 0.12 run XLA:CPU's YNNPACK convolutions on one thread (config a's
#: forward: 15.2 ms of wall and 15.2 ms of CPU time on 2 cores, jaxlib 0.10.2; 8.9 ms wall and
#: 17.5 ms CPU in jaxlib 0.12), while the Eigen convolution XLA falls back to runs on every
#: core (8.6 ms wall, 16.9 ms CPU).  See :func:`_ynn_escape`.
YNN_SINGLE_THREADED = (tuple(int(p) for p in jax.lib.__version__.split('.')[:2]) < (0, 12)
                       and (os.cpu_count() or 1) > 1)


#: The largest fraction of extra output rows :func:`_ynn_escape` computes to leave YNNPACK's
#: single thread (on 2 cores the Eigen path runs 1.76x faster; 3 extra rows of 32: 9%).
YNN_ESCAPE_MAX_EXTRA = 0.25


#: The fewest input and output channels for which :func:`_ynn_escape` leaves YNNPACK: Eigen's
#: convolution is slower on thin ones (32x32, k3, batch 32, Eigen / YNNPACK: 4 -> 64 channels
#: 1.88, 8 -> 64 0.98, 16 -> 64 0.79, 64 -> 8 1.38, 64 -> 16 0.87, 64 -> 64 0.57; 1x1 kernels 1.13).
YNN_ESCAPE_MIN_CHANNELS = 16


def _ynn_escape(x: jax.Array, w: jax.Array, pads: Sequence[Tuple[int, int]], g: ConvGeometry):
    """``(axis, rows)``: the extra output rows along ``axis`` that take one convolution off
    XLA:CPU's single-threaded YNNPACK path, or None.

    XLA:CPU (``xla/backends/cpu/ynn_support.cc``) hands a 2-d float32/float64
    convolution without lhs dilation and with more than 16 channels on either
    side to YNNPACK unless an output axis is longer than its input axis; in
    jaxlib < 0.12 that kernel runs on one thread (:data:`YNN_SINGLE_THREADED`).
    Padding one axis low by ``rows * stride`` makes its output ``rows`` longer,
    longer than the input, so XLA runs Eigen's multi-threaded convolution; the
    caller crops those rows.  Only where Eigen is the faster kernel (at least
    :data:`YNN_ESCAPE_MIN_CHANNELS` channels in and out, more than one tap),
    only if the extra rows are at most :data:`YNN_ESCAPE_MAX_EXTRA` of the
    output (the axis with the fewest, relatively, is taken), and only while
    lowering for CPU (the primitives register a CPU lowering of their own).
    """
    nd = g.num_spatial_dims
    if (not YNN_SINGLE_THREADED or not _LOWERING_FOR_CPU.get() or nd != 2 or _lhs_dilated(g)
            or x.dtype not in (jnp.float32, jnp.float64) or math.prod(g.kernel_size) == 1
            or min(x.shape[-1], w.shape[-1]) < YNN_ESCAPE_MIN_CHANNELS):
        return None
    best = None
    for axis in range(nd):
        n, k, d = x.shape[1 + axis], g.kernel_size[axis], g.rhs_dilation[axis]
        out = conv_out_length(n, k, g.stride[axis], *pads[axis], d=d)
        if out > n or kernel_span(k, d) > n:
            return None                                             # not a YNNPACK convolution
        rows = n + 1 - out
        if rows <= YNN_ESCAPE_MAX_EXTRA * out and (best is None or rows * best[2] < best[1] * out):
            best = (axis, rows, out)
    return None if best is None else best[:2]
