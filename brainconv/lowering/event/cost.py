"""When is the event kernel faster than a dense convolution?  The measured cost model the
run-time density switch (:mod:`brainconv.lowering.event.switch`) reads."""

from __future__ import annotations

import math

import jax.numpy as jnp

from ...shapes import ConvGeometry, transpose_as_conv
from .kernels import backend
from .plan import _plan

__all__ = ['cost_features', 'event_cost', 'dense_cost', 'crossover', 'crossover_density', 'may_pay', 'COST_TERMS',
           'EVENT_COST', 'DENSE_COST']

#: The terms of :func:`cost_features`, in order.
COST_TERMS = ('call', 'scan', 'out', 'pair', 'mac')

#: Seconds per unit of each term of :func:`cost_features`, per backend and map, fitted by
#: ``benchmarks/bench_event.py`` (least squares on each implementation's fastest round, configs A,
#: B, C at 0.5-50% density; 2-core AMD EPYC shared with other jobs, jax 0.10.2; worst point
#: within 21% (cpp forward) to 47% (cpp kernel gradient) of the model).  The per-call term is the
#: scan-step cost of its ``--overhead`` section (cpp 3-5 µs, numba 30-80 µs).
EVENT_COST = {
    ('cpp', 'forward'): (4e-6, 2.25e-10, 2.25e-10, 1.73e-09, 2.41e-11),
    ('cpp', 'weight_grad'): (4e-6, 4.85e-10, 0.0, 4.39e-10, 4.58e-11),
    ('numba', 'forward'): (5e-5, 3.28e-10, 3.28e-10, 1.28e-09, 5.9e-11),
    ('numba', 'weight_grad'): (5e-5, 1.01e-09, 0.0, 1.01e-09, 1.01e-10),
}

#: Seconds per multiply-accumulate of brainconv's dense formulation on CPU (``'lax_vjp'`` for
#: dense kernels, ``'taps'`` for depthwise ones), per map; same run (medians over configs).
DENSE_COST = {
    ('forward', 'dense'): 1.69e-11, ('forward', 'depthwise'): 1.08e-10,
    ('weight_grad', 'dense'): 2.25e-11, ('weight_grad', 'depthwise'): 2.54e-10,
}


def _mean_pairs(g: ConvGeometry) -> float:
    """(tap, output) pairs per input position, averaged over the input (exact, from the plan)."""
    table = _plan(g)
    lead = table[table[2] + table[0]] - table[table[2]]
    last = table[table[4] + table[1]] - table[table[4]]
    return float(lead) * float(last) / math.prod(g.in_spatial)


def cost_features(g: ConvGeometry, groups: int, n_batch: int, cin: int, cout: int, nnz, kind: str = 'forward'):
    """The terms the event kernels' time is linear in (:data:`COST_TERMS`): one per call; the input
    scanned for non-zeros (``N * P_in * C_in``); the output written (``N * P_out * C_out``; for the
    kernel gradient, the kernel's size); the (non-zero, tap) pairs visited (``nnz * pairs``); and
    the multiply-adds they do (``nnz * pairs * C_out / groups``).  ``nnz`` may be traced."""
    pairs = _mean_pairs(g)
    if not isinstance(nnz, (int, float)):
        nnz = jnp.asarray(nnz).astype(jnp.float32)   # e.g. count_nonzero's int32, traced
    out = (n_batch * math.prod(g.out_spatial) * cout if kind == 'forward'
           else math.prod(g.kernel_size) * (cin // groups) * cout)
    return (1.0, float(n_batch * math.prod(g.in_spatial) * cin), float(out), nnz * pairs,
            nnz * pairs * (cout // groups))


def event_cost(g: ConvGeometry, groups: int, n_batch: int, cin: int, cout: int, nnz, kind: str = 'forward',
               backend_name: str | None = None):
    """Predicted seconds of :func:`forward` (``kind='forward'``) or :func:`weight_grad` with ``nnz``
    non-zero inputs, on ``backend_name`` (default: :func:`backend`)."""
    coef = EVENT_COST[(backend_name or backend() or 'cpp', kind)]
    return sum(c * f for c, f in zip(coef, cost_features(g, groups, n_batch, cin, cout, nnz, kind)))


def _depthwise(groups: int, cin: int) -> bool:
    """One input channel per group (a channel multiplier allowed)."""
    return groups > 1 and cin == groups


def dense_cost(g: ConvGeometry, groups: int, n_batch: int, cin: int, cout: int, kind: str = 'forward') -> float:
    """Predicted seconds of brainconv's dense formulation of the same map (what ``'auto'`` picks on
    CPU: XLA's convolution, or shift-multiply-add for depthwise kernels), from the multiply-adds it
    does: an lhs-dilated geometry (a transposed convolution) runs as its sub-pixel phases, which skip
    the inserted zeros, so its products are those of the undilated input."""
    macs = n_batch * math.prod(g.out_spatial) * math.prod(g.kernel_size) * (cin // groups) * cout
    if _depthwise(groups, cin):
        return DENSE_COST[(kind, 'depthwise')] * macs / math.prod(g.lhs_dilation)
    thin = max(1.0, THIN_CHANNELS / (cin // groups)) ** THIN_EXPONENT
    return DENSE_COST[(kind, 'dense')] * thin * macs / math.prod(g.lhs_dilation)


#: A dense convolution with few input channels per group costs XLA:CPU more per multiply-add (its
#: kernels vectorise over the channels): ``(THIN_CHANNELS / C_in_per_group) ** THIN_EXPONENT`` times
#: more below THIN_CHANNELS.  Measured per multiply-add against a 64-channel convolution (forward,
#: jaxlib 0.12; 0.10.2 alike): 1 channel 52x, 2 channels 13-22x, 12 channels 2.4x (the first layers
#: of spiking networks, whose event inputs are thinnest: their event kernels run 2-7x faster at 3%).
THIN_CHANNELS = 64
THIN_EXPONENT = 0.9


#: The highest input density at which the switch runs the event kernel, per map and kernel shape,
#: whatever the model predicts: measured on whole layers (``benchmarks/bench_event_crossover.py``,
#: ten layer kinds at 1-50%, jax 0.10.2 and 0.12, 2026-12-06), the event kernel stopped paying
#: between 10% and 25% for the forward of dense kernels (10% the lowest: Conv2d 15x15x12 -> 32, k5),
#: at 0-2% for depthwise ones (one multiply-add per (spike, tap) pair, where shift-multiply-add
#: vectorises over the channels: their forward runs densely), and at 11-48% for kernel gradients
#: (11%: Conv2d 34x34x2 -> 12, k5, on 0.12; depthwise 24-48%, but a depthwise kernel gradient's
#: dense branch runs 1.8-2.2x slower inside the switch's ``lax.cond``, where XLA:CPU does not split
#: its loops over the cores, so depthwise kernels take no switch at all).  The model, fitted to the
#: kernels alone, placed some of those crossovers up to 1.5x too late (a transposed convolution's at
#: 87%, measured 22-24%, before its products were counted without the inserted zeros); below the
#: caps it decides, for small maps where the call's fixed cost does.
DENSITY_CAP = {('forward', 'dense'): 0.10, ('forward', 'depthwise'): 0.0,
               ('weight_grad', 'dense'): 0.12, ('weight_grad', 'depthwise'): 0.0}

#: The switch takes the event kernel only up to this fraction of the model's crossover: near the
#: crossover both maps cost about the same, so erring towards the dense one loses little, while
#: the model's errors (within 21-47% of the kernels' times) could cost more.
SAFETY = 0.8


def crossover(g: ConvGeometry, groups: int, n_batch: int, cin: int, cout: int, kind: str = 'forward',
              backend_name: str | None = None) -> int:
    """The number of non-zero inputs up to which the switch runs the event kernel (0: never): the
    model's break-even against the dense formulation, times :data:`SAFETY`, and at most
    :data:`DENSITY_CAP` of the input."""
    base = event_cost(g, groups, n_batch, cin, cout, 0, kind, backend_name)
    per_event = event_cost(g, groups, n_batch, cin, cout, 1, kind, backend_name) - base
    spare = dense_cost(g, groups, n_batch, cin, cout, kind) - base
    if spare <= 0:
        return 0
    total = n_batch * math.prod(g.in_spatial) * cin
    cap = DENSITY_CAP[(kind, 'depthwise' if _depthwise(groups, cin) else 'dense')] * total
    return int(min(cap, SAFETY * spare / per_event)) if per_event > 0 else int(cap)


def crossover_density(g: ConvGeometry, groups: int, n_batch: int, cin: int, cout: int, kind: str = 'forward',
                      backend_name: str | None = None) -> float:
    """:func:`crossover` as a fraction of the input's elements: the density up to which the event
    kernel is predicted to be the faster (0: never)."""
    return crossover(g, groups, n_batch, cin, cout, kind, backend_name) / (n_batch * math.prod(g.in_spatial) * cin)


#: The batch :func:`may_pay` judges at: large enough that the per-call cost does not decide.
_NOMINAL_BATCH = 64


def may_pay(g: ConvGeometry, groups: int, cin: int, cout: int, backend_name: str | None = None) -> bool:
    """Whether the event kernel is predicted to be the faster map, forward or kernel gradient, at
    some density (:func:`crossover` > 0 at a large batch): where it never is, ``'auto'`` does not
    put a run-time switch in front of the dense formulation."""
    if g.transposed:
        g = transpose_as_conv(g)
    return any(crossover(g, groups, _NOMINAL_BATCH, cin, cout, kind, backend_name) > 0
               for kind in ('forward', 'weight_grad'))
