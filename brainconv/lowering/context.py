"""What the formulation of a convolution depends on besides its own arguments.

Two kinds of context, both read while a convolution is traced or lowered:

* the user's choices, read when a convolution is *traced* (:func:`brainconv.lowering.resolve`):
  the global lowering (:func:`set_lowering`, :func:`use_lowering`), whether the input is spikes
  (:func:`spike_input`, set by the layers), a forced branch of the event switch
  (:func:`event_branch`); :func:`trace_context` / :func:`restore_context` carry them to an
  operation traced again later;
* where a primitive is being *lowered* (set by :mod:`brainconv.lowering.primitives`' lowering
  rule): for XLA:CPU or not, into a program over one device or several.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Tuple

from .. import _args

__all__ = ['LOWERINGS', 'set_lowering', 'get_lowering', 'use_lowering', 'spike_input', 'event_branch',
           'trace_context', 'restore_context']

#: The formulation names a layer's or op's ``lowering`` argument accepts (besides 'auto' and None).
LOWERINGS = _args.LOWERINGS

_GLOBAL = {'lowering': 'auto'}

#: True while a layer or op with a spike input (boolean, integer, ``BinaryArray``) is traced:
#: ``'auto'`` then picks ``'event'`` (:func:`brainconv.lowering.resolve`).
_SPIKES = contextvars.ContextVar('brainconv_spike_input', default=False)
#: ``'event'`` or ``'dense'`` forces that branch of the event formulation's run-time switch
#: (:func:`event_branch`); None: the switch decides by the non-zero count.
_EVENT_BRANCH = contextvars.ContextVar('brainconv_event_branch', default=None)

#: The list :func:`brainconv.lowering.report.report_branches` records event switches into, or None.
_BRANCH_LOG = contextvars.ContextVar('brainconv_branch_log', default=None)

#: True while a primitive is being lowered for XLA:CPU (read by
#: :func:`brainconv.lowering.cpu._ynn_escape`, a CPU-only rule, and by the event switch).
_LOWERING_FOR_CPU = contextvars.ContextVar('brainconv_lowering_for_cpu', default=False)

#: True while a primitive is lowered into a program over several devices (read by the event
#: switch: the event kernel is a single-device custom call, which XLA's partitioner would gather
#: every operand for).
_LOWERING_SPMD = contextvars.ContextVar('brainconv_lowering_spmd', default=False)


def spikes() -> bool:
    """Whether the convolution being traced reads spikes (:func:`spike_input`)."""
    return _SPIKES.get()


def forced_branch() -> str | None:
    """The event switch's branch forced by :func:`event_branch`, or None."""
    return _EVENT_BRANCH.get()


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
