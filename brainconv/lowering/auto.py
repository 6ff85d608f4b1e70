"""``'auto'``: which formulation a convolution runs as, by rules measured per geometry and jaxlib
line (:func:`choose`), and the resolution of a layer's or op's ``lowering`` argument against
the global setting and the spike context (:func:`resolve`)."""

from __future__ import annotations

import jax

from .. import _args
from ..shapes import ConvGeometry
from . import context, cpu, fft
from .common import _lhs_dilated
from .event import cost as event_cost
from .event import kernels as event_kernels

__all__ = ['choose', 'resolve']

#: Whether ``'auto'`` on CPU runs float inputs through the event formulation too (boolean, integer
#: and ``BinaryArray`` spikes always take it): a spiking layer's input comes out of a neuron as
#: float 0/1, which only the data tells from any other float input, so the run-time density switch
#: (:mod:`brainconv.lowering.event.switch`) decides between the event kernel and the dense
#: formulation :func:`choose` picks.  For floats only geometries where the event kernel can pay at
#: all (:func:`brainconv.lowering.event.cost.may_pay`) get the switch.
EVENT_FOR_FLOATS = True

def choose(geometry: ConvGeometry, groups: int, in_channels: int, out_channels: int,
           backend: str) -> str:
    """The ``'auto'`` choice for one convolution on ``backend``.

    Off CPU nothing was measured, so the direct call.  On CPU each rule names
    the measurements that decided it (``benchmarks/bench_cpu.py --lowerings``
    on a 2-core AMD EPYC; ratios are medians of per-round ratios against raw
    lax, forward / forward+backward; docs/performance.md has the tables).
    Every rule was measured on jaxlib 0.10.2 and, unless it says otherwise,
    holds on 0.12 too; the one rule that depends on the line is keyed on
    :data:`~brainconv.lowering.cpu.YNN_SINGLE_THREADED` (jaxlib < 0.12), the one switch between them:

    * long kernels: ``'fft'`` where :func:`brainconv.lowering.fft.fft_wins` (stride 1,
      no dilation; from 48 taps in 1-d, 81 in 2-d dense, 121 depthwise --
      config i (1-d, 257 taps) 0.05-0.27 / 0.11-0.21, config j (depthwise
      31x31) 0.02 / 0.02);
    * any other kernel of more than :data:`brainconv.lowering.fft.TAPS_MAX` taps:
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
      60-200x slower in a loop body (:func:`~brainconv.lowering.kernel_grad._weight_grad_canonical`), so it
      stays the default where it is within noise of ``'lax'`` at the top level.
    """
    if backend != 'cpu':
        return 'lax'
    if fft.fft_wins(geometry, groups, in_channels, out_channels):
        return 'fft'
    if fft.taps_too_many(geometry):
        return 'lax'
    if groups > 1:
        return 'taps' if in_channels == groups else 'im2col'
    if geometry.num_spatial_dims == 3 or _thin_strided_2d(geometry, in_channels):
        return 'fold'
    return 'lax_vjp'


def _thin_strided_2d(geometry: ConvGeometry, in_channels: int) -> bool:
    """A strided 2-d convolution of at most 4 input channels, where YNNPACK runs on one thread
    (:data:`~brainconv.lowering.cpu.YNN_SINGLE_THREADED`) and
    :func:`~brainconv.lowering.cpu._ynn_escape` does not apply: ``'fold'`` makes it a 1-d
    convolution of 3x the channels, which XLA:CPU runs on every core (config b, 3 -> 32
    channels, stride 2: forward 1.22 ms against 2.75 ms, forward+backward 3.64 against 3.12
    ('lax_vjp') and 4.13 (raw lax); stride 1 or 8 input channels: no gain, and at stride 1 the
    input gradient (3 output channels) runs 3.7x slower)."""
    return (cpu.YNN_SINGLE_THREADED and geometry.num_spatial_dims == 2 and in_channels <= 4
            and geometry.stride[0] > 1 and not _lhs_dilated(geometry))


def resolve(lowering: str | None, geometry: ConvGeometry, groups: int, in_channels: int, out_channels: int,
            backend: str | None = None) -> str:
    """The formulation that runs: ``lowering`` if it names one, else the global
    setting, and ``'auto'`` for ``backend`` (default: ``jax.default_backend()``): on CPU
    ``'event'`` where its kernels run here and can pay for this geometry (for spike inputs, and
    for float inputs while :data:`EVENT_FOR_FLOATS`), else :func:`choose`."""
    name = _args.lowering(lowering) or context.get_lowering()
    if name != 'auto':
        return name
    backend = backend or jax.default_backend()
    if backend == 'cpu' and event_kernels.available() and (context.spikes() or (
            EVENT_FOR_FLOATS and event_cost.may_pay(geometry, groups, in_channels, out_channels))):
        return 'event'
    return choose(geometry, groups, in_channels, out_channels, backend)
