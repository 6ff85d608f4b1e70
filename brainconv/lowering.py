"""Exact formulations ("lowerings") of one convolution, and the rule that picks one.

Every formulation here computes the same *core* convolution: channel-last
input ``(N, *spatial, C_in)`` with exactly one batch axis, kernel
``(*kernel_size, C_in // groups, C_out)``, zero padding by the (possibly
negative) ``pads`` of a non-transposed :class:`~brainconv.shapes.ConvGeometry`,
window stride, lhs and rhs dilation, ``groups``.  A transposed convolution is
handed over as the lhs-dilated convolution that computes it
(:func:`brainconv.shapes.transpose_as_conv`); padding modes other than ZEROS
pad first.  The formulations:

``'lax'``
    One ``lax.conv_general_dilated`` call; XLA derives the gradients.  What
    brainstate, flax and equinox do, and the default on every backend where
    nothing was measured (GPU, TPU).
``'lax_vjp'``
    The same call, with the zero pads always handed to it (an all-zero
    window goes to one axis padded by its stride, the extra output cropped;
    in jaxlib < 0.12 a few extra rows where that moves a 2-d convolution off
    XLA:CPU's single-threaded YNNPACK kernel, :func:`_ynn_escape`), and its
    own gradients: the input gradient is the adjoint convolution lowered
    the same way, the weight gradient a sum over windows of output rows of
    ``im2col(x)^T @ grad`` (per-tap products, summed in one variadic reduce,
    for depthwise kernels; XLA's own for 1-d ungrouped kernels).
``'im2col'``
    Per window of output rows, the kernel taps' strided slices stacked into
    patches, then one matmul; the gradients above.
``'taps'``
    Shift-multiply-add: one strided slice of the input per kernel tap,
    multiplied into that tap's weights (elementwise for depthwise kernels, a
    grouped matmul otherwise) and summed; the gradients above.
``'fold'``
    The taps of the first spatial axis folded into the channels, leaving an
    (N-1)-d convolution (a matmul for 1-d) on ``'lax_vjp'``'s path; the
    gradients above.
``'event'``
    Event-driven (:mod:`brainconv._event`): a native CPU kernel that loops
    over the non-zero inputs only and adds each one's kernel slice into the
    outputs it reaches, so its cost follows the number of spikes; its kernel
    gradient sums over the same non-zeros.  Density is known only at run
    time: the non-zeros are counted and the dense formulation ``'auto'``
    would pick runs instead where a measured cost model predicts it faster
    (:func:`_event_map`), so the event path is never the slower one.  Its
    input gradient (the output gradient is dense) and its tangents of dense
    operands run densely.  ``'auto'`` picks it on CPU for spike inputs
    (boolean, integer or brainevent ``BinaryArray``) where the kernels are
    available; float spikes opt in with ``lowering='event'``.  Off CPU, in a
    program over several devices (the kernel is a single-device custom call,
    which the partitioner would gather every operand for), or without the
    kernels, it runs densely.
``'fft'``
    Real FFTs of the padded input and the kernel, a per-frequency channel
    contraction, an inverse FFT (:mod:`brainconv._fft`; stride by
    space-to-depth, short kernels transformed by DFT matmuls); its kernel
    gradient the same way.  Cost nearly independent of the kernel size: for
    long kernels.

In every formulation but ``'lax'`` and ``'fft'`` an lhs-dilated convolution (every
transposed convolution with stride > 1, and the input gradient of every
strided one) is split into its sub-pixel phases
(:func:`brainconv.shapes.axis_phases`): each phase is a plain convolution of
the undilated input with a subset of the taps, so no multiply ever touches an
inserted zero.  (``'lax_vjp'`` in 2-d keeps XLA's lhs-dilated forward, which
runs well -- config f 3.2-6.3 ms, phases 4.7 ms -- and splits only its
weight gradient.)

Which formulation runs is decided per call by :func:`resolve`: an explicit
name, else the global setting (:func:`set_lowering`, :func:`use_lowering`),
else ``'auto'``, which on CPU follows the rules in :func:`choose` (measured by
``benchmarks/bench_cpu.py``; numbers in ``docs/performance.md``) and elsewhere
gives ``'lax'``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import itertools
import math
import os
from typing import Any, Callable, Iterator, List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax._src import dispatch
from jax.core import ShapedArray
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from . import _args, _braintrace, _event, _fft
from .shapes import ConvGeometry, Phase, adjoint_geometry, axis_phases, conv_out_length, kernel_span

__all__ = ['LOWERINGS', 'set_lowering', 'get_lowering', 'use_lowering', 'choose', 'resolve', 'conv_core']

#: The formulation names a layer's or op's ``lowering`` argument accepts (besides 'auto' and None).
LOWERINGS = _args.LOWERINGS

_GLOBAL = {'lowering': 'auto'}

#: Bytes of patches one scan step of the im2col forward and of the weight
#: gradient works on (a quarter of it, of input rows, for depthwise kernels),
#: so that a step stays in cache.  Weight gradients measured
#: (benchmarks/bench_cpu.py shapes): config g's second convolution (32->64 on
#: 28x28, batch 64) all patches at once 51-55 ms, 1 MiB steps 20-25 ms, 4 MiB
#: 20-21 ms, XLA's own 255 ms; config e (3-d) 1 MiB 9.8 ms, 2 MiB 8.9 ms,
#: 4 MiB 10.7 ms, 16 MiB 40 ms; depthwise config c 512 KiB or 1 MiB of input
#: rows 12.4 ms, 4 MiB 29 ms.
CHUNK_BYTES = 2 ** 21


# --------------------------------------------------------------------------- #
# Choosing a formulation
# --------------------------------------------------------------------------- #

#: True while a layer or op with a spike input (boolean, integer, ``BinaryArray``) is traced:
#: ``'auto'`` then picks ``'event'`` (:func:`resolve`).
_SPIKES = contextvars.ContextVar('brainconv_spike_input', default=False)
#: ``'event'`` or ``'dense'`` forces that branch of the event formulation's run-time switch
#: (:func:`event_branch`); None: the switch decides by the non-zero count.
_EVENT_BRANCH = contextvars.ContextVar('brainconv_event_branch', default=None)


@contextlib.contextmanager
def spike_input(spikes: bool) -> Iterator[None]:
    """Inside the block, convolutions being traced read spikes (``'auto'`` may pick ``'event'``).
    The layers set it themselves for boolean, integer and ``BinaryArray`` inputs."""
    token = _SPIKES.set(bool(spikes) or _SPIKES.get())
    try:
        yield
    finally:
        _SPIKES.reset(token)


@contextlib.contextmanager
def event_branch(branch: str | None) -> Iterator[None]:
    """Force one branch of ``'event'``'s run-time density switch while tracing: ``'event'`` (the
    event kernel whatever the density), ``'dense'``, or None (the switch decides).  For tests
    and benchmarks: the result is the same either way, only the time differs."""
    if branch not in (None, 'event', 'dense'):
        raise ValueError(f"branch must be 'event', 'dense' or None, got {branch!r}")
    token = _EVENT_BRANCH.set(branch)
    try:
        yield
    finally:
        _EVENT_BRANCH.reset(token)


def trace_context() -> Tuple[str, bool, str | None]:
    """What the formulation of a convolution traced now depends on besides its own arguments: the
    global lowering, whether its input is spikes, the forced event branch.  Hashable, so that an
    operation traced again later (the braintrace ETP primitive's impl, when it is lowered) can
    :func:`restore_context` it and run the formulation chosen when it was bound."""
    return _GLOBAL['lowering'], _SPIKES.get(), _EVENT_BRANCH.get()


@contextlib.contextmanager
def restore_context(context: Tuple[str, bool, str | None]) -> Iterator[None]:
    """Inside the block, :func:`trace_context` is ``context``."""
    previous = _GLOBAL['lowering']
    _GLOBAL['lowering'] = context[0]
    tokens = _SPIKES.set(context[1]), _EVENT_BRANCH.set(context[2])
    try:
        yield
    finally:
        _GLOBAL['lowering'] = previous
        _SPIKES.reset(tokens[0])
        _EVENT_BRANCH.reset(tokens[1])


def set_lowering(name: str | None) -> None:
    """Set the global lowering used where a layer or op leaves ``lowering=None``.

    ``name`` is one of :data:`LOWERINGS`, ``'auto'`` (the measured per-backend
    choice, the initial setting) or None (same as ``'auto'``).
    """
    _GLOBAL['lowering'] = _args.lowering(name) or 'auto'


def get_lowering() -> str:
    """The global lowering setting: ``'auto'`` or one of :data:`LOWERINGS`."""
    return _GLOBAL['lowering']


@contextlib.contextmanager
def use_lowering(name: str | None) -> Iterator[None]:
    """Context manager: the global lowering is ``name`` inside the block.

    The choice is made when a convolution is traced, so wrap the first call
    (the one ``jax.jit`` traces), not a later call of an already compiled
    function.
    """
    previous = _GLOBAL['lowering']
    set_lowering(name)
    try:
        yield
    finally:
        _GLOBAL['lowering'] = previous


def choose(geometry: ConvGeometry, groups: int, in_channels: int, out_channels: int,
           backend: str) -> str:
    """The ``'auto'`` choice for one convolution on ``backend``.

    Off CPU nothing was measured, so the direct call.  On CPU each rule names
    the measurements that decided it (``benchmarks/bench_cpu.py --lowerings``
    on a 2-core AMD EPYC; ratios are medians of per-round ratios against raw
    lax, forward / forward+backward; docs/performance.md has the tables).
    Every rule was measured on jaxlib 0.10.2 and, unless it says otherwise,
    holds on 0.12 too; the one rule that depends on the line is keyed on
    :data:`YNN_SINGLE_THREADED` (jaxlib < 0.12), the one switch between them:

    * long kernels: ``'fft'`` where :func:`brainconv._fft.fft_wins` (stride 1,
      no dilation; from 48 taps in 1-d, 81 in 2-d dense, 121 depthwise --
      config i (1-d, 257 taps) 0.05-0.27 / 0.11-0.21, config j (depthwise
      31x31) 0.02 / 0.02);
    * any other kernel of more than :data:`brainconv._fft.TAPS_MAX` taps:
      ``'lax'``, whose program does not grow with the taps ('taps' at 225
      depthwise taps: 0.67 / 0.47 but 21 s to compile; at 257 1-d taps 84 s);
    * depthwise (one input channel per group, groups > 1): ``'taps'`` --
      config c: 0.03 / 0.06 (lax 132 / 412 ms);
    * grouped (several input channels per group): ``'im2col'`` -- 32x32x64,
      groups 16: 0.39 / 0.03 (lax 98 / 3045 ms); groups 4: 0.49 / 0.10;
    * 3-d: ``'fold'`` -- config e: 0.24 / 0.31 (XLA:CPU runs 3-d convolutions
      as a naive loop, 2-d ones through Eigen); and in jaxlib < 0.12 strided
      2-d convolutions of at most 4 input channels (:func:`_thin_strided_2d`;
      config b 0.47 / 0.88);
    * everything else: ``'lax_vjp'`` -- forward the same as lax except that a
      VALID window never reaches XLA (config h-circ 0.39), forward+backward
      config a 0.30, f (transposed, phases) 0.12, h-circ 0.43, h-refl 0.56,
      b 0.90, d 0.94.  ``'im2col'`` loses on thin inputs (config b: 2.85 /
      1.97) and ``'fold'`` on 2-d forwards (config a: 1.54).  jaxlib 0.12
      (2026-12-04): a 1.02 / 1.03, b 0.56 / 0.93, d 0.98 / 0.91, f 1.30 /
      0.11, h-circ 0.98 / 1.07, h-refl 1.11 / 1.26 (``'lax'`` itself 1.03 /
      1.12 there); its kernel gradient never uses XLA's own, which runs
      60-200x slower in a loop body (:func:`_weight_grad_canonical`), so it
      stays the default where it is within noise of ``'lax'`` at the top level.
    """
    if backend != 'cpu':
        return 'lax'
    if _fft.fft_wins(geometry, groups, in_channels, out_channels):
        return 'fft'
    if _fft.taps_too_many(geometry):
        return 'lax'
    if groups > 1:
        return 'taps' if in_channels == groups else 'im2col'
    if geometry.num_spatial_dims == 3 or _thin_strided_2d(geometry, in_channels):
        return 'fold'
    return 'lax_vjp'


def _thin_strided_2d(geometry: ConvGeometry, in_channels: int) -> bool:
    """A strided 2-d convolution of at most 4 input channels, where YNNPACK runs on one thread
    (:data:`YNN_SINGLE_THREADED`) and :func:`_ynn_escape` does not apply: ``'fold'`` makes it a
    1-d convolution of 3x the channels, which XLA:CPU runs on every core (config b, 3 -> 32
    channels, stride 2: forward 1.22 ms against 2.75 ms, forward+backward 3.64 against 3.12
    ('lax_vjp') and 4.13 (raw lax); stride 1 or 8 input channels: no gain, and at stride 1 the
    input gradient (3 output channels) runs 3.7x slower)."""
    return (YNN_SINGLE_THREADED and geometry.num_spatial_dims == 2 and in_channels <= 4
            and geometry.stride[0] > 1 and not _lhs_dilated(geometry))


def resolve(lowering: str | None, geometry: ConvGeometry, groups: int, in_channels: int, out_channels: int,
            backend: str | None = None) -> str:
    """The formulation that runs: ``lowering`` if it names one, else the global
    setting, and ``'auto'`` through :func:`choose` for ``backend`` (default:
    ``jax.default_backend()``)."""
    name = _args.lowering(lowering) or _GLOBAL['lowering']
    if name != 'auto':
        return name
    backend = backend or jax.default_backend()
    if _SPIKES.get() and backend == 'cpu' and _event.available():
        return 'event'
    return choose(geometry, groups, in_channels, out_channels, backend)


# --------------------------------------------------------------------------- #
# Shared pieces
# --------------------------------------------------------------------------- #

def _dimension_numbers(nd: int) -> lax.ConvDimensionNumbers:
    spatial = tuple(range(1, nd + 1))
    lhs = (0, nd + 1) + spatial
    return lax.ConvDimensionNumbers(lhs, (nd + 1, nd) + tuple(range(nd)), lhs)


def _pad(x: jax.Array, pads: Sequence[Tuple[int, int]]) -> jax.Array:
    """Zero-pad (or, for negative pads, crop) the spatial axes of a channel-last batch."""
    if all(lo == 0 and hi == 0 for lo, hi in pads):
        return x
    config = [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in pads] + [(0, 0, 0)]
    return lax.pad(x, jnp.zeros((), x.dtype), config)


def _tap_slices(xe: jax.Array, g: ConvGeometry) -> Iterator[jax.Array]:
    """For each kernel tap (row-major), the strided slice of the padded input it reads."""
    n_batch, channels = xe.shape[0], xe.shape[-1]
    for tap in itertools.product(*(range(k) for k in g.kernel_size)):
        start = [t * d for t, d in zip(tap, g.rhs_dilation)]
        limit = [b + (o - 1) * s + 1 for b, o, s in zip(start, g.out_spatial, g.stride)]
        yield lax.slice(xe, [0] + start + [0], [n_batch] + limit + [channels], [1] + list(g.stride) + [1])


def _tap_product(xs: jax.Array, wt: jax.Array, groups: int, precision: Any) -> jax.Array:
    """One tap's contribution: ``xs`` ``(..., C_in)`` times ``wt`` ``(C_in // groups, C_out)``."""
    cin_g, cout = wt.shape
    if groups == 1:
        return lax.dot_general(xs, wt, (((xs.ndim - 1,), (0,)), ((), ())), precision=precision)
    if cin_g == 1:
        multiplier = cout // xs.shape[-1]
        xs = xs if multiplier == 1 else jnp.repeat(xs, multiplier, axis=-1)
        return xs * wt[0].reshape((1,) * (xs.ndim - 1) + (cout,))
    cout_g = cout // groups
    xs = xs.reshape(xs.shape[:-1] + (groups, cin_g))
    y = jnp.einsum('...gi,igo->...go', xs, wt.reshape(cin_g, groups, cout_g), precision=precision)
    return y.reshape(y.shape[:-2] + (cout,))


def _patch_matmul(cols: jax.Array, wt: jax.Array, groups: int, precision: Any) -> jax.Array:
    """Patches ``(..., T, C_in)`` times the kernel ``(T, C_in // groups, C_out)``."""
    taps, cin_g, cout = wt.shape
    lead = cols.shape[:-2]
    if groups == 1:
        return lax.dot_general(cols.reshape(lead + (taps * cin_g,)), wt.reshape(taps * cin_g, cout),
                               (((len(lead),), (0,)), ((), ())), precision=precision)
    cout_g = cout // groups
    cols = cols.reshape(lead + (taps, groups, cin_g))
    y = jnp.einsum('...tgi,tigo->...go', cols, wt.reshape(taps, cin_g, groups, cout_g), precision=precision)
    return y.reshape(lead + (cout,))


def _row_plan(g: ConvGeometry, per_row_bytes: int) -> Tuple[int, int]:
    """``(rows, steps)``: output rows of the first spatial axis per scan step, and steps."""
    out0 = g.out_spatial[0]
    rows = max(1, min(out0, CHUNK_BYTES // max(1, per_row_bytes)))
    return rows, -(-out0 // rows)


def _row_windows(xe: jax.Array, g: ConvGeometry, rows: int, steps: int) -> Tuple[ConvGeometry, Callable]:
    """The geometry of a window of ``rows`` output rows, and ``window(i)``: the rows of the
    padded input (extended with zeros to fit ``steps`` windows) that step ``i`` reads."""
    s0, span0 = g.stride[0], kernel_span(g.kernel_size[0], g.rhs_dilation[0])
    need = (rows * steps - 1) * s0 + span0
    xe = _pad(xe, [(0, max(0, need - xe.shape[1]))] + [(0, 0)] * (g.num_spatial_dims - 1))
    size = (rows - 1) * s0 + span0

    def window(i):
        return lax.dynamic_slice_in_dim(xe, i * (rows * s0), size, axis=1)

    return dataclasses.replace(g, out_spatial=(rows,) + tuple(g.out_spatial[1:])), window


def _map_rows(block: Callable, xe: jax.Array, g: ConvGeometry, per_row_bytes: int) -> jax.Array:
    """``block(window, geometry)`` over windows of output rows of the first spatial axis (one
    scan, each step's patches cache-sized), written into one output.  Rows, not batch chunks:
    a batch axis sharded over devices stays sharded (no all-gather; tests/test_sharding.py)."""
    rows, steps = _row_plan(g, per_row_bytes)
    if steps == 1:
        return block(xe, g)
    g_rows, window = _row_windows(xe, g, rows, steps)
    shape = jax.eval_shape(lambda xb: block(xb, g_rows), window(0))
    out = jnp.zeros(shape.shape[:1] + (rows * steps,) + shape.shape[2:], shape.dtype)

    def step(y, i):
        return lax.dynamic_update_slice_in_dim(y, block(window(i), g_rows), i * rows, axis=1), None

    out, _ = lax.scan(step, out, jnp.arange(steps))
    return lax.slice_in_dim(out, 0, g.out_spatial[0], axis=1)


def _sum_rows(block: Callable, xe: jax.Array, gy: jax.Array, g: ConvGeometry, per_row_bytes: int) -> jax.Array:
    """The sum over windows of output rows of ``block(window, grad rows, geometry)`` (one scan)."""
    rows, steps = _row_plan(g, per_row_bytes)
    if steps == 1:
        return block(xe, gy, g)
    g_rows, window = _row_windows(xe, g, rows, steps)
    gy = _pad(gy, [(0, rows * steps - gy.shape[1])] + [(0, 0)] * (g.num_spatial_dims - 1))
    shape = jax.eval_shape(lambda xb, gb: block(xb, gb, g_rows), window(0), gy[:, :rows])

    def step(acc, i):
        return acc + block(window(i), lax.dynamic_slice_in_dim(gy, i * rows, rows, axis=1), g_rows), None

    total, _ = lax.scan(step, jnp.zeros(shape.shape, shape.dtype), jnp.arange(steps))
    return total


def _itemsize(x: jax.Array) -> int:
    return jnp.dtype(x.dtype).itemsize


# --------------------------------------------------------------------------- #
# Forward formulations (no lhs dilation -- phases are split off before -- but
# for 'lax_vjp' in 2-d)
# --------------------------------------------------------------------------- #

def lax_conv(x: jax.Array, w: jax.Array, **kwargs: Any) -> jax.Array:
    """``lax.conv_general_dilated``, accumulating 16-bit inputs in float32 (the ``'lax'`` formulation)."""
    dtype = x.dtype
    if accumulation_dtype(dtype) == dtype:
        return lax.conv_general_dilated(x, w, **kwargs)
    return lax.conv_general_dilated(x, w, preferred_element_type=jnp.float32, **kwargs).astype(dtype)


def direct(x: jax.Array, w: jax.Array, g: ConvGeometry, groups: int, precision: Any = None) -> jax.Array:
    """The core convolution as one ``lax.conv_general_dilated`` call (``'lax'``)."""
    return lax_conv(
        x, w, window_strides=g.stride, padding=g.pads, lhs_dilation=g.lhs_dilation,
        rhs_dilation=g.rhs_dilation, dimension_numbers=_dimension_numbers(g.num_spatial_dims),
        feature_group_count=groups, precision=precision)


#: jaxlib releases before 0.12 run XLA:CPU's YNNPACK convolutions on one thread (config a's
#: forward: 15.2 ms of wall and 15.2 ms of CPU time on 2 cores, jaxlib 0.10.2; 8.9 ms wall and
#: 17.5 ms CPU in jaxlib 0.12), while the Eigen convolution XLA falls back to runs on every
#: core (8.6 ms wall, 16.9 ms CPU).  See :func:`_ynn_escape`.
YNN_SINGLE_THREADED = (tuple(int(p) for p in jax.lib.__version__.split('.')[:2]) < (0, 12)
                       and (os.cpu_count() or 1) > 1)

#: The largest fraction of extra output rows :func:`_ynn_escape` computes to leave YNNPACK's
#: single thread (on 2 cores the Eigen path runs 1.76x faster; 3 extra rows of 32: 9%).
YNN_ESCAPE_MAX_EXTRA = 0.25

#: The fewest input and output channels for which :func:`_ynn_escape` leaves YNNPACK: Eigen's
#: convolution is slower on thin ones (32x32, k3, batch 32, Eigen / YNNPACK: 4 -> 64 channels
#: 1.88, 8 -> 64 0.98, 16 -> 64 0.79, 64 -> 8 1.38, 64 -> 16 0.87, 64 -> 64 0.57; 1x1 kernels 1.13).
YNN_ESCAPE_MIN_CHANNELS = 16


def _ynn_escape(x: jax.Array, w: jax.Array, pads: Sequence[Tuple[int, int]], g: ConvGeometry):
    """``(axis, rows)``: the extra output rows along ``axis`` that take one convolution off
    XLA:CPU's single-threaded YNNPACK path, or None.

    XLA:CPU (``xla/backends/cpu/ynn_support.cc``) hands a 2-d float32/float64
    convolution without lhs dilation and with more than 16 channels on either
    side to YNNPACK unless an output axis is longer than its input axis; in
    jaxlib < 0.12 that kernel runs on one thread (:data:`YNN_SINGLE_THREADED`).
    Padding one axis low by ``rows * stride`` makes its output ``rows`` longer,
    longer than the input, so XLA runs Eigen's multi-threaded convolution; the
    caller crops those rows.  Only where Eigen is the faster kernel (at least
    :data:`YNN_ESCAPE_MIN_CHANNELS` channels in and out, more than one tap),
    only if the extra rows are at most :data:`YNN_ESCAPE_MAX_EXTRA` of the
    output (the axis with the fewest, relatively, is taken), and only while
    lowering for CPU (the primitives register a CPU lowering of their own).
    """
    nd = g.num_spatial_dims
    if (not YNN_SINGLE_THREADED or not _LOWERING_FOR_CPU.get() or nd != 2 or _lhs_dilated(g)
            or x.dtype not in (jnp.float32, jnp.float64) or math.prod(g.kernel_size) == 1
            or min(x.shape[-1], w.shape[-1]) < YNN_ESCAPE_MIN_CHANNELS):
        return None
    best = None
    for axis in range(nd):
        n, k, d = x.shape[1 + axis], g.kernel_size[axis], g.rhs_dilation[axis]
        out = conv_out_length(n, k, g.stride[axis], *pads[axis], d=d)
        if out > n or kernel_span(k, d) > n:
            return None                                             # not a YNNPACK convolution
        rows = n + 1 - out
        if rows <= YNN_ESCAPE_MAX_EXTRA * out and (best is None or rows * best[2] < best[1] * out):
            best = (axis, rows, out)
    return None if best is None else best[:2]


def _forward_lax(x, w, g, groups, precision):
    """``lax.conv_general_dilated`` that never sees an all-zero (VALID) window, nor (jaxlib < 0.12)
    XLA:CPU's single-threaded YNNPACK path where leaving it costs few extra rows.

    XLA:CPU sends a convolution without padding to a slow kernel (config h:
    a VALID 3x3 convolution of a pre-padded 34x34x64 batch 81 ms, the same
    work as a pad-1 convolution 31 ms).  Negative pads are cropped first
    (without lhs dilation); if no pad is left, the last spatial axis is
    padded low by its stride and the one extra output cropped.  The extra
    rows of :func:`_ynn_escape` are padded and cropped the same way.
    """
    nd = g.num_spatial_dims
    pads = list(g.pads)
    if all(ld == 1 for ld in g.lhs_dilation):  # (lhs-dilated: pads count dilated positions; lax crops)
        x = _pad(x, [(min(lo, 0), min(hi, 0)) for lo, hi in g.pads])
        pads = [(max(lo, 0), max(hi, 0)) for lo, hi in g.pads]
    axis, rows = _ynn_escape(x, w, pads, g) or (nd - 1, int(all(p == (0, 0) for p in pads)))
    if rows:
        pads[axis] = (pads[axis][0] + rows * g.stride[axis], pads[axis][1])
    y = lax.conv_general_dilated(
        x, w, window_strides=g.stride, padding=pads, lhs_dilation=g.lhs_dilation, rhs_dilation=g.rhs_dilation,
        dimension_numbers=_dimension_numbers(nd), feature_group_count=groups, precision=precision)
    return lax.slice_in_dim(y, rows, y.shape[axis + 1], axis=axis + 1) if rows else y


def _materialise(y: jax.Array) -> jax.Array:
    """``y`` unchanged, through an op YNNPACK does not take (``reduce_precision`` to the dtype's
    own precision: the identity), so that XLA:CPU cannot pull the elementwise ops that computed
    ``y`` into a YNNPACK fusion with a reduction that consumes it.  Config c's shift-multiply-add
    followed by a ``jnp.vdot`` loss ran as one YNNPACK graph in 39 ms (the forward alone: 2.2 ms,
    the vdot alone 0.9 ms); through this, 9.5 ms.  (``lax.optimization_barrier`` does not help:
    XLA:CPU removes it before fusion.)"""
    info = jnp.finfo(y.dtype)
    return lax.reduce_precision(y, exponent_bits=info.nexp, mantissa_bits=info.nmant)


def _forward_taps(x, w, g, groups, precision):
    """Shift-multiply-add (:func:`_materialise`-d)."""
    xe = _pad(x, g.pads)
    wt = w.reshape((-1,) + w.shape[-2:])
    y = None
    for i, xs in enumerate(_tap_slices(xe, g)):
        term = _tap_product(xs, wt[i], groups, precision)
        y = term if y is None else y + term
    return _materialise(y)


def _forward_im2col(x, w, g, groups, precision):
    xe = _pad(x, g.pads)
    wt = w.reshape((-1,) + w.shape[-2:])

    def block(xb, gb):
        return _patch_matmul(jnp.stack(list(_tap_slices(xb, gb)), axis=-2), wt, groups, precision)

    per_row = x.shape[0] * math.prod(g.out_spatial[1:]) * wt.shape[0] * x.shape[-1] * _itemsize(x)
    return _map_rows(block, xe, g, per_row)


def _forward_fold(x, w, g, groups, precision):
    """Fold the first spatial axis's taps into the channels; an (N-1)-d convolution is left."""
    nd = g.num_spatial_dims
    if nd == 1:
        return _forward_im2col(x, w, g, groups, precision)
    k0, s0, d0, out0 = g.kernel_size[0], g.stride[0], g.rhs_dilation[0], g.out_spatial[0]
    xe = _pad(x, [g.pads[0]] + [(0, 0)] * (nd - 1))
    cin = x.shape[-1]
    cin_g = cin // groups
    slices = [lax.slice_in_dim(xe, t * d0, t * d0 + (out0 - 1) * s0 + 1, stride=s0, axis=1) for t in range(k0)]
    xf = jnp.stack(slices, axis=-2)                                # (N, out0, *rest, k0, C)
    rest = xf.shape[2:-2]
    xf = xf.reshape(xf.shape[:-2] + (k0, groups, cin_g))
    xf = jnp.swapaxes(xf, -3, -2)                                  # channels ordered (group, tap, channel)
    xf = xf.reshape((x.shape[0] * out0,) + rest + (groups * k0 * cin_g,))
    wf = jnp.moveaxis(w, 0, nd - 1)                                # (*k_rest, k0, C_in // groups, C_out)
    wf = wf.reshape(wf.shape[:nd - 1] + (k0 * cin_g, w.shape[-1]))
    inner = ConvGeometry(g.in_spatial[1:], g.out_spatial[1:], g.kernel_size[1:], g.stride[1:], g.pads[1:],
                         g.lhs_dilation[1:], g.rhs_dilation[1:])
    y = _forward_lax(xf, wf, inner, groups, precision)
    return y.reshape((x.shape[0], out0) + y.shape[1:])


# --------------------------------------------------------------------------- #
# Backward: adjoint convolution and chunked weight gradient
# --------------------------------------------------------------------------- #

def adjoint_kernel(w: jax.Array, groups: int) -> jax.Array:
    """The kernel of the input-gradient convolution: spatially flipped, and per
    group ``(C_in // g, C_out // g)`` transposed, laid out ``(*k, C_out // groups, C_in)``."""
    nd = w.ndim - 2
    k, cin_g, cout = w.shape[:nd], w.shape[-2], w.shape[-1]
    wa = w.reshape(k + (cin_g, groups, cout // groups))
    wa = jnp.transpose(wa, tuple(range(nd)) + (nd + 2, nd + 1, nd))
    wa = wa.reshape(k + (cout // groups, groups * cin_g))
    return jnp.flip(wa, axis=tuple(range(nd)))


def _add_all(a, b):
    return tuple(u + v for u, v in zip(a, b))


def weight_grad(x: jax.Array, gy: jax.Array, g: ConvGeometry, groups: int, precision: Any = None) -> jax.Array:
    """Gradient of the core convolution (no lhs dilation) with respect to its kernel.

    Summed over windows of output rows (:data:`CHUNK_BYTES` of patches each):
    ``patches^T @ grad`` per window, or for depthwise kernels (groups > 1)
    the per-tap products reduced in one variadic reduce (config c: 12 ms;
    XLA's own 410-500 ms).
    """
    nd = g.num_spatial_dims
    xe = _pad(x, g.pads)
    cin, cout = x.shape[-1], gy.shape[-1]
    cin_g = cin // groups
    taps = math.prod(g.kernel_size)
    zero = jnp.zeros((), jnp.result_type(x, gy))
    if cin_g == 1 and groups > 1:
        multiplier = cout // cin

        def block(xb, gb, gr):
            gb = gb.reshape(gb.shape[:-1] + (cin, multiplier))
            prods = tuple(xs[..., None] * gb for xs in _tap_slices(xb, gr))
            sums = lax.reduce(prods, (zero,) * taps, _add_all, tuple(range(1, nd + 1)))
            return jnp.sum(jnp.stack(sums), axis=1).reshape(taps, 1, cout)

        per_row = 4 * x.shape[0] * g.stride[0] * math.prod(xe.shape[2:]) * _itemsize(x)  # 1/4 of the budget
    else:
        def block(xb, gb, gr):
            cols = jnp.stack(list(_tap_slices(xb, gr)), axis=-2)
            rows = math.prod(cols.shape[:-2])
            if groups == 1:
                return lax.dot_general(cols.reshape(rows, taps * cin), gb.reshape(rows, cout),
                                       (((0,), (0,)), ((), ())), precision=precision).reshape(taps, cin, cout)
            dw = jnp.einsum('ptgi,pgo->tigo', cols.reshape(rows, taps, groups, cin_g),
                            gb.reshape(rows, groups, cout // groups), precision=precision)
            return dw.reshape(taps, cin_g, cout)

        per_row = x.shape[0] * math.prod(g.out_spatial[1:]) * taps * cin * _itemsize(x)
    dw = _sum_rows(block, xe, gy, g, per_row)
    return dw.reshape(tuple(g.kernel_size) + (cin_g, cout))


# --------------------------------------------------------------------------- #
# Phases
# --------------------------------------------------------------------------- #

def _phase_plan(g: ConvGeometry, split: Sequence[int] | None = None) -> Tuple[List[int], list]:
    """The sub-pixel phases of an lhs-dilated core convolution, along the axes ``split``
    (default: every axis; the others keep their lhs dilation).

    Returns the period of every axis and, per combination of per-axis phases,
    ``None`` (every tap of it reads inserted zeros) or ``(kernel index, output
    index, sub-geometry)``: the taps it uses, the outputs it gives, and the
    convolution of the undilated (along ``split``) input that gives them.
    """
    nd = g.num_spatial_dims
    split = range(nd) if split is None else split
    per_axis = []
    for a, (n, k, s, d, ld, (lo, hi), out) in enumerate(zip(
            g.in_spatial, g.kernel_size, g.stride, g.rhs_dilation, g.lhs_dilation, g.pads, g.out_spatial)):
        per_axis.append(axis_phases(n, k, s, d, ld, lo, out) if a in split
                        else (1, [Phase(0, out, 0, k, 1, s, d, (lo, hi))]))
    periods = [p for p, _ in per_axis]
    lhs = tuple(1 if a in split else ld for a, ld in enumerate(g.lhs_dilation))
    plan = []
    for combo in itertools.product(*(phases for _, phases in per_axis)):
        if any(ph.empty for ph in combo):
            plan.append(None)
            continue
        taps = tuple(slice(ph.first_tap, ph.first_tap + (ph.num_taps - 1) * ph.tap_step + 1, ph.tap_step)
                     for ph in combo)
        outs = (slice(None),) + tuple(slice(ph.residue, None, p) for ph, p in zip(combo, periods))
        sub = ConvGeometry(g.in_spatial, tuple(ph.count for ph in combo), tuple(ph.num_taps for ph in combo),
                           tuple(ph.stride for ph in combo), tuple(ph.pads for ph in combo), lhs,
                           tuple(ph.rhs_dilation for ph in combo))
        plan.append((taps, outs, sub))
    return periods, plan


def _phased(forward: Callable, x: jax.Array, w: jax.Array, g: ConvGeometry, groups: int,
            precision: Any, split: Sequence[int] | None = None) -> jax.Array:
    """An lhs-dilated core convolution as its sub-pixel phases along ``split`` (default: every
    axis), each by ``forward``, interleaved."""
    nd = g.num_spatial_dims
    periods, plan = _phase_plan(g, split)
    q = [-(-out // p) for out, p in zip(g.out_spatial, periods)]
    pieces: List[jax.Array] = []
    for entry in plan:
        if entry is None:
            pieces.append(jnp.zeros((x.shape[0],) + tuple(q) + (w.shape[-1],), x.dtype))
            continue
        taps, _, sub = entry
        piece = forward(x, w[taps], sub, groups, precision)
        pieces.append(_pad(piece, [(0, qa - c) for qa, c in zip(q, sub.out_spatial)]))
    y = jnp.stack(pieces).reshape(tuple(periods) + pieces[0].shape)
    order = [nd] + [i for a in range(nd) for i in (nd + 1 + a, a)] + [2 * nd + 1]
    y = jnp.transpose(y, order).reshape((x.shape[0],) + tuple(qa * p for qa, p in zip(q, periods)) + (w.shape[-1],))
    return lax.slice(y, (0,) * y.ndim, (y.shape[0],) + tuple(g.out_spatial) + (y.shape[-1],))


def _phased_weight_grad(x, gy, g, groups, precision):
    """The kernel gradient of an lhs-dilated core convolution, phase by phase (each tap
    belongs to at most one phase; one that reads only inserted zeros gets zero)."""
    _, plan = _phase_plan(g)
    dw = jnp.zeros(tuple(g.kernel_size) + (x.shape[-1] // groups, gy.shape[-1]), x.dtype)
    zero = jnp.zeros((), x.dtype)
    for entry in plan:
        if entry is not None:
            taps, outs, sub = entry
            block = weight_grad(x, gy[outs], sub, groups, precision)
            # the phase's taps are a strided sub-grid of the kernel: place the block there by
            # (interior) padding -- a scatter here crashes XLA:CPU under second-order autodiff
            config = [(t.start, k - 1 - (t.start + (n - 1) * t.step), t.step - 1)
                      for t, k, n in zip(taps, g.kernel_size, block.shape)] + [(0, 0, 0)] * 2
            dw = dw + lax.pad(block, zero, config)
    return dw


def _lhs_dilated(g: ConvGeometry) -> bool:
    return any(ld != 1 for ld in g.lhs_dilation)


# --------------------------------------------------------------------------- #
# The formulations, as (forward, weight gradient) pairs of plain functions
# --------------------------------------------------------------------------- #

def _forward_phased(forward: Callable, keep_2d_lhs_dilation: bool = False, first_axis_only: bool = False) -> Callable:
    """``forward`` for any core geometry: lhs-dilated ones split into phases first (along the
    first axis only for ``'fold'``, whose (N-1)-d rest XLA runs lhs-dilated: 2 phases instead of 8
    for a stride-2 3-d transposed convolution: a 3-d U-Net's step compiles in 4.9 -> 3.9 s)."""
    def run(x, w, g, groups, precision):
        if not _lhs_dilated(g):
            return forward(x, w, g, groups, precision)
        if keep_2d_lhs_dilation and g.num_spatial_dims == 2:
            return _forward_lax(x, w, g, groups, precision)
        if first_axis_only and g.num_spatial_dims > 1:
            if g.lhs_dilation[0] == 1:
                return forward(x, w, g, groups, precision)
            return _phased(forward, x, w, g, groups, precision, split=(0,))
        return _phased(forward, x, w, g, groups, precision)
    return run


#: Multiply-accumulates under which an ungrouped kernel gradient is computed by
#: :func:`_weight_grad_loop` (a loop over the taps: a program of constant size) rather than by
#: stacked patches.  Measured: a 3-d kernel gradient (16^3 x 8 -> 16, k 3, stride 2, batch 2)
#: compiles in 0.14 s as a loop, 0.43 s as patches; the U-Net training steps of
#: docs/performance.md compile in 1.41 / 2.28 s instead of 1.63 / 3.92 s at the same step time
#: (2-d) or 5 -> 8 ms (3-d); on large ones the loop runs 2-2.5x slower (config g's second
#: convolution, 925M MACs: 243 ms against 98 ms), so they keep the patches.
SMALL_MACS = 2 ** 24


def _weight_grad_loop(x, gy, g, precision):
    """Kernel gradient of an ungrouped core convolution (no lhs dilation) as a loop over the taps.

    The padded input is split once into its stride phases, so that every tap
    reads a unit-stride window of one phase: one dynamic slice and one dot per
    tap, in a ``fori_loop`` whose body does not grow with the kernel.
    """
    nd = g.num_spatial_dims
    xe = _pad(x, g.pads)
    s, k = g.stride, g.kernel_size
    lens = [-(-n // st) for n, st in zip(xe.shape[1:-1], s)]
    xe = _pad(xe, [(0, ln * st - n) for ln, st, n in zip(lens, s, xe.shape[1:-1])])
    n_batch, cin = xe.shape[0], xe.shape[-1]
    shape = [n_batch]
    for ln, st in zip(lens, s):
        shape += [ln, st]
    xp = xe.reshape(shape + [cin])                                   # (N, l0, s0, l1, s1, ..., C)
    order = [2 + 2 * a for a in range(nd)] + [0] + [1 + 2 * a for a in range(nd)] + [2 * nd + 1]
    xp = jnp.transpose(xp, order).reshape((-1, n_batch) + tuple(lens) + (cin,))  # (phases, N, *l, C)
    taps = list(itertools.product(*(range(kk) for kk in k)))
    starts = [[t * d for t, d in zip(tap, g.rhs_dilation)] for tap in taps]
    phase = jnp.asarray([int(np.ravel_multi_index(tuple(p % st for p, st in zip(st0, s)), s)) for st0 in starts],
                        jnp.int32)
    offset = jnp.asarray([[p // st for p, st in zip(st0, s)] for st0 in starts], jnp.int32).reshape(len(taps), nd)
    contract = tuple(range(nd + 1))
    zero = jnp.zeros((), jnp.int32)

    def body(i, dw):
        start = [phase[i], zero] + [offset[i, a] for a in range(nd)] + [zero]
        xs = lax.dynamic_slice(xp, start, (1, n_batch) + tuple(g.out_spatial) + (cin,))[0]
        tap = lax.dot_general(xs, gy, ((contract, contract), ((), ())), precision=precision)
        return lax.dynamic_update_index_in_dim(dw, tap, i, 0)

    dw = lax.fori_loop(0, len(taps), body, jnp.zeros((len(taps), cin, gy.shape[-1]), x.dtype))
    return dw.reshape(tuple(k) + (cin, gy.shape[-1]))


def _weight_grad_canonical(x, gy, g, precision):
    """Kernel gradient of an ungrouped core convolution (no lhs dilation) as one forward-style
    convolution: the input's channels as its batch, the batch as the contracted features, the
    output gradient as the kernel, the original stride as its kernel dilation and the original
    kernel dilation as its stride.

    The same arithmetic as XLA's own kernel gradient (the transpose rule's convolution with
    batch-contracting dimension numbers), but XLA:CPU runs that one 60-200x slower inside a
    ``lax.cond`` branch or a loop body (``scan``, ``for_loop``: every BPTT step): a 2-d 64 ->
    64 gradient 19-34 ms at top level, 3.3-3.8 s in a cond; a 1-d one 10 ms against 770-890 ms.
    This layout is the ordinary one and runs at the same speed everywhere (jaxlib 0.12: 1-d
    config d 7.9 ms, 2-d 64 -> 64 19.7 ms; in a scan 70.7 ms a step against the row windows'
    108.8).
    """
    nd = g.num_spatial_dims
    x = _pad(x, [(min(lo, 0), 0) for lo, _ in g.pads])
    pads = []
    for a, (lo, _) in enumerate(g.pads):
        lo = max(lo, 0)
        # the input positions past the last one any window reads are cut off
        used = kernel_span(g.kernel_size[a], g.rhs_dilation[a]) + (g.out_spatial[a] - 1) * g.stride[a]
        pads.append((lo, used - lo - x.shape[1 + a]))
    x = _pad(x, [(0, min(hi, 0)) for _, hi in pads])
    pads = [(lo, max(hi, 0)) for lo, hi in pads]
    spatial = tuple(range(1, nd + 1))
    lhs = jnp.transpose(x, (nd + 1,) + spatial + (0,))               # (C_in, *spatial, N)
    rhs = jnp.moveaxis(gy, 0, -2)                                     # (*out, N, C_out)
    numbers = lax.ConvDimensionNumbers((0, nd + 1) + spatial, (nd + 1, nd) + tuple(range(nd)),
                                       (0, nd + 1) + spatial)
    dw = lax.conv_general_dilated(lhs, rhs, window_strides=g.rhs_dilation, padding=pads,
                                  rhs_dilation=g.stride, dimension_numbers=numbers, precision=precision)
    return jnp.moveaxis(dw, 0, nd)                                    # (*k, C_in, C_out)


def _weight_grad_any(x, gy, g, groups, precision):
    """The kernel gradient for every formulation but 'fft': for ungrouped 1-d convolutions (and 2-d
    ones where YNNPACK is multi-threaded, jaxlib >= 0.12) one canonical convolution
    (:func:`_weight_grad_canonical`); otherwise row-windowed patches^T @ grad, or for small
    ungrouped convolutions (:data:`SMALL_MACS`) a loop over the taps.

    An lhs-dilated convolution with stride 1 (every transposed convolution) is
    the adjoint of a strided one, ``<gy, conv(x, w)> = <x, conv(gy,
    adjoint_kernel(w), adjoint geometry)>``, so its kernel gradient is the
    strided convolution's, with ``gy`` as input and ``x`` as output gradient,
    laid back out by ``adjoint_kernel`` (a permutation that is its own
    inverse): one scan over the real taps instead of one per sub-pixel phase
    (a 3-d U-Net's training step compiled in 2.7x less time, same run time).
    """
    if _lhs_dilated(g) and all(s == 1 for s in g.stride):
        return adjoint_kernel(_weight_grad_any(gy, x, adjoint_geometry(g), groups, precision), groups)
    if _lhs_dilated(g):
        return _phased_weight_grad(x, gy, g, groups, precision)
    if groups == 1 and (g.num_spatial_dims == 1 or (g.num_spatial_dims == 2 and not YNN_SINGLE_THREADED)):
        return _weight_grad_canonical(x, gy, g, precision)
    macs = x.shape[0] * math.prod(g.out_spatial) * math.prod(g.kernel_size) * x.shape[-1] * gy.shape[-1] // groups
    if groups == 1 and macs < SMALL_MACS:
        return _weight_grad_loop(x, gy, g, precision)
    return weight_grad(x, gy, g, groups, precision)


@dataclasses.dataclass(frozen=True)
class Formulation:
    """How one formulation computes the two maps every convolution transform is built from.

    ``forward(x, w, g, groups, precision)`` and ``weight_grad(x, gy, g,
    groups, precision)``, for any non-transposed core geometry (lhs dilation
    and negative pads included), on one batch axis, channels last.  The
    input gradient is ``forward`` of the adjoint geometry, so nothing else is
    needed.  Both see float32 (or float64) arrays: 16-bit inputs are cast up
    before and the result cast back after (accumulation in float32).
    """

    forward: Callable
    weight_grad: Callable


#: Formulation name -> its two functions.  ``'lax'`` is absent: it is the plain
#: ``lax.conv_general_dilated`` call, differentiated by XLA's own rules.
FORMULATIONS = {
    'lax_vjp': Formulation(_forward_phased(_forward_lax, keep_2d_lhs_dilation=True), _weight_grad_any),
    'im2col': Formulation(_forward_phased(_forward_im2col), _weight_grad_any),
    'taps': Formulation(_forward_phased(_forward_taps), _weight_grad_any),
    'fold': Formulation(_forward_phased(_forward_fold, keep_2d_lhs_dilation=True, first_axis_only=True),
                        _weight_grad_any),
    'fft': Formulation(_fft.forward, _fft.weight_grad),
}


def _dense(formulation: str, geometry: ConvGeometry, groups: int, in_channels: int, out_channels: int) -> str:
    """``formulation``, or for ``'event'`` the dense formulation ``'auto'`` picks on CPU."""
    if formulation != 'event':
        return formulation
    dense = choose(geometry, groups, in_channels, out_channels, 'cpu')
    return 'lax_vjp' if dense == 'lax' else dense      # 'lax' has no entry: the same forward


#: Fewest elements the density switch reads (:func:`nonzero_estimate`); smaller inputs are counted whole.
COUNT_SAMPLES = 2 ** 15
#: Strides of the switch's sample: primes, so that no channel or row period aligns with them.
_SAMPLE_STRIDES = (61, 31, 13, 7, 3)


def nonzero_estimate(x: jax.Array) -> jax.Array:
    """The number of non-zeros of ``x`` as the density switch reads it: from every p-th element,
    scaled up, p the largest of ``_SAMPLE_STRIDES`` that leaves at least ``COUNT_SAMPLES``
    elements; counted whole where none does (below ``3 * COUNT_SAMPLES``, 98,304 elements).  The switch only picks
    which exact formulation runs, so a sampling error costs time, never accuracy; counting a
    2M-element input whole cost 0.6-1 ms of a 14 ms dense forward (jaxlib 0.12), one element in
    61 0.1-0.2 ms."""
    flat = x.reshape(-1)
    stride = next((p for p in _SAMPLE_STRIDES if flat.size // p >= COUNT_SAMPLES), 1)
    if stride == 1:
        return jnp.count_nonzero(flat).astype(jnp.float32)
    sample = lax.slice(flat, (0,), (flat.size,), (stride,))
    return jnp.count_nonzero(sample).astype(jnp.float32) * (flat.size / sample.size)


def _event_map(kind: str) -> Callable:
    """``'event'``'s forward (``kind='forward'``) or kernel gradient: the event kernel where the
    input's non-zero count is at most :func:`brainconv._event.crossover` (the measured cost
    model's break-even), else the dense formulation; a ``lax.cond`` on the count, decided at
    run time, since density is data.  Off CPU or without the kernels: the dense formulation."""
    def run(x, other, g, groups, precision):
        cin, cout = x.shape[-1], other.shape[-1]
        dense = FORMULATIONS[_dense('event', g, groups, cin, cout)]
        dense_fn = functools.partial(dense.forward if kind == 'forward' else dense.weight_grad, precision=precision)
        if not (_LOWERING_FOR_CPU.get() and not _LOWERING_SPMD.get() and _event.available()):
            return dense_fn(x, other, g, groups)
        event_fn = _event.forward if kind == 'forward' else _event.weight_grad
        branch = _EVENT_BRANCH.get()
        if branch is not None:
            return (event_fn if branch == 'event' else dense_fn)(x, other, g, groups)
        limit = _event.crossover(g, groups, x.shape[0], cin, cout, kind)
        if limit <= 0:
            return dense_fn(x, other, g, groups)
        return lax.cond(nonzero_estimate(x) <= limit, functools.partial(event_fn, g=g, groups=groups),
                        functools.partial(dense_fn, g=g, groups=groups), x, other)
    return run


FORMULATIONS['event'] = Formulation(_event_map('forward'), _event_map('weight_grad'))


# --------------------------------------------------------------------------- #
# Two primitives: every transform sees one bilinear convolution
# --------------------------------------------------------------------------- #
#
# ``conv_p(x, w)`` is the core convolution and ``weight_grad_p(x, gy)`` its
# kernel gradient; both are bilinear, and the transposes of their four linear
# maps are these two primitives again:
#
#   conv_p(x, w):        d/dx^T gy  = conv_p(gy, adjoint_kernel(w), adjoint geometry)
#                        d/dw^T gy  = weight_grad_p(x, gy)
#   weight_grad_p(x, gy): d/dx^T dW = conv_p(gy, adjoint_kernel(dW), adjoint geometry)
#                        d/dgy^T dW = conv_p(x, dW)
#
# so ``ad.defbilinear`` gives jvp (a sum of two primitive calls), reverse mode
# and ``linear_transpose`` from these rules alone, to any order (hessian,
# jacfwd(jacrev)).  vmap folds a mapped axis into the batch or, for mapped
# kernels, into the groups.  Lowering (``mlir.lower_fun``) runs the chosen
# formulation's plain functions, so XLA sees the formulation's own ops, and
# sharding propagates through them.

def accumulation_dtype(dtype) -> Any:
    """The dtype a convolution of ``dtype`` operands computes and accumulates in: float32 for
    16-bit floats, ``dtype`` itself otherwise (the layers' ``dtype`` policy uses it too)."""
    return jnp.float32 if jnp.dtype(dtype).itemsize < 4 and jnp.issubdtype(dtype, jnp.floating) else dtype


def _upcast(fn: Callable) -> Callable:
    def run(a, b, **params):
        dtype = a.dtype
        ct = accumulation_dtype(dtype)
        out = fn(a.astype(ct), b.astype(ct), **params)
        return out.astype(dtype)
    return run


def _conv_impl(x, w, *, geometry, groups, formulation, precision):
    return FORMULATIONS[formulation].forward(x, w, geometry, groups, precision)


def _weight_grad_impl(x, gy, *, geometry, groups, formulation, precision):
    return FORMULATIONS[formulation].weight_grad(x, gy, geometry, groups, precision)


def _conv_abstract(x, w, *, geometry, groups, formulation, precision):
    del formulation, precision
    g = geometry
    if tuple(x.shape[1:-1]) != tuple(g.in_spatial) or w.shape[-2] * groups != x.shape[-1]:
        raise ValueError(f"brainconv conv: input {x.shape} / kernel {w.shape} do not fit {g}, groups={groups}")
    return ShapedArray((x.shape[0],) + tuple(g.out_spatial) + (w.shape[-1],), x.dtype)


def _weight_grad_abstract(x, gy, *, geometry, groups, formulation, precision):
    del formulation, precision
    g = geometry
    if tuple(gy.shape[1:-1]) != tuple(g.out_spatial) or gy.shape[0] != x.shape[0]:
        raise ValueError(f"brainconv weight gradient: input {x.shape} / gradient {gy.shape} do not fit {g}")
    return ShapedArray(tuple(g.kernel_size) + (x.shape[-1] // groups, gy.shape[-1]), x.dtype)


def _input_transpose(ct, kernel, *, geometry, groups, formulation, precision):
    """The input gradient: the adjoint convolution of ``ct`` (shared by both primitives); dense
    for ``'event'`` (an output gradient is dense)."""
    adjoint = adjoint_geometry(geometry)
    formulation = _dense(formulation, adjoint, groups, ct.shape[-1], kernel.shape[-2] * groups)
    return conv_p.bind(ct, adjoint_kernel(kernel, groups), geometry=adjoint, groups=groups,
                       formulation=formulation, precision=precision)


def _conv_transpose_lhs(ct, x, w, **params):
    return _input_transpose(ct, w, **params)


def _conv_transpose_rhs(ct, x, w, **params):
    return weight_grad_p.bind(x, ct, **params)


def _weight_grad_transpose_lhs(ct, x, gy, **params):
    return _input_transpose(gy, ct, **params)


def _weight_grad_transpose_rhs(ct, x, gy, **params):
    return conv_p.bind(x, ct, **params)


def _merge_batch(a, bdim):
    """Fold mapped axis ``bdim`` into the leading batch axis."""
    a = jnp.moveaxis(a, bdim, 0)
    return a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:]), a.shape[0]


def _to_channels(a, bdim, size):
    """Move mapped axis ``bdim`` (broadcast if None) next to the channels: ``(N, *sp, B * C)``."""
    if bdim is None:
        a = jnp.broadcast_to(a[None], (size,) + a.shape)
        bdim = 0
    a = jnp.moveaxis(a, bdim, -2)
    return a.reshape(a.shape[:-2] + (a.shape[-2] * a.shape[-1],))


def _mapped_size(args, dims):
    return next(a.shape[d] for a, d in zip(args, dims) if d is not None)


def _conv_batch(args, dims, *, geometry, groups, formulation, precision):
    (x, w), (xd, wd) = args, dims
    params = dict(geometry=geometry, formulation=formulation, precision=precision)
    if wd is None:  # only the input is mapped: more batch
        xb, size = _merge_batch(x, xd)
        y = conv_p.bind(xb, w, groups=groups, **params)
        return y.reshape((size, -1) + y.shape[1:]), 0
    size = _mapped_size(args, dims)
    w = jnp.moveaxis(w, wd, 0)                                   # (B, *k, Cin/g, Cout)
    nd = geometry.num_spatial_dims
    cin_g, cout = w.shape[-2], w.shape[-1]
    if xd is None:  # only the kernel is mapped: B * Cout outputs, ordered (group, B, Cout / g)
        wk = w.reshape(w.shape[:-1] + (groups, cout // groups))
        wk = jnp.moveaxis(wk, 0, -2).reshape(w.shape[1:-1] + (groups * size * (cout // groups),))
        y = conv_p.bind(x, wk, groups=groups, **params)
        y = y.reshape(y.shape[:-1] + (groups, size, cout // groups))
        y = jnp.moveaxis(y, -2, 0)
        return y.reshape(y.shape[:-2] + (cout,)), 0
    # both mapped: the mapped axis joins the groups, channels ordered (B, C)
    xc = _to_channels(x, xd, size)
    wk = jnp.moveaxis(w, 0, nd + 1).reshape(w.shape[1:nd + 1] + (cin_g, size * cout))
    y = conv_p.bind(xc, wk, groups=groups * size, **params)
    y = y.reshape(y.shape[:-1] + (size, cout))
    return jnp.moveaxis(y, -2, 0), 0


def _weight_grad_batch(args, dims, *, geometry, groups, formulation, precision):
    (x, gy), (xd, gd) = args, dims
    size = _mapped_size(args, dims)
    dw = weight_grad_p.bind(_to_channels(x, xd, size), _to_channels(gy, gd, size), geometry=geometry,
                            groups=groups * size, formulation=formulation, precision=precision)
    dw = dw.reshape(dw.shape[:-1] + (size, dw.shape[-1] // size))
    return jnp.moveaxis(dw, -2, 0), 0


#: True while a primitive is being lowered for XLA:CPU (read by :func:`_ynn_escape`, a CPU-only rule).
_LOWERING_FOR_CPU = contextvars.ContextVar('brainconv_lowering_for_cpu', default=False)


#: True while a primitive is lowered into a program over several devices (read by :func:`_event_map`:
#: the event kernel is a single-device custom call, which XLA's partitioner would gather every
#: operand for).
_LOWERING_SPMD = contextvars.ContextVar('brainconv_lowering_spmd', default=False)


def _num_devices(ctx) -> int:
    axis_context = ctx.module_context.axis_context
    if hasattr(axis_context, 'num_devices'):
        return axis_context.num_devices
    mesh = getattr(axis_context, 'mesh', None)
    return mesh.size if mesh is not None else 1


def _lowering(impl: Callable, on_cpu: bool) -> Callable:
    lower = mlir.lower_fun(_upcast(impl), multiple_results=False)

    def rule(ctx, *args, **params):
        tokens = _LOWERING_FOR_CPU.set(on_cpu), _LOWERING_SPMD.set(_num_devices(ctx) > 1)
        try:
            return lower(ctx, *args, **params)
        finally:
            _LOWERING_FOR_CPU.reset(tokens[0])
            _LOWERING_SPMD.reset(tokens[1])
    return rule


def _primitive(name: str, impl: Callable, abstract: Callable, lhs_rule: Callable, rhs_rule: Callable,
               batch_rule: Callable) -> Primitive:
    prim = Primitive(name)
    prim.def_impl(functools.partial(dispatch.apply_primitive, prim))
    prim.def_abstract_eval(abstract)
    mlir.register_lowering(prim, _lowering(impl, on_cpu=False))
    mlir.register_lowering(prim, _lowering(impl, on_cpu=True), platform='cpu')
    ad.defbilinear(prim, lhs_rule, rhs_rule)
    batching.primitive_batchers[prim] = batch_rule
    return prim


conv_p = _primitive(_braintrace.CONV_PRIMITIVE, _conv_impl, _conv_abstract, _conv_transpose_lhs, _conv_transpose_rhs,
                    _conv_batch)
weight_grad_p = _primitive('brainconv_conv_weight_grad', _weight_grad_impl, _weight_grad_abstract,
                           _weight_grad_transpose_lhs, _weight_grad_transpose_rhs, _weight_grad_batch)


def conv_core(x: jax.Array, w: jax.Array, geometry: ConvGeometry, groups: int, name: str,
              precision: Any = None) -> jax.Array:
    """The core convolution (see the module docstring) by formulation ``name``.

    ``x``: ``(N, *in_spatial, C_in)``; ``w``: ``(*kernel_size, C_in // groups,
    C_out)``; ``geometry``: non-transposed, pads applied as zeros (negative
    crops).  Returns ``(N, *out_spatial, C_out)``.  Every formulation but
    ``'lax'`` binds :data:`conv_p`, so it supports every JAX transform.
    """
    if name == 'lax':
        return direct(x, w, geometry, groups, precision)
    if name not in FORMULATIONS:
        _args.lowering(name, allow_auto=False)
    _braintrace.notice_braintrace()
    return conv_p.bind(x, w, geometry=geometry, groups=groups, formulation=name, precision=precision)
