"""brainconv on CPU against raw lax, brainstate, flax nnx, equinox and torch, in one run.

Configs (float32, jitted, batch as given; forward, and forward+backward with
respect to input and weights):

  a  Conv2d 32x32x64 -> 64, k3, pad 1, batch 32
  b  Conv2d 64x64x3 -> 32, k3, stride 2, pad 1, batch 32
  c  depthwise Conv2d 32x32x128, groups 128, k3, pad 1, batch 32
  d  Conv1d L1024 32 -> 64, k5, rhs_dilation 2, pad 4, batch 32
  e  Conv3d 16^3x8 -> 16, k3, pad 1, batch 8
  f  ConvTranspose2d 16x16x64 -> 32, k3, stride 2, pad 1, output_padding 1, batch 32
  g  training step of a small CNN: 28x28x1 -> conv32 -> conv64 -> maxpool 2 -> dense 10, batch 64
     ("forward": the loss; "forward+backward": loss, gradients and an SGD update)
  h  config a with CIRCULAR (h-circ) and REFLECT (h-refl) padding
  i  Conv1d L4096 16 -> 16, k257, pad 128, batch 8 (a long kernel)
  j  depthwise Conv2d 64x64x32, groups 32, k31, pad 15, batch 8 (a large depthwise kernel)

Each JAX implementation of a convolution config is also timed in forward mode
(``jax.jvp`` with respect to input and weights; its time and its ratio to the
same implementation's forward; "n/a" where the implementation has no
forward-mode rule).  A compile-time section (skip: ``--no-compile``) times the
training step (loss, gradients, SGD update; jitted) of two U-Net-like models,
2-d and 3-d, with the default lowering and with ``lowering='lax'``: lower and
compile wall time (median of 3 fresh compiles) and the step's run time.

Every peer runs only if importable (``pip install brainconv[bench]``).  Before
timing, every implementation's output and gradients are checked against raw
lax.  Timing interleaves rounds: each round times every implementation once,
in a rotated order, bracketed by a fixed reference matmul (in JAX, and in
torch's worker process when torch is in the group); a round whose reference
ran more than 30% slower than the quietest one seen is re-measured, up to
three times a second apart (other processes were loading the CPU).
Reported: medians over the quiet rounds (over all rounds when fewer than 3
were quiet), medians of per-round ratios against raw lax and torch, and the
achieved GFLOP/s as a fraction of a float32 matmul measured in the same run;
each group says how many rounds were quiet.  A brainconv ratio past a
target (raw lax 1.05x, torch 2x) is re-measured as 15 back-to-back pairs of
the two, which the summary then uses.  torch runs in a worker process that
never imports JAX.  Also construction time against brainstate.  Not a test:
nothing here asserts a speed.

Usage::

    python benchmarks/bench_cpu.py            # full run (up to 15 rounds, 25 s per config)
    python benchmarks/bench_cpu.py --quick    # 5 rounds, shorter repetitions
    python benchmarks/bench_cpu.py --configs a,f --lowerings   # every brainconv formulation
    python benchmarks/bench_cpu.py --crossover i,j,dense       # formulations across kernel sizes
"""


from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
from _common import (
    CONFIGS,
    ORDER,
    Config,
    GroupResult,
    LoadMonitor,
    Timed,
    TorchProxy,
    compiled,
    confirm,
    conv_data,
    from_torch,
    kernel_from_torch,
    machine,
    med,
    median_of,
    one_call,
    optional,
    ratio,
    rel_err,
    remote_torch,
    rotated,
    serve,
    time_group,
    to_torch,
    torch_kernel,
    versions,
)

# --------------------------------------------------------------------------- #
# Everything torch runs lives above the JAX import: torch is timed in a worker
# process of its own (``--torch-worker``) that never imports JAX, so that
# torch's OpenMP threads and XLA's thread pool never share a process.  The
# configs a-j are _common.py's; config g (a small CNN) is this file's.
# --------------------------------------------------------------------------- #

G_BATCH, G_LR = 64, 0.01


def cnn_data():
    """Images, labels and NHWC weights of config g, seeded."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((G_BATCH, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, G_BATCH).astype(np.int32)
    w1 = (rng.standard_normal((3, 3, 1, 32)) / 3).astype(np.float32)
    w2 = (rng.standard_normal((3, 3, 32, 64)) / math.sqrt(288)).astype(np.float32)
    wd = (rng.standard_normal((14 * 14 * 64, 10)) / math.sqrt(14 * 14 * 64)).astype(np.float32)
    return x, y, w1, np.zeros(32, np.float32), w2, np.zeros(64, np.float32), wd, np.zeros(10, np.float32)


def _dense_chw(wd):
    """The dense weight for an NCHW flatten order (c, h, w) instead of NHWC's (h, w, c)."""
    return np.ascontiguousarray(wd.reshape(14, 14, 64, 10).transpose(2, 0, 1, 3).reshape(-1, 10))


@dataclasses.dataclass
class Impl(Timed):
    """One implementation: timed callables plus converters back to brainconv's layouts."""

    name: str
    fwd: Callable[[], Any]
    fb: Callable[[], Any]
    out: Callable[[Any], np.ndarray]          # fwd() result -> NHWC numpy
    grads: Callable[[Any], Tuple[np.ndarray, np.ndarray]]  # fb() result -> (dx NHWC, dw brainconv layout)
    lowering: str = ''                        # brainconv: the formulation that ran
    jvp: Callable[[], Any] | None = None      # forward mode (JAX only); None where it has no rule

    def results(self) -> Tuple[Any, Any]:
        """(output, gradients) in brainconv's layouts, for the equality check."""
        return self.out(self.fwd()), self.grads(self.fb())


def _torch_impl(cfg: Config, x_np, w_np, r_np) -> Impl:
    import torch
    F = torch.nn.functional
    nd = cfg.nd
    xt, rt = to_torch(x_np), to_torch(r_np)
    wt = torch_kernel(w_np)  # torch's (C_out, C_in // g, *k), or (C_in_T, C_out_T // g, *k): brainconv's, axes moved
    if cfg.transposed:
        op = getattr(F, f'conv_transpose{nd}d')

        def run(xx, ww):
            return op(xx, ww, stride=cfg.stride, padding=cfg.pad, output_padding=cfg.output_padding,
                      groups=cfg.groups, dilation=cfg.dilation)
    else:
        op = getattr(F, f'conv{nd}d')
        mode = {'CIRCULAR': 'circular', 'REFLECT': 'reflect'}.get(cfg.mode)

        def run(xx, ww):
            if mode:
                return op(F.pad(xx, (cfg.pad,) * (2 * nd), mode=mode), ww, stride=cfg.stride,
                          dilation=cfg.dilation, groups=cfg.groups)
            return op(xx, ww, stride=cfg.stride, padding=cfg.pad, dilation=cfg.dilation, groups=cfg.groups)
    xg = xt.clone().requires_grad_(True)
    wg = wt.clone().requires_grad_(True)

    def fwd():
        with torch.no_grad():
            return run(xt, wt)

    def fb():
        xg.grad = None
        wg.grad = None
        (run(xg, wg) * rt).sum().backward()
        return xg.grad, wg.grad

    return Impl('torch', fwd, fb, from_torch, lambda g: (from_torch(g[0]), kernel_from_torch(g[1])))


def _torch_cnn_impl() -> Impl:
    import torch
    x_np, y_np, w1, b1, w2, b2, wd, bd = cnn_data()
    wd_chw = _dense_chw(wd)
    F = torch.nn.functional
    tp = [torch_kernel(w1), torch.from_numpy(b1), torch_kernel(w2), torch.from_numpy(b2),
          torch.from_numpy(np.ascontiguousarray(wd_chw.T)), torch.from_numpy(bd)]
    tp = [p.requires_grad_(True) for p in tp]
    xt = to_torch(x_np)
    yt = torch.from_numpy(y_np.astype(np.int64))

    def t_loss():
        h = F.relu(F.conv2d(xt, tp[0], tp[1], padding=1))
        h = F.max_pool2d(F.relu(F.conv2d(h, tp[2], tp[3], padding=1)), 2)
        return F.cross_entropy(F.linear(h.flatten(1), tp[4], tp[5]), yt)

    def t_fwd():
        with torch.no_grad():
            return t_loss()

    def t_step():
        for p in tp:
            p.grad = None
        value = t_loss()
        value.backward()
        grad_w2 = tp[2].grad.clone()
        with torch.no_grad():
            for p in tp:
                p -= G_LR * p.grad
        return value.detach(), grad_w2
    return Impl('torch', t_fwd, t_step, lambda v: v.numpy(), lambda out: (out[0].numpy(), kernel_from_torch(out[1])))


def _torch_build(key):
    """The worker's implementation of config ``key``: its ``fwd``, ``fb`` and ``results``."""
    impl = _torch_cnn_impl() if key == 'g' else _torch_impl(CONFIGS[key], *conv_data(CONFIGS[key]))
    return {'fwd': impl.fwd, 'fb': impl.fb, 'results': impl.results}


if __name__ == '__main__' and '--torch-worker' in sys.argv:
    serve(_torch_build)
    sys.exit(0)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

import brainconv  # noqa: E402

brainstate = optional('brainstate')
nnx = optional('flax.nnx')
eqx = optional('equinox')

LOWERING_NAMES = brainconv.lowering.LOWERINGS

# --------------------------------------------------------------------------- #
# Implementations of one convolution config
# --------------------------------------------------------------------------- #

def _block(x):
    return jax.block_until_ready(x)


def _jax_impl(name, apply, params, x, r, to_kernel, channel_first=False):
    """``apply(params, x)``; ``to_kernel(grad_params)`` gives the kernel gradient in brainconv's layout."""
    fwd_j = jax.jit(apply)

    def loss(p, xx, rr):  # arrays are arguments, never captured constants XLA would fold
        return jnp.vdot(apply(p, xx), rr)

    # value_and_grad, not grad: the loss is linear in the output, so its gradients alone do not
    # need the forward convolution and XLA drops it; torch's fb (loss.backward()) runs it.
    fb_j = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    jvp_j = jax.jit(lambda p, xx, tp, tx: jax.jvp(apply, (p, xx), (tp, tx)))

    def to_nhwc(a):
        a = np.asarray(a)
        return np.moveaxis(a, 1, -1) if channel_first else a

    def jvp():  # tangents: the primals themselves (any array of the right shape would do)
        return _block(jvp_j(params, x, params, x))

    try:
        jvp()
    except Exception as exc:  # noqa: BLE001 - e.g. a custom_vjp has no forward-mode rule
        print(f"  {name}: no forward mode ({type(exc).__name__}: {str(exc).splitlines()[0][:100]})", flush=True)
        jvp = None
    return Impl(name, lambda: _block(fwd_j(params, x)), lambda: _block(fb_j(params, x, r)), to_nhwc,
                lambda out: (to_nhwc(out[1][1]), np.asarray(to_kernel(out[1][0]))), jvp=jvp)


def _lax_apply(cfg: Config):
    nd = cfg.nd
    spatial = tuple(range(1, nd + 1))
    lhs = (0, nd + 1) + spatial
    if cfg.transposed:
        dn = lax.ConvDimensionNumbers(lhs, (nd, nd + 1) + tuple(range(nd)), lhs)
        span = (cfg.k - 1) * cfg.dilation + 1
        pads = [(span - 1 - cfg.pad, span - 1 - cfg.pad + cfg.output_padding)] * nd

        def apply(w, x):
            return lax.conv_general_dilated(x, jnp.flip(w, tuple(range(nd))), (1,) * nd, pads,
                                            lhs_dilation=(cfg.stride,) * nd, rhs_dilation=(cfg.dilation,) * nd,
                                            dimension_numbers=dn, feature_group_count=cfg.groups)
        return apply
    dn = lax.ConvDimensionNumbers(lhs, (nd + 1, nd) + tuple(range(nd)), lhs)
    mode = {'CIRCULAR': 'wrap', 'REFLECT': 'reflect'}.get(cfg.mode)

    def apply(w, x):
        pads = [(cfg.pad, cfg.pad)] * nd
        if mode:
            x = jnp.pad(x, [(0, 0)] + pads + [(0, 0)], mode=mode)
            pads = 'VALID'
        return lax.conv_general_dilated(x, w, (cfg.stride,) * nd, pads, rhs_dilation=(cfg.dilation,) * nd,
                                        dimension_numbers=dn, feature_group_count=cfg.groups)
    return apply


def _split_merge(module):
    """A brainstate module as ``(apply(params, x), params)``."""
    graphdef, state = brainstate.graph.treefy_split(module)

    def apply(params, x):
        return brainstate.graph.treefy_merge(graphdef, params)(x)
    return apply, state


def _state_kernel(grads):
    return grads['weight'].value['weight']


def build_impls(cfg: Config, lowerings: List[str] | None = None,
                default: str | None = None) -> Tuple[Dict[str, Impl], Dict[str, Any]]:
    """Every available implementation of ``cfg`` on one shared input and kernel (``default``:
    the lowering of the 'brainconv' one; None: 'auto')."""
    nd = cfg.nd
    x_np, w_np, r_np = conv_data(cfg)
    x, w, r = jnp.asarray(x_np), jnp.asarray(w_np), jnp.asarray(r_np)
    impls: Dict[str, Impl] = {}
    ident = (lambda g: g)

    impls['lax'] = _jax_impl('lax', _lax_apply(cfg), w, x, r, ident)

    names = ['brainconv'] if lowerings is None else [f'bc:{lw}' for lw in lowerings]
    for label in names:
        layer = cfg.layer(brainconv, w_init=w, lowering=default if label == 'brainconv' else label[3:])
        apply, params = _split_merge(layer)
        impls[label] = _jax_impl(label, apply, params, x, r, _state_kernel)
        impls[label].lowering = layer.lowering
    if lowerings is not None:
        return impls, dict(x=x_np, w=w_np, r=r_np)

    if brainstate is not None:
        mode = {'CIRCULAR': 'wrap', 'REFLECT': 'reflect'}.get(cfg.mode)
        if cfg.transposed:
            span = (cfg.k - 1) * cfg.dilation + 1
            cls = getattr(brainstate.nn, f'ConvTranspose{nd}d')
            layer = cls(cfg.spatial + (cfg.cin,), cfg.cout, cfg.k, stride=cfg.stride,
                        padding=[(span - 1 - cfg.pad, span - 1 - cfg.pad + cfg.output_padding)] * nd,
                        rhs_dilation=cfg.dilation, groups=cfg.groups, w_init=w)
        else:
            in_spatial = tuple(n + 2 * cfg.pad for n in cfg.spatial) if mode else cfg.spatial
            cls = getattr(brainstate.nn, f'Conv{nd}d')
            layer = cls(in_spatial + (cfg.cin,), cfg.cout, cfg.k, stride=cfg.stride,
                        padding='VALID' if mode else [(cfg.pad, cfg.pad)] * nd,
                        rhs_dilation=cfg.dilation, groups=cfg.groups, w_init=w)
        apply, params = _split_merge(layer)
        if mode:
            inner = apply

            def apply(p, xx, inner=inner):  # brainstate has no padding_mode: pad, then VALID
                return inner(p, jnp.pad(xx, [(0, 0)] + [(cfg.pad, cfg.pad)] * nd + [(0, 0)], mode=mode))
        impls['brainstate'] = _jax_impl('brainstate', apply, params, x, r, _state_kernel)

    if nnx is not None and not (cfg.transposed and cfg.groups != 1):
        rngs = nnx.Rngs(0)
        if cfg.transposed:
            span = (cfg.k - 1) * cfg.dilation + 1
            m = nnx.ConvTranspose(cfg.cin, cfg.cout, (cfg.k,) * nd, strides=cfg.stride,
                                  padding=[(span - 1 - cfg.pad, span - 1 - cfg.pad + cfg.output_padding)] * nd,
                                  kernel_dilation=cfg.dilation, use_bias=False, rngs=rngs)
            # lax.conv_transpose correlates with the unflipped (k, C_in, C_out) kernel.
            m.kernel.set_value(jnp.swapaxes(jnp.flip(w, tuple(range(nd))), -1, -2))

            def flax_kernel(g):
                return jnp.flip(jnp.swapaxes(g['kernel'].get_value(), -1, -2), tuple(range(nd)))
        else:
            padding = cfg.mode if cfg.mode != 'ZEROS' else [(cfg.pad, cfg.pad)] * nd
            m = nnx.Conv(cfg.cin, cfg.cout, (cfg.k,) * nd, strides=cfg.stride, padding=padding,
                         kernel_dilation=cfg.dilation, feature_group_count=cfg.groups, use_bias=False, rngs=rngs)
            m.kernel.set_value(w)

            def flax_kernel(g):
                return g['kernel'].get_value()
        graphdef, state = nnx.split(m)

        def flax_apply(p, xx, graphdef=graphdef):
            return nnx.merge(graphdef, p)(xx)
        impls['flax'] = _jax_impl('flax', flax_apply, state, x, r, flax_kernel)

    x_cf = jnp.moveaxis(x, -1, 1)
    r_cf = jnp.moveaxis(r, -1, 1)
    w_oi = jnp.moveaxis(jnp.moveaxis(w, -1, 0), -1, 1)    # (C_out | C_out_T, C_in // g | C_in_T // g, *k)
    if eqx is not None:
        key = jax.random.PRNGKey(0)
        if cfg.transposed:
            m = eqx.nn.ConvTranspose(nd, cfg.cin, cfg.cout, cfg.k, stride=cfg.stride, padding=cfg.pad,
                                     output_padding=cfg.output_padding, dilation=cfg.dilation, groups=cfg.groups,
                                     use_bias=False, key=key)
            # equinox correlates with the unflipped (C_out, C_in // g, *k) weight.
            wk = jnp.flip(jnp.moveaxis(jnp.moveaxis(w, -2, 0), -1, 1), tuple(range(2, nd + 2)))

            def eqx_kernel(g):
                a = jnp.flip(g.weight, tuple(range(2, nd + 2)))
                return jnp.moveaxis(jnp.moveaxis(a, 0, -1), 0, -1)
        else:
            m = eqx.nn.Conv(nd, cfg.cin, cfg.cout, cfg.k, stride=cfg.stride, padding=cfg.pad,
                            dilation=cfg.dilation, groups=cfg.groups, use_bias=False, padding_mode=cfg.mode, key=key)
            wk = w_oi

            def eqx_kernel(g):
                return jnp.moveaxis(jnp.moveaxis(g.weight, 0, -1), 0, -2)
        m = eqx.tree_at(lambda mm: mm.weight, m, wk)

        def eqx_apply(mm, xx):
            return jax.vmap(mm)(xx)
        ei = _jax_impl('equinox', eqx_apply, m, x_cf, r_cf, eqx_kernel, channel_first=True)
        impls['equinox'] = ei

    torch = remote_torch(cfg.key)
    if torch is not None:
        impls['torch'] = torch
    return impls, dict(x=x_np, w=w_np, r=r_np)


# --------------------------------------------------------------------------- #
# Config g: a training step of a small CNN
# --------------------------------------------------------------------------- #

def _maxpool2(x):
    """Non-overlapping 2x2 max pooling of (N, H, W, C) (shared by every JAX implementation)."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _xent(logits, labels):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))


def build_cnn_impls() -> Tuple[Dict[str, Impl], Dict[str, Any]]:
    x_np, y_np, w1, b1, w2, b2, wd, bd = cnn_data()
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    impls: Dict[str, Impl] = {}

    def jax_impl(name, apply, params, grad_w2):
        def loss(p, xx, yy):
            return _xent(apply(p, xx), yy)

        def step(p, xx, yy):
            value, g = jax.value_and_grad(loss)(p, xx, yy)
            return value, jax.tree_util.tree_map(lambda a, b: a - G_LR * b, p, g), g

        loss_j, step_j = jax.jit(loss), jax.jit(step)
        return Impl(name, lambda: _block(loss_j(params, x, y)), lambda: _block(step_j(params, x, y)),
                    lambda v: np.asarray(v), lambda out: (np.asarray(out[0]), np.asarray(grad_w2(out[2]))))

    dn = ('NHWC', 'HWIO', 'NHWC')

    def lax_apply(p, xx):
        h = jax.nn.relu(lax.conv_general_dilated(xx, p['w1'], (1, 1), 'SAME', dimension_numbers=dn) + p['b1'])
        h = jax.nn.relu(lax.conv_general_dilated(h, p['w2'], (1, 1), 'SAME', dimension_numbers=dn) + p['b2'])
        return _maxpool2(h).reshape(h.shape[0], -1) @ p['wd'] + p['bd']
    p_lax = {k: jnp.asarray(v) for k, v in dict(w1=w1, b1=b1, w2=w2, b2=b2, wd=wd, bd=bd).items()}
    impls['lax'] = jax_impl('lax', lax_apply, p_lax, lambda g: g['w2'])

    def states_cnn(conv_cls, lowering_kw):
        c1 = conv_cls((28, 28, 1), 32, 3, w_init=jnp.asarray(w1), b_init=jnp.asarray(b1.reshape(1, 1, 32)),
                      **lowering_kw)
        c2 = conv_cls((28, 28, 32), 64, 3, w_init=jnp.asarray(w2), b_init=jnp.asarray(b2.reshape(1, 1, 64)),
                      **lowering_kw)
        dense = brainstate.nn.Linear(14 * 14 * 64, 10, w_init=jnp.asarray(wd), b_init=jnp.asarray(bd))

        class CNN(brainstate.nn.Module):
            def __init__(self):
                super().__init__()
                self.c1, self.c2, self.dense = c1, c2, dense

            def update(self, xx):
                h = _maxpool2(jax.nn.relu(self.c2(jax.nn.relu(self.c1(xx)))))
                return self.dense(h.reshape(h.shape[0], -1))
        return _split_merge(CNN())

    if brainstate is not None:
        apply, params = states_cnn(brainconv.Conv2d, {})
        impls['brainconv'] = jax_impl('brainconv', apply, params, lambda g: g['c2']['weight'].value['weight'])
        apply, params = states_cnn(brainstate.nn.Conv2d, {})
        impls['brainstate'] = jax_impl('brainstate', apply, params, lambda g: g['c2']['weight'].value['weight'])

    if nnx is not None:
        class FlaxCNN(nnx.Module):
            def __init__(self, rngs):
                self.c1 = nnx.Conv(1, 32, (3, 3), padding='SAME', rngs=rngs)
                self.c2 = nnx.Conv(32, 64, (3, 3), padding='SAME', rngs=rngs)
                self.dense = nnx.Linear(14 * 14 * 64, 10, rngs=rngs)

            def __call__(self, xx):
                h = _maxpool2(jax.nn.relu(self.c2(jax.nn.relu(self.c1(xx)))))
                return self.dense(h.reshape(h.shape[0], -1))
        m = FlaxCNN(nnx.Rngs(0))
        for var, value in ((m.c1.kernel, w1), (m.c2.kernel, w2), (m.dense.kernel, wd)):
            var.set_value(jnp.asarray(value))
        graphdef, state = nnx.split(m)
        impls['flax'] = jax_impl('flax', lambda p, xx: nnx.merge(graphdef, p)(xx), state,
                                 lambda g: g['c2']['kernel'].get_value())

    to_oihw = (lambda a: jnp.asarray(np.ascontiguousarray(np.transpose(a, (3, 2, 0, 1)))))
    wd_chw = _dense_chw(wd)
    if eqx is not None:
        key = jax.random.PRNGKey(0)
        k1, k2, k3 = jax.random.split(key, 3)
        c1 = eqx.nn.Conv2d(1, 32, 3, padding=1, key=k1)
        c2 = eqx.nn.Conv2d(32, 64, 3, padding=1, key=k2)
        dense = eqx.nn.Linear(14 * 14 * 64, 10, key=k3)
        c1 = eqx.tree_at(lambda m: (m.weight, m.bias), c1, (to_oihw(w1), jnp.zeros((32, 1, 1))))
        c2 = eqx.tree_at(lambda m: (m.weight, m.bias), c2, (to_oihw(w2), jnp.zeros((64, 1, 1))))
        dense = eqx.tree_at(lambda m: (m.weight, m.bias), dense, (jnp.asarray(wd_chw.T), jnp.zeros(10)))

        def eqx_apply(p, xx):
            def one(xi):  # xi: (1, 28, 28)
                h = jax.nn.relu(p[1](jax.nn.relu(p[0](xi))))
                h = h.reshape(64, 14, 2, 14, 2).max(axis=(2, 4))
                return p[2](h.reshape(-1))
            return jax.vmap(one)(jnp.moveaxis(xx, -1, 1))
        impls['equinox'] = jax_impl('equinox', eqx_apply, (c1, c2, dense),
                                    lambda g: jnp.transpose(g[1].weight, (2, 3, 1, 0)))

    torch = remote_torch('g')
    if torch is not None:
        impls['torch'] = torch
    return impls, {}


# --------------------------------------------------------------------------- #
# Checking and timing
# --------------------------------------------------------------------------- #

def check(impls: Dict[str, Impl], tol: float = 2e-4) -> Dict[str, float]:
    """Max relative error of every implementation's output and gradients against raw lax."""
    ref_out, ref_grads = impls['lax'].results()
    errors = {}
    for name, impl in impls.items():
        out, grads = impl.results()
        err = max([rel_err(out, ref_out)] + [rel_err(a, b) for a, b in zip(grads, ref_grads)])
        errors[name] = err
        if not err <= tol:
            print(f"  !! {name} differs from raw lax: max relative error {err:.2e}", flush=True)
    return errors


def confirm_flagged(impls: Dict[str, Impl], res: GroupResult) -> List[str]:
    """A ratio past a target (brainconv > 1.05x raw lax, > 2x torch) is re-measured as a pair:
    with other processes loading the CPU, rounds of six implementations drift."""
    notes = []
    for other, limit in (('lax', 1.05), ('torch', 2.0)):
        if other not in impls or 'brainconv' not in impls:
            continue
        for mode in ('fwd', 'fb'):
            before = ratio(res, 'brainconv', other, mode, confirmed=False)
            if before > limit:
                after = confirm(impls, res, 'brainconv', other, mode)
                notes.append(f"{mode}/{other} {before:.2f} -> {after:.2f}")
    return notes


# --------------------------------------------------------------------------- #
# Construction time
# --------------------------------------------------------------------------- #

def construction_times(n: int) -> Dict[str, Dict[str, float]]:
    """Median ms to build a Conv2d((32, 32, C), 64, 3) with the default initializer:
    a new kernel shape every time, and one shape repeated."""
    out = {}
    makers = {'brainconv': brainconv.Conv2d}
    if brainstate is not None:
        makers['brainstate'] = brainstate.nn.Conv2d
    for name, cls in makers.items():
        cls((32, 32, 3), 64, 3)  # first-use costs of the library itself are not counted
        new, same = [], []
        for i in range(n):
            t0 = time.perf_counter()
            cls((32, 32, 200 + 7 * i + (name == 'brainstate')), 64, 3)
            new.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            cls((32, 32, 64), 64, 3)
            same.append(time.perf_counter() - t0)
        out[name] = {'new shape': med(new) * 1e3, 'same shape': med(same[1:]) * 1e3}
    return out


# --------------------------------------------------------------------------- #
# FFT crossover: every formulation across kernel sizes
# --------------------------------------------------------------------------- #

#: Families of convolutions timed across kernel sizes by ``--crossover`` (SAME padding, stride 1):
#: (spatial, C_in, C_out, groups, batch, kernel sizes).
CROSSOVER = {
    'i': ((4096,), 16, 16, 1, 8, (9, 33, 65, 129, 257)),
    'j': ((64, 64), 32, 32, 32, 8, (3, 5, 7, 11, 15, 21, 31)),
    'dense': ((32, 32), 64, 64, 1, 32, (3, 7, 11)),
}
#: 'taps' is not compiled past this many kernel taps in ``--crossover`` (its program grows with them).
CROSSOVER_MAX_TAPS = 225


def _fft_conv(geometry, groups):
    """``(x, w) -> y`` by the FFT formulation: ``lowering='fft'`` where brainconv has it, else
    :mod:`brainconv.lowering.fft` with the gradients the lowering gives it (input gradient: the FFT
    forward of the adjoint convolution; kernel gradient: :func:`brainconv.lowering.fft.weight_grad`)."""
    if 'fft' in LOWERING_NAMES:
        return None
    from brainconv.lowering import fft as _fft
    from brainconv.shapes import adjoint_geometry
    adjoint = adjoint_geometry(geometry)

    @jax.custom_vjp
    def conv(x, w):
        return _fft.forward(x, w, geometry, groups)

    def fwd(x, w):
        return conv(x, w), (x, w)

    def bwd(res, gy):
        x, w = res
        dx = _fft.forward(gy, brainconv.lowering.adjoint_kernel(w, groups), adjoint, groups)
        return dx, _fft.weight_grad(x, gy, geometry, groups)

    conv.defvjp(fwd, bwd)
    return conv


def crossover(families: List[str], rounds: int = 7, only: List[str] | None = None) -> None:
    """Forward and forward+backward (input and kernel gradients) of raw lax, 'fft' and the direct
    formulations across kernel sizes: medians of ``rounds`` interleaved rounds after a warm-up,
    per-round ratios against raw lax, and the compile time of each jitted function.  ``only``:
    a subset of the formulations (raw lax always runs)."""
    from brainconv.shapes import conv_geometry
    names = ['lax', 'fft'] + [n for n in ('taps', 'im2col', 'lax_vjp', 'fold') if n in LOWERING_NAMES]
    names = [n for n in names if n == 'lax' or only is None or n in only]
    for fam in families:
        spatial, cin, cout, groups, batch, ks = CROSSOVER[fam]
        nd = len(spatial)
        print(f"\n## crossover {fam}: {'x'.join(map(str, spatial))}x{cin}->{cout}, groups {groups}, batch {batch}, "
              f"SAME, stride 1   [{rounds} rounds; ms, ratio to raw lax, compile s]")
        print("| k | impl | fwd ms | fwd+bwd ms | fwd/lax | fb/lax | compile fwd s | compile fb s |")
        print("|---|---|---|---|---|---|---|---|", flush=True)
        for k in ks:
            rng = np.random.default_rng(0)
            x = jnp.asarray(rng.standard_normal((batch,) + spatial + (cin,)), jnp.float32)
            w = jnp.asarray(rng.standard_normal((k,) * nd + (cin // groups, cout)) / math.sqrt(k ** nd * cin // groups),
                            jnp.float32)
            r = jnp.asarray(rng.standard_normal((batch,) + spatial + (cout,)), jnp.float32)
            geometry = conv_geometry(spatial, (k,) * nd, (1,) * nd, 'SAME', (1,) * nd, (1,) * nd)
            fns = {}
            for name in names:
                if name == 'taps' and k ** nd > CROSSOVER_MAX_TAPS:
                    continue
                if name == 'fold' and nd != 3:
                    continue
                if name == 'fft' and _fft_conv(geometry, groups) is not None:
                    fns[name] = _fft_conv(geometry, groups)
                else:
                    fns[name] = functools.partial(brainconv.functional.conv, padding='SAME', groups=groups,
                                                  lowering=name)
            run = {}
            for name, fn in fns.items():
                f_exe, f_s = compiled(fn, x, w)
                b_exe, b_s = compiled(jax.value_and_grad(lambda xx, ww, rr, fn=fn: jnp.vdot(fn(xx, ww), rr), (0, 1)),
                                       x, w, r)
                run[name] = (f_exe, b_exe, f_s, b_s)
                _block(f_exe(x, w))
                _block(b_exe(x, w, r))
            times = {(n, m): [] for n in run for m in ('fwd', 'fb')}
            for i in range(rounds):
                for name in rotated(run, i):
                    f_exe, b_exe = run[name][:2]
                    times[(name, 'fwd')].append(one_call(f_exe, x, w))
                    times[(name, 'fb')].append(one_call(b_exe, x, w, r))
            for name in run:
                to_lax = {m: med([a / b for a, b in zip(times[(name, m)], times[('lax', m)])]) for m in ('fwd', 'fb')}
                ms = {m: med(times[(name, m)]) * 1e3 for m in ('fwd', 'fb')}
                print(f"| {k} | {name} | {ms['fwd']:.2f} | {ms['fb']:.2f} | {to_lax['fwd']:.2f} | {to_lax['fb']:.2f} | "
                      f"{run[name][2]:.2f} | {run[name][3]:.2f} |", flush=True)


# --------------------------------------------------------------------------- #
# Compile time: U-Net-like training steps
# --------------------------------------------------------------------------- #

#: (spatial, channels, batch): 4 stride-2 Conv down, 4 stride-2 ConvTranspose up with skips.
UNETS = {
    '2-d': ((64, 64), (3, 16, 32, 64, 128), 8),
    '3-d': ((32, 32, 32), (1, 8, 16, 32, 64), 2),
}


def _unet(spatial, channels, lowering):
    """A U-Net-like brainstate module: k3 stride-2 Conv layers down (channels[i] -> channels[i+1]),
    k3 stride-2 ConvTranspose layers up, each up output concatenated with the down output of the
    same size; the last one returns ``channels[0]`` channels at the input size."""
    nd = len(spatial)
    c = channels
    sizes = [tuple(spatial)]
    for _ in c[1:]:
        sizes.append(tuple(-(-n // 2) for n in sizes[-1]))
    downs = [brainconv.Conv(nd, sizes[i] + (c[i],), c[i + 1], 3, stride=2, lowering=lowering)
             for i in range(len(c) - 1)]
    ups = []
    for i in reversed(range(len(c) - 1)):
        cin = c[i + 1] * (1 if i == len(c) - 2 else 2)
        ups.append(brainconv.ConvTranspose(nd, sizes[i + 1] + (cin,), c[i], 3, stride=2, lowering=lowering))

    class UNet(brainstate.nn.Module):
        def __init__(self):
            super().__init__()
            for i, m in enumerate(downs):
                setattr(self, f'down{i}', m)
            for i, m in enumerate(ups):
                setattr(self, f'up{i}', m)

        def update(self, xx):
            skips, h = [], xx
            for i in range(len(downs)):
                h = jax.nn.relu(getattr(self, f'down{i}')(h))
                skips.append(h)
            skips.pop()
            for i in range(len(ups)):
                h = getattr(self, f'up{i}')(h)
                if skips:
                    h = jnp.concatenate([jax.nn.relu(h), skips.pop()], axis=-1)
            return h
    return UNet()


def compile_section(quick: bool) -> Dict[Tuple[str, str], Tuple[float, float]]:
    """Per U-Net and lowering (default, 'lax'): median lower+compile seconds of the jitted
    training step over 3 fresh compiles (caches cleared, a new function each time), and the
    median run time (ms) of the compiled step."""
    print("\n## Compile time: training step (MSE loss, gradients, SGD update) of U-Net-like models, jitted")
    print("| model | lowering | compile s (median of 3) | step ms |")
    print("|---|---|---|---|", flush=True)
    out = {}
    for key, (spatial, channels, batch) in UNETS.items():
        x = jnp.asarray(np.random.default_rng(3).standard_normal((batch,) + spatial + (channels[0],)), jnp.float32)
        for lowering in (None, 'lax'):
            apply, params = _split_merge(_unet(spatial, channels, lowering))
            seconds, exe = [], None
            for _ in range(3):
                def step(p, xx, apply=apply):
                    value, g = jax.value_and_grad(lambda q: jnp.mean((apply(q, xx) - xx) ** 2))(p)
                    return value, jax.tree_util.tree_map(lambda a, b: a - G_LR * b, p, g)
                exe, sec = compiled(step, params, x)
                seconds.append(sec)
            step_s = median_of(functools.partial(exe, params, x), 3 if quick else 7)
            label = lowering or f"default ({brainconv.lowering.get_lowering()})"
            out[(key, label)] = (med(seconds), step_s * 1e3)
            print(f"| {key} {'x'.join(map(str, spatial))}x{channels[0]}, b{batch} | {label} | {med(seconds):.2f} | "
                  f"{step_s * 1e3:.1f} |", flush=True)
    return out


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help='5 rounds, shorter repetitions')
    parser.add_argument('--rounds', type=int, default=None)
    parser.add_argument('--configs', default=','.join(ORDER), help='comma-separated subset of ' + ','.join(ORDER))
    parser.add_argument('--lowerings', action='store_true',
                        help='time every brainconv formulation (against raw lax) instead of the peers')
    parser.add_argument('--budget', type=float, default=None,
                        help='seconds of timing per config after which no new round starts (at least 5 rounds; '
                             'default 25, --quick 10)')
    parser.add_argument('--no-construction', action='store_true')
    parser.add_argument('--no-compile', action='store_true', help='skip the U-Net compile-time section')
    parser.add_argument('--compile-only', action='store_true', help='only the U-Net compile-time section')
    parser.add_argument('--lowering', default=None, help="the 'brainconv' implementation's lowering (default: auto)")
    parser.add_argument('--crossover', default=None, metavar='FAMILIES',
                        help='time raw lax, fft and the direct formulations across kernel sizes for the families '
                             f'{",".join(CROSSOVER)} (comma-separated), then stop')
    parser.add_argument('--only', default=None, help='with --crossover: comma-separated formulations to time')
    args = parser.parse_args(argv)
    if args.crossover:
        crossover([f.strip() for f in args.crossover.split(',') if f.strip()], rounds=args.rounds or 7,
                  only=args.only.split(',') if args.only else None)
        return 0
    rounds = args.rounds or (5 if args.quick else 15)
    budget = args.budget or (10.0 if args.quick else 25.0)
    target_s = 0.01 if args.quick else 0.03
    keys = [] if args.compile_only else [k.strip() for k in args.configs.split(',') if k.strip()]
    for k in keys:
        if k not in ORDER:
            parser.error(f"unknown config {k!r}; choose from {ORDER}")

    TorchProxy.start(__file__)
    print(f"# brainconv CPU benchmark, {datetime.date.today().isoformat()}")
    print(f"versions: {versions()}")
    print(f"machine: {machine()}; backend {jax.default_backend()}")
    monitor = LoadMonitor()
    print(f"reference matmul (768^3 float32, jax): {monitor.gflops():.0f} GFLOP/s; up to {rounds} rounds, "
          f"{budget:.0f} s of timing per config", flush=True)
    results = {}
    for key in keys:
        t0 = time.perf_counter()
        if key == 'g':
            if args.lowerings:
                continue
            impls, _ = build_cnn_impls()
            title, flops = 'CNN train step, b64', None
        else:
            cfg = CONFIGS[key]
            impls, _ = build_impls(cfg, list(LOWERING_NAMES) if args.lowerings else None, args.lowering)
            title, flops = cfg.title, 2 * cfg.macs()
        errors = check(impls)
        res = time_group(impls, monitor, rounds, target_s, budget_s=budget)
        results[key] = (title, flops, impls, res, errors)
        _print_group(key, title, flops, impls, res, errors, monitor, args.lowerings)
        notes = [] if args.lowerings else confirm_flagged(impls, res)
        if notes:
            print(f"  re-measured as 15 back-to-back pairs: {', '.join(notes)}")
        print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    if not (args.lowerings or args.no_compile):
        compile_section(args.quick)
    if not args.lowerings and not args.compile_only:
        cons = None if args.no_construction else construction_times(3 if args.quick else 7)
        _print_summary(results, cons, monitor)
    TorchProxy.stop()
    return 0


def _print_group(key, title, flops, impls, res: GroupResult, errors, monitor, lowerings):
    rate = monitor.gflops()
    print(f"\n## {key}: {title}   [{res.rounds} rounds, {res.quiet} quiet, re-measured {res.retries}, "
          f"reference slowdown median {med(res.slowdowns):.2f}x, load avg {res.loadavg:.1f}]")
    print("| impl | fwd ms | fwd+bwd ms | fwd/lax | fb/lax | fwd/torch | fb/torch | fwd %mm | fb %mm | jvp ms | "
          "jvp/fwd | err |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, impl in impls.items():
        f_ms = med(res.kept(res.times[(name, 'fwd')])) * 1e3
        b_ms = med(res.kept(res.times[(name, 'fb')])) * 1e3
        if flops:
            f_pct = flops / (f_ms * 1e-3) / 1e9 / rate * 100
            b_pct = 3 * flops / (b_ms * 1e-3) / 1e9 / rate * 100
            pct = f"{f_pct:.0f}% | {b_pct:.0f}%"
        else:
            pct = "- | -"
        label = name + (f" ({impl.lowering})" if name == 'brainconv' and impl.lowering else '')
        tr = 'torch' if 'torch' in impls else None
        rt = (f"{ratio(res, name, tr, 'fwd'):.2f} | {ratio(res, name, tr, 'fb'):.2f}" if tr else "- | -")
        if (name, 'jvp') in res.times:
            jvp = res.times[(name, 'jvp')]
            j_txt = (f"{med(res.kept(jvp)) * 1e3:.2f} | "
                     f"{med(res.kept([a / b for a, b in zip(jvp, res.times[(name, 'fwd')])])):.2f}")
        else:
            j_txt = "n/a | n/a"
        print(f"| {label} | {f_ms:.2f} | {b_ms:.2f} | {ratio(res, name, 'lax', 'fwd'):.2f} | "
              f"{ratio(res, name, 'lax', 'fb'):.2f} | {rt} | {pct} | {j_txt} | {errors[name]:.0e} |")


def _print_summary(results, cons, monitor):
    print("\n## Targets (medians of per-round ratios over the quiet rounds, or of back-to-back pairs where a "
          "round-based ratio missed a target; < 1 means brainconv is faster)")
    rows = []
    for key, (_title, _, impls, res, _) in results.items():
        fl, bl = ratio(res, 'brainconv', 'lax', 'fwd'), ratio(res, 'brainconv', 'lax', 'fb')
        ft, bt = ratio(res, 'brainconv', 'torch', 'fwd'), ratio(res, 'brainconv', 'torch', 'fb')
        peers = {p: ratio(res, p, 'brainconv', 'fb') for p in ('brainstate', 'flax', 'equinox') if p in impls}
        rows.append((key, fl, bl, ft, bt, peers))
    print("| config | fwd/lax | fb/lax | fwd/torch | fb/torch | peer fb / brainconv fb |")
    print("|---|---|---|---|---|---|")
    for key, fl, bl, ft, bt, peers in rows:
        peer_txt = ', '.join(f"{p} {v:.1f}x" for p, v in peers.items())
        print(f"| {key} | {fl:.2f} | {bl:.2f} | {ft:.2f} | {bt:.2f} | {peer_txt} |")
    checks = []
    lax_ok = all(r[1] <= 1.05 and r[2] <= 1.05 for r in rows)
    checks.append(("no config slower than raw lax (<= 1.05x)", lax_ok,
                   ', '.join(f"{r[0]} {max(r[1], r[2]):.2f}" for r in rows if max(r[1], r[2]) > 1.05)))
    five = [r for r in rows if r[0] in ('c', 'e', 'f', 'h-circ', 'h-refl')]
    five_bad = [f"{r[0]} {p} {v:.1f}x" for r in five for p, v in r[5].items() if not v >= 5]
    checks.append(("c, e, f, h: fwd+bwd >= 5x faster than brainstate/flax/equinox", not five_bad, ', '.join(five_bad)))
    ij = [r for r in rows if r[0] in ('i', 'j')]
    if ij:
        ij_bad = [f"{r[0]} /{p} {v:.2f}" for r in ij for p, v in (('lax', r[2]), ('torch', r[4]))
                  if not v <= 0.2 and not math.isnan(v)]
        checks.append(("i, j: fwd+bwd >= 5x faster than raw lax and torch", not ij_bad, ', '.join(ij_bad)))
    torch_bad = [f"{r[0]} {max(r[3], r[4]):.2f}" for r in rows if not max(r[3], r[4]) <= 2]
    checks.append(("every config within 2x of torch (fwd and fwd+bwd)", not torch_bad, ', '.join(torch_bad)))
    if 'g' in results:
        res = results['g'][3]
        g_ratio = med(res.kept([b / f for b, f in zip(res.times[('brainconv', 'fb')],
                                                        res.times[('brainconv', 'fwd')])]))
        checks.append(("g: train step <= 5x its own forward", g_ratio <= 5, f"{g_ratio:.1f}x"))
    if cons:
        print("\n## Construction (median ms per Conv2d((32, 32, C), 64, 3), default XavierNormal)")
        print("| library | new kernel shape | same shape |")
        print("|---|---|---|")
        for name, d in cons.items():
            print(f"| {name} | {d['new shape']:.2f} | {d['same shape']:.2f} |")
        if 'brainstate' in cons:
            sp_new = cons['brainstate']['new shape'] / cons['brainconv']['new shape']
            sp_same = cons['brainstate']['same shape'] / cons['brainconv']['same shape']
            checks.append(("construction >= 5x faster than brainstate", min(sp_new, sp_same) >= 5,
                           f"new shape {sp_new:.0f}x, same shape {sp_same:.0f}x"))
    print("\n## Target summary")
    for text, ok, detail in checks:
        print(f"- [{'met' if ok else 'MISSED'}] {text}" + (f": {detail}" if detail else ''))
    print(f"\nmatmul rate for %mm: {monitor.gflops():.0f} GFLOP/s (768^3 float32, quietest sample)")


if __name__ == '__main__':
    sys.exit(main())
