"""The receptive field of a stack of convolution and pooling layers (read from their
geometry, :class:`brainconv.shapes.ReceptiveField`; nothing is run)."""

from __future__ import annotations

from typing import Any, Sequence

from ..shapes import ReceptiveField
from .walk import _Walk


def receptive_field(layers: Any, in_size: Sequence[int] | None = None) -> ReceptiveField:
    """Receptive field of the last layer's output with respect to the first layer's input.

    ``layers`` is a convolution layer (brainconv's or brainstate's), a pooling
    layer, a sequence of them (with element-wise layers in between if you
    like), or a Module holding them, as for :func:`summary`.  Sizes are in input positions: ``size`` is how many
    input positions one output position depends on, ``jump`` the input
    distance between neighbouring outputs, ``start`` the input coordinate of
    the centre of the first output's field.

    Raises ValueError if a layer in the chain mixes all positions (Flatten,
    Linear, ...), if consecutive sizes do not chain, or if there is no
    convolution or pooling layer.

    Examples
    --------
    >>> import brainconv, numpy as np
    >>> w = lambda shape: np.zeros(shape, np.float32)
    >>> rf = brainconv.receptive_field([
    ...     brainconv.Conv1d((32, 1), 2, 3, w_init=w),
    ...     brainconv.Conv1d((32, 2), 2, 3, stride=2, w_init=w),
    ...     brainconv.Conv1d((16, 2), 2, 3, rhs_dilation=2, w_init=w)])
    >>> [int(v) for v in rf.size + rf.jump + rf.start]
    [13, 2, 1]
    """
    return _Walk(layers, in_size).network_receptive_field()
