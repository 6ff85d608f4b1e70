"""Readers of other libraries' layers: which brainstate classes are pooling, dense, element-wise
or convolution layers, and the geometry each of them computes, read from its attributes."""

from __future__ import annotations

from typing import Any, Tuple

import brainstate

from .._args import ConvSpec
from ..shapes import ConvGeometry, Pads, conv_geometry, conv_transpose_geometry, kernel_span, lax_conv_transpose_pads

Size = Tuple[int, ...]

_nn = brainstate.nn


def _classes(*names: str) -> tuple:
    """The named brainstate.nn classes that this brainstate version has."""
    found = []
    for name in names:
        try:
            found.append(getattr(_nn, name))
        except (AttributeError, ImportError):  # some names forward to optional packages
            pass
    return tuple(found)


_POOLS = _classes('MaxPool1d', 'MaxPool2d', 'MaxPool3d', 'AvgPool1d', 'AvgPool2d', 'AvgPool3d',
                  'LPPool1d', 'LPPool2d', 'LPPool3d')
_DENSE = _classes('Linear', 'ScaledWSLinear', 'SignedWLinear')
# Layers that act on each position on its own (as far as receptive fields go):
# activations, dropout, normalisation, neuron dynamics.
_POINTWISE = _classes('ElementWiseBlock', 'BatchNorm0d', 'BatchNorm1d', 'BatchNorm2d', 'BatchNorm3d',
                      'LayerNorm', 'RMSNorm', 'GroupNorm', 'Dynamics')
# brainstate's own convolution layers, read through their attributes (see _brainstate_spec).
_BS_CONVS = _classes('Conv1d', 'Conv2d', 'Conv3d', 'ScaledWSConv1d', 'ScaledWSConv2d', 'ScaledWSConv3d')
_BS_TRANSPOSES = _classes('ConvTranspose1d', 'ConvTranspose2d', 'ConvTranspose3d')


def _pool_geometry(layer: Any, in_size: Size) -> Tuple[ConvGeometry, Tuple[int, ...]]:
    """A pooling layer as a window: its geometry and the in_size axes it pools.

    brainstate resolves ``channel_axis`` against the input with one batch axis.
    """
    x_dim = len(in_size) + 1
    axes = list(range(x_dim))
    if layer.channel_axis is not None:
        axes.pop(layer.channel_axis % x_dim)
    pooled = tuple(a - 1 for a in axes[-layer.pool_dim:])
    if any(a < 0 for a in pooled):
        raise ValueError(f"{type(layer).__name__} pools over the batch axis for in_size {in_size}")
    nd = len(pooled)
    padding = layer.padding if isinstance(layer.padding, str) else tuple(tuple(p) for p in layer.padding)
    geometry = conv_geometry(tuple(in_size[a] for a in pooled), tuple(layer.kernel_size), tuple(layer.stride),
                             padding, (1,) * nd, (1,) * nd)
    return geometry, pooled


def _brainstate_spec(layer: Any) -> ConvSpec | None:
    """A brainstate convolution layer as the brainconv ConvSpec that computes the same thing.

    A brainstate Conv's 'SAME', 'VALID' and pairs mean what they mean here.  A
    brainstate ConvTranspose runs a stride-1 convolution of its stride-dilated
    input with the flipped kernel and pads ``(q_lo, q_hi)`` (for 'SAME' and
    'VALID' those of ``jax.lax.conv_transpose``; given pairs as they are): that
    is brainconv's ConvTranspose with pads ``span - 1 - q`` and, where that
    would make the high pad negative, the rest as output_padding.  None when
    the layer's attributes do not give its own ``out_size`` (a brainstate
    version with other meanings): its row then shows no geometry.
    """
    try:
        nd = int(layer.num_spatial_dims)
        size = tuple(int(v) for v in layer.in_size)
        cf = bool(layer.channel_first)
        cin, spatial = (size[0], size[1:]) if cf else (size[-1], size[:-1])
        k, s, rd = (tuple(int(v) for v in getattr(layer, a)) for a in ('kernel_size', 'stride', 'rhs_dilation'))
        padding = layer.padding
        if not isinstance(padding, str):
            padding = tuple((int(lo), int(hi)) for lo, hi in padding)
        if isinstance(layer, _BS_TRANSPOSES):
            lax_pads = (tuple(lax_conv_transpose_pads(kernel_span(kk, d), ss, padding) for kk, ss, d in zip(k, s, rd))
                        if isinstance(padding, str) else padding)
            pads: Pads = ()
            output_padding: Tuple[int, ...] = ()
            for (q_lo, q_hi), kk, d in zip(lax_pads, k, rd):
                span = kernel_span(kk, d)
                pads += ((span - 1 - q_lo, max(span - 1 - q_hi, 0)),)
                output_padding += (max(q_hi - (span - 1), 0),)
            geometry = conv_transpose_geometry(spatial, k, s, pads, rd, output_padding)
            padding = pads
        else:
            geometry = conv_geometry(spatial, k, s, padding, tuple(int(v) for v in layer.lhs_dilation), rd)
        spec = ConvSpec(size, cin, int(layer.out_channels), int(layer.groups), padding, 'ZEROS', cf, geometry)
    except (AttributeError, TypeError, ValueError):
        return None
    if geometry.num_spatial_dims != nd or spec.out_size != tuple(layer.out_size):
        return None
    return spec

