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
formulation in ``lowering.py``):

* :func:`available` / :func:`backend` -- whether (and on which backend) the kernels run here;
* :func:`forward` ``(x, w, g, groups, precision=None, binary=False) -> y``;
* :func:`weight_grad` ``(x, gy, g, groups, precision=None, binary=False) -> dw``;
* :func:`event_cost`, :func:`dense_cost`, :func:`crossover`: the measured cost
  model the run-time density switch reads.

Two backends run the same loops (:data:`BACKEND`, default ``'auto'``: the
first that builds here):

* ``'cpp'``: ``_event.cc``, compiled on first use with the machine's C++
  compiler (``g++``/``clang++ -O3 -march=native``, a few seconds) into
  :func:`cache_dir` and loaded from there afterwards, its handlers registered
  as XLA FFI targets.  A call costs under a microsecond, takes no GIL, and
  borrows its threads from XLA's own intra-op pool.
* ``'numba'`` (``pip install brainconv[event]``; the fallback where no
  compiler builds the C++): the Python kernels below, jitted with
  ``cache=True`` and called through brainevent's kernel interface
  (``XLACustomKernel`` + ``def_numba_kernel``): every call passes a ctypes
  callback that takes the GIL (tens of microseconds), and its threads are
  numba's own.

Nothing here imports numba or compiles anything until a kernel is first
needed; ``import brainconv`` stays light.

The geometry reaches a kernel as one small int32 operand, the *plan*,
computed once per geometry with NumPy: for the first ``nd - 1`` spatial axes
flattened together ("lead") and for the last axis, per input position the
list of ``(tap, output)`` pairs it reaches (pre-multiplied into flat
offsets).  A position's pairs are the product of its lead and last-axis
lists, so the table stays small (``P_lead * K_lead + n_last * k_last``
entries) for any rank, and one compiled kernel per dtype serves every
geometry.  Inputs are passed flattened to ``(N, positions, channels)``.
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
from typing import Any, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from .shapes import ConvGeometry

__all__ = ['available', 'backend', 'forward', 'weight_grad', 'plan', 'cost_features', 'event_cost',
           'dense_cost', 'crossover']

#: Entries of the plan's header (int32): lead positions, last-axis length, the start of the lead
#: offsets, lead pairs, last offsets and last pairs in the plan, and (set per call) the number of
#: partial sums the kernel gradient splits its work into.
_HEADER = 7
_PARTS = 6

#: Numba kernels: below this many output channels per group the innermost loop is written out
#: element by element (a slice costs more than it saves); from here on it is a vectorised run.
_VECTOR_MIN = 8


# --------------------------------------------------------------------------- #
# The plan: which (tap, output) pairs every input position reaches
# --------------------------------------------------------------------------- #

def _axis_pairs(n: int, k: int, s: int, d: int, ld: int, lo: int, out: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(valid, o)``, both ``(n, k)``: input ``p`` and tap ``t`` reach output ``o`` where
    ``p * ld + lo == o * s + t * d`` with ``0 <= o < out``."""
    q = np.arange(n)[:, None] * ld + lo - np.arange(k)[None, :] * d
    valid = (q >= 0) & (q % s == 0) & (q < out * s)
    return valid, np.where(valid, q // s, 0)


def _pair_lists(g: ConvGeometry, axes: range) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the positions of ``axes`` (flattened, row-major): CSR offsets, and the flat tap and
    output indices (within those axes) of every pair, in position order."""
    valid = np.ones((1, 1), bool)
    taps = np.zeros((1, 1), np.int64)
    outs = np.zeros((1, 1), np.int64)
    for a in axes:
        va, oa = _axis_pairs(g.in_spatial[a], g.kernel_size[a], g.stride[a], g.rhs_dilation[a],
                             g.lhs_dilation[a], g.pads[a][0], g.out_spatial[a])
        n, k = va.shape
        full = (valid.shape[0], n, valid.shape[1], k)
        shape = (full[0] * n, full[2] * k)
        valid = np.broadcast_to(valid[:, None, :, None] & va[None, :, None, :], full).reshape(shape)
        outs = np.broadcast_to(outs[:, None, :, None] * g.out_spatial[a] + oa[None, :, None, :], full).reshape(shape)
        taps = np.broadcast_to(taps[:, None, :, None] * k + np.arange(k)[None, None, None, :], full).reshape(shape)
    offsets = np.concatenate([[0], np.cumsum(valid.sum(axis=1))])
    return offsets, taps[valid], outs[valid]


@functools.lru_cache(maxsize=256)
def _plan(g: ConvGeometry) -> np.ndarray:
    nd = g.num_spatial_dims
    lead_offsets, lead_taps, lead_outs = _pair_lists(g, range(nd - 1))
    last_offsets, last_taps, last_outs = _pair_lists(g, range(nd - 1, nd))
    k_last, out_last = g.kernel_size[-1], g.out_spatial[-1]
    lead_pairs = np.stack([lead_taps * k_last, lead_outs * out_last], axis=1).ravel()
    last_pairs = np.stack([last_taps, last_outs], axis=1).ravel()
    parts = [lead_offsets, lead_pairs, last_offsets, last_pairs]
    starts = np.cumsum([_HEADER] + [len(p) for p in parts])
    header = [len(lead_offsets) - 1, g.in_spatial[-1]] + list(starts[:4]) + [1]
    table = np.concatenate([np.asarray(header, np.int64)] + parts)
    if math.prod(g.out_spatial) >= 2 ** 31 or table.size >= 2 ** 31:
        raise ValueError(f"event kernels index with int32: {g} is too large")
    table = table.astype(np.int32)
    table.flags.writeable = False
    return table


def plan(g: ConvGeometry) -> np.ndarray:
    """The int32 table a kernel reads the geometry from (see the module docstring); cached."""
    return _plan(g)


# --------------------------------------------------------------------------- #
# The Numba kernels (plain Python here; jitted on first use by _numba(), which also puts the
# jitted helpers in this module's namespace under the names the kernels call)
# --------------------------------------------------------------------------- #

def _gather_py(xr, chan_k, chan_r, at_k, at_r, vals):
    """The non-zeros of the input row ``xr``: their values and channel offsets (kernel side,
    output side) written to the front of ``vals``, ``at_k``, ``at_r``; returns their number.
    A vectorised count first, so that empty rows cost one pass; the loop that records stops at
    the last non-zero."""
    n_chan = xr.shape[0]
    count = 0
    for c in range(n_chan):
        count += xr[c] != 0
    m = 0
    c = 0
    while m < count:
        v = xr[c]
        if v != 0:
            at_k[m] = chan_k[c]
            at_r[m] = chan_r[c]
            vals[m] = v
            m += 1
        c += 1
    return m


def _pair_up_py(table, a0, a1, b0, b1, tap_stride, cout, taps, outs):
    """The (tap, output) pairs of a position with lead pairs ``[a0, a1)`` and last-axis pairs
    ``[b0, b1)``, as offsets (taps scaled by ``tap_stride``, outputs by ``cout``); returns their
    number."""
    lead_pairs, last_pairs = table[3], table[5]
    q = 0
    for a in range(a0, a1):
        tl = table[lead_pairs + 2 * a]
        ol = table[lead_pairs + 2 * a + 1]
        for b in range(b0, b1):
            taps[q] = (tl + table[last_pairs + 2 * b]) * tap_stride
            outs[q] = (ol + table[last_pairs + 2 * b + 1]) * cout
            q += 1
    return q


def _scatter_py(dst, src, dst_ch, src_ch, dst_pair, src_pair, vals, m, n_pairs, n):
    """``dst[dst_ch[j] + dst_pair[q] + i] += vals[j] * src[src_ch[j] + src_pair[q] + i]`` for every
    non-zero ``j < m``, pair ``q < n_pairs`` and ``i < n``: a contiguous (vectorised) run of ``n``
    from :data:`_VECTOR_MIN` on, element by element below (depthwise kernels)."""
    if n >= _VECTOR_MIN:
        for j in range(m):
            v = vals[j]
            for q in range(n_pairs):
                d = dst_ch[j] + dst_pair[q]
                s = src_ch[j] + src_pair[q]
                drow = dst[d:d + n]
                srow = src[s:s + n]
                for i in range(n):
                    drow[i] += v * srow[i]
    else:
        for q in range(n_pairs):
            for j in range(m):
                d = dst_ch[j] + dst_pair[q]
                s = src_ch[j] + src_pair[q]
                v = vals[j]
                for i in range(n):
                    dst[d + i] += v * src[s + i]


def _channel_offsets_py(n_chan, cin_g, cout, kernel_channel_stride):
    """Per input channel, its offset on the kernel side and in an output row."""
    cout_g = cout // (n_chan // cin_g)
    chan_k = np.empty(n_chan, np.int64)
    chan_r = np.empty(n_chan, np.int64)
    for c in range(n_chan):
        grp = c // cin_g
        chan_k[c] = (c - grp * cin_g) * kernel_channel_stride + grp * cout_g
        chan_r[c] = grp * cout_g
    return chan_k, chan_r


def _forward_kernel(x, w, table, y):
    """``y[n, o, :] = sum`` over non-zero ``x[n, p, c]`` and the pairs ``(t, o)`` of ``p`` of
    ``x[n, p, c] * w[c % cin_g, t, group(c)]``.  ``x``: ``(N, P_in, C_in)``; ``w``:
    ``(C_in // groups, K, C_out)`` (one input channel's taps contiguous); ``y``: ``(N, P_out,
    C_out)``.  Parallel over the batch (each example writes its own rows)."""
    n_batch, _, n_chan = x.shape
    cin_g, n_taps, cout = w.shape
    cout_g = cout // (n_chan // cin_g)
    wf = w.reshape(-1)
    chan_k, chan_r = _channel_offsets(n_chan, cin_g, cout, n_taps * cout)
    p_lead, n_last, lead_offsets, last_offsets = table[0], table[1], table[2], table[4]
    for n in numba.prange(n_batch):
        yn = y[n].reshape(-1)
        yn[:] = 0
        xn = x[n]
        at_k = np.empty(n_chan, np.int64)
        at_r = np.empty(n_chan, np.int64)
        vals = np.empty(n_chan, x.dtype)
        taps = np.empty(n_taps, np.int64)
        outs = np.empty(n_taps, np.int64)
        for pl in range(p_lead):
            a0, a1 = table[lead_offsets + pl], table[lead_offsets + pl + 1]
            if a0 == a1:
                continue
            for pz in range(n_last):
                b0, b1 = table[last_offsets + pz], table[last_offsets + pz + 1]
                if b0 == b1:
                    continue
                m = _gather(xn[pl * n_last + pz], chan_k, chan_r, at_k, at_r, vals)
                if m:
                    n_pairs = _pair_up(table, a0, a1, b0, b1, cout, cout, taps, outs)
                    _scatter(yn, wf, at_r, at_k, outs, taps, vals, m, n_pairs, cout_g)


def _weight_grad_kernel(x, gy, table, dw):
    """``dw[t, c % cin_g, group(c)] = sum`` over non-zero ``x[n, p, c]`` and the pairs ``(t, o)``
    of ``p`` of ``x[n, p, c] * gy[n, o, group(c)]``.  ``dw``: ``(K, C_in // groups, C_out)``.
    The batch's positions are split into ``table[6]`` contiguous ranges, each accumulating a
    partial ``dw`` of its own (in parallel); the partials are summed at the end.  One parallel
    region only (zeroing and summing are plain loops): on a loaded machine every fork-join of
    numba's thread pool can wait milliseconds for a descheduled thread."""
    n_batch, n_in, n_chan = x.shape
    cout = gy.shape[2]
    n_taps, cin_g, _ = dw.shape
    cout_g = cout // (n_chan // cin_g)
    size = n_taps * cin_g * cout
    chan_k, chan_r = _channel_offsets(n_chan, cin_g, cout, cout)
    n_last, lead_offsets, last_offsets = table[1], table[2], table[4]
    total = n_batch * n_in
    n_parts = max(1, min(table[6], total))
    parts = np.empty((n_parts, size), dw.dtype)
    for k in numba.prange(n_parts):
        acc = parts[k]
        for i in range(size):
            acc[i] = 0
        at_k = np.empty(n_chan, np.int64)
        at_r = np.empty(n_chan, np.int64)
        vals = np.empty(n_chan, x.dtype)
        taps = np.empty(n_taps, np.int64)
        outs = np.empty(n_taps, np.int64)
        for pos in range(k * total // n_parts, (k + 1) * total // n_parts):
            n = pos // n_in
            p = pos - n * n_in
            pl = p // n_last
            pz = p - pl * n_last
            a0, a1 = table[lead_offsets + pl], table[lead_offsets + pl + 1]
            b0, b1 = table[last_offsets + pz], table[last_offsets + pz + 1]
            if a0 == a1 or b0 == b1:
                continue
            m = _gather(x[n, p], chan_k, chan_r, at_k, at_r, vals)
            if m:
                n_pairs = _pair_up(table, a0, a1, b0, b1, cin_g * cout, cout, taps, outs)
                _scatter(acc, gy[n].reshape(-1), at_k, at_r, taps, outs, vals, m, n_pairs, cout_g)
    dwf = dw.reshape(-1)
    for i in range(size):
        s = parts[0, i]
        for k in range(1, n_parts):
            s += parts[k, i]
        dwf[i] = s


_gather = _pair_up = _scatter = _channel_offsets = None   # the jitted helpers, set by _numba()


# --------------------------------------------------------------------------- #
# Backends: C++ through the XLA FFI, or Numba through brainevent (built on first use)
# --------------------------------------------------------------------------- #

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


def _cpp_library_path() -> Path:
    """The compiled library for this source, compiler, jaxlib and CPU; compiled if absent (into a
    temporary file, then renamed, so concurrent processes never load a partial library)."""
    source = Path(__file__).with_name('_event.cc')
    cxx = _compiler()
    include = jax.ffi.include_dir()
    version = subprocess.run([cxx, '--version'], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256()
    for part in (source.read_bytes(), version.encode(), ' '.join(CXXFLAGS).encode(), jax.lib.__version__.encode(),
                 Path(include, 'xla', 'ffi', 'api', 'ffi.h').read_bytes(), _cpu_identity().encode()):
        key.update(part)
        key.update(b'\0')
    path = cache_dir() / 'event' / f'brainconv_event_{key.hexdigest()[:20]}.so'
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        out = Path(tmp) / path.name
        for flags in (CXXFLAGS, tuple(f for f in CXXFLAGS if not f.startswith('-march'))):
            done = subprocess.run([cxx, *flags, f'-I{include}', str(source), '-o', str(out)], capture_output=True,
                                  text=True)
            if done.returncode == 0:
                break
        else:
            raise RuntimeError(f"compiling {source.name} with {cxx} failed:\n{done.stderr[-2000:]}")
        os.replace(out, path)
    return path


@functools.cache
def _cpp_library() -> ctypes.CDLL:
    """Build (first use on this machine) or load the C++ library and register its four handlers
    as XLA FFI targets ``brainconv_event_{forward,weight_grad}_{float32,float64}``."""
    lib = ctypes.cdll.LoadLibrary(str(_cpp_library_path()))
    for (kind, dtype), symbol in _CPP_SYMBOLS.items():
        jax.ffi.register_ffi_target(f'brainconv_event_{kind}_{dtype}', jax.ffi.pycapsule(getattr(lib, symbol)),
                                    platform='cpu')
    return lib


numba: Any = None   # the numba module, once _numba() ran (the kernels read it as a global)


@functools.cache
def _numba():
    """Import numba and jit the helpers and kernels (parallel where numba's threading layer is
    thread-safe: XLA may run two custom calls at once, which the 'workqueue' layer aborts on).
    The helpers go into this module's namespace, where the kernels look them up when compiled."""
    global numba, _gather, _pair_up, _scatter, _channel_offsets
    import numba as nb
    numba = nb
    parallel = _threadsafe_layer(nb)
    options = dict(cache=True, nogil=True, fastmath={'contract'}, boundscheck=False)
    _gather, _pair_up, _scatter, _channel_offsets = (
        nb.njit(**options)(f) for f in (_gather_py, _pair_up_py, _scatter_py, _channel_offsets_py))
    return dict(
        forward=nb.njit(parallel=parallel, **options)(_forward_kernel),
        weight_grad=nb.njit(parallel=parallel, **options)(_weight_grad_kernel),
        parallel=parallel,
    )


def _threadsafe_layer(nb) -> bool:
    try:
        from numba.np.ufunc import parallel as npp
        npp._launch_threads()
        return nb.threading_layer() in ('omp', 'tbb')
    except Exception:  # noqa: BLE001 - no thread-safe layer: run the kernels serially
        return False


@functools.cache
def _numba_primitives():
    """The two ``brainevent.XLACustomKernel`` primitives of the Numba kernels."""
    from brainevent import XLACustomKernel, numba_kernel

    kernels = _numba()

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
    nb = numba
    arr3 = nb.types.Array(nb.from_dtype(np.dtype(dtype)), 3, 'C')
    kernel.compile((arr3, arr3, nb.types.Array(nb.int32, 1, 'C'), arr3))


def _call(kind: str, backend: str, a, b, table: np.ndarray, out: jax.ShapeDtypeStruct):
    """One kernel call (``kind``: 'forward' or 'weight_grad') as an XLA custom call."""
    if backend == 'cpp':
        _cpp_library()
        return jax.ffi.ffi_call(f'brainconv_event_{kind}_{np.dtype(out.dtype).name}', out)(a, b, jnp.asarray(table))
    if kind == 'weight_grad':
        table = table.copy()
        table[_PARTS] = numba.get_num_threads() if _numba()['parallel'] else 1
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
    with jax.default_device(jax.devices('cpu')[0]):
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
            return name
        except Exception as exc:  # noqa: BLE001 - any failure means "this backend is not available"
            reasons.append(f'{name}: {type(exc).__name__}: {exc}')
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


# --------------------------------------------------------------------------- #
# Cost model: when is the event kernel faster than a dense convolution?
# --------------------------------------------------------------------------- #

#: The terms of :func:`cost_features`, in order.
COST_TERMS = ('call', 'scan', 'out', 'pair', 'mac')

#: Seconds per unit of each term of :func:`cost_features`, per backend and map, fitted by
#: ``benchmarks/bench_event.py`` (least squares on each implementation's fastest round, configs A,
#: B, C at 0.5-50% density; 2-core AMD EPYC shared with other jobs, jax 0.10.2; worst point
#: within 21% (cpp forward) to 47% (cpp kernel gradient) of the model).  The per-call term is the
#: scan-step cost of its ``--overhead`` section (cpp 3-5 µs, numba 30-80 µs).
EVENT_COST = {
    ('cpp', 'forward'): (4e-6, 2.25e-10, 2.25e-10, 1.73e-09, 2.41e-11),
    ('cpp', 'weight_grad'): (4e-6, 4.85e-10, 0.0, 4.39e-10, 4.58e-11),
    ('numba', 'forward'): (5e-5, 3.28e-10, 3.28e-10, 1.28e-09, 5.9e-11),
    ('numba', 'weight_grad'): (5e-5, 1.01e-09, 0.0, 1.01e-09, 1.01e-10),
}

#: Seconds per multiply-accumulate of brainconv's dense formulation on CPU (``'lax_vjp'`` for
#: dense kernels, ``'taps'`` for depthwise ones), per map; same run (medians over configs).
DENSE_COST = {
    ('forward', 'dense'): 1.69e-11, ('forward', 'depthwise'): 1.08e-10,
    ('weight_grad', 'dense'): 2.25e-11, ('weight_grad', 'depthwise'): 2.54e-10,
}


def _mean_pairs(g: ConvGeometry) -> float:
    """(tap, output) pairs per input position, averaged over the input (exact, from the plan)."""
    table = _plan(g)
    lead = table[table[2] + table[0]] - table[table[2]]
    last = table[table[4] + table[1]] - table[table[4]]
    return float(lead) * float(last) / math.prod(g.in_spatial)


def cost_features(g: ConvGeometry, groups: int, n_batch: int, cin: int, cout: int, nnz, kind: str = 'forward'):
    """The terms the event kernels' time is linear in (:data:`COST_TERMS`): one per call; the input
    scanned for non-zeros (``N * P_in * C_in``); the output written (``N * P_out * C_out``; for the
    kernel gradient, the kernel's size); the (non-zero, tap) pairs visited (``nnz * pairs``); and
    the multiply-adds they do (``nnz * pairs * C_out / groups``).  ``nnz`` may be traced."""
    pairs = _mean_pairs(g)
    if not isinstance(nnz, (int, float)):
        nnz = jnp.asarray(nnz).astype(jnp.float32)   # e.g. count_nonzero's int32, traced
    out = (n_batch * math.prod(g.out_spatial) * cout if kind == 'forward'
           else math.prod(g.kernel_size) * (cin // groups) * cout)
    return (1.0, float(n_batch * math.prod(g.in_spatial) * cin), float(out), nnz * pairs,
            nnz * pairs * (cout // groups))


def event_cost(g: ConvGeometry, groups: int, n_batch: int, cin: int, cout: int, nnz, kind: str = 'forward',
               backend_name: str | None = None):
    """Predicted seconds of :func:`forward` (``kind='forward'``) or :func:`weight_grad` with ``nnz``
    non-zero inputs, on ``backend_name`` (default: :func:`backend`)."""
    coef = EVENT_COST[(backend_name or backend() or 'cpp', kind)]
    return sum(c * f for c, f in zip(coef, cost_features(g, groups, n_batch, cin, cout, nnz, kind)))


def _depthwise(groups: int, cin: int) -> bool:
    """One input channel per group (a channel multiplier allowed)."""
    return groups > 1 and cin == groups


def dense_cost(g: ConvGeometry, groups: int, n_batch: int, cin: int, cout: int, kind: str = 'forward') -> float:
    """Predicted seconds of brainconv's dense formulation of the same map (what ``'auto'`` picks on
    CPU: XLA's convolution, or shift-multiply-add for depthwise kernels)."""
    macs = n_batch * math.prod(g.out_spatial) * math.prod(g.kernel_size) * (cin // groups) * cout
    shape = 'depthwise' if _depthwise(groups, cin) else 'dense'
    return DENSE_COST[(kind, shape)] * macs


def crossover(g: ConvGeometry, groups: int, n_batch: int, cin: int, cout: int, kind: str = 'forward',
              backend_name: str | None = None) -> int:
    """The number of non-zero inputs up to which the event kernel is predicted to be faster than
    the dense formulation (0: never): the threshold of the run-time density switch.

    Depthwise kernels (one input channel per group) get 0: the model, fitted to the kernels
    alone (config B at 1%: event 2.4 ms, ``'taps'`` 4.1 ms, as predicted), does not hold in a
    layer, where the event path measured slower than the dense default at every density
    (``benchmarks/bench_event_layers.py``, config B, two runs, jax 0.10.2: forward 10-12 ms
    against 3.9-4.5 ms at 1-2%, kernel gradient 0.5-1.4x), for reasons not yet found; so the
    switch runs them densely (``lowering.event_branch('event')`` still forces the kernel)."""
    if _depthwise(groups, cin):
        return 0
    base = event_cost(g, groups, n_batch, cin, cout, 0, kind, backend_name)
    per_event = event_cost(g, groups, n_batch, cin, cout, 1, kind, backend_name) - base
    spare = dense_cost(g, groups, n_batch, cin, cout, kind) - base
    if spare <= 0:
        return 0
    total = n_batch * math.prod(g.in_spatial) * cin
    return int(min(total, spare / per_event)) if per_event > 0 else total
