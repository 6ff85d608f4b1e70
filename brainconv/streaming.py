"""Streaming convolution: a :class:`~brainconv.Conv` stepped through time, one frame per call.

The first spatial axis of the convolution is time.  :class:`StreamingConv`
keeps the last ``span - 1 = (k - 1) * rhs_dilation`` input frames in a
``brainstate.HiddenState`` and, at each ``update``, convolves the window of
those frames and the new one, a VALID convolution on the time axis whose
output has length 1, with the convolution's own kernel, bias, padding on the
other axes and lowering.  Stepping through T frames reproduces the causal
convolution of the whole (T, ...) sequence, so the layer can sit inside a
``brainstate.transform.for_loop`` beside neuron models.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence, Tuple, Union

import brainstate
import jax.numpy as jnp
from jax import lax

from . import _args, _units, functional
from .layers import Conv
from .shapes import conv_geometry, kernel_span

__all__ = ['StreamingConv']

BatchSize = Union[int, Sequence[int], None]


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
    ``brainstate.HiddenState`` of zeros (CAUSAL's zero pads) holding the last
    ``span - 1`` input frames, shaped ``(*batch, *state_size)``;
    ``reset_state`` zeroes it.  Each ``update(x)`` takes one frame of shape
    ``(*batch, *in_size)`` (the convolution's ``in_size`` without the time axis)
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
    non-causal time padding, and a padding mode other than 'ZEROS' when the time
    axis is padded (REFLECT and CIRCULAR would read frames that have not
    arrived).

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
    ((4,), (8,), (4, 4))
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
        self.state_size = spec.in_size[:t] + (self.span - 1,) + spec.in_size[t + 1:]
        # The window: span frames, VALID on time (one output position), the rest as the convolution.
        window_in = spec.in_size[:t] + (self.span,) + spec.in_size[t + 1:]
        window = conv_geometry((self.span,) + g.in_spatial[1:], g.kernel_size, g.stride,
                               ((0, 0),) + g.pads[1:], g.lhs_dilation, g.rhs_dilation)
        self.window_spec = dataclasses.replace(spec, in_size=window_in, padding=window.pads, geometry=window)
        self._unit = None

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
        """Create ``buffer``: zeros of shape ``(*batch, *state_size)``.

        ``batch_size`` is None (no batch axis), an int, or a tuple of ints
        (several batch axes).  ``unit`` (a brainunit Unit) is the unit of the
        input frames, when they are Quantities; ``dtype`` defaults to
        ``brainstate.environ.dftype()``, and frames are cast to it.
        """
        batch = self._batch_shape(batch_size)
        self._unit = _units.unit_arg(unit, 'unit')
        dtype = brainstate.environ.dftype() if dtype is None else dtype
        self.buffer = brainstate.HiddenState(_units.attach(jnp.zeros(batch + self.state_size, dtype), self._unit))

    def reset_state(self, batch_size: BatchSize = None, **kwargs) -> None:
        """Zero ``buffer``; with ``batch_size`` given, reshape it for that batch too."""
        value, _ = _units.split(self._buffer_state().value)
        shape = value.shape if batch_size is None else self._batch_shape(batch_size) + self.state_size
        self.buffer.value = _units.attach(jnp.zeros(shape, value.dtype), self._unit)

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
        nb = _args.input_array(jnp.shape(xm), jnp.result_type(xm), self.in_size, name)
        buf, _ = _units.split(state.value)
        batch = tuple(buf.shape[:buf.ndim - len(self.state_size)])
        if tuple(jnp.shape(xm)[:nb]) != batch:
            raise ValueError(f"{name}: the input's batch shape {tuple(jnp.shape(xm)[:nb])} differs from the "
                             f"state's {batch}; call init_state(batch_size={_batch_hint(xm, nb)})")
        t = self.time_axis - len(self.state_size)  # the time axis, counted from the end
        window = jnp.concatenate([buf, jnp.expand_dims(jnp.asarray(xm, buf.dtype), t)], axis=t)
        state.value = _units.attach(lax.slice_in_dim(window, 1, self.span, axis=window.ndim + t), self._unit)

        params = conv.weight.value
        w, w_unit = conv._kernel_mantissa(params)
        out_unit = _units.product(self._unit, w_unit)
        bias = _units.bias_mantissa(params['bias'], out_unit, name) if 'bias' in params else None
        spec = self.window_spec

        def run(batched):
            y = functional.conv_resolved(batched, w, spec.geometry, spec.groups, spec.padding_mode,
                                         spec.channel_first, conv.precision, conv._lowering)
            return y if bias is None else y + jnp.reshape(bias, (1,) * (y.ndim - jnp.ndim(bias)) + jnp.shape(bias))

        y = functional._with_batch(run, window, len(self.state_size))
        return _units.attach(jnp.squeeze(y, axis=t), out_unit)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({type(self.conv).__name__}, frame {self.in_size} -> {self.out_size}, "
                f"state {self.state_size}, params={self.num_params})")


def _batch_hint(x: Any, nb: int) -> Any:
    shape = tuple(jnp.shape(x)[:nb])
    return None if not shape else shape[0] if len(shape) == 1 else shape
