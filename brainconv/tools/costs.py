"""What one example costs in a layer: multiply-accumulates, and the synapses spikes drive."""

from __future__ import annotations

import math
from typing import Any, Sequence

from .._args import ConvSpec
from ..separable import SeparableConv
from ..shapes import connections


def conv_macs(spec: ConvSpec) -> int:
    """Multiply-accumulates per example of a (transposed) convolution.

    A convolution makes ``prod(out_spatial) * out_channels`` outputs, each a
    sum over ``prod(kernel_size) * in_channels / groups`` products (taps that
    fall on padding or on inserted zeros included).  A transposed
    convolution multiplies each of its ``prod(in_spatial) * in_channels``
    inputs by the ``prod(kernel_size) * out_channels / groups`` kernel
    entries it meets (products that land in cropped pads included).
    """
    g = spec.geometry
    taps = math.prod(g.kernel_size)
    if g.transposed:
        return math.prod(g.in_spatial) * spec.in_channels * taps * (spec.out_channels // spec.groups)
    return math.prod(g.out_spatial) * spec.out_channels * taps * (spec.in_channels // spec.groups)


def layer_macs(layer: Any) -> int:
    """Multiply-accumulates per example of a brainconv layer.

    A LocalConv makes as many products as the convolution with its geometry
    (each output position has its own kernel, of the same size); a
    SeparableConv adds its depthwise and pointwise steps.
    """
    if isinstance(layer, SeparableConv):
        return conv_macs(layer.spec) + conv_macs(layer.pointwise_spec)
    return conv_macs(layer.spec)


def conv_connections(spec: ConvSpec) -> int:
    """Synapses per example that the input elements of a (transposed) convolution drive.

    Every ``(input position, kernel tap, output position)`` triple in which a
    real input position feeds an output (:func:`brainconv.shapes.connections`;
    with a padding mode other than ZEROS the pads are copies of input
    positions and count), times ``in_channels * out_channels / groups``: the
    synaptic events one example makes when every input element is non-zero.
    Below :func:`conv_macs` by the products that touch padding or inserted zeros.
    """
    spatial = connections(spec.geometry, padded=spec.padding_mode != 'ZEROS')
    return spatial * spec.in_channels * (spec.out_channels // spec.groups)


def dense_macs(in_size: Sequence[int], out_size: Sequence[int]) -> int:
    """Multiply-accumulates per example of a dense layer mapping the last axis of
    ``in_size`` to the last axis of ``out_size`` (leading axes shared)."""
    return math.prod(in_size[:-1]) * in_size[-1] * out_size[-1]

