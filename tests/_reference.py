"""Independent NumPy oracles: explicit sums over kernel taps, in float64.

Nothing here calls JAX or brainconv.  Inputs are channels-last with one batch
axis: ``x`` of shape ``(B, *spatial, C)``.  Pads are the forward convolution's
``(low, high)`` per axis, computed by the test from its own formulas.
"""

import itertools

import numpy as np

NP_MODE = {'ZEROS': 'constant', 'REFLECT': 'reflect', 'REPLICATE': 'edge', 'CIRCULAR': 'wrap'}


def same_pads(n, k, s, d, lower=False):
    """SAME pads written out from the definition: ceil(n/s) outputs, the extra pad at the end."""
    span = (k - 1) * d + 1
    out = -(-n // s)
    total = max((out - 1) * s + span - n, 0)
    lo = total // 2 if not lower else total - total // 2
    return lo, total - lo


def lhs_dilate(x, ld):
    """Insert ld - 1 zeros between neighbouring positions on every spatial axis."""
    nd = x.ndim - 2
    shape = (x.shape[0],) + tuple((n - 1) * d + 1 for n, d in zip(x.shape[1:-1], ld)) + (x.shape[-1],)
    out = np.zeros(shape, x.dtype)
    out[(slice(None),) + tuple(slice(None, None, d) for d in ld) + (slice(None),)] = x
    assert out.ndim == nd + 2
    return out


def pad_or_crop(x, pads):
    """Zero-pad the spatial axes of (B, *spatial, C) by the positive part of each (low, high) pair
    and crop by the negative part."""
    x = np.pad(x, [(0, 0)] + [(max(lo, 0), max(hi, 0)) for lo, hi in pads] + [(0, 0)])
    crop = tuple(slice(max(-lo, 0), x.shape[1 + a] - max(-hi, 0)) for a, (lo, hi) in enumerate(pads))
    return x[(slice(None),) + crop + (slice(None),)]


def conv(x, w, stride, pads, lhs_dilation, rhs_dilation, groups, mode='ZEROS'):
    """y[b, o, co] = sum over taps t and in-channels of xp[b, o*s + t*d, ci] * w[t, ci, co].

    With mode ZEROS the pads may be negative (the lhs-dilated input is cropped)."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    nd = x.ndim - 2
    if mode == 'ZEROS':
        xp = pad_or_crop(lhs_dilate(x, lhs_dilation), pads)
    else:
        xp = np.pad(x, [(0, 0)] + [tuple(p) for p in pads] + [(0, 0)], mode=NP_MODE[mode])
    ksize = w.shape[:nd]
    cin, cout = x.shape[-1], w.shape[-1]
    cin_g, cout_g = cin // groups, cout // groups
    out_sp = [(xp.shape[1 + a] - ((ksize[a] - 1) * rhs_dilation[a] + 1)) // stride[a] + 1 for a in range(nd)]
    y = np.zeros((x.shape[0], *out_sp, cout))
    for tap in itertools.product(*[range(k) for k in ksize]):
        index = tuple(
            slice(t * d, t * d + (o - 1) * s + 1, s)
            for t, d, s, o in zip(tap, rhs_dilation, stride, out_sp))
        patch = xp[(slice(None),) + index]  # (B, *out, Cin)
        for g in range(groups):
            y[..., g * cout_g:(g + 1) * cout_g] += (
                patch[..., g * cin_g:(g + 1) * cin_g] @ w[tap][:, g * cout_g:(g + 1) * cout_g])
    return y


def conv_weight_grad(x, gy, kernel_size, stride, pads, lhs_dilation, rhs_dilation, groups):
    """The kernel gradient of :func:`conv` (ZEROS) for output gradient ``gy``: per tap t and
    group, dw[t][:, group] = sum over b, o of xp[b, o*s + t*d, group]^T gy[b, o, group]."""
    x = np.asarray(x, np.float64)
    gy = np.asarray(gy, np.float64)
    xp = pad_or_crop(lhs_dilate(x, lhs_dilation), pads)
    cin, cout = x.shape[-1], gy.shape[-1]
    cin_g, cout_g = cin // groups, cout // groups
    out_sp = gy.shape[1:-1]
    dw = np.zeros(tuple(kernel_size) + (cin_g, cout))
    for tap in itertools.product(*[range(k) for k in kernel_size]):
        index = tuple(
            slice(t * d, t * d + (o - 1) * s + 1, s)
            for t, d, s, o in zip(tap, rhs_dilation, stride, out_sp))
        patch = xp[(slice(None),) + index]  # (B, *out, Cin)
        for g in range(groups):
            a = patch[..., g * cin_g:(g + 1) * cin_g].reshape(-1, cin_g)
            dw[tap][:, g * cout_g:(g + 1) * cout_g] = a.T @ gy[..., g * cout_g:(g + 1) * cout_g].reshape(-1, cout_g)
    return dw


def conv_transpose(y, w, stride, pads, out_spatial, rhs_dilation, groups, mode='ZEROS'):
    """Scatter form: y[b, o] adds y[b, o, ...] * w[t] at padded position o*s + t*d, then the
    padded buffer is cropped (ZEROS) or folded back modulo the length (CIRCULAR).

    ``w`` is ``(*k, C_out, C_in // groups)``; out channel c reads the in-channels of its group.
    """
    y = np.asarray(y, np.float64)
    w = np.asarray(w, np.float64)
    nd = y.ndim - 2
    ksize = w.shape[:nd]
    cout, cin_g = w.shape[nd], w.shape[nd + 1]
    cout_g = cout // groups
    m = y.shape[1:-1]
    buf_len = [max((mm - 1) * s + (k - 1) * d + 1, lo + n + hi)
               for mm, s, k, d, (lo, hi), n in zip(m, stride, ksize, rhs_dilation, pads, out_spatial)]
    buf = np.zeros((y.shape[0], *buf_len, cout))
    for tap in itertools.product(*[range(k) for k in ksize]):
        index = tuple(slice(t * d, t * d + (mm - 1) * s + 1, s) for t, d, s, mm in zip(tap, rhs_dilation, stride, m))
        for g in range(groups):
            contrib = y[..., g * cin_g:(g + 1) * cin_g] @ w[tap][g * cout_g:(g + 1) * cout_g].T
            buf[(slice(None),) + index + (slice(g * cout_g, (g + 1) * cout_g),)] += contrib
    for axis, ((lo, hi), n) in enumerate(zip(pads, out_spatial)):
        ax = axis + 1
        if mode == 'ZEROS':
            buf = np.take(buf, np.arange(lo, lo + n), axis=ax)
        else:
            folded = np.zeros(buf.shape[:ax] + (n,) + buf.shape[ax + 1:])
            usable = min(buf.shape[ax], lo + n + hi)
            for p in range(usable):
                idx = [slice(None)] * buf.ndim
                src = list(idx)
                idx[ax] = (p - lo) % n
                src[ax] = p
                folded[tuple(idx)] += buf[tuple(src)]
            buf = folded
    return buf


def weight_standardize(w, eps, gain=None):
    """Per output channel (last axis): (w - mean) / sqrt(max(fan_in * var, eps)) * gain."""
    w = np.asarray(w, np.float64)
    flat = w.reshape(-1, w.shape[-1])
    fan_in = flat.shape[0]
    mean = flat.mean(0)
    var = flat.var(0)
    out = (flat - mean) / np.sqrt(np.maximum(fan_in * var, eps))
    if gain is not None:
        out = out * np.asarray(gain).reshape(-1)
    return out.reshape(w.shape)
