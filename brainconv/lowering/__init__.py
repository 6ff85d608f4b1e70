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
    Event-driven (:mod:`brainconv.lowering.event`): a native CPU kernel that loops
    over the non-zero inputs only and adds each one's kernel slice into the
    outputs it reaches, so its cost follows the number of spikes; its kernel
    gradient sums over the same non-zeros.  Density is known only at run
    time: the non-zeros are counted and the dense formulation ``'auto'``
    would pick runs instead above the measured crossover (the cost model's
    break-even, capped at densities measured on whole layers:
    :mod:`brainconv.lowering.event.cost`; the switch:
    :mod:`brainconv.lowering.event.switch`).  Its input gradient (the output
    gradient is dense) and its tangents of dense operands run densely.
    ``'auto'`` picks it on CPU where the kernels are available for spike
    inputs (boolean, integer or brainevent ``BinaryArray``), and for float
    inputs where the event kernel can pay for the geometry
    (:data:`brainconv.lowering.auto.EVENT_FOR_FLOATS`): a neuron's float 0/1
    spikes take it without a flag.  In a program over several devices each
    device runs it on its own shard of the batch
    (:mod:`brainconv.lowering.partition`).  Off CPU or without the kernels it
    runs densely.
``'fft'``
    Real FFTs of the padded input and the kernel, a per-frequency channel
    contraction, an inverse FFT (:mod:`brainconv.lowering.fft`; stride by
    space-to-depth, short kernels transformed by DFT matmuls); its kernel
    gradient the same way.  Cost nearly independent of the kernel size: for
    long kernels.

In every formulation but ``'lax'`` and ``'fft'`` an lhs-dilated convolution (every
transposed convolution with stride > 1, and the input gradient of every
strided one) is split into its sub-pixel phases
(:mod:`brainconv.lowering.phased`): each phase is a plain convolution of
the undilated input with a subset of the taps, so no multiply ever touches an
inserted zero.  (``'lax_vjp'`` in 2-d keeps XLA's lhs-dilated forward, which
runs well -- config f 3.2-6.3 ms, phases 4.7 ms -- and splits only its
weight gradient.)

Which formulation runs is decided per call by :func:`resolve`: an explicit
name, else the global setting (:func:`set_lowering`, :func:`use_lowering`),
else ``'auto'``, which on CPU follows the rules in :func:`choose` (measured by
``benchmarks/bench_cpu.py``; numbers in ``docs/performance.md``) and elsewhere
gives ``'lax'``.

The package, one room per concept (imports run down this list, never up):

* :mod:`~brainconv.lowering.context` -- the global and contextual choices;
* :mod:`~brainconv.lowering.common` -- layout, padding, taps, row windows, the adjoint kernel;
* :mod:`~brainconv.lowering.cpu` -- XLA:CPU's single-threaded YNNPACK, and the escape from it;
* :mod:`~brainconv.lowering.dense`, :mod:`~brainconv.lowering.phased`,
  :mod:`~brainconv.lowering.kernel_grad`, :mod:`~brainconv.lowering.fft` -- the dense
  formulations' forwards, sub-pixel phases, kernel gradients, and the FFT;
* :mod:`~brainconv.lowering.event` -- the event kernels, their cost model, the density switch;
* :mod:`~brainconv.lowering.auto` -- ``'auto'``'s rules;
* :mod:`~brainconv.lowering.formulations` -- the table of formulations;
* :mod:`~brainconv.lowering.primitives` -- the two primitives and their transform rules;
* :mod:`~brainconv.lowering.report` -- which formulation runs, in words, and which branch a switch took.
"""

from .auto import choose, resolve
from .common import accumulation_dtype, adjoint_kernel
from .context import (
    LOWERINGS,
    event_branch,
    get_lowering,
    restore_context,
    set_lowering,
    spike_input,
    trace_context,
    use_lowering,
)
from .dense import direct, lax_conv
from .event.switch import nonzero_estimate
from .kernel_grad import weight_grad
from .primitives import FORMULATIONS, conv_core, conv_p, weight_grad_p
from .report import Branch, Choice, describe, report_branches

__all__ = ['LOWERINGS', 'set_lowering', 'get_lowering', 'use_lowering', 'choose', 'resolve', 'conv_core',
           'spike_input', 'event_branch', 'trace_context', 'restore_context', 'accumulation_dtype',
           'adjoint_kernel', 'direct', 'lax_conv', 'weight_grad', 'nonzero_estimate', 'FORMULATIONS', 'conv_p',
           'weight_grad_p', 'Choice', 'Branch', 'describe', 'report_branches']
