"""Event-driven convolution: kernels whose cost follows the number of non-zero inputs.

* :mod:`~brainconv.lowering.event.plan` -- the geometry as the int32 table a kernel reads;
* :mod:`~brainconv.lowering.event.kernels` -- the two maps (forward, kernel gradient) on the
  C++ (``_event.cc``, XLA FFI) or Numba (:mod:`~brainconv.lowering.event.numba_kernels`) backend;
* :mod:`~brainconv.lowering.event.cost` -- the measured cost model and its crossover;
* :mod:`~brainconv.lowering.event.switch` -- the ``'event'`` formulation: the kernel or the
  dense formulation, by the input's non-zero count at run time.
"""

from .cost import crossover, dense_cost, event_cost
from .kernels import available, backend, forward, weight_grad

__all__ = ['available', 'backend', 'forward', 'weight_grad', 'crossover', 'event_cost', 'dense_cost']
