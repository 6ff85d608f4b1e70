"""Two primitives: every transform sees one bilinear convolution.

``conv_p(x, w)`` is the core convolution and ``weight_grad_p(x, gy)`` its
kernel gradient; both are bilinear, and the transposes of their four linear
maps are these two primitives again::

  conv_p(x, w):         d/dx^T gy  = conv_p(gy, adjoint_kernel(w), adjoint geometry)
                        d/dw^T gy  = weight_grad_p(x, gy)
  weight_grad_p(x, gy): d/dx^T dW  = conv_p(gy, adjoint_kernel(dW), adjoint geometry)
                        d/dgy^T dW = conv_p(x, dW)

so ``ad.defbilinear`` gives jvp (a sum of two primitive calls), reverse mode
and ``linear_transpose`` from these rules alone, to any order (hessian,
jacfwd(jacrev)).  vmap folds a mapped axis into the batch or, for mapped
kernels, into the groups.  Lowering (``mlir.lower_fun``) runs the chosen
formulation's plain functions (:data:`FORMULATIONS`), so XLA sees the
formulation's own ops, and sharding propagates through them.  The shape of
JAX's own ``jax/_src/lax/convolution.py``: the primitive, its abstract
evaluation, transpose, batching and lowering rules side by side.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax._src import dispatch
from jax.core import ShapedArray
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from .. import _args
from ..shapes import ConvGeometry, adjoint_geometry
from .common import accumulation_dtype, adjoint_kernel
from .context import _LOWERING_FOR_CPU, _LOWERING_SPMD
from .dense import direct
from .event.switch import EVENT, dense_name
from .formulations import DENSE
from .partition import needs_devices

__all__ = ['conv_p', 'weight_grad_p', 'conv_core', 'FORMULATIONS', 'CONV_PRIMITIVE']

#: The name of brainconv's convolution primitive (:data:`conv_p`); braintrace is told that it
#: mixes positions (:mod:`brainconv._braintrace`).
CONV_PRIMITIVE = 'brainconv_conv'

#: Formulation name -> its two functions, as the primitives' lowering runs them.
FORMULATIONS = {**DENSE, 'event': EVENT}


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
    if x.shape[0] == 0:   # an empty batch: no formulation need handle it (the loop over taps divides by it)
        return jnp.zeros(tuple(geometry.kernel_size) + (x.shape[-1] // groups, gy.shape[-1]), x.dtype)
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
    formulation = dense_name(formulation, adjoint, groups, ct.shape[-1], kernel.shape[-2] * groups)
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


conv_p = _primitive(CONV_PRIMITIVE, _conv_impl, _conv_abstract, _conv_transpose_lhs, _conv_transpose_rhs,
                    _conv_batch)


weight_grad_p = _primitive('brainconv_conv_weight_grad', _weight_grad_impl, _weight_grad_abstract,
                           _weight_grad_transpose_lhs, _weight_grad_transpose_rhs, _weight_grad_batch)
needs_devices(conv_p, weight_grad_p)   # their lowering may partition a custom call over the devices


def conv_core(x: jax.Array, w: jax.Array, geometry: ConvGeometry, groups: int, name: str,
              precision: Any = None) -> jax.Array:
    """The core convolution (:mod:`brainconv.lowering`) by formulation ``name``.

    ``x``: ``(N, *in_spatial, C_in)``; ``w``: ``(*kernel_size, C_in // groups,
    C_out)``; ``geometry``: non-transposed, pads applied as zeros (negative
    crops).  Returns ``(N, *out_spatial, C_out)``.  Every formulation but
    ``'lax'`` binds :data:`conv_p`, so it supports every JAX transform.
    """
    if name == 'lax':
        return direct(x, w, geometry, groups, precision)
    if name not in FORMULATIONS:
        _args.lowering(name, allow_auto=False)
    return conv_p.bind(x, w, geometry=geometry, groups=groups, formulation=name, precision=precision)
