"""The formulations a convolution can run as, each a pair of plain functions.

A new formulation is one module of its own (its forward and kernel gradient) and one entry
here.  ``'lax'`` has no entry: it is the plain ``lax.conv_general_dilated`` call
(:func:`brainconv.lowering.dense.direct`), differentiated by XLA's own rules.  ``'event'``'s
entry is added by :mod:`brainconv.lowering.primitives` from
:mod:`brainconv.lowering.event.switch`, whose dense fallback is one of these.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from . import fft
from .dense import _forward_fold, _forward_im2col, _forward_lax, _forward_taps
from .kernel_grad import _weight_grad_any
from .phased import _forward_phased


@dataclasses.dataclass(frozen=True)
class Formulation:
    """How one formulation computes the two maps every convolution transform is built from.

    ``forward(x, w, g, groups, precision)`` and ``weight_grad(x, gy, g,
    groups, precision)``, for any non-transposed core geometry (lhs dilation
    and negative pads included), on one batch axis, channels last.  The
    input gradient is ``forward`` of the adjoint geometry, so nothing else is
    needed.  Both see float32 (or float64) arrays: 16-bit inputs are cast up
    before and the result cast back after (accumulation in float32).
    """

    forward: Callable
    weight_grad: Callable


#: The dense formulations: name -> its two functions.
DENSE = {
    'lax_vjp': Formulation(_forward_phased(_forward_lax, keep_2d_lhs_dilation=True), _weight_grad_any),
    'im2col': Formulation(_forward_phased(_forward_im2col), _weight_grad_any),
    'taps': Formulation(_forward_phased(_forward_taps), _weight_grad_any),
    'fold': Formulation(_forward_phased(_forward_fold, keep_2d_lhs_dilation=True, first_axis_only=True),
                        _weight_grad_any),
    'fft': Formulation(fft.forward, fft.weight_grad),
}
