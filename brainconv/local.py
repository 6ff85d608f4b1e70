"""Locally connected (unshared-weight) convolution: LocalConv and its 1d/2d/3d names.

A locally connected layer has a convolution's geometry (the same ``out_size``,
pads, stride and dilations, from :mod:`brainconv.shapes`) but a separate kernel
at every output position: no weight sharing, as in retinotopic models.

It runs as *patches then a contraction over position*: the kernel taps'
strided slices of the padded (and lhs-dilated) input are stacked into
``(B, P, T, C)`` patches (``P`` output positions, ``T`` taps), and one
``einsum`` contracts each position's patch with that position's kernel.  On a
2-core CPU, for a 32x32x16 input to 16 channels with a 3x3 kernel and a batch
of 32, that took 38 ms forward and 80 ms for the gradient, against 57 ms and
326 ms for ``jax.lax.conv_general_dilated_local``.  It is built from
``lax.pad``, ``lax.slice`` and ``einsum``, so jit, grad, jvp and vmap all see
ordinary differentiable primitives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence, Tuple, Union

import brainstate
import braintools
import jax
import jax.numpy as jnp

from . import _args, _braintrace, _init, _units, functional
from ._base import Init, IntOrSeq, _ConvBase, _fixed_rank, _materialize, _show_signature
from ._docs import _CALL, _DTYPE_ARGS, _SHARED_ARGS, _SHARED_TAIL
from .shapes import ConvGeometry, Padding

__all__ = ['LocalConv', 'LocalConv1d', 'LocalConv2d', 'LocalConv3d', 'local_conv']


@dataclass(frozen=True)
class LocalConvSpec(_args.ConvSpec):
    """A validated locally connected convolution: a convolution's spec with per-position weights."""

    @property
    def kernel_shape(self) -> Tuple[int, ...]:
        g = self.geometry
        return g.out_spatial + g.kernel_size + (self.in_channels // self.groups, self.out_channels)

    @property
    def bias_shape(self) -> Tuple[int, ...]:
        """One bias per output position and channel: the output's shape."""
        return self.out_size


def local_spec(nd, in_size, out_channels, kernel_size, stride, padding, lhs_dilation, rhs_dilation, groups,
               padding_mode, channel_first) -> LocalConvSpec:
    spec = _args.conv_spec(nd, in_size, out_channels, kernel_size, stride, padding, lhs_dilation, rhs_dilation,
                           groups, padding_mode, channel_first)
    return LocalConvSpec(**{f: getattr(spec, f) for f in spec.__dataclass_fields__})


def local_conv_resolved(x: jax.Array, w: jax.Array, geometry: ConvGeometry, groups: int, padding_mode: str,
                        channel_first: bool, precision: Any = None) -> jax.Array:
    """Locally connected convolution of ``x`` (exactly one batch axis) with everything resolved.

    ``w`` has shape ``(*out_spatial, *kernel_size, C_in // groups, C_out)``;
    ``y[b, p, o] = sum over taps t and the in-channels c of o's group of
    xp[b, p * stride + t * rhs_dilation, c] * w[p, t, c, o]``, ``xp`` the padded,
    lhs-dilated input.
    """
    g = geometry
    x, w = functional._common_dtype(x, w)
    batch, cin = x.shape[0], functional._channels(x, channel_first)
    windows = functional.patches(x, g, padding_mode, channel_first)
    positions, ntaps, cout = math.prod(g.out_spatial), windows.shape[-2], w.shape[-1]
    patches = windows.reshape(batch, positions, ntaps, groups, cin // groups)
    kernel = w.reshape(positions, ntaps, cin // groups, groups, cout // groups)
    y = jnp.einsum('bptgc,ptcgo->bpgo', patches, kernel, precision=precision)
    y = y.reshape((batch,) + g.out_spatial + (cout,))
    return jnp.moveaxis(y, -1, 1) if channel_first else y


def local_conv(
    x: Any, kernel: Any, *, kernel_size: int | Sequence[int], stride: int | Sequence[int] = 1,
    padding: Padding | int = 'SAME', lhs_dilation: int | Sequence[int] = 1, rhs_dilation: int | Sequence[int] = 1,
    groups: int = 1, padding_mode: str = 'ZEROS', channel_first: bool = False, precision: Any = None,
) -> jax.Array:
    """Stateless locally connected convolution of ``x`` (``(*batch, *in_size)``).

    ``kernel`` has shape ``(*out_spatial, *kernel_size, C_in // groups, C_out)``;
    ``kernel_size`` is needed because the kernel's leading axes are output
    positions.  The other arguments mean what they mean for :class:`LocalConv`; units as for
    :func:`brainconv.functional.conv`.
    """
    (x, x_unit), (kernel, k_unit) = _units.split(x), _units.split(kernel)
    nd = jnp.ndim(kernel) - 2
    if nd % 2:
        raise ValueError(f"kernel must have shape (*out_spatial, *kernel_size, C_in // groups, C_out), "
                         f"got shape {tuple(jnp.shape(kernel))}")
    nd //= 2
    spec = local_spec(nd, functional._in_size(x, nd), kernel.shape[-1], kernel_size, stride, padding, lhs_dilation,
                      rhs_dilation, groups, padding_mode, channel_first)
    _args.kernel_shape(kernel.shape, spec.kernel_shape)
    y = functional._with_batch(
        lambda b: local_conv_resolved(b, kernel, spec.geometry, spec.groups, spec.padding_mode, channel_first,
                                      precision),
        x, nd + 1)
    return _units.attach(y, _units.product(x_unit, k_unit))


_LOCAL_DOC = """{title}

    A convolution's geometry (output size, padding, stride, dilations, as :class:`brainconv.Conv{suffix}`
    with the same arguments) with a separate kernel at every output position: no weight
    sharing.  The kernel has shape ``(*out_spatial, *kernel_size, in_channels // groups,
    out_channels)``: ``prod(out_spatial)`` times a convolution's parameters.  The bias
    (``b_init``) has one entry per output position and channel, shape ``out_size`` (as Keras's
    LocallyConnected layers); a ``(out_channels,)`` array initialises every position alike.
    ``w_mask`` broadcasts to the kernel shape (e.g. ``(*kernel_size, 1, 1)`` masks the same
    taps everywhere).  Runs as strided patches of the input then one contraction over
    position (see :mod:`brainconv.local`).
{call}
    Parameters
    ----------
{num}{shared}    lhs_dilation : int or sequence of {nd} ints, default 1
        Input dilation (zeros inserted between input positions).
    rhs_dilation : int or sequence of {nd} ints, default 1
        Kernel dilation.
    groups : int, default 1
        Divides in_channels and out_channels: output channel ``o`` reads only the
        in-channels of its group.
{tail}{dtypes}
    Examples
    --------
    >>> import brainconv
    >>> layer = brainconv.{example}
    >>> layer.out_size, layer.kernel_shape
    {example_out}
"""

_EXAMPLES = {
    1: ("LocalConv1d((16, 2), 4, kernel_size=3, stride=2)", "((8, 4), (8, 3, 2, 4))"),
    2: ("LocalConv2d((8, 8, 1), 4, kernel_size=3, padding='VALID')", "((6, 6, 4), (6, 6, 3, 3, 1, 4))"),
    3: ("LocalConv3d((4, 4, 4, 2), 2, kernel_size=2, stride=2)", "((2, 2, 2, 2), (2, 2, 2, 2, 2, 2, 2, 2))"),
    None: ("LocalConv(2, (6, 6, 3), 2, kernel_size=3, padding='CAUSAL')", "((6, 6, 2), (6, 6, 3, 3, 3, 2))"),
}


def _render(stem: str, nd: int | None) -> str:
    """LocalConv's docstring rendered for rank ``nd`` (None: the generic N-d class)."""
    rank = f'{nd}-d' if nd else 'N-d'
    fields = dict(
        nd=nd or 'num_spatial_dims', suffix=f'{nd}d' if nd else '',
        title=f"{rank} locally connected (unshared-weight) convolution layer.",
        num='' if nd else '    num_spatial_dims : int\n        Number of spatial axes (1 for LocalConv1d, ...).\n',
        call=_CALL, dtypes="    precision : optional\n        Passed to the ``einsum``.\n" + _DTYPE_ARGS,
        example=_EXAMPLES[nd][0], example_out=_EXAMPLES[nd][1])
    fields['shared'] = _SHARED_ARGS.format(**fields)
    modes = ("'ZEROS', 'REFLECT', 'REPLICATE' or 'CIRCULAR' (torch's spellings too): a non-zero\n"
             "        mode pads the input that way first.")
    tail = _SHARED_TAIL.format(modes=modes).replace(
        "Bias, shaped to broadcast over the output's channel axis", "Bias of shape ``out_size`` or ``(C_out,)``")
    tail = tail.replace("Called with the kernel shape;", "Called with the kernel shape (variance-scaling\n"
                        "        initializers use one position's fans);")
    fields['tail'] = tail[:tail.index('    precision : optional')]
    return _LOCAL_DOC.format(**fields)


class LocalConv(_ConvBase):
    __doc__ = _render('LocalConv', None)

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
        dtype: Any = None,
        param_dtype: Any = None,
    ):
        spec = local_spec(num_spatial_dims, in_size, out_channels, kernel_size, stride, padding, lhs_dilation,
                          rhs_dilation, groups, padding_mode, channel_first)
        super().__init__(name=name)
        self._setup(spec, w_init, b_init, w_mask, param_type, precision, None, dtype, param_dtype)

    def _init_kernel(self, w_init, spec):
        # A variance-scaling initializer's fans are those of one position's kernel, as for a convolution.
        if callable(w_init) and _init.is_variance_scaling(w_init):
            nd = spec.geometry.num_spatial_dims
            w_init = _init.sample(w_init, spec.kernel_shape, fan_shape=spec.kernel_shape[nd:])
        return _materialize(w_init, spec.kernel_shape, 'w_init')

    @property
    def lowering(self) -> str:
        """Always ``'patches'``: strided input patches, then a contraction over position."""
        return 'patches'

    def _op(self, x, w):
        return local_conv_resolved(x, w, self.spec.geometry, self.groups, self.padding_mode, self.channel_first,
                                   self.precision)

    def _repr_items(self) -> list:
        return super()._repr_items()[:-1]  # one formulation: no lowering to report

    def _etrace_layout(self) -> dict:
        # each weight feeds one output position and channel: no position axis in its trace
        return {'weight': _braintrace.Trace('local', -1), 'bias': _braintrace.Trace('output')}

    def _etrace_instant(self, x, df, raw, bias_scale):
        lead = df.shape[:df.ndim - len(self.out_size)]
        d = _braintrace.channels_last(jnp.reshape(df, (-1,) + df.shape[len(lead):]), self)
        p = self._patches(jnp.reshape(x, (-1,) + tuple(self.in_size)))  # (n, *out_spatial, taps, C_in)
        cin_g, cout = self.spec.kernel_shape[-2:]
        inst = jnp.einsum('n...tgi,n...go->n...tigo', p.reshape(p.shape[:-1] + (self.groups, cin_g)),
                          d.reshape(d.shape[:-1] + (self.groups, cout // self.groups)).astype(p.dtype))
        inst = inst.reshape(lead + self.spec.kernel_shape)
        out = {'weight': inst if self.w_mask is None else inst * self.w_mask}
        if 'bias' in raw:  # laid out as the output: its instantaneous term is D itself
            out['bias'] = (df if bias_scale in (None, 1.0) else df * bias_scale).astype(raw['bias'].dtype)
        return out


_show_signature(LocalConv, 1)
LocalConv1d, LocalConv2d, LocalConv3d = (_fixed_rank(LocalConv, nd, _render) for nd in (1, 2, 3))
