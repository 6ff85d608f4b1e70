"""Event-driven convolution kernels: native CPU loops over the non-zero inputs.

Spiking inputs are binary and sparse (1-5% of positions active per step).
The kernels here scan the input once for its non-zeros and, for each, add
``value * kernel slice`` into every output position it reaches (forward), or
``value * output-gradient row`` into every kernel tap it reaches (kernel
gradient), so their cost is proportional to the number of non-zeros, not to
the input size.  They are exact for any input values (zeros are skipped, the
rest multiplied), in float32 and float64, for any core geometry of
:mod:`brainconv.lowering`: any number of spatial axes, stride, rhs and lhs
dilation (input ``p`` sits at ``p * ld`` of the dilated input, so no
multiply ever touches an inserted zero), negative pads (crops), groups and
depthwise kernels with a channel multiplier.

Public functions (``forward`` and ``weight_grad`` have the signature of every
formulation's maps, :class:`brainconv.lowering.formulations.Formulation`):

* :func:`available` / :func:`backend` -- whether (and on which backend) the kernels run here;
* :func:`forward` ``(x, w, g, groups, precision=None, binary=False) -> y``;
* :func:`weight_grad` ``(x, gy, g, groups, precision=None, binary=False) -> dw``.

Two backends run the same loops (:data:`BACKEND`, default ``'auto'``: the
first that builds here):

* ``'cpp'``: ``_event.cc``, compiled on first use with the machine's C++
  compiler (``g++``/``clang++ -O3 -march=native``, a few seconds) into
  :func:`cache_dir` and loaded from there afterwards, its handlers registered
  as XLA FFI targets.  A call costs under a microsecond, takes no GIL, and
  borrows its threads from XLA's own intra-op pool.
* ``'numba'`` (``pip install brainconv[event]``; the fallback where no
  compiler builds the C++): :mod:`brainconv.lowering.event.numba_kernels`,
  jitted with ``cache=True`` and called through brainevent's kernel interface
  (``XLACustomKernel`` + ``def_numba_kernel``): every call passes a ctypes
  callback that takes the GIL (tens of microseconds), and its threads are
  numba's own.

Nothing here imports numba or compiles anything until a kernel is first
needed; ``import brainconv`` stays light.  The geometry reaches a kernel as
its plan (:mod:`brainconv.lowering.event.plan`); inputs are passed flattened
to ``(N, positions, channels)``.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import hashlib
import importlib.util
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ...shapes import ConvGeometry
from . import numba_kernels
from .plan import _PARTS, _plan

__all__ = ['available', 'backend', 'forward', 'weight_grad', 'cache_dir']


#: Which backend runs the kernels: ``'auto'`` (C++ where the machine's compiler builds
#: ``_event.cc``, else Numba), ``'cpp'`` or ``'numba'``.  Read when a kernel call is traced; the
#: environment variable ``BRAINCONV_EVENT_BACKEND`` sets the initial value.
BACKEND = os.environ.get('BRAINCONV_EVENT_BACKEND', 'auto')

#: C++ compiler flags.  ``-march=native``: the library is cached per CPU (see :func:`_cpp_library`).
CXXFLAGS = ('-O3', '-march=native', '-std=c++17', '-shared', '-fPIC')

_CPP_SYMBOLS = {('forward', 'float32'): 'BrainconvEventForwardF32', ('forward', 'float64'): 'BrainconvEventForwardF64',
                ('weight_grad', 'float32'): 'BrainconvEventWeightGradF32',
                ('weight_grad', 'float64'): 'BrainconvEventWeightGradF64'}


def cache_dir() -> Path:
    """Where the compiled C++ library is kept: ``$BRAINCONV_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/brainconv`` (``~/.cache/brainconv``)."""
    root = os.environ.get('BRAINCONV_CACHE_DIR')
    if root:
        return Path(root)
    return Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'brainconv'


def _cpu_identity() -> str:
    """The CPU the library is compiled for (``-march=native``): model and feature flags."""
    try:
        with open('/proc/cpuinfo') as f:
            lines = [ln for ln in f.read().splitlines() if ln.startswith(('model name', 'flags', 'Features'))]
        return '\n'.join(sorted(set(lines)))
    except OSError:
        return f'{platform.machine()} {platform.processor()}'


def _compiler() -> str:
    if sys.platform == 'win32':
        raise RuntimeError("the C++ backend is built with g++/clang++ flags; not on Windows")
    cxx = os.environ.get('CXX') or shutil.which('g++') or shutil.which('clang++') or shutil.which('c++')
    if not cxx:
        raise RuntimeError("no C++ compiler found (g++ or clang++; set CXX to choose one)")
    return cxx


def _library_name() -> str:
    """The file name of the compiled library for this source, flags, jaxlib (its FFI header) and
    CPU (``-march=native``).  The compiler is not part of it: a library one compiler built serves
    as well as another's, and a machine without a compiler still loads a cached one."""
    key = hashlib.sha256()
    for part in (Path(__file__).with_name('_event.cc').read_bytes(), ' '.join(CXXFLAGS).encode(),
                 jax.lib.__version__.encode(), Path(jax.ffi.include_dir(), 'xla', 'ffi', 'api', 'ffi.h').read_bytes(),
                 _cpu_identity().encode()):
        key.update(part)
        key.update(b'\0')
    return f'brainconv_event_{key.hexdigest()[:20]}.so'


def _fallback_dir() -> Path:
    """Where the library is built when :func:`cache_dir` cannot be written: a per-user temporary folder."""
    return Path(tempfile.gettempdir()) / f'brainconv-{os.getuid() if hasattr(os, "getuid") else "user"}' / 'event'


def _cpp_library_path() -> Path:
    """The compiled library: loaded from :func:`cache_dir` (or the temporary fallback) if it is
    there, else compiled (into a temporary file, then renamed, so concurrent processes never load
    a partial library), into the cache, or where that cannot be written, into the fallback with a
    warning (it is then rebuilt whenever the temporary folder is cleared)."""
    name = _library_name()
    places = [cache_dir() / 'event', _fallback_dir()]
    for place in places:
        if (place / name).exists():
            return place / name
    cxx = _compiler()
    for i, place in enumerate(places):
        try:
            place.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=place) as tmp:
                out = Path(tmp) / name
                _compile(cxx, out)
                os.replace(out, place / name)
        except OSError as exc:   # a read-only or missing cache: the next place
            if i + 1 == len(places):
                raise
            warnings.warn(f"brainconv's event-kernel cache {place} cannot be written ({exc}); building the C++ "
                          f"library in {places[i + 1]} instead (set BRAINCONV_CACHE_DIR to a writable folder to "
                          f"keep it)", RuntimeWarning, stacklevel=2)
            continue
        return place / name
    raise AssertionError('unreachable')  # pragma: no cover


def _compile(cxx: str, out: Path) -> None:
    """Compile ``_event.cc`` into ``out`` (without ``-march=native`` where the compiler refuses it)."""
    source = Path(__file__).with_name('_event.cc')
    include = jax.ffi.include_dir()
    for flags in (CXXFLAGS, tuple(f for f in CXXFLAGS if not f.startswith('-march'))):
        try:
            done = subprocess.run([cxx, *flags, f'-I{include}', str(source), '-o', str(out)], capture_output=True,
                                  text=True)
        except OSError as exc:   # the compiler itself cannot run: not a cache problem
            raise RuntimeError(f"running the C++ compiler {cxx} failed: {exc}") from exc
        if done.returncode == 0:
            return
    raise RuntimeError(f"compiling {source.name} with {cxx} failed:\n{done.stderr[-2000:]}")


@functools.cache
def _cpp_library() -> ctypes.CDLL:
    """Build (first use on this machine) or load the C++ library and register its four handlers
    as XLA FFI targets ``brainconv_event_{forward,weight_grad}_{float32,float64}``."""
    lib = ctypes.cdll.LoadLibrary(str(_cpp_library_path()))
    for (kind, dtype), symbol in _CPP_SYMBOLS.items():
        jax.ffi.register_ffi_target(f'brainconv_event_{kind}_{dtype}', jax.ffi.pycapsule(getattr(lib, symbol)),
                                    platform='cpu')
    return lib


@functools.cache
def _numba_primitives():
    """The two ``brainevent.XLACustomKernel`` primitives of the Numba kernels."""
    from brainevent import XLACustomKernel, numba_kernel

    kernels = numba_kernels._numba()

    def generator(name):
        def make(outs, **_):
            kernel = kernels[name]
            _precompile(kernel, outs[0].dtype)
            return numba_kernel(kernel, outs=outs)
        return make

    prims = {}
    for name in ('forward', 'weight_grad'):
        prim = XLACustomKernel(f'brainconv_event_numba_{name}')
        prim.def_numba_kernel(generator(name))
        prims[name] = prim
    return prims


def _precompile(kernel, dtype) -> None:
    """Compile (or load from numba's cache) the signature the custom call will use, at trace
    time, so a compilation error surfaces here and not inside XLA's callback."""
    nb = numba_kernels.numba
    arr3 = nb.types.Array(nb.from_dtype(np.dtype(dtype)), 3, 'C')
    kernel.compile((arr3, arr3, nb.types.Array(nb.int32, 1, 'C'), arr3))


def _call(kind: str, backend: str, a, b, table: np.ndarray, out: jax.ShapeDtypeStruct):
    """One kernel call (``kind``: 'forward' or 'weight_grad') as an XLA custom call."""
    if backend == 'cpp':
        _cpp_library()
        return jax.ffi.ffi_call(f'brainconv_event_{kind}_{np.dtype(out.dtype).name}', out)(a, b, jnp.asarray(table))
    if kind == 'weight_grad':
        table = table.copy()
        table[_PARTS] = numba_kernels.numba.get_num_threads() if numba_kernels._numba()['parallel'] else 1
    return _numba_primitives()[kind](a, b, jnp.asarray(table), outs=out)


def _probe(backend: str) -> None:
    """Run a tiny forward convolution through ``backend`` and check it (raises if it is wrong).

    It runs in a thread of its own: the first call usually comes while a convolution is being
    traced, and JAX's trace state is per thread, so the probe runs eagerly rather than being
    staged into the caller's trace."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(_probe_here, backend).result()


def _probe_here(backend: str) -> None:
    g = ConvGeometry((3,), (3,), (2,), (1,), ((1, 0),), (1,), (1,))
    x = np.asarray([[[0.0], [2.0], [0.0]]], np.float32)
    w = np.asarray([[[1.0]], [[10.0]]], np.float32)
    table = _plan(g)
    with jax.default_device(jax.local_devices(backend='cpu')[0]):
        y = jax.jit(lambda u, v: _call('forward', backend, u, jnp.transpose(v.reshape(2, 1, 1), (1, 0, 2)), table,
                                       jax.ShapeDtypeStruct((1, 3, 1), jnp.float32)))(x, w)
    if not np.array_equal(np.asarray(y).ravel(), [0.0, 20.0, 2.0]):
        raise RuntimeError(f"the {backend} event kernel computed {np.asarray(y).ravel()}, not [0, 20, 2]")


_RESOLVE_LOCK = threading.Lock()


@functools.cache
def _resolve(choice: str) -> str | None:
    """The backend ``choice`` ('auto', 'cpp' or 'numba') gives here, after a probe call; None
    (with a warning naming the reason) if none works.  One thread at a time (a backend builds
    and registers its kernels once)."""
    with _RESOLVE_LOCK:
        return _resolve_now(choice)


def _resolve_now(choice: str) -> str | None:
    if choice not in ('auto', 'cpp', 'numba'):
        raise ValueError(f"BACKEND must be one of ('auto', 'cpp', 'numba'), got {choice!r}")
    reasons = []
    for name in (('cpp', 'numba') if choice == 'auto' else (choice,)):
        if name == 'numba' and importlib.util.find_spec('numba') is None:
            reasons.append('numba is not installed')
            continue
        try:
            _probe(name)
        except Exception as exc:  # noqa: BLE001 - any failure means "this backend is not available"
            reasons.append(f'{name}: {type(exc).__name__}: {exc}')
            continue
        if reasons:   # 'auto' skipped the C++ kernels: say why, once (this is cached per choice)
            warnings.warn(f"brainconv's event kernels run on {name}, not C++ ({'; '.join(reasons)})", RuntimeWarning,
                          stacklevel=3)
        return name
    warnings.warn(f"brainconv's event kernels are unavailable ({'; '.join(reasons)})", RuntimeWarning, stacklevel=3)
    return None


def backend() -> str | None:
    """The backend that runs the event kernels here (:data:`BACKEND` resolved): ``'cpp'``,
    ``'numba'``, or None where neither works.  The first call builds and probes it (the C++
    library compiles once per machine, in seconds); cached."""
    return _resolve(BACKEND)


def available() -> bool:
    """Whether the event kernels run here (a backend builds and a probe call through XLA gives
    the right answer).  Cached; never raises: a failure is reported once as a warning."""
    try:
        return backend() is not None
    except Exception:  # noqa: BLE001 - e.g. a bad BACKEND value
        return False


# --------------------------------------------------------------------------- #
# The two maps, as jittable functions
# --------------------------------------------------------------------------- #

def _backend_or_raise() -> str:
    name = backend()
    if name is None:
        raise RuntimeError("brainconv's event kernels are not available here (see the warning above; "
                           "pip install brainconv[event], or install a C++ compiler)")
    return name


def _check(x, other, g: ConvGeometry, groups: int, what: str) -> None:
    if x.dtype not in (jnp.float32, jnp.float64) or other.dtype != x.dtype:
        raise TypeError(f"event {what}: float32 or float64 operands of one dtype expected, got {x.dtype} and "
                        f"{other.dtype}")
    if g.transposed:
        raise ValueError(f"event {what}: a non-transposed core geometry expected, got {g}")
    if x.ndim != g.num_spatial_dims + 2 or tuple(x.shape[1:-1]) != tuple(g.in_spatial):
        raise ValueError(f"event {what}: input {x.shape} does not fit {g}")
    if groups < 1 or x.shape[-1] % groups:
        raise ValueError(f"event {what}: groups={groups} must divide the {x.shape[-1]} input channels")


def forward(x: jax.Array, w: jax.Array, g: ConvGeometry, groups: int, precision: Any = None,
            binary: bool = False) -> jax.Array:
    """The core convolution of ``x`` ``(N, *in_spatial, C_in)`` with ``w`` ``(*kernel_size,
    C_in // groups, C_out)``, by the event kernel: ``(N, *out_spatial, C_out)``.

    Exact for any values; its cost grows with the number of non-zeros of ``x``.
    ``precision`` is accepted for the formulation signature (the kernel computes
    in the operands' dtype).  ``binary`` (x is 0/1) is accepted too and changes
    nothing: a fused multiply-add costs what an add costs."""
    del precision, binary
    _check(x, w, g, groups, 'forward')
    n_batch, cin, cout = x.shape[0], x.shape[-1], w.shape[-1]
    if w.shape != tuple(g.kernel_size) + (cin // groups, cout) or cout % groups:
        raise ValueError(f"event forward: kernel {w.shape} does not fit input {x.shape}, {g}, groups={groups}")
    out_shape = (n_batch,) + tuple(g.out_spatial) + (cout,)
    if 0 in out_shape or cin == 0:
        return jnp.zeros(out_shape, x.dtype)
    xf = x.reshape(n_batch, math.prod(g.in_spatial), cin)
    wc = jnp.transpose(w.reshape(-1, cin // groups, cout), (1, 0, 2))        # (C_in // groups, K, C_out)
    y = _call('forward', _backend_or_raise(), xf, wc, _plan(g),
              jax.ShapeDtypeStruct((n_batch, math.prod(g.out_spatial), cout), x.dtype))
    return y.reshape(out_shape)


def weight_grad(x: jax.Array, gy: jax.Array, g: ConvGeometry, groups: int, precision: Any = None,
                binary: bool = False) -> jax.Array:
    """The kernel gradient ``dW[t, ci, co] = sum_{n, o} x[n, p(o, t), group(co) * cin_g + ci]
    gy[n, o, co]`` of the core convolution, summed over the non-zeros of ``x`` only:
    ``(*kernel_size, C_in // groups, C_out)``.  ``precision`` and ``binary`` as in
    :func:`forward`."""
    del precision, binary
    _check(x, gy, g, groups, 'weight gradient')
    n_batch, cin, cout = x.shape[0], x.shape[-1], gy.shape[-1]
    if gy.shape != (n_batch,) + tuple(g.out_spatial) + (cout,) or cout % groups:
        raise ValueError(f"event weight gradient: output gradient {gy.shape} does not fit input {x.shape}, {g}, "
                         f"groups={groups}")
    taps = math.prod(g.kernel_size)
    dw_shape = tuple(g.kernel_size) + (cin // groups, cout)
    if 0 in dw_shape or n_batch == 0 or 0 in g.out_spatial:
        return jnp.zeros(dw_shape, x.dtype)
    dw = _call('weight_grad', _backend_or_raise(), x.reshape(n_batch, math.prod(g.in_spatial), cin),
               gy.reshape(n_batch, math.prod(g.out_spatial), cout), _plan(g),
               jax.ShapeDtypeStruct((taps, cin // groups, cout), x.dtype))
    return dw.reshape(dw_shape)

