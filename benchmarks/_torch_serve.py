"""The torch worker loop of bench_cpu.py, bench_event.py and bench_event_layers.py: serves timings over stdin/stdout
(pickled messages).  Imports torch, never JAX."""

from __future__ import annotations

import os
import pickle
import sys
import time
from typing import Callable

import numpy as np


def _timed(fn, reps):
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def serve(build: Callable) -> None:
    """Answer the parent's messages until 'quit'; ``build(key)`` makes the ``{'fwd': ..., 'fb': ...,
    'results': ...}`` callables of one implementation."""
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
                reply = (torch.__version__, torch.get_num_threads())
            elif msg[0] == 'reference':
                if 'reference' not in impls:
                    a = torch.from_numpy(np.random.default_rng(2).standard_normal((768, 768)).astype(np.float32))
                    impls['reference'] = {'fwd': (lambda m: lambda: m @ m)(a)}
                    impls['reference']['fwd']()
                reply = _timed(impls['reference']['fwd'], 3)
            elif msg[0] == 'build':
                impls[msg[1]] = build(msg[1])
                reply = 'ok'
            elif msg[0] == 'results':
                reply = impls[msg[1]]['results']()
            elif msg[0] == 'reps':
                fn = impls[msg[1]][msg[2]]
                t0 = time.perf_counter()
                fn()
                reply = max(1, min(50, int(msg[3] / max(time.perf_counter() - t0, 1e-6))))
            else:  # 'time'
                reply = _timed(impls[msg[1]][msg[2]], msg[3])
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            reply = exc
        pickle.dump(reply, out)
        out.flush()
