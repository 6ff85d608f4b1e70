"""What the benchmarks share: the timers, the load monitor and its interleaved rounds, the layer configs of
bench_cpu.py (a-j) and bench_event.py (A-C), and the torch worker's plumbing.

Imports neither JAX nor torch when imported: each script's torch worker (``SCRIPT --torch-worker``, a
process that never imports JAX, so that torch's OpenMP threads and XLA's thread pool never share one)
imports this module too.  What needs JAX imports it when called; what needs torch runs in the worker only.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import pickle
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np

# --------------------------------------------------------------------------- #
# Timers
# --------------------------------------------------------------------------- #

def per_call(fn: Callable[[], Any], reps: int) -> float:
    """Seconds per call of ``fn`` (which returns once its result is ready), averaged over ``reps`` calls
    back to back."""
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def inner_reps(fn: Callable[[], Any], target_s: float) -> int:
    """How many back-to-back calls of ``fn`` take about ``target_s`` seconds (1 to 50), from one call."""
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    return max(1, min(50, int(target_s / max(dt, 1e-6))))


def timed(fn: Callable, *args) -> Tuple[Any, float]:
    """``fn(*args)`` and the seconds it took until its result was ready (``jax.block_until_ready``); on a
    jitted function's first call that is tracing, compilation and the run."""
    import jax
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0


def one_call(fn: Callable, *args) -> float:
    """Seconds of one call ``fn(*args)`` until its result is ready (the first call: trace, compile, run)."""
    return timed(fn, *args)[1]


def samples(fn: Callable[[], Any], n: int, warmup: bool = True) -> List[float]:
    """Seconds of each of ``n`` calls ``fn()`` (:func:`one_call`), after one untimed call if ``warmup``."""
    if warmup:
        one_call(fn)
    return [one_call(fn) for _ in range(n)]


def best_of(fn: Callable[[], Any], n: int, warmup: bool = True) -> float:
    """The fastest of ``n`` calls ``fn()``, in seconds."""
    return min(samples(fn, n, warmup))


def median_of(fn: Callable[[], Any], n: int, warmup: bool = True) -> float:
    """The median of ``n`` calls ``fn()``, in seconds."""
    return med(samples(fn, n, warmup))


def compiled(fn: Callable, *args) -> Tuple[Any, float]:
    """``jax.jit(fn)`` lowered and compiled for ``args`` after clearing JAX's caches: (executable, seconds)."""
    import jax
    jax.clear_caches()
    t0 = time.perf_counter()
    exe = jax.jit(fn).lower(*args).compile()
    return exe, time.perf_counter() - t0


def rotated(items: Sequence, r: int) -> list:
    """``items`` in the order of round ``r``: rotated left by ``r``, so that each leads in turn."""
    items = list(items)
    return items[r % len(items):] + items[:r % len(items)]


def interleaved(calls: Dict[Any, Callable[[], Any]], rounds: int) -> Dict[Any, List[float]]:
    """Seconds of each of ``calls`` (:func:`one_call`) in ``rounds`` rounds, every call once a round, in a
    :func:`rotated` order."""
    times = {name: [] for name in calls}
    for r in range(rounds):
        for name in rotated(calls, r):
            times[name].append(one_call(calls[name]))
    return times


# --------------------------------------------------------------------------- #
# Medians, ratios, errors
# --------------------------------------------------------------------------- #

def med(values) -> float:
    """The median; NaN for no values."""
    values = list(values)
    return statistics.median(values) if values else float('nan')


def rel_err(a, b) -> float:
    """max |a - b| / max |b| (inf where the shapes differ)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float('inf')
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def ratio(res: GroupResult, a: str, b: str, mode: str, confirmed: bool = True) -> float:
    """Time of ``a`` / time of ``b`` in ``mode``: the back-to-back pairs' median where :func:`confirm`
    re-measured it (and ``confirmed``), else the median of the per-round ratios over the kept rounds."""
    if confirmed and (a, b, mode) in res.confirmed:
        return res.confirmed[(a, b, mode)]
    ta, tb = res.times.get((a, mode)), res.times.get((b, mode))
    if not ta or not tb:
        return float('nan')
    return med(res.kept([x / y for x, y in zip(ta, tb)]))


# --------------------------------------------------------------------------- #
# Interleaved rounds under a load monitor
# --------------------------------------------------------------------------- #

class Timed:
    """An implementation as :func:`time_group` times it: a zero-argument callable per mode ('fwd', 'fb' and,
    where it is not None, 'jvp'), each returning once its result is ready; a mode it lacks times as NaN."""

    lowering = ''
    jvp = None

    def time(self, mode: str, reps: int) -> float:
        """Seconds per call of ``mode``, averaged over ``reps`` calls back to back."""
        fn = getattr(self, mode, None)
        return per_call(fn, reps) if fn is not None else math.nan

    def reps(self, mode: str, target_s: float) -> int:
        fn = getattr(self, mode, None)
        return inner_reps(fn, target_s) if fn is not None else 1


class LoadMonitor:
    """Times a fixed float32 matmul in JAX (and in the torch worker: torch's two OpenMP threads
    slow down far more than XLA's pool when another process takes a core); a round is quiet
    when both run within 30% of the quietest time seen."""

    def __init__(self, n: int = 768):
        import jax
        a = jax.numpy.asarray(np.random.default_rng(2).standard_normal((n, n)).astype(np.float32))
        mm = jax.jit(lambda u: u @ u)
        self._call = lambda: jax.block_until_ready(mm(a))
        self.flops = 2 * n ** 3
        self._call()
        self._torch = TorchProxy.get()
        self.best = min(self._jax() for _ in range(5))
        self.best_torch = min(self._torch.ask('reference') for _ in range(5)) if self._torch else None

    def _jax(self) -> float:
        return per_call(self._call, 3)

    def slowdown(self, with_torch: bool = True) -> float:
        t = self._jax()
        self.best = min(self.best, t)
        slow = t / self.best
        if self._torch is not None and with_torch:
            tt = self._torch.ask('reference')
            self.best_torch = min(self.best_torch, tt)
            slow = max(slow, tt / self.best_torch)
        return slow

    def gflops(self) -> float:
        return self.flops / self.best / 1e9


@dataclasses.dataclass
class GroupResult:
    times: Dict[Tuple[str, str], List[float]]      # (impl, 'fwd'|'fb') -> per-round seconds
    quiet: int
    rounds: int
    retries: int
    slowdowns: List[float]
    loadavg: float
    threshold: float = 1.3
    reps: Dict[Tuple[str, str], int] = dataclasses.field(default_factory=dict)
    confirmed: Dict[Tuple[str, str, str], float] = dataclasses.field(default_factory=dict)

    def kept(self, values: List[float]) -> List[float]:
        """The values of the quiet rounds when there are at least 3 of them, else of all rounds."""
        quiet = [v for v, s in zip(values, self.slowdowns) if s <= self.threshold]
        return quiet if len(quiet) >= 3 else values


def time_group(impls: Dict[str, Timed], monitor: LoadMonitor, rounds: int, target_s: float,
               max_retries: int = 3, threshold: float = 1.3, budget_s: float = float('inf'),
               min_rounds: int = 5, retry_wait_s: float = 1.0, modes: Sequence[str] = ('fwd', 'fb', 'jvp')
               ) -> GroupResult:
    """Interleaved rounds of every implementation's ``modes`` ('jvp' only where it has one), each call
    repeated for about ``target_s``; a round bracketed by a loaded reference matmul is re-measured.
    After ``budget_s`` seconds no new round starts once ``min_rounds`` are done."""
    reps = {(n, m): i.reps(m, target_s) for n, i in impls.items() for m in modes
            if m != 'jvp' or getattr(i, 'jvp', None) is not None}
    with_torch = any(isinstance(i, RemoteImpl) for i in impls.values())  # whatever its name
    keys = list(reps)
    times: Dict[Tuple[str, str], List[float]] = {k: [] for k in keys}
    quiet = retries = 0
    slowdowns = []
    load0 = os.getloadavg()[0]
    start = time.perf_counter()
    for r in range(rounds):
        if r >= min_rounds and time.perf_counter() - start > budget_s:
            break
        order = rotated(keys, r)
        for attempt in range(max_retries + 1):
            before = monitor.slowdown(with_torch)
            sample = {}
            for k in order:
                time.sleep(0.005)  # let the previous implementation's spinning threads park
                sample[k] = impls[k[0]].time(k[1], reps[k])
            after = monitor.slowdown(with_torch)
            worst = max(before, after)
            if worst <= threshold or attempt == max_retries:
                break
            retries += 1
            time.sleep(retry_wait_s)  # the other processes' load comes in bursts: wait one out
        quiet += worst <= threshold
        slowdowns.append(worst)
        for k, v in sample.items():
            times[k].append(v)
    return GroupResult(times, quiet, len(slowdowns), retries, slowdowns, (load0 + os.getloadavg()[0]) / 2,
                       threshold, reps)


def confirm(impls: Dict[str, Timed], res: GroupResult, a: str, b: str, mode: str, pairs: int = 15) -> float:
    """Re-measure ``a`` against ``b`` alone, in ``pairs`` back-to-back pairs (alternating which
    goes first); the median of the pairwise ratios, recorded in ``res.confirmed``."""
    ratios = []
    for i in range(pairs):
        sample = {}
        for name in ((a, b) if i % 2 == 0 else (b, a)):
            time.sleep(0.005)
            sample[name] = impls[name].time(mode, res.reps[(name, mode)])
        ratios.append(sample[a] / sample[b])
    res.confirmed[(a, b, mode)] = med(ratios)
    return res.confirmed[(a, b, mode)]


# --------------------------------------------------------------------------- #
# Versions and machine
# --------------------------------------------------------------------------- #

def optional(name: str):
    """The module ``name``, or None where it does not import."""
    try:
        return __import__(name, fromlist=['_'])
    except Exception:  # noqa: BLE001 - any import failure means "peer not available"
        return None


def versions() -> str:
    import jax

    import brainconv
    parts = [f"python {platform.python_version()}", f"jax {jax.__version__}"]
    for name in ('brainstate', 'flax', 'equinox'):
        mod = optional(name)
        if mod is not None:
            parts.append(f"{name} {getattr(mod, '__version__', '?')}")
    if TorchProxy.get() is not None:
        parts.append(f"torch {TorchProxy.get().version}")
    parts.append(f"brainconv {brainconv.__version__}")
    return ', '.join(parts)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    threads = TorchProxy.get().threads if TorchProxy.get() is not None else '-'
    return f"{cpu}, {os.cpu_count()} cores (torch threads {threads}), {platform.system()} {platform.release()}"


# --------------------------------------------------------------------------- #
# Layer configs
# --------------------------------------------------------------------------- #

@dataclasses.dataclass(frozen=True)
class Config:
    """One convolution of bench_cpu.py (and ab_versions.py): channels-last, symmetric padding ``pad``."""

    key: str
    title: str
    spatial: Tuple[int, ...]
    cin: int
    cout: int
    k: int
    batch: int
    stride: int = 1
    pad: int = 1
    dilation: int = 1
    groups: int = 1
    transposed: bool = False
    output_padding: int = 0
    mode: str = 'ZEROS'

    @property
    def nd(self) -> int:
        return len(self.spatial)

    @property
    def kernel_shape(self) -> Tuple[int, ...]:
        """brainconv's layout."""
        if self.transposed:
            return (self.k,) * self.nd + (self.cout, self.cin // self.groups)
        return (self.k,) * self.nd + (self.cin // self.groups, self.cout)

    def out_spatial(self) -> Tuple[int, ...]:
        span = (self.k - 1) * self.dilation + 1
        if self.transposed:
            return tuple((n - 1) * self.stride + span - 2 * self.pad + self.output_padding for n in self.spatial)
        return tuple((n + 2 * self.pad - span) // self.stride + 1 for n in self.spatial)

    def macs(self) -> int:
        taps = self.k ** self.nd
        if self.transposed:
            return self.batch * math.prod(self.spatial) * taps * self.cin * (self.cout // self.groups)
        return self.batch * math.prod(self.out_spatial()) * taps * (self.cin // self.groups) * self.cout

    def layer(self, module, **kw):
        """The config's layer built by ``module`` (brainconv, or an older copy of it), extra arguments ``kw``."""
        common = dict(stride=self.stride, padding=self.pad, rhs_dilation=self.dilation, groups=self.groups, **kw)
        if self.transposed:
            return module.ConvTranspose(self.nd, self.spatial + (self.cin,), self.cout, self.k,
                                        output_padding=self.output_padding, **common)
        return module.Conv(self.nd, self.spatial + (self.cin,), self.cout, self.k, padding_mode=self.mode, **common)


CONFIGS = {
    'a': Config('a', 'Conv2d 32x32x64->64 k3 pad1, b32', (32, 32), 64, 64, 3, 32),
    'b': Config('b', 'Conv2d 64x64x3->32 k3 s2, b32', (64, 64), 3, 32, 3, 32, stride=2),
    'c': Config('c', 'depthwise 32x32x128 k3, b32', (32, 32), 128, 128, 3, 32, groups=128),
    'd': Config('d', 'Conv1d L1024 32->64 k5 dil2, b32', (1024,), 32, 64, 5, 32, pad=4, dilation=2),
    'e': Config('e', 'Conv3d 16^3x8->16 k3, b8', (16, 16, 16), 8, 16, 3, 8),
    'f': Config('f', 'ConvT2d 16x16x64->32 k3 s2, b32', (16, 16), 64, 32, 3, 32, stride=2, transposed=True,
                output_padding=1),
    'h-circ': Config('h-circ', 'config a, CIRCULAR', (32, 32), 64, 64, 3, 32, mode='CIRCULAR'),
    'h-refl': Config('h-refl', 'config a, REFLECT', (32, 32), 64, 64, 3, 32, mode='REFLECT'),
    'i': Config('i', 'Conv1d L4096 16->16 k257, b8', (4096,), 16, 16, 257, 8, pad=128),
    'j': Config('j', 'depthwise 64x64x32 k31, b8', (64, 64), 32, 32, 31, 8, pad=15, groups=32),
}
#: bench_cpu.py's configs in order; 'g' (a small CNN's training step) is bench_cpu's own.
ORDER = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h-circ', 'h-refl', 'i', 'j']


def conv_data(cfg: Config):
    """Input, kernel (brainconv's layout) and output cotangent of a config, seeded."""
    rng = np.random.default_rng(0)
    nd = cfg.nd
    x = rng.standard_normal((cfg.batch,) + cfg.spatial + (cfg.cin,)).astype(np.float32)
    w = (rng.standard_normal(cfg.kernel_shape) / math.sqrt(cfg.k ** nd * cfg.cin // cfg.groups)).astype(np.float32)
    r = rng.standard_normal((cfg.batch,) + cfg.out_spatial() + (cfg.cout,)).astype(np.float32)
    return x, w, r


#: bench_event.py's configs (bench_event_layers.py's too): key -> (title, spatial, C_in, C_out, k, groups);
#: batch EVENT_BATCH, SAME, stride 1.
EVENT_CONFIGS = {
    'A': ('Conv2d 32x32x64->64 k3, b32', (32, 32), 64, 64, 3, 1),
    'B': ('depthwise Conv2d 32x32x128 k3, b32', (32, 32), 128, 128, 3, 128),
    'C': ('Conv1d L1024 64->64 k5, b32', (1024,), 64, 64, 5, 1),
}
EVENT_BATCH = 32


# --------------------------------------------------------------------------- #
# torch, in a worker process that never imports JAX
# --------------------------------------------------------------------------- #

def serve(build: Callable[[Any], Dict[str, Callable]]) -> None:
    """The torch worker's loop: answer the parent's pickled messages on stdin/stdout until 'quit'.
    ``build(key)`` makes one implementation's ``{'fwd': ..., 'fb': ..., 'results': ...}`` callables;
    they are timed here as :class:`Timed` times JAX's, and 'reference' times LoadMonitor's matmul."""
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    impls = {}
    while True:
        msg = pickle.load(inp)
        try:
            if msg[0] == 'quit':
                return
            if msg[0] == 'version':
                reply = (str(torch.__version__), torch.get_num_threads())   # str: the parent need not import torch
            elif msg[0] == 'reference':
                if 'reference' not in impls:
                    a = torch.from_numpy(np.random.default_rng(2).standard_normal((768, 768)).astype(np.float32))
                    impls['reference'] = {'fwd': (lambda m: lambda: m @ m)(a)}
                    impls['reference']['fwd']()
                reply = per_call(impls['reference']['fwd'], 3)
            elif msg[0] == 'build':
                impls[msg[1]] = build(msg[1])
                reply = 'ok'
            elif msg[0] == 'results':
                reply = impls[msg[1]]['results']()
            elif msg[0] == 'reps':
                reply = inner_reps(impls[msg[1]][msg[2]], msg[3])
            else:  # 'time'
                reply = per_call(impls[msg[1]][msg[2]], msg[3])
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            reply = exc
        pickle.dump(reply, out)
        out.flush()


class TorchProxy:
    """The torch worker (``SCRIPT --torch-worker``, the script answering with :func:`serve`): one per run,
    started by :meth:`start` where torch is installed."""

    _instance: TorchProxy | None = None

    def __init__(self, script: str):
        python = os.environ.get('BRAINCONV_TORCH_PYTHON') or sys.executable
        self._proc = subprocess.Popen([python, os.path.abspath(script), '--torch-worker'],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.version, self.threads = self.ask('version')

    @classmethod
    def start(cls, script: str) -> TorchProxy | None:
        """The worker of ``script``, started on the first call; None without torch.  The worker runs
        under ``$BRAINCONV_TORCH_PYTHON`` where that is set (an interpreter with torch, numpy and
        whatever the script's torch side imports, snntorch say; JAX need not be there), else under
        this interpreter where it imports torch."""
        if cls._instance is None and (os.environ.get('BRAINCONV_TORCH_PYTHON')
                                      or importlib.util.find_spec('torch') is not None):
            cls._instance = cls(script)
        return cls._instance

    @classmethod
    def get(cls) -> TorchProxy | None:
        return cls._instance

    @classmethod
    def stop(cls) -> None:
        if cls._instance is not None:
            cls._instance.close()
            cls._instance = None

    def ask(self, *msg):
        pickle.dump(msg, self._proc.stdin)
        self._proc.stdin.flush()
        reply = pickle.load(self._proc.stdout)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def impl(self, key) -> RemoteImpl:
        self.ask('build', key)
        return RemoteImpl(self, key)

    def close(self) -> None:
        pickle.dump(('quit',), self._proc.stdin)
        self._proc.stdin.flush()
        self._proc.wait(timeout=30)


class RemoteImpl:
    """An implementation living in the torch worker: timed there, results pickled back; a mode it
    does not serve times as NaN."""

    modes = ('fwd', 'fb')

    def __init__(self, proxy: TorchProxy, key):
        self.name, self.lowering, self._proxy, self._key = 'torch', '', proxy, key

    def time(self, mode: str, reps: int) -> float:
        return self._proxy.ask('time', self._key, mode, reps) if mode in self.modes else math.nan

    def reps(self, mode: str, target_s: float) -> int:
        return self._proxy.ask('reps', self._key, mode, target_s) if mode in self.modes else 1

    def results(self):
        return self._proxy.ask('results', self._key)


def remote_torch(key) -> RemoteImpl | None:
    """The worker's implementation ``key`` (built there), or None where no worker runs."""
    proxy = TorchProxy.get()
    return proxy.impl(key) if proxy is not None else None


def to_torch(a, channels_to: int = 1):
    """A channels-last array as a contiguous torch tensor with its channels at axis ``channels_to``."""
    import torch
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, channels_to)))


def from_torch(t) -> np.ndarray:
    """A channels-first (N, C, *spatial) tensor as a channels-last array."""
    return np.moveaxis(t.numpy(), 1, -1)


def torch_kernel(w):
    """brainconv's kernel (*k, A, B) as torch's (B, A, *k): (C_out, C_in // groups, *k) for a
    convolution, (C_in, C_out, *k) for a transposed one without groups."""
    import torch
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.moveaxis(w, -1, 0), -1, 1)))


def kernel_from_torch(g) -> np.ndarray:
    """A kernel (or its gradient) in torch's layout (B, A, *k) as brainconv's (*k, A, B)."""
    return np.moveaxis(g.numpy(), (0, 1), (-1, -2))
