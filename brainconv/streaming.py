"""Streaming convolution: a :class:`~brainconv.Conv` stepped through time, one frame per call.

The first spatial axis of the convolution is time.  :class:`StreamingConv`
keeps the last ``span = (k - 1) * rhs_dilation + 1`` input frames (the newest
included) in a ring buffer, a ``brainstate.HiddenState``, and at each
``update`` computes the convolution's output for the newest frame from the k
frames its time taps read: the taps are folded into the channels, leaving a
convolution over the other spatial axes (the convolution's own functional op,
padding and lowering; one matrix product in 1-d).  Stepping through T frames
reproduces the causal convolution of the whole (T, ...) sequence, so the layer
can sit inside a ``brainstate.transform.for_loop`` beside neuron models.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence, Tuple, Union

import brainstate
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _args, _braintrace, _units, functional
from . import lowering as _lowering
from .layers import Conv
from .shapes import conv_geometry, kernel_span

__all__ = ['StreamingConv']

BatchSize = Union[int, Sequence[int], None]

try:  # the tag brainstate's Delay gives its write pointer: vmap_init_all_states leaves it unbatched
    from brainstate.transform._mapping2 import INIT_NO_BATCHING as _NO_BATCHING
except ImportError:  # pragma: no cover
    _NO_BATCHING = 'INIT_NO_BATCHING'


#: A one-position 1-d convolution: a 1-d step's matrix product, as the event formulation runs it.
_POINT = conv_geometry((1,), (1,), (1,), ((0, 0),), (1,), (1,))


def _drop(size: Tuple[int, ...], axis: int) -> Tuple[int, ...]:
    return size[:axis] + size[axis + 1:]


class StreamingConv(brainstate.nn.Module):
    """A convolution stepped through time: one input frame in, one output frame out.

    Wraps a :class:`~brainconv.Conv` (any rank, :class:`~brainconv.ScaledWSConv`
    too) whose first spatial axis is time and is padded causally
    (``padding='CAUSAL'``, or ``(span - 1, 0)`` on that axis, ``span = (k - 1) *
    rhs_dilation + 1``) with stride 1 and no lhs dilation; the other axes may
    have any stride, dilation and padding.  Made by ``conv.streaming()``.

    The layer holds the convolution itself (``self.conv``), so both share one
    ``ParamState``: training one trains the other, and their state dicts are
    interchangeable.  ``init_state(batch_size)`` creates ``buffer``, a
    ``brainstate.HiddenState`` of zeros (CAUSAL's zero pads), a ring buffer
    holding the last ``span`` input frames (frame ``t`` in slot ``t % span`` of
    the time axis), shaped ``(*batch, *state_size)``, and ``position``, a
    ``brainstate.ShortTermState`` with the slot of the next frame (one for the
    whole batch, as in brainstate's ``Delay``); ``reset_state`` zeroes both.
    Each ``update(x)`` takes one frame of shape ``(*batch, *in_size)`` (the
    convolution's ``in_size`` without the time axis)
    and returns one frame ``(*batch, *out_size)``.  After ``init_state``,
    stacking the outputs of T updates gives exactly the convolution's output on
    the T frames stacked along the time axis.

    The buffer is a ``HiddenState``, as in brainstate's recurrent cells: it is
    carried from step to step, differentiated through by
    ``brainstate.transform.grad`` over a ``for_loop``, and created, reset and
    vmapped by ``init_all_states``, ``reset_all_states`` and
    ``vmap_init_all_states``.

    Refused at construction (ValueError): a stride above 1 on the time axis
    (step the stride-1 layer and keep every s-th output: the outputs at steps
    0, s, 2s, ... are exactly the strided ones), lhs dilation on the time axis,
    non-causal time padding, and padding mode 'REFLECT' or 'CIRCULAR' when the
    time axis is padded (their pads before the first frame would be frames that
    have not arrived yet).  With 'REPLICATE' the first frame after a reset
    fills the whole buffer (``first``, a ``ShortTermState``, marks that step);
    with a time kernel of 1 there is no time padding and any mode works.

    Parameters
    ----------
    conv : Conv
        The convolution to step; its weights are shared, not copied.
    name : str, optional

    Examples
    --------
    >>> import brainstate, brainconv, jax.numpy as jnp
    >>> conv = brainconv.Conv1d((100, 4), 8, kernel_size=3, rhs_dilation=2, padding='CAUSAL')
    >>> step = conv.streaming()
    >>> step.in_size, step.out_size, step.state_size
    ((4,), (8,), (5, 4))
    >>> step.init_state(batch_size=2)
    >>> step(jnp.ones((2, 4))).shape
    (2, 8)
    """

    def __init__(self, conv: Conv, name: str | None = None):
        if not isinstance(conv, Conv):
            raise TypeError(f"conv must be a brainconv Conv (Conv1d, Conv2d, Conv3d, Conv, ScaledWSConv*), "
                            f"got {type(conv).__name__}")
        spec = conv.spec
        _args.streamable(spec, type(conv).__name__)
        super().__init__(name=name)
        g = spec.geometry
        t = 1 if spec.channel_first else 0  # the time axis in in_size / out_size
        self.conv = conv
        self.span = kernel_span(g.kernel_size[0], g.rhs_dilation[0])
        self.time_axis = t
        self.in_size = _drop(spec.in_size, t)
        self.out_size = _drop(spec.out_size, t)
        self.state_size = spec.in_size[:t] + (self.span,) + spec.in_size[t + 1:]
        # One step as a convolution: the span-frame window, VALID in time (one output position), the other
        # axes as the convolution's (the summary reads its MACs per step from it).
        window = conv_geometry((self.span,) + g.in_spatial[1:], g.kernel_size, g.stride,
                               ((0, 0),) + g.pads[1:], g.lhs_dilation, g.rhs_dilation)
        self.window_spec = dataclasses.replace(spec, in_size=self.state_size, padding=window.pads, geometry=window)
        # What each step runs: the time taps folded into the channels, a convolution over the other axes.
        self._rest = conv_geometry(g.in_spatial[1:], g.kernel_size[1:], g.stride[1:], g.pads[1:],
                                   g.lhs_dilation[1:], g.rhs_dilation[1:]) if len(g.in_spatial) > 1 else None
        # The packed taps (k frames, no dilation) as a convolution: D_RTRL's patches read it.
        self._taps_geometry = conv_geometry((g.kernel_size[0],) + g.in_spatial[1:], g.kernel_size, g.stride,
                                            ((0, 0),) + g.pads[1:], g.lhs_dilation, (1,) + g.rhs_dilation[1:])
        self._unit = None
        self._replicate = spec.padding_mode == 'REPLICATE' and self.span > 1

    num_spatial_dims = property(lambda self: self.conv.num_spatial_dims)
    num_params = property(lambda self: self.conv.num_params)

    @property
    def state_unit(self) -> Any:
        """The unit the buffer holds (that of the inputs), or None for plain arrays."""
        return self._unit

    def _batch_shape(self, batch_size: BatchSize) -> Tuple[int, ...]:
        if batch_size is None:
            return ()
        if isinstance(batch_size, (tuple, list)):
            return tuple(_args.positive_int(b, 'batch_size') for b in batch_size)
        return (_args.positive_int(batch_size, 'batch_size'),)

    def init_state(self, batch_size: BatchSize = None, unit: Any = None, dtype: Any = None, **kwargs) -> None:
        """Create ``buffer`` (zeros of shape ``(*batch, *state_size)``) and ``position`` (0).

        ``batch_size`` is None (no batch axis), an int, or a tuple of ints
        (several batch axes).  ``unit`` (a brainunit Unit) is the unit of the
        input frames, when they are Quantities; ``dtype`` defaults to
        ``brainstate.environ.dftype()``, and frames are cast to it.
        """
        batch = self._batch_shape(batch_size)
        self._unit = _units.unit_arg(unit, 'unit')
        dtype = brainstate.environ.dftype() if dtype is None else dtype
        self.buffer = brainstate.HiddenState(_units.attach(jnp.zeros(batch + self.state_size, dtype), self._unit))
        # Like brainstate's Delay: one write position for the whole batch, never vmapped.
        self.position = brainstate.ShortTermState(jnp.zeros((), jnp.int32), tag=_NO_BATCHING)
        if self._replicate:  # REPLICATE pads time with the first frame: it fills the buffer
            self.first = brainstate.ShortTermState(jnp.ones((), bool), tag=_NO_BATCHING)

    def reset_state(self, batch_size: BatchSize = None, **kwargs) -> None:
        """Zero ``buffer`` and ``position``; with ``batch_size`` given, reshape the buffer for it too."""
        value, _ = _units.split(self._buffer_state().value)
        shape = value.shape if batch_size is None else self._batch_shape(batch_size) + self.state_size
        self.buffer.value = _units.attach(jnp.zeros(shape, value.dtype), self._unit)
        self.position.value = jnp.zeros_like(self.position.value)
        if self._replicate:
            self.first.value = jnp.ones((), bool)

    def _buffer_state(self) -> brainstate.HiddenState:
        state = getattr(self, 'buffer', None)
        if state is None:
            raise RuntimeError(f"{type(self).__name__} has no state yet: call init_state(batch_size) "
                               f"(or brainstate.nn.init_all_states) before stepping it")
        return state

    def update(self, x: Any) -> Any:
        """One time step: ``x`` of shape ``(*batch, *in_size)`` in, ``(*batch, *out_size)`` out."""
        conv, name = self.conv, type(self).__name__
        state = self._buffer_state()
        xm = _units.mantissa_in(x, self._unit, f'{name} input')
        nb = _args.input_array(xm, self.in_size, name)
        spikes = _args.is_spikes(xm)
        buf, _ = _units.split(state.value)
        _args.state_batch(jnp.shape(xm), self.in_size, buf.shape[:buf.ndim - len(self.state_size)], name)
        xm = jnp.asarray(xm, buf.dtype)
        axis = buf.ndim - len(self.state_size) + self.time_axis
        taps = self._pack(self._taps(buf, xm, axis))  # (*batch, *other axes, k * C): the k frames the taps read

        params = conv.weight.value
        raw = {k: _units.split(v)[0] for k, v in params.items()}
        out_unit = _units.product(self._unit, conv._kernel_unit(params))
        scale = _units.bias_scale(params['bias'], out_unit, name) if 'bias' in params else None
        with _lowering.spike_input(spikes):
            y = _braintrace.apply(self, taps, raw, scale, nb)
        return _units.attach(y, out_unit)

    def _forward(self, taps: Any, raw: dict, bias_scale: float | None) -> Any:
        """One step's output from its time taps ``(*batch, *state_size)`` and the raw parameter arrays."""
        conv = self.conv
        w = conv._kernels_of(raw)[0]
        y = functional._with_batch(lambda b: self._step(b, w), taps, self.num_spatial_dims)
        if 'bias' in raw:
            bias = raw['bias'] if bias_scale in (None, 1.0) else raw['bias'] * bias_scale
            bias = jnp.reshape(bias, (-1,))  # one per channel
            after = len(self.out_size) - 1 if conv.channel_first else 0  # frame axes after the channel axis
            y = y + jnp.reshape(bias, (1,) * (y.ndim - 1 - after) + (-1,) + (1,) * after)
        return y

    # braintrace (brainconv._braintrace): a step is one convolution over the buffer's window
    etrace = property(lambda self: self.conv.etrace, doc="The convolution's ``etrace`` setting.")
    channel_first = property(lambda self: self.conv.channel_first)

    def _etrace_layout(self) -> dict:
        return self.conv._etrace_layout()

    def _etrace_instant(self, taps: Any, df: Any, raw: dict, bias_scale: float | None) -> dict:
        conv = self.conv
        lead = df.shape[:df.ndim - len(self.out_size)]
        d = _braintrace.channels_last(jnp.reshape(df, (-1,) + df.shape[len(lead):]), self)
        k, other = conv.kernel_size[0], taps.shape[taps.ndim - self.num_spatial_dims:-1]
        frames = jnp.moveaxis(jnp.reshape(taps, (-1,) + other + (k, conv.in_channels)), -2, 1)  # (n, k, *other, C)
        windows = functional.patches(frames, self._taps_geometry, conv.padding_mode)[:, 0]  # one time position
        kernels = {k: v for k, v in raw.items() if k != 'bias'}
        out = _braintrace.shared_instant(windows, d, lambda **a: conv._kernels_of(a)[0], kernels, conv.groups)
        if 'bias' in raw:
            out['bias'] = _braintrace.bias_instant(d, raw['bias'], bias_scale, self._etrace_layout()['bias'])
        return {k: v.reshape(lead + v.shape[1:]) for k, v in out.items()}

    def _pack(self, taps: Any) -> Any:
        """The k gathered frames ``(*batch, *state layout)`` as ``(*batch, *other axes, k * C)``, channels
        ordered (tap, channel): the input of one step, of the rank of its output (which braintrace needs)."""
        nb = taps.ndim - len(self.state_size)
        if self.conv.channel_first:
            taps = jnp.moveaxis(taps, nb, -1)
        taps = jnp.moveaxis(taps, nb, -2)
        return taps.reshape(taps.shape[:-2] + (-1,))

    def _taps(self, buf: Any, x: Any, axis: int) -> Any:
        """Write ``x`` into the ring buffer; return the k frames the kernel's time taps read.

        Frame ``t`` goes to slot ``t % span``; tap ``i`` then reads frame
        ``t - (k - 1 - i) * rhs_dilation``.  Slots not written since the reset
        hold CAUSAL's zero pads.  The taps are gathered from the buffer after
        the write, so the write can happen in place.
        """
        if self.span == 1:
            return jnp.expand_dims(x, axis)
        k, d = self.conv.kernel_size[0], self.conv.rhs_dilation[0]
        pos = self.position.value
        if self._replicate:
            buf = jnp.where(self.first.value, jnp.broadcast_to(jnp.expand_dims(x, axis), buf.shape), buf)
            self.first.value = jnp.zeros((), bool)
        buf = lax.dynamic_update_index_in_dim(buf, x, pos, axis)
        self.buffer.value = _units.attach(buf, self._unit)
        self.position.value = (pos + 1) % self.span
        back = jnp.asarray(d * np.arange(k - 1, -1, -1), jnp.int32)
        return jnp.take(buf, (pos - back) % self.span, axis=axis, mode='clip')  # indices are in range

    def _step(self, taps: Any, w: Any) -> Any:
        """The convolution's output at one time step from its packed k time taps (one batch axis).

        The taps, folded into the channels (:meth:`_pack`), are ordered group by group, leaving a
        convolution over the other spatial axes (run by the convolution's own functional op and
        lowering) or, in 1-d, one grouped matrix product.
        """
        conv, spec = self.conv, self.conv.spec
        k, groups = spec.geometry.kernel_size[0], spec.groups
        taps, w = functional._common_dtype(taps, w)
        n, other, cin_g = taps.shape[0], taps.shape[1:-1], spec.in_channels // groups
        xf = taps
        if groups > 1:  # (tap, group, c) -> (group, tap, c)
            xf = jnp.swapaxes(taps.reshape((n,) + other + (k, groups, cin_g)), -3, -2)
            xf = xf.reshape((n,) + other + (groups * k * cin_g,))
        wf = jnp.moveaxis(w, 0, -3)
        wf = wf.reshape(wf.shape[:-3] + (k * cin_g, spec.out_channels))
        if not other and _lowering.resolve(conv._lowering, _POINT, groups, xf.shape[-1], spec.out_channels) == 'event':
            # 1-d spikes: the matrix product as a one-position convolution, so the event kernel runs it
            y = functional.conv_resolved(xf[:, None], wf[None], _POINT, groups, 'ZEROS', False, conv.precision, 'event')
            return y[:, 0]
        if not other:  # 1-d: (n, g, k * cin_g) times (g, k * cin_g, cout // g), one matmul when g == 1
            acc = jnp.float32 if jnp.dtype(xf.dtype).itemsize < 4 else None
            if groups == 1:
                y = jnp.matmul(xf, wf, precision=conv.precision, preferred_element_type=acc)
            else:
                y = jnp.einsum('ngi,gio->ngo', xf.reshape(n, groups, k * cin_g),
                               jnp.moveaxis(wf.reshape(k * cin_g, groups, -1), 1, 0), precision=conv.precision,
                               preferred_element_type=acc)
            return y.reshape(n, spec.out_channels).astype(xf.dtype)
        y = functional.conv_resolved(xf, wf, self._rest, groups, spec.padding_mode, False, conv.precision,
                                     conv._lowering)
        return jnp.moveaxis(y, -1, 1) if spec.channel_first else y

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({type(self.conv).__name__}, frame {self.in_size} -> {self.out_size}, "
                f"state {self.state_size}, params={self.num_params})")


Conv._streaming_class = StreamingConv   # what Conv.streaming() makes (layers.py cannot import this module)
