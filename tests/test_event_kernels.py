"""The event-driven kernels (:mod:`brainconv.lowering.event`) against the NumPy oracle of ``_reference.py``.

``forward`` and ``weight_grad`` are called on core geometries (channels last,
one batch axis) covering 1-, 2-, 3- and 4-d; stride, rhs and lhs dilation;
negative pads (crops) and pads larger than the kernel; groups, and depthwise
kernels with a channel multiplier; input densities from all zeros through
~0.1%, 1%, 10%, 50% to all ones, with Gaussian values (not only 0/1) and
``binary=True``; float32 and float64.  The oracle sums over kernel taps in
float64 (``ref.conv``, ``ref.conv_weight_grad``).  Every computing test runs
on both backends, C++ (XLA FFI) and Numba, each skipped where it does not
build here.  Compilation: the C++ library once per machine, one Numba
compilation per kernel and dtype (both cached on disk).
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys

import _reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from brainconv.lowering.event import cost as event_cost
from brainconv.lowering.event import kernels as _event
from brainconv.lowering.event import plan as event_plan
from brainconv.shapes import ConvGeometry, adjoint_geometry, conv_out_length


@pytest.fixture(params=['cpp', 'numba'])
def backend(request, monkeypatch):
    """Run the test with the event kernels of one backend (skipped where it does not build)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)
        if _event._resolve(request.param) is None:
            pytest.skip(f'the {request.param} backend does not build here')
    monkeypatch.setattr(_event, 'BACKEND', request.param)
    return request.param


def geometry(in_spatial, kernel, stride=None, pads=None, lhs=None, rhs=None) -> ConvGeometry:
    nd = len(in_spatial)
    stride, lhs, rhs = stride or (1,) * nd, lhs or (1,) * nd, rhs or (1,) * nd
    pads = pads or ((0, 0),) * nd
    out = tuple(conv_out_length(n, k, s, lo, hi, ld, d)
                for n, k, s, (lo, hi), ld, d in zip(in_spatial, kernel, stride, pads, lhs, rhs))
    return ConvGeometry(tuple(in_spatial), out, tuple(kernel), tuple(stride), tuple(pads), tuple(lhs), tuple(rhs))


#: name -> (geometry, C_in, C_out, groups)
CASES = {
    '1d-stride-dilation': (geometry((13,), (3,), (2,), ((2, 1),), rhs=(2,)), 3, 5, 1),
    '1d-lhs-crop-groups': (geometry((9,), (4,), (1,), ((-2, 1),), lhs=(3,)), 4, 6, 2),
    '1d-large-pads': (geometry((5,), (3,), (1,), ((6, 7),)), 2, 3, 1),
    '2d-same': (geometry((7, 8), (3, 3), pads=((1, 1), (1, 1))), 5, 16, 1),
    '2d-strided-lhs-rhs': (geometry((6, 7), (3, 2), (2, 3), ((4, -1), (2, 5)), lhs=(2, 3), rhs=(2, 1)), 4, 6, 2),
    '2d-depthwise-x2': (geometry((6, 6), (3, 3), (1, 2), ((1, 1), (0, 2))), 6, 12, 6),
    '2d-groups-vector': (geometry((5, 6), (2, 3), pads=((1, 0), (1, 1))), 4, 32, 2),
    '3d-mixed': (geometry((4, 5, 3), (2, 3, 2), (1, 2, 1), ((1, -1), (2, 2), (0, 1)), lhs=(2, 1, 1), rhs=(1, 1, 2)),
                 3, 4, 1),
    '4d': (geometry((3, 4, 3, 2), (2, 2, 1, 2), (1, 1, 2, 1), ((1, 0), (0, 1), (0, 0), (1, 1))), 2, 3, 1),
    'kernel-wider-than-input': (geometry((3, 2), (5, 4), pads=((3, 3), (2, 3))), 2, 2, 1),
}
#: the input gradient of a strided convolution arrives as its adjoint: lhs-dilated and strided
CASES['2d-adjoint-of-strided'] = (adjoint_geometry(CASES['2d-strided-lhs-rhs'][0]), 6, 4, 2)


def inputs(case, density, dtype, seed=0, batch=3):
    g, cin, cout, groups = CASES[case]
    rng = np.random.default_rng(seed)
    shape = (batch,) + g.in_spatial + (cin,)
    if density == 1.0:
        x = np.ones(shape)
    else:
        x = rng.standard_normal(shape) * (rng.random(shape) < density)
    w = rng.standard_normal(g.kernel_size + (cin // groups, cout))
    gy = rng.standard_normal((batch,) + g.out_spatial + (cout,))
    return g, groups, x.astype(dtype), w.astype(dtype), gy.astype(dtype)


def check(case, density, dtype=np.float32, binary=False, seed=0, batch=3):
    g, groups, x, w, gy = inputs(case, density, dtype, seed, batch)
    y = jax.jit(lambda a, b: _event.forward(a, b, g, groups, binary=binary))(x, w)
    dw = jax.jit(lambda a, b: _event.weight_grad(a, b, g, groups, binary=binary))(x, gy)
    assert y.dtype == dtype and dw.dtype == dtype
    y_ref = ref.conv(x, w, g.stride, g.pads, g.lhs_dilation, g.rhs_dilation, groups)
    dw_ref = ref.conv_weight_grad(x, gy, g.kernel_size, g.stride, g.pads, g.lhs_dilation, g.rhs_dilation, groups)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for actual, expected in ((y, y_ref), (dw, dw_ref)):
        actual = np.asarray(actual, np.float64)
        assert actual.shape == expected.shape
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize('case', sorted(CASES))
def test_geometries_at_two_densities(case, backend):
    check(case, 0.1)
    check(case, 0.5, seed=1)


@pytest.mark.parametrize('density', [0.0, 0.001, 0.01, 0.1, 0.5, 1.0])
def test_densities(density, backend):
    check('2d-same', density, batch=8)
    check('2d-depthwise-x2', density, batch=8)


def test_binary_spikes(backend):
    g, groups, x, w, gy = inputs('2d-strided-lhs-rhs', 0.2, np.float32)
    spikes = (x != 0).astype(np.float32)
    for binary in (False, True):
        y = _event.forward(jnp.asarray(spikes), jnp.asarray(w), g, groups, binary=binary)
        np.testing.assert_allclose(y, ref.conv(spikes, w, g.stride, g.pads, g.lhs_dilation, g.rhs_dilation, groups),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('case', ['1d-lhs-crop-groups', '2d-same', '3d-mixed'])
def test_float64(case, backend):
    with jax.enable_x64(True):
        check(case, 0.3, np.float64)


def test_inside_scan_and_under_grad(backend):
    """In a lax.scan over time steps, in a jitted function differentiated with respect to an
    argument that does not reach the kernels (their inputs carry no tangent)."""
    g, groups, x, w, _ = inputs('2d-same', 0.05, np.float32)
    steps = np.stack([x, 2 * x, np.zeros_like(x)])

    def run(scale):
        def step(carry, xt):
            return carry + scale * _event.forward(xt, w, g, groups), None
        total, _ = lax.scan(step, jnp.zeros((x.shape[0],) + g.out_spatial + (w.shape[-1],)), steps)
        return jnp.sum(total * total)

    expected = 3 * ref.conv(x, w, g.stride, g.pads, g.lhs_dilation, g.rhs_dilation, groups)
    value, grad = jax.jit(jax.value_and_grad(run))(1.5)
    np.testing.assert_allclose(value, np.sum((1.5 * expected) ** 2), rtol=1e-4)
    np.testing.assert_allclose(grad, 2 * 1.5 * np.sum(expected ** 2), rtol=1e-4)


def test_empty_batch_and_wrong_operands(backend):
    g, groups, x, w, gy = inputs('2d-same', 0.1, np.float32)
    assert _event.forward(jnp.zeros((0,) + x.shape[1:]), w, g, groups).shape == (0,) + g.out_spatial + (16,)
    np.testing.assert_array_equal(_event.weight_grad(jnp.zeros((0,) + x.shape[1:]), gy[:0], g, groups), 0)
    with pytest.raises(TypeError, match='float32 or float64'):
        _event.forward(x, w.astype(np.float16), g, groups)
    with pytest.raises(ValueError, match='does not fit'):
        _event.forward(x, w[..., :3, :], g, groups)
    with pytest.raises(ValueError, match='does not fit'):
        _event.weight_grad(x, gy[:, 1:], g, groups)


def test_plan_is_small_and_cached():
    """The plan holds lead pairs and last-axis pairs, not one row per input position and tap."""
    g = geometry((64, 64, 64), (3, 3, 3), pads=((1, 1),) * 3)
    table = event_plan.plan(g)
    assert table is event_plan.plan(g) and table.dtype == np.int32
    lead, last = (64 * 64 + 1) + 2 * (64 * 64 * 9), (64 + 1) + 2 * (64 * 3)   # offsets + (tap, output) pairs
    assert table.size <= 7 + lead + last < 2 * 64 ** 3 * 27 // 100       # under 1% of a flat table


def test_backend_resolution(monkeypatch, tmp_path):
    """'auto' prefers C++; a backend that cannot build resolves to None with a warning, and
    available() then says False instead of raising."""
    import importlib.util
    if _event._resolve('cpp') is not None:
        assert _event._resolve('auto') == 'cpp'
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'numba' else real(name, *a))
    with pytest.warns(RuntimeWarning, match='numba is not installed'):
        assert _event._resolve_now('numba') is None
    monkeypatch.setenv('CXX', '/nonexistent/c++')
    monkeypatch.setenv('BRAINCONV_CACHE_DIR', str(tmp_path / 'cold'))      # no library cached anywhere
    monkeypatch.setattr(_event, '_fallback_dir', lambda: tmp_path / 'fallback')
    monkeypatch.setattr(_event, '_cpp_library', _event._cpp_library.__wrapped__)
    with pytest.warns(RuntimeWarning, match='cpp: RuntimeError: running the C\\+\\+ compiler /nonexistent'):
        assert _event._resolve_now('cpp') is None
    monkeypatch.setattr(_event, 'BACKEND', 'fortran')
    assert _event.available() is False


def test_first_use_inside_a_trace(backend):
    """The backend's probe (an eager call through XLA) works while a function is being traced,
    where the first event convolution of a program is usually met."""
    jax.jit(lambda v: _event._probe(backend) or v)(1.0)


def test_cpp_library_is_cached():
    """Compiled once into the cache directory; found there afterwards."""
    if _event._resolve('cpp') is None:
        pytest.skip('no C++ compiler here')
    path = _event._cpp_library_path()
    assert path.parent.parent == _event.cache_dir() and path.exists()
    stamp = path.stat().st_mtime_ns
    assert _event._cpp_library_path() == path and path.stat().st_mtime_ns == stamp


def _cached_library():
    if _event._resolve('cpp') is None:
        pytest.skip('no C++ compiler here')
    return _event._cpp_library_path()


def test_a_cached_library_loads_without_a_compiler(monkeypatch):
    """A machine with the library in its cache but no compiler on PATH still runs C++ kernels."""
    path = _cached_library()

    def no_compiler():
        raise RuntimeError("no C++ compiler found")
    monkeypatch.setattr(_event, '_compiler', no_compiler)
    monkeypatch.setattr(_event, '_cpp_library', _event._cpp_library.__wrapped__)
    assert _event._cpp_library_path() == path
    assert _event._resolve_now('cpp') == 'cpp'


def test_a_read_only_cache_builds_elsewhere_and_says_so(monkeypatch, tmp_path):
    """A cache folder that cannot be written: the library is built in a temporary folder, with a
    warning naming both (the compiler is stood in for by a copy of the cached library)."""
    cached = _cached_library()
    blocker = tmp_path / 'not-a-folder'
    blocker.write_text('')
    monkeypatch.setenv('BRAINCONV_CACHE_DIR', str(blocker / 'cache'))    # mkdir under a file fails
    monkeypatch.setattr(_event, '_fallback_dir', lambda: tmp_path / 'fallback')
    monkeypatch.setattr(_event, '_compile', lambda cxx, out: shutil.copyfile(cached, out))
    with pytest.warns(RuntimeWarning, match='cannot be written.*fallback'):
        path = _event._cpp_library_path()
    assert path == tmp_path / 'fallback' / cached.name and path.exists()


def test_auto_says_once_why_it_skips_cpp(monkeypatch):
    """'auto' falling back from C++ to Numba warns with the reason."""
    pytest.importorskip('numba')
    probe = _event._probe

    def failing(name):
        if name == 'cpp':
            raise RuntimeError('no C++ compiler found')
        return probe(name)
    monkeypatch.setattr(_event, '_probe', failing)
    with pytest.warns(RuntimeWarning, match='run on numba, not C.*no C\\+\\+ compiler found'):
        assert _event._resolve_now('auto') == 'numba'


def test_import_brainconv_does_not_import_numba():
    code = "import sys, brainconv, brainconv.lowering.event.kernels; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == 'False'


@pytest.mark.parametrize('kind', ['forward', 'weight_grad'])
@pytest.mark.parametrize('case', ['2d-same', '2d-depthwise-x2', '1d-stride-dilation'])
def test_crossover_is_where_the_costs_meet(case, kind):
    """The switch's threshold: SAFETY times the count where the modelled event cost meets the dense
    cost (event cost at the break-even at most the dense cost, one more non-zero past it above it),
    and never above the measured density cap; both backends' constants are positive where they matter."""
    g, cin, cout, groups = CASES[case]
    n = 16
    total = n * math.prod(g.in_spatial) * cin
    shape = 'depthwise' if groups > 1 and cin == groups else 'dense'
    for name in ('cpp', 'numba'):
        nnz = event_cost.crossover(g, groups, n, cin, cout, kind, name)
        assert 0 <= nnz <= event_cost.DENSITY_CAP[kind, shape] * total
        dense = event_cost.dense_cost(g, groups, n, cin, cout, kind)
        assert dense > 0
        base = event_cost.event_cost(g, groups, n, cin, cout, 0, kind, name)
        per = event_cost.event_cost(g, groups, n, cin, cout, 1, kind, name) - base
        even = int((dense - base) / per)           # the model's break-even
        if 0 < even < total:
            assert event_cost.event_cost(g, groups, n, cin, cout, even, kind, name) <= dense * (1 + 1e-9)
            assert event_cost.event_cost(g, groups, n, cin, cout, even + 1, kind, name) > dense
        assert nnz == int(min(event_cost.DENSITY_CAP[kind, shape] * total, event_cost.SAFETY * max(0, even)))
    cost = jax.jit(lambda k: event_cost.event_cost(g, groups, n, cin, cout, k, kind, 'cpp'))(jnp.int32(10))
    assert float(cost) == pytest.approx(event_cost.event_cost(g, groups, n, cin, cout, 10, kind, 'cpp'), rel=1e-6)
