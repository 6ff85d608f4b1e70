"""The event kernels in Python, jitted by Numba on first use (:func:`_numba`): the fallback
backend where no C++ compiler builds ``_event.cc``, whose loops they mirror.  Nothing here
imports numba until :func:`_numba` runs."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

#: Numba kernels: below this many output channels per group the innermost loop is written out
#: element by element (a slice costs more than it saves); from here on it is a vectorised run.
_VECTOR_MIN = 8


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


