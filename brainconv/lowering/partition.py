"""Maps that run on each device's shard of the batch, in a program over several devices.

XLA's SPMD partitioner knows nothing of a custom call (an event kernel, say): left alone, it
gathers every operand onto each device and runs the call whole there.  :func:`batch_parallel`
wraps a map of one batch in ``jax.experimental.custom_partitioning``, whose partition rule tells the
partitioner the truth: the map runs on each device's slice of the batch axis (any other axis of
its operands is gathered first; a convolution's spatial axes are not split), and a map that sums
over the batch (a kernel gradient) adds the devices' partial sums with a ``psum``, as XLA does for
its own convolution.  So a sharded program keeps a fast path that only runs on one device's data.

custom_partitioning lowers only where the lowering knows its devices: the primitives that call
this register themselves in ``jax._src.dispatch.prim_requires_devices_during_lowering``
(:func:`needs_devices`), as custom_partitioning does for itself.  A program that contains them
cannot then be lowered without devices (``jax.export`` for an abstract mesh).
"""

from __future__ import annotations

import string
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax._src import dispatch
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ['batch_parallel', 'needs_devices']


def needs_devices(*primitives) -> None:
    """Let ``primitives``' lowering see the program's devices (what custom_partitioning needs)."""
    dispatch.prim_requires_devices_during_lowering.update(primitives)


def _names(count: int, used: set) -> list:
    """``count`` fresh one-letter factor names for a sharding rule."""
    fresh = [c for c in string.ascii_lowercase if c not in used]
    used.update(fresh[:count])
    return fresh[:count]


def _rule(batched: Sequence[int], others: Sequence[int], out_rank: int, reduces: bool) -> str:
    """Shardy's rule: the batch factor ``b`` leads every batched operand (and the output, unless the
    map sums over it); every other axis a factor of its own (sizes differ between operands)."""
    used = {'b'}
    operands = ([' '.join(['b'] + _names(r - 1, used)) for r in batched]
                + [' '.join(_names(r, used)) for r in others])
    output = ' '.join(_names(out_rank, used) if reduces else ['b'] + _names(out_rank - 1, used))
    return ', '.join(operands) + ' -> ' + output


def batch_parallel(fn: Callable, *operands: jax.Array, batched: Sequence[bool], reduces: bool) -> jax.Array:
    """``fn(*operands)`` run on each device's slice of the batch axis of the first operand: the
    operands flagged in ``batched`` are batch-major and sliced alike, the others replicated (``fn``
    takes shapes of one device's shard).  ``reduces``: the output has no
    batch axis and is the sum of the per-shard outputs (replicated on every device); otherwise the
    output is batch-major and sharded as the batch.

    custom_partitioning takes a function without constants, so the constants ``fn`` traces to
    (index tables, say) are handed to it as extra, replicated operands; each device's ``fn`` is
    traced anew for its shard's shapes.
    """
    closed = jax.make_jaxpr(fn)(*operands)
    consts = [jnp.reshape(jnp.asarray(c), (-1,)) if jnp.ndim(c) == 0 else jnp.asarray(c) for c in closed.consts]
    shapes = [jnp.shape(c) for c in closed.consts]
    n = len(operands)
    out_rank = len(closed.out_avals[0].shape)

    @custom_partitioning
    def run(*args):
        values = [jnp.reshape(c, shape) for c, shape in zip(args[n:], shapes)]
        return jax.core.eval_jaxpr(closed.jaxpr, values, *args[:n])[0]

    def batch_spec(arg_shapes):
        spec = arg_shapes[0].sharding.spec
        return spec[0] if len(spec) else None

    def out_sharding(mesh, batch):
        return NamedSharding(mesh, P() if reduces else P(batch, *([None] * (out_rank - 1))))

    def infer(mesh, arg_shapes, result_shape):
        return out_sharding(mesh, batch_spec(arg_shapes))

    def partition(mesh, arg_shapes, result_shape):
        batch = batch_spec(arg_shapes)
        args = tuple(NamedSharding(mesh, P(batch, *([None] * (len(a.shape) - 1))) if i < n and batched[i] else P())
                     for i, a in enumerate(arg_shapes))
        axes = () if batch is None else (batch if isinstance(batch, tuple) else (batch,))

        def local(*args):
            out = fn(*args[:n])
            return jax.lax.psum(out, axes) if reduces and axes else out

        return mesh, local, out_sharding(mesh, batch), args

    run.def_partition(infer_sharding_from_operands=infer, partition=partition,
                      sharding_rule=_rule([jnp.ndim(o) for o, b in zip(operands, batched) if b],
                                          [jnp.ndim(o) for o, b in zip(operands, batched) if not b]
                                          + [c.ndim for c in consts], out_rank, reduces))
    return run(*operands, *consts)
