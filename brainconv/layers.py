"""brainstate Modules: Conv, ConvTranspose, ScaledWSConv and their 1d/2d/3d names.

A layer validates its arguments once (:mod:`brainconv._args`), learns every
shape at construction from closed-form arithmetic (:mod:`brainconv.shapes`),
holds its weights in one ``param_type`` state, and at call time splits units
off (:mod:`brainconv._units`), runs a functional op
(:mod:`brainconv.functional`) and puts the units back.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Sequence, Union

import brainstate
import braintools
import jax
import numpy as np

from . import _args, _braintrace, _units, functional
from ._base import _RANKED, Init, IntOrSeq, _ConvBase, _fixed_rank, _show_signature
from ._docs import _render
from .shapes import Padding, adjoint_output_padding, transpose_as_conv

__all__ = [
    'Conv', 'Conv1d', 'Conv2d', 'Conv3d',
    'ConvTranspose', 'ConvTranspose1d', 'ConvTranspose2d', 'ConvTranspose3d',
    'ScaledWSConv', 'ScaledWSConv1d', 'ScaledWSConv2d', 'ScaledWSConv3d',
]


class Conv(_ConvBase):
    __doc__ = _render('Conv', None)

    def __init__(
        self,
        num_spatial_dims: int,
        in_size: Sequence[int],
        out_channels: int,
        kernel_size: IntOrSeq,
        stride: IntOrSeq = 1,
        padding: Union[Padding, int, Sequence] = 'SAME',
        lhs_dilation: IntOrSeq = 1,
        rhs_dilation: IntOrSeq = 1,
        groups: int = 1,
        w_init: Init = braintools.init.XavierNormal(),
        b_init: Init | None = None,
        w_mask: Init | None = None,
        channel_first: bool = False,
        name: str | None = None,
        param_type: type = brainstate.ParamState,
        padding_mode: str = 'ZEROS',
        precision: Any = None,
        lowering: str | None = None,
        dtype: Any = None,
        param_dtype: Any = None,
    ):
        spec = _args.conv_spec(num_spatial_dims, in_size, out_channels, kernel_size, stride, padding,
                               lhs_dilation, rhs_dilation, groups, padding_mode, channel_first)
        lowering = _args.lowering(lowering)
        super().__init__(name=name)
        self._setup(spec, w_init, b_init, w_mask, param_type, precision, lowering, dtype, param_dtype)

    def _op(self, x, w):
        return functional.conv_resolved(x, w, self.spec.geometry, self.groups, self.padding_mode,
                                        self.channel_first, self.precision, self._lowering)

    #: The class :meth:`streaming` makes: :class:`brainconv.StreamingConv`, which builds on this
    #: module and registers itself here when :mod:`brainconv.streaming` is imported (``import
    #: brainconv`` does).
    _streaming_class: ClassVar[type | None] = None

    def streaming(self, name: str | None = None) -> StreamingConv:  # noqa: F821 - brainconv.streaming
        """This convolution stepped through time, one frame per call, sharing these weights
        (:class:`brainconv.StreamingConv`; the first spatial axis is time and must be causal)."""
        return Conv._streaming_class(self, name=name)

    def transpose(self) -> ConvTranspose:
        """The ConvTranspose that computes exactly the adjoint of this layer's linear part.

        Its kernel is laid out from this layer's current kernel (mask and any
        standardisation applied); it has no bias.  Needs lhs_dilation 1 and
        padding_mode 'ZEROS' or 'CIRCULAR'.
        """
        g = self.spec.geometry
        if any(d != 1 for d in g.lhs_dilation):
            raise ValueError(f"transpose() needs lhs_dilation 1, got {g.lhs_dilation}")
        if self.padding_mode not in ('ZEROS', 'CIRCULAR'):
            raise ValueError(f"transpose() supports padding_mode 'ZEROS' or 'CIRCULAR', got {self.padding_mode!r}")
        w, unit = self._kernel_mantissa(self.weight.value)
        kernel = _units.attach(functional.transpose_kernel(w, self.groups), unit)
        nd = self.num_spatial_dims
        cls = _RANKED.get((ConvTranspose, nd))
        make = functools.partial(cls) if cls else functools.partial(ConvTranspose, nd)
        return make(
            self.out_size, self.in_channels, g.kernel_size, stride=g.stride,
            padding=g.pads, rhs_dilation=g.rhs_dilation, groups=self.groups, w_init=kernel,
            channel_first=self.channel_first, padding_mode=self.padding_mode,
            precision=self.precision, output_padding=adjoint_output_padding(g), lowering=self._lowering,
            dtype=self.dtype, param_dtype=self.param_dtype)


class ScaledWSConv(Conv):
    __doc__ = _render('ScaledWSConv', None)

    def __init__(
        self,
        num_spatial_dims: int,
        in_size: Sequence[int],
        out_channels: int,
        kernel_size: IntOrSeq,
        stride: IntOrSeq = 1,
        padding: Union[Padding, int, Sequence] = 'SAME',
        lhs_dilation: IntOrSeq = 1,
        rhs_dilation: IntOrSeq = 1,
        groups: int = 1,
        ws_gain: bool = True,
        eps: float = 1e-4,
        w_init: Init = braintools.init.XavierNormal(),
        b_init: Init | None = None,
        w_mask: Init | None = None,
        channel_first: bool = False,
        name: str | None = None,
        param_type: type = brainstate.ParamState,
        padding_mode: str = 'ZEROS',
        precision: Any = None,
        lowering: str | None = None,
        dtype: Any = None,
        param_dtype: Any = None,
    ):
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
            raise ValueError(f"eps must be a positive float, got {eps!r}")
        super().__init__(num_spatial_dims, in_size, out_channels, kernel_size, stride, padding, lhs_dilation,
                         rhs_dilation, groups, w_init, b_init, w_mask, channel_first, name, param_type,
                         padding_mode, precision, lowering, dtype, param_dtype)
        self.eps = float(eps)
        if ws_gain:
            dtype = brainstate.environ.dftype() if self.param_dtype is None else self.param_dtype
            gain = jax.device_put(np.ones((1,) * (self.num_spatial_dims + 1) + (self.out_channels,), dtype))
            self.weight.value = {**self.weight.value, 'gain': gain}

    def _kernel_unit(self, params):
        return None  # a standardised kernel is dimensionless: the output keeps the input's unit

    def _kernels_of(self, raw):
        w = functional.weight_standardize(raw['weight'], self.eps, raw.get('gain'))
        return (w if self.w_mask is None else w * self.w_mask,)


class ConvTranspose(_ConvBase):
    __doc__ = _render('ConvTranspose', None)

    def __init__(
        self,
        num_spatial_dims: int,
        in_size: Sequence[int],
        out_channels: int,
        kernel_size: IntOrSeq,
        stride: IntOrSeq = 1,
        padding: Union[Padding, int, Sequence] = 'SAME',
        rhs_dilation: IntOrSeq = 1,
        groups: int = 1,
        w_init: Init = braintools.init.XavierNormal(),
        b_init: Init | None = None,
        w_mask: Init | None = None,
        channel_first: bool = False,
        name: str | None = None,
        param_type: type = brainstate.ParamState,
        padding_mode: str = 'ZEROS',
        precision: Any = None,
        output_padding: IntOrSeq | None = None,
        lowering: str | None = None,
        dtype: Any = None,
        param_dtype: Any = None,
    ):
        spec = _args.conv_transpose_spec(num_spatial_dims, in_size, out_channels, kernel_size, stride, padding,
                                         rhs_dilation, groups, output_padding, padding_mode, channel_first)
        lowering = _args.lowering(lowering)
        super().__init__(name=name)
        self._setup(spec, w_init, b_init, w_mask, param_type, precision, lowering, dtype, param_dtype)

    output_padding = property(lambda self: self.spec.geometry.output_padding)

    def _op(self, x, w):
        return functional.conv_transpose_resolved(x, w, self.spec.geometry, self.groups, self.padding_mode,
                                                  self.channel_first, self.precision, self._lowering)

    def _etrace_layout(self) -> dict:
        return {**super()._etrace_layout(), 'weight': _braintrace.Trace('shared', -2)}  # (*k, C_out, C_in // g)

    def _core_kernel(self, **arrays):
        return functional.transpose_core_kernel(super()._core_kernel(**arrays))

    def _patches(self, x):
        g = self.spec.geometry
        wrap = self.padding_mode == 'CIRCULAR'
        p = functional.patches(self._cast(x), transpose_as_conv(g, wrap=wrap), 'ZEROS', self.channel_first)
        if wrap:  # the convolution ran onto the padded output, whose pads fold back circularly
            p = functional._fold_circular(p, g.pads, g.out_spatial, tuple(range(1, g.num_spatial_dims + 1)))
        return p



for _cls in (Conv, ConvTranspose, ScaledWSConv):
    _show_signature(_cls, 1)
Conv1d, Conv2d, Conv3d = (_fixed_rank(Conv, nd, _render) for nd in (1, 2, 3))
ConvTranspose1d, ConvTranspose2d, ConvTranspose3d = (_fixed_rank(ConvTranspose, nd, _render) for nd in (1, 2, 3))
ScaledWSConv1d, ScaledWSConv2d, ScaledWSConv3d = (_fixed_rank(ScaledWSConv, nd, _render) for nd in (1, 2, 3))
