"""Which formulation a convolution runs as, in words, without reading HLO: for one input (its
kind, batch and density) by :func:`describe` (what a layer's ``formulation(x)`` gives), and at
run time by :func:`report_branches`, a debug mode that records the branch every event switch took.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator, List

import jax

from ..shapes import ConvGeometry, transpose_as_conv
from . import context
from .event import cost, kernels
from .event.switch import Branch, dense_name

__all__ = ['Choice', 'Branch', 'describe', 'report_branches']


@dataclasses.dataclass(frozen=True)
class Choice:
    """The formulation a convolution runs as for one input.

    ``formulation`` is its name (:data:`brainconv.lowering.LOWERINGS`).  For ``'event'``, a
    run-time switch: ``dense`` is the formulation it falls back to, and ``forward_limit`` /
    ``grad_limit`` the input densities up to which the event kernel computes the output / the
    kernel gradient (0: never, e.g. off CPU or in a program over several devices, where it runs
    densely); ``density`` is the input's, where known, and :attr:`forward` / :attr:`kernel_grad`
    then say which branch runs.
    """

    formulation: str
    dense: str | None = None
    forward_limit: float | None = None
    grad_limit: float | None = None
    density: float | None = None

    def _branch(self, limit: float | None) -> str:
        if self.formulation != 'event':
            return self.formulation
        if self.density is None:
            return f'event kernel up to {_pct(limit)}, else {self.dense}' if limit else self.dense
        return 'event kernel' if self.density <= limit else self.dense

    @property
    def forward(self) -> str:
        """What computes the output: a formulation's name, or ``'event kernel'``."""
        return self._branch(self.forward_limit)

    @property
    def kernel_grad(self) -> str:
        """What computes the kernel gradient (the input gradient is always dense for ``'event'``)."""
        return self._branch(self.grad_limit)

    def __str__(self) -> str:
        if self.formulation != 'event':
            return self.formulation
        at = '' if self.density is None else f' at {_pct(self.density)} non-zero inputs'
        if self.forward == self.kernel_grad:
            return f'event{at}: {self.forward}'
        return f'event{at}: forward {self.forward}; kernel gradient {self.kernel_grad}'


def _pct(v: float) -> str:
    return f'{100 * v:.3g}%'


def describe(formulation: str, geometry: ConvGeometry, groups: int, in_channels: int, out_channels: int,
             n_batch: int = 1, density: float | None = None, backend: str | None = None) -> Choice:
    """The :class:`Choice` for a convolution that resolved to ``formulation`` (see
    :func:`brainconv.lowering.resolve`), on ``n_batch`` examples at ``density``, on ``backend``
    (default: JAX's default backend), in a program over one device."""
    if formulation != 'event':
        return Choice(formulation, density=density)
    core = transpose_as_conv(geometry) if geometry.transposed else geometry
    dense = dense_name('event', core, groups, in_channels, out_channels)
    if (backend or jax.default_backend()) != 'cpu' or not kernels.available():
        return Choice('event', dense, 0.0, 0.0, density)
    limits = (cost.crossover_density(core, groups, max(1, n_batch), in_channels, out_channels, kind)
              for kind in ('forward', 'weight_grad'))
    return Choice('event', dense, *limits, density=density)


@contextlib.contextmanager
def report_branches() -> Iterator[List[Branch]]:
    """Debug mode: the event switches of programs traced inside the block record, every time they
    run, which branch they took; the block yields the list the records go into (in the order the
    switches ran; a program traced here keeps recording when it is called later).  A record comes
    when its program has run: block on the program's outputs (``jax.block_until_ready``) before
    reading the list.

    >>> import brainconv, jax.numpy as jnp
    >>> layer = brainconv.Conv2d((8, 8, 2), 4, 3, lowering='event')
    >>> with brainconv.lowering.report_branches() as log:
    ...     y = jax.block_until_ready(jax.jit(layer)(jnp.zeros((1, 8, 8, 2)).at[0, 3, 3, 0].set(1.0)))
    >>> [(r.kind, r.branch) for r in log]    # doctest: +SKIP
    [('forward', 'event')]
    """
    log: List[Branch] = []
    token = context._BRANCH_LOG.set(log)
    try:
        yield log
    finally:
        context._BRANCH_LOG.reset(token)
