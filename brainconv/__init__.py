"""brainconv: stateful, brainstate-style convolution layers on JAX.

Shapes are known at construction (:mod:`brainconv.shapes`), the stateless ops
live in :mod:`brainconv.functional`, and the layers in :mod:`brainconv.layers`.
"""

from . import functional, lowering, shapes
from ._braintrace import TraceMemoryError, get_trace_memory_limit, set_trace_memory_limit
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
from .local import LocalConv, LocalConv1d, LocalConv2d, LocalConv3d, local_conv
from .lowering import LOWERINGS, get_lowering, set_lowering, use_lowering
from .pooling import AvgPool, AvgPool1d, AvgPool2d, AvgPool3d, MaxPool, MaxPool1d, MaxPool2d, MaxPool3d
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
from .separable import SeparableConv, SeparableConv1d, SeparableConv2d, SeparableConv3d
from .streaming import StreamingConv
from .tools import receptive_field, summary

__version__ = '0.2.0'  # the one place the version is written (pyproject.toml reads it)

__all__ = [
    'Conv', 'Conv1d', 'Conv2d', 'Conv3d',
    'ConvTranspose', 'ConvTranspose1d', 'ConvTranspose2d', 'ConvTranspose3d',
    'ScaledWSConv', 'ScaledWSConv1d', 'ScaledWSConv2d', 'ScaledWSConv3d',
    'ConvLSTMCell', 'ConvLSTMCell1d', 'ConvLSTMCell2d', 'ConvLSTMCell3d',
    'ConvGRUCell', 'ConvGRUCell1d', 'ConvGRUCell2d', 'ConvGRUCell3d',
    'LocalConv', 'LocalConv1d', 'LocalConv2d', 'LocalConv3d', 'local_conv',
    'SeparableConv', 'SeparableConv1d', 'SeparableConv2d', 'SeparableConv3d',
    'MaxPool', 'MaxPool1d', 'MaxPool2d', 'MaxPool3d', 'AvgPool', 'AvgPool1d', 'AvgPool2d', 'AvgPool3d',
    'functional', 'shapes', 'summary', 'receptive_field', '__version__',
    'StreamingConv',
    'lowering', 'LOWERINGS', 'set_lowering', 'get_lowering', 'use_lowering',
    'TraceMemoryError', 'set_trace_memory_limit', 'get_trace_memory_limit',
]
