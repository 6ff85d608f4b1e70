"""Layer construction: braintools' variance-scaling initializers drawn with NumPy, no compiles."""

from __future__ import annotations

import logging
import math

import brainstate
import braintools
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import brainconv
from brainconv import _init


@pytest.fixture
def compile_log(caplog):
    """The log records of every JAX compilation while the test runs."""
    previous = jax.config.jax_log_compiles
    jax.config.update('jax_log_compiles', True)
    caplog.set_level(logging.WARNING)
    try:
        yield caplog
    finally:
        jax.config.update('jax_log_compiles', previous)


def _compiles(caplog):
    return [r.getMessage() for r in caplog.records if 'Compiling' in r.getMessage()]


def test_construction_compiles_nothing(compile_log):
    brainstate.random.seed(1)   # seeding compiles a key once; construction must not compile after it
    compile_log.clear()
    for i in range(3):   # a new kernel shape every time: brainstate's initializer would compile each
        brainconv.Conv2d((16, 16, 5 + i), 7 + i, 3)
        brainconv.ConvTranspose1d((9, 4 + i), 3, 5, stride=2, b_init=braintools.init.ZeroInit())
        brainconv.Conv3d((4, 4, 4, 2), 3 + i, 2, w_init=braintools.init.KaimingUniform())
    assert _compiles(compile_log) == []


def test_seed_makes_runs_reproducible_and_layers_differ():
    brainstate.random.seed(42)
    a = brainconv.Conv2d((8, 8, 3), 4, 3).weight.value['weight']
    b = brainconv.Conv2d((8, 8, 3), 4, 3).weight.value['weight']
    brainstate.random.seed(42)
    a2 = brainconv.Conv2d((8, 8, 3), 4, 3).weight.value['weight']
    np.testing.assert_array_equal(np.asarray(a), np.asarray(a2))
    assert not np.array_equal(np.asarray(a), np.asarray(b))
    assert a.dtype == jnp.float32 and isinstance(a, jax.Array)


def test_advancing_the_key_changes_later_brainstate_draws():
    brainstate.random.seed(7)
    first = np.asarray(brainstate.random.rand(3))
    brainstate.random.seed(7)
    brainconv.Conv1d((10, 2), 2, 3)
    assert not np.array_equal(first, np.asarray(brainstate.random.rand(3)))


@pytest.mark.parametrize('init, shape', [
    (braintools.init.XavierNormal(), (3, 3, 64, 32)),
    (braintools.init.XavierUniform(), (5, 40, 24)),
    (braintools.init.KaimingNormal(), (3, 3, 32, 48)),
    (braintools.init.KaimingUniform(), (3, 3, 32, 48)),
    (braintools.init.LecunNormal(), (7, 30, 20)),
    (braintools.init.LecunUniform(), (7, 30, 20)),
    (braintools.init.VarianceScaling(0.5, 'fan_out', 'truncated_normal'), (3, 3, 40, 40)),
])
def test_same_distribution_as_braintools(init, shape):
    """Variance from the initializer's own scale and ``_get_fan``; support of the distribution."""
    brainstate.random.seed(3)
    ours = np.asarray(_init.sample(init, shape), np.float64)
    theirs = np.asarray(init(shape), np.float64)
    assert ours.shape == tuple(shape)
    target = float(u.get_mantissa(init.scale)) / max(1.0, float(init._get_fan(shape)))
    for sample in (ours, theirs):
        assert abs(sample.var() / target - 1) < 0.08, (sample.var(), target)
        assert abs(sample.mean()) < 4 * math.sqrt(target / sample.size)
    if init.distribution == 'uniform':
        assert np.abs(ours).max() <= math.sqrt(3 * target) + 1e-7
    if init.distribution == 'truncated_normal':
        assert np.abs(ours).max() <= 2 * math.sqrt(target) / 0.8796256610342398 + 1e-6


def test_units_are_kept():
    init = braintools.init.XavierNormal(unit=u.mV)
    value = _init.sample(init, (3, 4, 5))
    assert isinstance(value, u.Quantity) and value.unit.has_same_dim(u.mV) and value.shape == (3, 4, 5)


def test_float_constants_are_filled_without_jax_ops(compile_log):
    compile_log.clear()
    value = _init.sample(braintools.init.Constant(0.5), (2, 3))
    np.testing.assert_array_equal(np.asarray(value), np.full((2, 3), 0.5, np.float32))
    assert _compiles(compile_log) == []


def test_other_initializers_are_called():
    calls = []

    def init(shape):
        calls.append(shape)
        return jnp.ones(shape)

    layer = brainconv.Conv1d((6, 2), 3, 3, w_init=init)
    assert calls == [(3, 2, 3)]
    np.testing.assert_array_equal(np.asarray(layer.weight.value['weight']), np.ones((3, 2, 3)))
    normal = braintools.init.Normal(0.0, 2.0)
    assert _init.sample(normal, (4, 5)).shape == (4, 5)


def test_a_traced_key_falls_back_to_the_initializer(monkeypatch):
    monkeypatch.setattr(_init, '_numpy_generator', lambda: None)
    init = braintools.init.XavierNormal()
    brainstate.random.seed(5)
    ours = _init.sample(init, (3, 3, 4, 4))
    brainstate.random.seed(5)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(init((3, 3, 4, 4))))
