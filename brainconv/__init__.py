"""brainconv: stateful, brainstate-style convolution layers on JAX.

Shapes are known at construction (:mod:`brainconv.shapes`), the stateless ops
live in :mod:`brainconv.functional`, and the layers in :mod:`brainconv.layers`.
"""

from . import functional, lowering, shapes
from .layers import (
                     Conv,
                     Conv1d,
                     Conv2d,
                     Conv3d,
                     ConvTranspose,
                     ConvTranspose1d,
                     ConvTranspose2d,
                     ConvTranspose3d,
                     ScaledWSConv,
                     ScaledWSConv1d,
                     ScaledWSConv2d,
                     ScaledWSConv3d,
)
from .lowering import LOWERINGS, get_lowering, set_lowering, use_lowering
from .streaming import StreamingConv
from .recurrent import (
                     ConvGRUCell,
                     ConvGRUCell1d,
                     ConvGRUCell2d,
                     ConvGRUCell3d,
                     ConvLSTMCell,
                     ConvLSTMCell1d,
                     ConvLSTMCell2d,
                     ConvLSTMCell3d,
)
from .tools import receptive_field, summary

__version__ = '0.1.0'

__all__ = [
    'Conv', 'Conv1d', 'Conv2d', 'Conv3d',
    'ConvTranspose', 'ConvTranspose1d', 'ConvTranspose2d', 'ConvTranspose3d',
    'ScaledWSConv', 'ScaledWSConv1d', 'ScaledWSConv2d', 'ScaledWSConv3d',
    'ConvLSTMCell', 'ConvLSTMCell1d', 'ConvLSTMCell2d', 'ConvLSTMCell3d',
    'ConvGRUCell', 'ConvGRUCell1d', 'ConvGRUCell2d', 'ConvGRUCell3d',
    'functional', 'shapes', 'summary', 'receptive_field', '__version__',
    'StreamingConv',
    'lowering', 'LOWERINGS', 'set_lowering', 'get_lowering', 'use_lowering',
]
