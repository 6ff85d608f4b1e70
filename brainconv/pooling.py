"""Pooling layers: ``MaxPool`` and ``AvgPool`` in 1-, 2-, 3- and N-d.

A pooling layer is a window over each channel on its own, with the geometry of a depthwise
convolution (:func:`brainconv._args.pool_spec`, :mod:`brainconv.shapes`): ``out_size`` and the
resolved pads are known at construction.  Neither op uses ``lax.reduce_window``, whose
gradient (``select_and_scatter``) is slow on CPU, above all inside a time loop:

* windows that tile the input (``kernel_size == stride``) are a reshape of the padded (or
  cropped) input and one reduction over the window axes;
* other windows are pooled one axis at a time (:func:`_stages`), and on that axis the taps
  ``j * stride + r`` of every window form tiling blocks, one per ``j`` (:func:`_blocks`): a
  few reshapes and reductions, with plain slices and pads as their transposes.

MaxPool is a ``jax.custom_jvp`` whose tangent is the tangent of each window's *first* maximum
in row-major order (PyTorch's and XLA's rule; ties are the norm with binary spikes), gathered
from the same blocks: linear in the tangents, so every transform applies, and reverse mode
sends a window's whole gradient to that one input (overlapping windows add).  AvgPool is
linear and made of plain ``jax.numpy`` ops.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, Iterator, Sequence, Tuple, Union

import brainstate
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _args, _units, functional
from ._base import IntOrSeq, _fixed_rank, _padding_label, _show_signature
from .shapes import ConvGeometry, Padding, axis_window_counts, conv_geometry

__all__ = ['MaxPool', 'MaxPool1d', 'MaxPool2d', 'MaxPool3d', 'AvgPool', 'AvgPool1d', 'AvgPool2d', 'AvgPool3d']


# --- the ops, on one flattened batch axis: (N, *spatial, C), or (N, C, *spatial) -------------------

def _spatial_axes(g: ConvGeometry, channel_first: bool) -> Tuple[int, ...]:
    first = 2 if channel_first else 1
    return tuple(range(first, first + g.num_spatial_dims))


def _tiles(g: ConvGeometry) -> bool:
    """Whether the windows tile the (padded, cropped) input: kernel == stride on every axis."""
    return g.kernel_size == g.stride


def _fill(dtype: Any, lowest: bool) -> jax.Array:
    """The pad value: the dtype's lowest value for a max (never the maximum of a window), else zero."""
    dtype = jnp.dtype(dtype)
    if not lowest:
        return jnp.zeros((), dtype)
    if dtype == jnp.bool_:
        return jnp.array(False)
    if jnp.issubdtype(dtype, jnp.integer):
        return jnp.array(jnp.iinfo(dtype).min, dtype)
    return jnp.array(-jnp.inf, dtype)


def _pad(x: jax.Array, axes: Sequence[int], pads: Sequence[Tuple[int, int]], value: jax.Array) -> jax.Array:
    """``x`` padded (negative: cropped) by ``pads`` on ``axes``."""
    if all(p == (0, 0) for p in pads):
        return x
    config = [(0, 0, 0)] * x.ndim
    for a, (lo, hi) in zip(axes, pads):
        config[a] = (lo, hi, 0)
    return lax.pad(x, value, config)


def _blocks(x: jax.Array, g: ConvGeometry, channel_first: bool, value: jax.Array) -> Iterator[tuple]:
    """The windows as tiling blocks.  On each axis a tap is ``t = j * s + r`` (``0 <= r < s``), and
    for each ``j`` the taps ``j * s + r`` of all windows tile the padded input from ``j * s`` on.
    Yields ``(view, r_axes, taps)`` per ``j`` (one per axis): the view has each spatial axis
    reshaped to ``(out, r)`` (the ``r`` that are taps only), and ``taps`` (shaped as the ``r``
    axes) holds each entry's row-major tap index.  With ``kernel_size == stride`` there is one
    block: the tiling windows."""
    axes = _spatial_axes(g, channel_first)
    nd = g.num_spatial_dims
    blocks = [-(-k // s) for k, s in zip(g.kernel_size, g.stride)]
    ends = [(b - 1) * s + o * s for b, s, o in zip(blocks, g.stride, g.out_spatial)]
    xp = _pad(x, axes, [(lo, end - n - lo) for end, n, (lo, _) in zip(ends, g.in_spatial, g.pads)], value)
    weights = [math.prod(g.kernel_size[i + 1:]) for i in range(nd)]  # of the row-major tap index
    for js in itertools.product(*(range(b) for b in blocks)):
        start, limit = [0] * xp.ndim, list(xp.shape)
        shape, r_axes = list(xp.shape[:axes[0]]), []
        for a, j, s, o in zip(axes, js, g.stride, g.out_spatial):
            start[a], limit[a] = j * s, j * s + o * s
            shape += [o, s]
            r_axes.append(len(shape) - 1)
        view = lax.slice(xp, start, limit).reshape(shape + list(xp.shape[axes[-1] + 1:]))
        lengths = [min(s, k - j * s) for j, s, k in zip(js, g.stride, g.kernel_size)]
        if lengths != list(g.stride):
            ends = list(view.shape)
            for a, r in zip(r_axes, lengths):
                ends[a] = r
            view = lax.slice(view, [0] * view.ndim, ends)
        taps = np.zeros(lengths, np.int64)
        for i, (j, s, r, w) in enumerate(zip(js, g.stride, lengths, weights)):
            taps = taps + _broadcast((j * s + np.arange(r)) * w, nd, (i,))
        yield view, tuple(r_axes), taps


def _broadcast(values: np.ndarray, ndim: int, axes: Sequence[int]) -> np.ndarray:
    """An array over some axes, shaped to broadcast against an array of ``ndim`` axes."""
    shape = [1] * ndim
    for a, n in zip(axes, values.shape):
        shape[a] = n
    return values.reshape(shape)


def _max_forward(x: jax.Array, g: ConvGeometry, channel_first: bool) -> jax.Array:
    """The maximum of every window: of its blocks' maxima (:func:`_blocks`)."""
    terms = (jnp.max(view, axis=r_axes) for view, r_axes, _ in _blocks(x, g, channel_first, _fill(x.dtype, True)))
    return functools.reduce(lax.max, terms)


def _first_max(x: jax.Array, y: jax.Array, g: ConvGeometry, channel_first: bool) -> jax.Array:
    """The row-major index (in ``range(prod(kernel_size))``) of each window's first maximum ``y``.

    Taps that read a pad are never chosen; a NaN (which the maximum propagates) counts as a
    maximum.  Windows here tile, or overlap on one axis only (:func:`_stages`): few taps.
    """
    entries = {}
    for view, r_axes, taps in _blocks(x, g, channel_first, _fill(x.dtype, True)):
        for r in np.ndindex(*taps.shape):
            entry = view
            for a, i in reversed(tuple(zip(r_axes, r))):
                entry = lax.index_in_dim(entry, i, a, keepdims=False)
            entries[int(taps[r])] = entry
    count = len(entries)
    dtype = np.int8 if count <= 127 else np.int32  # reverse mode keeps it: keep it small
    first = jnp.full(y.shape, count - 1, dtype)  # the last tap: taken where no earlier one is
    for t in range(count - 2, -1, -1):
        hit = (entries[t] == y) | (entries[t] != entries[t])
        real = [(lo <= q) & (q < lo + n) for q, n, (lo, _) in
                ((np.arange(o) * s + i, n, p) for i, o, s, n, p in
                 zip(np.unravel_index(t, g.kernel_size), g.out_spatial, g.stride, g.in_spatial, g.pads))]
        if not all(r.all() for r in real):  # the positions tap t reads that are pads
            hit = hit & _broadcast(functools.reduce(np.multiply.outer, real), y.ndim,
                                   _spatial_axes(g, channel_first))
        first = jnp.where(hit, dtype(t), first)
    return first


def _stages(g: ConvGeometry) -> Tuple[ConvGeometry, ...]:
    """The pooling as a sequence of poolings: at once when the windows tile, else one axis at a
    time, the last first.  A max over a box is the max over its rows' maxima, and the first
    maximum in row-major order is in the first row that holds the maximum, at that row's first
    maximum: the composition has the same value and the same derivative, with ``sum(k)`` taps
    where the box has ``prod(k)``."""
    if _tiles(g):
        return (g,)
    nd, ones = g.num_spatial_dims, (1,) * g.num_spatial_dims
    stages, sizes = [], list(g.in_spatial)
    for a in reversed(range(nd)):
        if (g.kernel_size[a], g.stride[a], g.pads[a]) == (1, 1, (0, 0)):
            continue
        k, s, pads = list(ones), list(ones), [(0, 0)] * nd
        k[a], s[a], pads[a] = g.kernel_size[a], g.stride[a], g.pads[a]
        stages.append(conv_geometry(tuple(sizes), tuple(k), tuple(s), tuple(pads), ones, ones))
        sizes[a] = g.out_spatial[a]
    return tuple(stages)


def _max_pool_stages(x: jax.Array, g: ConvGeometry, channel_first: bool) -> jax.Array:
    """Max pooling, exact in every transform for floats (booleans and integers: the forward only)."""
    floating = jnp.issubdtype(x.dtype, jnp.floating)
    for stage in _stages(g):
        x = _max_pool(x, stage, channel_first) if floating else _max_forward(x, stage, channel_first)
    return x


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _max_pool(x: jax.Array, g: ConvGeometry, channel_first: bool) -> jax.Array:
    """Max pooling of a floating batch whose derivative follows each window's first maximum."""
    return _max_forward(x, g, channel_first)


@_max_pool.defjvp
def _max_pool_jvp(g, channel_first, primals, tangents):
    (x,), (t,) = primals, tangents
    y = _max_pool(x, g, channel_first)  # itself: differentiating this rule again uses the same rule
    first = _first_max(x, y, g, channel_first)
    zero = jnp.zeros((), t.dtype)

    # The tangent of each window's first maximum: linear in ``t``.  Under jax.checkpoint, reverse
    # mode keeps ``first`` (one small integer per output), not a mask per tap or per input.
    @jax.checkpoint
    def gather(first, t):
        terms = []
        for view, r_axes, taps in _blocks(t, g, channel_first, zero):
            index = _broadcast(taps.astype(first.dtype), view.ndim, r_axes)
            terms.append(jnp.sum(jnp.where(index == jnp.expand_dims(first, r_axes), view, zero), axis=r_axes))
        return functools.reduce(lax.add, terms)

    return y, gather(first, t)


def _avg_pool(x: jax.Array, g: ConvGeometry, channel_first: bool, count_include_pad: bool) -> jax.Array:
    """Mean pooling (linear: plain ``jax.numpy`` ops); 16-bit floats, booleans and integers are
    summed in float32, and the result is in the input's floating dtype (float32 for the others)."""
    floating = jnp.issubdtype(x.dtype, jnp.floating)
    out_dtype = x.dtype if floating else jnp.float32
    acc = jnp.float32 if not floating or jnp.dtype(x.dtype).itemsize < 4 else x.dtype
    x = x.astype(acc)
    zero = jnp.zeros((), acc)
    total = None
    for stage in _stages(g):
        terms = (jnp.sum(view, axis=r_axes) for view, r_axes, _ in _blocks(x, stage, channel_first, zero))
        x = total = functools.reduce(lax.add, terms)
    if count_include_pad:
        y = total / math.prod(g.kernel_size)
    else:
        per_axis = [np.asarray(axis_window_counts(n, k, s, lo, o)) for n, k, s, (lo, _), o in
                    zip(g.in_spatial, g.kernel_size, g.stride, g.pads, g.out_spatial)]
        counts = functools.reduce(np.multiply.outer, per_axis).astype(acc)
        y = total / _broadcast(counts, total.ndim, _spatial_axes(g, channel_first))
    return y.astype(out_dtype)


# --- the layers ---------------------------------------------------------------------------------

class _Pool(brainstate.nn.Module):
    """What MaxPool and AvgPool share; not public."""

    num_spatial_dims: int

    def _setup(self, num_spatial_dims: int, in_size: Sequence[int], kernel_size: IntOrSeq,
               stride: IntOrSeq | None, padding: Union[Padding, int, Sequence], channel_first: bool) -> None:
        spec = _args.pool_spec(num_spatial_dims, in_size, kernel_size, stride, padding, channel_first)
        self.spec = spec
        #: The window's :class:`brainconv.shapes.ConvGeometry` (kernel, stride, resolved pads,
        #: input and output spatial sizes); :func:`brainconv.summary` reads it.
        self.geometry = spec.geometry
        self.num_spatial_dims = spec.geometry.num_spatial_dims
        self.in_size = spec.in_size
        self.out_size = spec.out_size

    kernel_size = property(lambda self: self.geometry.kernel_size)
    stride = property(lambda self: self.geometry.stride)
    padding = property(lambda self: self.spec.padding)
    pads = property(lambda self: self.geometry.pads, doc="Resolved (low, high) pads per spatial axis.")
    channel_first = property(lambda self: self.spec.channel_first)
    channels = property(lambda self: self.spec.in_channels)

    def _pool(self, x: jax.Array) -> jax.Array:
        raise NotImplementedError

    def update(self, x: Any) -> Any:
        """Pool ``x`` of shape ``(*batch, *in_size)``; returns ``(*batch, *out_size)``."""
        xm, unit = _units.split(x)
        _args.input_array(xm, self.in_size, type(self).__name__)
        y = functional._with_batch(self._pool, jnp.asarray(xm), len(self.in_size))
        return _units.attach(y, unit)

    def _repr_items(self) -> list:
        g = self.geometry
        return [f"kernel={g.kernel_size}", f"stride={g.stride}",
                f"padding={_padding_label(self.spec.padding)} {g.pads}"]

    def __repr__(self) -> str:
        items = ', '.join(self._repr_items() + (['channel_first=True'] if self.channel_first else []))
        return f"{type(self).__name__}({self.in_size} -> {self.out_size}, {items})"


class MaxPool(_Pool):
    def __init__(
        self,
        num_spatial_dims: int,
        in_size: Sequence[int],
        kernel_size: IntOrSeq,
        stride: IntOrSeq | None = None,
        padding: Union[Padding, int, Sequence] = 'VALID',
        channel_first: bool = False,
        name: str | None = None,
    ):
        super().__init__(name=name)
        self._setup(num_spatial_dims, in_size, kernel_size, stride, padding, channel_first)

    def _pool(self, x):
        return _max_pool_stages(x, self.geometry, self.channel_first)


class AvgPool(_Pool):
    def __init__(
        self,
        num_spatial_dims: int,
        in_size: Sequence[int],
        kernel_size: IntOrSeq,
        stride: IntOrSeq | None = None,
        padding: Union[Padding, int, Sequence] = 'VALID',
        channel_first: bool = False,
        name: str | None = None,
        count_include_pad: bool = True,
    ):
        count_include_pad = _args.flag(count_include_pad, 'count_include_pad')
        super().__init__(name=name)
        self._setup(num_spatial_dims, in_size, kernel_size, stride, padding, channel_first)
        self.count_include_pad = count_include_pad

    def _pool(self, x):
        return _avg_pool(x, self.geometry, self.channel_first, self.count_include_pad)

    def _repr_items(self) -> list:
        return super()._repr_items() + ([] if self.count_include_pad else ['count_include_pad=False'])


# --- docstrings: one per concept, rendered per rank ------------------------------------------------

_POOL_DOC = """{title}

    The {kind} of each window, which slides over {dims}
    of each channel on its own; ``out_size`` and the resolved ``pads`` are known at
    construction.
{what}
    Calling the layer on ``x`` of shape ``(*batch, *in_size)`` (no batch axis, one, or
    several) returns ``(*batch, *out_size)``; a Quantity input gives a Quantity in its unit.

    Parameters
    ----------
{num}    in_size : sequence of int
        Input shape without batch axes: ``(*spatial, C)``, or ``(C, *spatial)`` with
        ``channel_first=True``; {nd} spatial sizes.
    kernel_size : int or sequence of {nd} ints
        The window.
    stride : int or sequence of {nd} ints, optional
        None (the default): the kernel size (windows side by side).
    padding : str, int, pairs, or one entry per axis, default 'VALID'
        As for :class:`brainconv.Conv{suffix}`: 'SAME', 'SAME_LOWER', 'VALID', 'CAUSAL', an
        int, one ``(low, high)`` pair per axis, or one entry per axis.  Every window must
        hold at least one input position; {pad}
    channel_first : bool, default False
        Channels-first layout ``(*batch, C, *spatial)``.
    name : str, optional
{extra}
    Examples
    --------
    >>> import brainconv
    >>> layer = brainconv.{example}
    >>> layer.out_size
    {example_out}
"""

_WHAT = {
    'MaxPool': """
    Its derivative is that of each window's first maximum in row-major order (PyTorch's and
    XLA's rule, exact with the ties binary spikes make): reverse mode sends a window's whole
    gradient to that one input, and overlapping windows add.  Every JAX transform applies
    (``jit``, ``grad`` of any order, ``jvp``, ``vmap``, ``scan``, ``checkpoint``), and no
    ``lax.reduce_window`` is involved: on CPU, in a time loop, its forward and gradient run
    about twice as fast as ``brainstate.nn.MaxPool2d``'s.

    The output has the input's dtype: booleans (spikes) stay booleans (the maximum is a
    logical OR), integers stay integers.
""",
    'AvgPool': """
    A linear map of plain ``jax.numpy`` ops (``jax.linear_transpose`` applies).  16-bit floats
    are summed in float32 and the mean is cast back; booleans and integers give float32.
""",
}
_PADS = {
    'MaxPool': "pads never win a window (they hold the dtype's lowest value).",
    'AvgPool': "pads hold zeros.",
}
_AVG_EXTRA = """    count_include_pad : bool, default True
        Divide by the window size (PyTorch's default); False: by the number of input
        positions in the window (the pads not counted).
"""
_EXAMPLES = {
    ('MaxPool', 1): ("MaxPool1d((100, 8), kernel_size=2)", "(50, 8)"),
    ('MaxPool', 2): ("MaxPool2d((28, 28, 16), kernel_size=3, stride=2, padding='SAME')", "(14, 14, 16)"),
    ('MaxPool', 3): ("MaxPool3d((2, 16, 16, 8), kernel_size=2, channel_first=True)", "(2, 8, 8, 4)"),
    ('MaxPool', None): ("MaxPool(2, (30, 30, 12), kernel_size=(2, 3), stride=(2, 3))", "(15, 10, 12)"),
    ('AvgPool', 1): ("AvgPool1d((100, 8), kernel_size=4, stride=2, padding=1)", "(50, 8)"),
    ('AvgPool', 2): ("AvgPool2d((28, 28, 16), kernel_size=2)", "(14, 14, 16)"),
    ('AvgPool', 3): ("AvgPool3d((8, 8, 8, 4), kernel_size=3, stride=1, padding='SAME', count_include_pad=False)",
                     "(8, 8, 8, 4)"),
    ('AvgPool', None): ("AvgPool(1, (64, 3), kernel_size=3, stride=1, padding='CAUSAL')", "(64, 3)"),
}
_TITLES = {'MaxPool': "{rank} max pooling.", 'AvgPool': "{rank} average pooling."}
_KINDS = {'MaxPool': 'maximum', 'AvgPool': 'mean'}


def _render(stem: str, nd: int | None) -> str:
    """The one docstring of ``stem``, rendered for rank ``nd`` (None: the generic N-d class)."""
    return _POOL_DOC.format(
        title=_TITLES[stem].format(rank=f'{nd}-d' if nd else 'N-d'), kind=_KINDS[stem], what=_WHAT[stem],
        dims=f'the {nd} spatial axes' if nd else 'the ``num_spatial_dims`` spatial axes',
        num='' if nd else f'    num_spatial_dims : int\n        Number of spatial axes (1 for {stem}1d, ...).\n',
        nd=nd or 'num_spatial_dims', suffix=f'{nd}d' if nd else '', pad=_PADS[stem],
        extra=_AVG_EXTRA if stem == 'AvgPool' else '', example=_EXAMPLES[stem, nd][0],
        example_out=_EXAMPLES[stem, nd][1])


MaxPool.__doc__ = _render('MaxPool', None)
AvgPool.__doc__ = _render('AvgPool', None)
for _cls in (MaxPool, AvgPool):
    _show_signature(_cls, 1)
MaxPool1d, MaxPool2d, MaxPool3d = (_fixed_rank(MaxPool, nd, _render) for nd in (1, 2, 3))
AvgPool1d, AvgPool2d, AvgPool3d = (_fixed_rank(AvgPool, nd, _render) for nd in (1, 2, 3))
