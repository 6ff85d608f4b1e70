"""The event formulation: the event kernel where the input is sparse enough, the dense
formulation ``'auto'`` would pick elsewhere, decided at run time by the input's (sampled)
non-zero count against the cost model's crossover."""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from ...shapes import ConvGeometry
from .. import context
from ..auto import choose
from ..context import _LOWERING_FOR_CPU, _LOWERING_SPMD
from ..formulations import DENSE, Formulation
from ..partition import batch_parallel
from . import cost, kernels

__all__ = ['EVENT', 'Branch', 'nonzero_estimate', 'dense_name']

def dense_name(formulation: str, geometry: ConvGeometry, groups: int, in_channels: int, out_channels: int) -> str:
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
    input's non-zero count is at most :func:`brainconv.lowering.event.cost.crossover` (the measured cost
    model's break-even), else the dense formulation; a ``lax.cond`` on the count, decided at
    run time, since density is data.  Off CPU or without the kernels: the dense formulation.  In a
    program over several devices, each device switches on its own shard of the batch
    (:func:`brainconv.lowering.partition.batch_parallel`)."""
    def run(x, other, g, groups, precision):
        cin, cout = x.shape[-1], other.shape[-1]
        dense = DENSE[dense_name('event', g, groups, cin, cout)]
        dense_fn = functools.partial(dense.forward if kind == 'forward' else dense.weight_grad, precision=precision)
        if not (_LOWERING_FOR_CPU.get() and kernels.available()):
            return dense_fn(x, other, g, groups)
        event_fn = kernels.forward if kind == 'forward' else kernels.weight_grad
        one_device = functools.partial(_switch, kind, event_fn, dense_fn, g, groups, context.forced_branch(),
                                       context._BRANCH_LOG.get(), dense_name('event', g, groups, cin, cout))
        if _LOWERING_SPMD.get():   # several devices: each switches on its own shard of the batch
            grad = kind == 'weight_grad'
            return batch_parallel(one_device, x, other, batched=(True, grad), reduces=grad)
        return one_device(x, other)
    return run


def _switch(kind, event_fn, dense_fn, g, groups, branch, log, dense_label, x, other):
    """One device's map: the event kernel or the dense formulation (forced by ``branch``, else by
    the non-zero count of ``x`` against the crossover for this batch)."""
    if branch is not None:
        return (event_fn if branch == 'event' else dense_fn)(x, other, g, groups)
    limit = cost.crossover(g, groups, x.shape[0], x.shape[-1], other.shape[-1], kind)
    if limit <= 0:
        return dense_fn(x, other, g, groups)
    nnz = nonzero_estimate(x)
    if log is not None:   # report_branches(): record this run's branch when it runs
        jax.debug.callback(functools.partial(_record, log, kind, tuple(x.shape), limit, dense_label), nnz)
    return lax.cond(nnz <= limit, functools.partial(event_fn, g=g, groups=groups),
                    functools.partial(dense_fn, g=g, groups=groups), x, other)


@dataclasses.dataclass(frozen=True)
class Branch:
    """One run of one event switch (:func:`report_branches`): the map (``'forward'`` or
    ``'weight_grad'``), the input's shape, its (estimated) non-zeros, the switch's limit, and the
    branch taken (``'event'`` or the dense formulation's name)."""

    kind: str
    input_shape: Tuple[int, ...]
    nonzeros: float
    limit: int
    branch: str


def _record(log, kind, shape, limit, dense_label, nnz) -> None:
    n = float(nnz)
    log.append(Branch(kind, shape, n, limit, 'event' if n <= limit else dense_label))


#: The event formulation's two maps.
EVENT = Formulation(_event_map('forward'), _event_map('weight_grad'))
