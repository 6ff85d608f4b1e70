"""Depthwise-separable convolution: SeparableConv and its 1d/2d/3d names.

A depthwise convolution (``groups = in_channels``, ``depth_multiplier``
outputs per input channel; it takes the stride, padding, dilations and
padding mode) followed by a pointwise (1x1) convolution to ``out_channels``,
as Keras's ``SeparableConv2D``.  Both steps are :func:`brainconv.functional.conv_resolved`
calls on specs from :func:`brainconv._args.separable_specs`, so they run as
every lowering does (:mod:`brainconv.lowering`).
"""

from __future__ import annotations

from typing import Any, Sequence, Tuple, Union

import brainstate
import braintools
import jax.numpy as jnp

from . import _args, _braintrace, _units, functional
from ._base import Init, IntOrSeq, _as_dtype, _ConvBase, _fixed_rank, _materialize, _show_signature
from ._docs import _CALL, _DTYPE_ARGS, _LOWERING_ARG, _SHARED_ARGS, _SHARED_TAIL
from .shapes import Padding

__all__ = ['SeparableConv', 'SeparableConv1d', 'SeparableConv2d', 'SeparableConv3d']

_SEPARABLE_DOC = """{title}

    A depthwise convolution followed by a pointwise (1x1) one, as Keras's SeparableConv{suffix}
    (``filters`` is ``out_channels``, ``dilation_rate`` is ``rhs_dilation``).  The depthwise
    step convolves each input channel with its own ``depth_multiplier`` kernels
    (``groups = in_channels``) and takes the stride, padding, dilations and padding mode; the
    pointwise step mixes its ``in_channels * depth_multiplier`` channels into ``out_channels``.
    Weights, in one state: ``'depthwise'`` of shape ``(*kernel_size, 1, in_channels *
    depth_multiplier)`` (the kernel of :class:`brainconv.Conv{suffix}` with ``groups=in_channels``;
    Keras's ``(*kernel_size, in_channels, depth_multiplier)`` depthwise kernel reshaped;
    channel ``c * depth_multiplier + m`` is input channel ``c``'s ``m``-th filter),
    ``'pointwise'`` of shape ``(1, ..., 1, in_channels * depth_multiplier, out_channels)``
    (as Keras's) and ``'bias'`` (optional, per output channel).  Parameters:
    ``prod(kernel_size) * in_channels * depth_multiplier + in_channels * depth_multiplier *
    out_channels`` (+ ``out_channels``).  The intermediate stays in the accumulation dtype.
{call}
    Parameters
    ----------
{num}{shared}    lhs_dilation : int or sequence of {nd} ints, default 1
        Input dilation of the depthwise step.
    rhs_dilation : int or sequence of {nd} ints, default 1
        Kernel dilation of the depthwise step (Keras's ``dilation_rate``).
    depth_multiplier : int, default 1
        Depthwise filters per input channel.
    depthwise_init, pointwise_init : initializer or array, default ``braintools.init.XavierNormal()``
        Called with the depthwise and pointwise kernel shapes.
    b_init : initializer or array, optional
        Bias, shaped to broadcast over the output's channel axis; no bias when None.
    channel_first : bool, default False
        Channels-first layout ``(*batch, C, *spatial)``.
    name : str, optional
    param_type : type, default ``brainstate.ParamState``
        State class holding ``{{'depthwise': ..., 'pointwise': ..., 'bias': ...}}``.
{tail}{lowering}
    Examples
    --------
    >>> import brainconv
    >>> layer = brainconv.{example}
    >>> layer.out_size, layer.num_params
    {example_out}
"""

_EXAMPLES = {
    1: ("SeparableConv1d((32, 4), 8, kernel_size=5, stride=2)", "((16, 8), 52)"),
    2: ("SeparableConv2d((28, 28, 3), 16, kernel_size=3, depth_multiplier=2)", "((28, 28, 16), 150)"),
    3: ("SeparableConv3d((8, 8, 8, 2), 4, kernel_size=3, padding='VALID')", "((6, 6, 6, 4), 62)"),
    None: ("SeparableConv(2, (16, 16, 4), 8, kernel_size=3, rhs_dilation=2)", "((16, 16, 8), 68)"),
}


def _render(stem: str, nd: int | None) -> str:
    """SeparableConv's docstring rendered for rank ``nd`` (None: the generic N-d class)."""
    rank = f'{nd}-d' if nd else 'N-d'
    fields = dict(
        nd=nd or 'num_spatial_dims', suffix=f'{nd}d' if nd else '2D',
        title=f"{rank} depthwise-separable convolution layer (depthwise, then pointwise).",
        num='' if nd else '    num_spatial_dims : int\n        Number of spatial axes (1 for SeparableConv1d, ...).\n',
        call=_CALL.replace('unit(x) * unit(w)', 'unit(x) * unit(depthwise) * unit(pointwise)'),
        lowering=_LOWERING_ARG.replace('The exact formulation the convolution runs as',
                                       'The exact formulation both convolutions run as') + _DTYPE_ARGS,
        example=_EXAMPLES[nd][0], example_out=_EXAMPLES[nd][1])
    fields['shared'] = _SHARED_ARGS.format(**fields)
    modes = ("'ZEROS', 'REFLECT', 'REPLICATE' or 'CIRCULAR' (torch's spellings too): how the\n"
             "        depthwise step pads.")
    tail = _SHARED_TAIL.format(modes=modes)
    fields['tail'] = tail[tail.index('    padding_mode :'):]
    return _SEPARABLE_DOC.format(**fields)


class SeparableConv(_ConvBase):
    __doc__ = _render('SeparableConv', None)

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
        depth_multiplier: int = 1,
        depthwise_init: Init = braintools.init.XavierNormal(),
        pointwise_init: Init = braintools.init.XavierNormal(),
        b_init: Init | None = None,
        channel_first: bool = False,
        name: str | None = None,
        param_type: type = brainstate.ParamState,
        padding_mode: str = 'ZEROS',
        precision: Any = None,
        lowering: str | None = None,
        dtype: Any = None,
        param_dtype: Any = None,
    ):
        depthwise, pointwise = _args.separable_specs(
            num_spatial_dims, in_size, out_channels, kernel_size, stride, padding, lhs_dilation, rhs_dilation,
            depth_multiplier, padding_mode, channel_first)
        lowering = _args.lowering(lowering)
        dtype = _args.dtype(dtype, 'dtype')
        param_dtype = _args.dtype(param_dtype, 'param_dtype')
        super().__init__(name=name)
        params = {'depthwise': _materialize(depthwise_init, depthwise.kernel_shape, 'depthwise_init'),
                  'pointwise': _materialize(pointwise_init, pointwise.kernel_shape, 'pointwise_init')}
        if b_init is not None:
            params['bias'] = self._make_bias(b_init, pointwise)
        self._set_dtypes(dtype, param_dtype)
        self.spec = depthwise  # the geometry (pads, stride, receptive field) is the depthwise step's
        self.pointwise_spec = pointwise
        self.depth_multiplier = depthwise.out_channels // depthwise.in_channels
        self.num_spatial_dims = depthwise.geometry.num_spatial_dims
        self.in_size = depthwise.in_size
        self.out_size = pointwise.out_size
        self.precision = precision
        self._lowering = lowering
        self.w_mask = None
        self.weight = param_type({k: _as_dtype(v, param_dtype) for k, v in params.items()})

    out_channels = property(lambda self: self.pointwise_spec.out_channels)
    kernel_shape = property(lambda self: self.spec.kernel_shape, doc="The depthwise kernel's shape.")
    pointwise_shape = property(lambda self: self.pointwise_spec.kernel_shape, doc="The pointwise kernel's shape.")

    def _resolve_args(self):
        """The depthwise convolution's: :attr:`lowering` and :meth:`formulation` report its formulation."""
        return self.spec.geometry, self.groups, self.in_channels, self.spec.out_channels

    def kernel(self, params: dict | None = None) -> Tuple[Any, Any]:
        """The ``(depthwise, pointwise)`` kernels."""
        params = self.weight.value if params is None else params
        return params['depthwise'], params['pointwise']

    def _kernel_unit(self, params):
        return _units.product(_units.split(params['depthwise'])[1], _units.split(params['pointwise'])[1])

    def _kernels_of(self, raw):
        return raw['depthwise'], raw['pointwise']

    def _op(self, x, depthwise, pointwise):
        d, p = self.spec, self.pointwise_spec
        h = functional.conv_resolved(x, depthwise, d.geometry, d.groups, d.padding_mode, d.channel_first,
                                     self.precision, self._lowering)
        return functional.conv_resolved(h, pointwise, p.geometry, 1, 'ZEROS', p.channel_first, self.precision,
                                        self._lowering)

    def _etrace_layout(self) -> dict:
        # a depthwise weight reaches every output channel through the pointwise kernel
        return {'depthwise': _braintrace.Trace('full'), 'pointwise': _braintrace.Trace('shared', -1),
                'bias': _braintrace.Trace('shared', 1 if self.channel_first else -1)}

    def _etrace_instant(self, x, df, raw, bias_scale):
        lead = df.shape[:df.ndim - len(self.out_size)]
        d = _braintrace.channels_last(jnp.reshape(df, (-1,) + df.shape[len(lead):]), self)
        p = jnp.repeat(self._patches(jnp.reshape(x, (-1,) + tuple(self.in_size))), self.depth_multiplier, axis=-1)
        depthwise, pointwise = (self._cast(raw[k]) for k in ('depthwise', 'pointwise'))
        taps, mid = p.shape[-2:]
        pw = pointwise.reshape(mid, -1)
        d = d.astype(p.dtype)
        z = jnp.einsum('...tm,tm->...m', p, depthwise.reshape(taps, mid))  # the depthwise output
        positions = lead + d.shape[1:-1]
        out = {'depthwise': jnp.einsum('...tm,mo,...o->...tmo', p, pw, d).reshape(
                   positions + depthwise.shape + (pw.shape[-1],)),
               'pointwise': jnp.einsum('...m,...o->...mo', z, d).reshape(positions + pointwise.shape)}
        if 'bias' in raw:
            bias = _braintrace.bias_instant(d, raw['bias'], bias_scale, self._etrace_layout()['bias'])
            out['bias'] = bias.reshape(positions + raw['bias'].shape)
        return out

    def _repr_items(self) -> list:
        items = super()._repr_items()
        return items[:3] + [f'depth_multiplier={self.depth_multiplier}'] + items[4:]


_show_signature(SeparableConv, 1)
SeparableConv1d, SeparableConv2d, SeparableConv3d = (_fixed_rank(SeparableConv, nd, _render) for nd in (1, 2, 3))
