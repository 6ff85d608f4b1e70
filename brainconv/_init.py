"""Cheap weight initialisation: braintools' variance-scaling initializers sampled with NumPy.

Calling ``braintools.init.XavierNormal()(shape)`` runs JAX op by op, and JAX
compiles those ops once per new shape: about 1 s per new kernel shape on a
2-core CPU, 90% of brainstate's layer construction time.  For the
initializers whose ``__call__`` is braintools' ``VarianceScaling.__call__``
(XavierNormal/Uniform, KaimingNormal/Uniform, LecunNormal/Uniform,
VarianceScaling itself) :func:`sample` reads the initializer's own ``scale``,
``distribution``, ``unit`` and ``_get_fan(shape)`` (so each braintools
version's fan convention is kept) and draws the same distribution with
NumPy.  The NumPy generator is seeded from ``brainstate.random``'s key, which
is then advanced, so ``brainstate.random.seed(...)`` still makes runs
reproducible.  Float ``Constant`` / ``ZeroInit`` (bias) initializers are
filled with NumPy too, and ``Orthogonal`` (recurrent kernels) is drawn with
NumPy's QR the way braintools draws it.  Nothing here traces or compiles.  Anything else -- another
initializer, a traced key (construction inside a transform), a non-scalar
scale -- is simply called.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Tuple

import brainstate
import braintools
import brainunit as u
import jax
import numpy as np

__all__ = ['sample']

# Standard deviation of a standard normal truncated to [-2, 2] (braintools divides by it too).
_TRUNCATED_STD = 0.8796256610342398
_VARIANCE_SCALING = getattr(braintools.init, 'VarianceScaling', None)
_CONSTANT = getattr(braintools.init, 'Constant', None)
_ORTHOGONAL = getattr(braintools.init, 'Orthogonal', None)


def _numpy_generator() -> np.random.Generator | None:
    """A NumPy generator seeded from brainstate's global key, which is advanced; None if traced."""
    state = brainstate.random.DEFAULT
    key = state.value
    if isinstance(key, jax.core.Tracer):
        return None
    data = np.asarray(jax.random.key_data(key))
    seeds = np.random.SeedSequence([int(v) for v in data.ravel()])
    draw, advance = seeds.spawn(2)
    following = advance.generate_state(data.size, dtype=np.uint32).reshape(data.shape)
    state.value = jax.random.wrap_key_data(following, impl=jax.random.key_impl(key))
    return np.random.default_rng(draw)


def _standard_truncated_normal(rng: np.random.Generator, shape: Tuple[int, ...]) -> np.ndarray:
    """Standard normal samples conditioned on [-2, 2] (rejection: 95% accepted)."""
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    return out


def _scalar(value: Any) -> float | None:
    try:
        return float(value) if np.ndim(value) == 0 else None
    except (TypeError, ValueError):
        return None


def _constant(init: Any, shape: Tuple[int, ...]) -> Any:
    """A braintools Constant/ZeroInit with a plain float value, filled with NumPy; else None."""
    if _CONSTANT is None or not isinstance(init, _CONSTANT) or type(init).__call__ is not _CONSTANT.__call__:
        return None
    value = getattr(init, 'value', None)
    if not isinstance(value, (float, np.floating)) or not getattr(init, 'unit', u.UNITLESS).is_unitless:
        return None
    return jax.device_put(np.full(shape, value, dtype=brainstate.environ.dftype()))


def _orthogonal(init: Any, shape: Tuple[int, ...]) -> Any:
    """A braintools Orthogonal drawn with NumPy, as braintools draws it; None if not applicable.

    braintools flattens every axis but the last into rows, takes the QR
    decomposition of a standard normal (rows, cols) matrix (transposed when
    there are fewer rows than columns), multiplies Q by the signs of R's
    diagonal and scales it.
    """
    if _ORTHOGONAL is None or not isinstance(init, _ORTHOGONAL) or type(init).__call__ is not _ORTHOGONAL.__call__:
        return None
    scale = _scalar(getattr(init, 'scale', None))
    if scale is None or len(shape) < 2 or not getattr(init, 'unit', u.UNITLESS).is_unitless:
        return None
    rng = _numpy_generator()
    if rng is None:
        return None
    rows, cols = math.prod(shape[:-1]), shape[-1]
    matrix = rng.standard_normal((rows, cols))
    if rows < cols:
        matrix = matrix.T
    q, r = np.linalg.qr(matrix)
    q = q * np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return jax.device_put((scale * q).reshape(shape).astype(brainstate.environ.dftype()))


def is_variance_scaling(init: Any) -> bool:
    """True when :func:`sample` draws ``init`` with NumPy (a braintools variance-scaling initializer)."""
    return (_VARIANCE_SCALING is not None and isinstance(init, _VARIANCE_SCALING)
            and type(init).__call__ is _VARIANCE_SCALING.__call__
            and getattr(init, 'distribution', None) in ('normal', 'uniform', 'truncated_normal'))


def sample(init: Callable[..., Any], shape: Tuple[int, ...], fan_shape: Tuple[int, ...] | None = None) -> Any:
    """``init(shape)``, drawn with NumPy when ``init`` is a braintools variance-scaling
    initializer (or filled, for a float Constant / ZeroInit).

    ``fan_shape``: the shape whose fans set a variance-scaling initializer's
    variance (default ``shape``); used only when ``is_variance_scaling(init)``.
    """
    filled = _constant(init, shape)
    if filled is None:
        filled = _orthogonal(init, shape)
    if filled is not None:
        return filled
    if not is_variance_scaling(init):
        return init(shape)
    scale, scale_unit = u.split_mantissa_unit(init.scale)
    scale = _scalar(scale)
    if scale is None:
        return init(shape)
    rng = _numpy_generator()
    if rng is None:
        return init(shape)
    variance = scale / max(1.0, float(init._get_fan(shape if fan_shape is None else fan_shape)))
    if init.distribution == 'uniform':
        limit = math.sqrt(3.0 * variance)
        samples = rng.uniform(-limit, limit, shape)
    elif init.distribution == 'normal':
        samples = rng.normal(0.0, math.sqrt(variance), shape)
    else:
        samples = _standard_truncated_normal(rng, shape) * (math.sqrt(variance) / _TRUNCATED_STD)
    value = jax.device_put(samples.astype(brainstate.environ.dftype()))  # jnp.asarray compiles per shape
    unit = scale_unit * init.unit
    return value if unit.is_unitless else u.maybe_decimal(u.Quantity(value, unit=unit))
