"""A spiking network's training step in brainconv, brainstate, snnTorch and SpikingJelly, on CPU.

The network users start from (snnTorch's tutorial 7, SpikingJelly's convolutional examples), on
N-MNIST-like events: 34x34x2 frames (channels last in JAX, first in torch), T = 20 steps, batch 16,
3% of the input pixels active per step (boolean, seeded), labels 0-9 (seeded), then

    Conv 2 -> 12 k5 VALID -> MaxPool 2 -> LIF -> Conv 12 -> 32 k5 VALID -> MaxPool 2 -> LIF
    -> Flatten (800) -> Linear 800 -> 10 -> LIF

and the cross-entropy of the output spike counts (summed over time).  What is timed is ONE
TRAINING STEP: the forward pass through time, BPTT, and an Adam step (lr 1e-3; optax in JAX, or
a hand-written Adam where optax is not installed; torch.optim.Adam in torch), from the same
initial weights in every framework.  Each timed call first restores the weights and the Adam
state (a few assignments in JAX, copies in torch, in every framework alike), so that every step
is the same first step and the spike rates never drift.

The "plain LIF", wherever frameworks must agree: ``h = 0.5 v + I; s = H(h - 1)`` (H(0) = 1) with
the sigmoid surrogate of slope 4 (``ds/dh = 4 sig(4 (h - 1)) (1 - sig(4 (h - 1)))``), reset by
subtraction with the spike NOT detached (``v = h - s``: its surrogate gradient flows through the
reset), v0 = 0.  That is SpikingJelly's ``LIFNode(tau=2., decay_input=False, v_threshold=1.,
v_reset=None, surrogate_function=surrogate.Sigmoid(alpha=4.))`` (detach_reset=False, its
default) exactly, and in JAX braintools' ``surrogate.Sigmoid(alpha=4.)`` in a brainstate
Dynamics.  snnTorch's ``Leaky(beta=0.5, threshold=1, spike_grad=surrogate.sigmoid(slope=4),
reset_mechanism='subtract')`` is this neuron only with ``reset_delay=False``, set here: its
default (``reset_delay=True``, the tutorial's) subtracts the threshold one step late and
undecayed (``m_t = 0.5 m_{t-1} + I_t - s_{t-1}``, the reset detached), another model (variant
``snntorch-delay``, not in the default set).  Even with ``reset_delay=False`` snnTorch fires at
``h > 1`` (not ``>=``, which random weights make immaterial) and, one step after a membrane
stayed above the threshold after its reset (``h >= 2``), at ``h > 2`` (its "avoid double
reset"): where that happens (the equal-work table counts it) its spikes differ from the others'.
The snnTorch rows are therefore checked against a JAX twin with snnTorch's rule
(:class:`SnnTorchLeaky`, bc-step otherwise), which they must match to float32 rounding.

Sections (``--sections``; all by default):

  bptt       the training step, one row per variant (``--variants``):
               bc-step          brainconv.Conv2d, brainconv.MaxPool2d (brainstate.nn.MaxPool2d where
                                brainconv has none), plain LIF, stepped by brainstate.transform.for_loop
                                over a Module's ``update(x_t)``, boolean events (as a user feeds
                                them), no lowering flag
               bc-float         bc-step on float32 events
               bc-step-brainpy  the same with brainpy.state.LIF (where brainpy installs; unitless:
                                dt = 1, tau = 1 / ln 2, R = 2, V_th = 1, V_reset = V_rest = 0, the same
                                surrogate: its exponential-Euler step is the plain LIF up to rounding)
               bc-event         bc-step with boolean events (conv1's event path) and lowering='event'
                                on conv2 (the flagged variant)
               bc-layer         layer by layer (SpikingJelly's multi-step mode): time folded into the
                                batch for the convolutions, pooling and the Linear ((T*B, ...) calls),
                                each LIF layer scanned over T by its own for_loop
               bs-step          bc-step with brainstate.nn.Conv2d in place of brainconv.Conv2d
               snntorch         snnTorch 1.0, its tutorial's nn.Sequential (init_hidden=True) and
                                loop, ``reset_delay=False``, ce_count_loss
               sj-s, sj-m       SpikingJelly single-step (a Python loop over T) and multi-step
                                (one call on (T, B, ...)), functional.reset_net
             torch runs in a worker process (never importing JAX) on the machine's cores
             (``torch.get_num_threads()``, in the machine line).  ``--neuron`` picks the
             step-by-step rows' neuron (plain, brainpy, both).  Before timing: each variant's
             first-step loss, gradient norms per layer, spike rates per layer; the plain-LIF
             variants are compared with the first of them (loss and every gradient, max
             |difference| / max |reference|; a warning line where one differs by more than 1e-4).
  breakdown  where bc-step's step goes: the same step with (a) pooling replaced by strided
             slicing x[:, ::2, ::2] (and (a2) by brainstate.nn.MaxPool2d, where brainconv has its
             own), (b) the neurons by a stateless sigmoid, (c) convolutions and Linear only
             (pooling sliced, no neurons), (d) pooling and neurons only (each convolution replaced
             by a center crop and a trainable 1x1 channel projection of the same output size, so
             that BPTT still runs through every layer) and (e) the loop (a for_loop body that only
             carries the neurons' states, one scalar weight); each as ms and share of the whole
             step (pooling = whole - (a), neurons = whole - (b), ...).  (b) and (c) hand conv2 dense
             floats where the network hands it spikes (brainconv's 'auto' then leaves its event
             kernel), so (b2) and (c2) keep spikes with a stateless threshold H(I - 1); the table
             shows the density of conv2's and the Linear's inputs in each step (a substitute that
             changes it changes the convolutions' work too).
  online     (braintrace only, i.e. .venv312) the online step per sequence: braintrace.compile
             (net, braintrace.pp_prop, decay_or_rank=0.9) with brainconv.Conv2d against
             braintrace.nn.Conv2d (the same weights; both with braintrace.nn.Linear), the loss
             the per-step cross-entropy of the output spikes (online learning has no
             whole-sequence spike count), Adam on the accumulated gradients.  In the tutorial's
             order (conv -> pool -> LIF) braintrace leaves both convolutions out of its
             eligibility traces (their outputs reach the neurons only through the pool: the
             table lists the weights it warned about), so the section also runs conv -> LIF ->
             pool ("LIF first"), where every weight is traced.  The gradients of the two
             convolution layers are compared.
  snn3       bench_event_layers.py's 3-conv spiking network (its ``snn`` section: 32x32x2 events,
             its builder imported; its torch side read from its source by the worker): its BPTT
             step (no update) with brainconv's default lowering, lowering='lax',
             brainstate.nn.Conv2d and torch.

Timing: every JAX step is jitted once and reused; its first call (trace, compile, run) and the
second and third calls are reported beside the steady time with the number of traces and of XLA
compilations in each of calls 1-3 (jax.monitoring's backend-compile events; any in call 2 or 3: it
recompiled, with a warning line naming the weakly typed states -- brainpy.state.LIF's initial V
is one: the step writes back a strongly typed V and jax.jit compiles again), "compile" being the
first call minus the steady step.  Steady times: _common.time_group's interleaved rounds (rotated
order, torch timed in its worker between JAX calls, never at once, a reference matmul before and
after each round, a loaded round re-measured up to 3 times), medians over the quiet rounds;
ratios are medians of per-round ratios (> 1: the row is slower).  Not a test: nothing here
asserts a speed.

Usage::

    BRAINCONV_TORCH_PYTHON=.venv-torch/bin/python python benchmarks/bench_snn.py
    python benchmarks/bench_snn.py --quick --sections bptt --variants bc-step,sj-m
    python benchmarks/bench_snn.py --rounds 9 --neuron both --json snn.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
import warnings

import _common as common
import numpy as np

#: The network's input and training: frame (H, W, C), steps, batch, event density, classes, Adam's lr.
NET = dict(frame=(34, 34, 2), steps=20, batch=16, density=0.03, classes=10, lr=1e-3)
#: --quick's steps and batch.
QUICK = dict(steps=5, batch=4)
#: (C_in, C_out) of the two convolutions (kernel KERNEL, VALID, each followed by a 2x2 max pool).
CONVS = ((2, 12), (12, 32))
KERNEL = 5
#: Sizes after each pooling, and the Linear's input (H, W, C order in JAX, C, H, W in torch).
POOLED = ((15, 15, 12), (5, 5, 32))
FEATURES = 800
#: Weight scales (gain over a unit-variance fan-in normal) of conv1, conv2 and the Linear: the
#: neurons fire at about 8%, 9% and 7% (default config).
GAINS = (2.0, 1.3, 2.5)
#: The plain LIF: decay, threshold, surrogate slope.
BETA, THRESHOLD, SLOPE = 0.5, 1.0, 4.0
#: The gradients compared, in this order, in JAX layouts (conv kernels (5, 5, C_in, C_out)).
GRAD_NAMES = ('conv1.w', 'conv1.b', 'conv2.w', 'conv2.b', 'fc.w', 'fc.b')
#: Largest max |difference| / max |reference| accepted between plain-LIF variants.
TOL = 1e-4

#: Variants: key -> label; torch's are served by the worker.
LABELS = {
    'bc-step': 'brainconv step by step (plain LIF), bool events, no flag',
    'bc-step-brainpy': 'brainconv step by step (brainpy.state.LIF), bool events, no flag',
    'bc-float': 'brainconv step by step (plain LIF), float32 events',
    'bc-event': "brainconv step by step, bool events + lowering='event' conv2",
    'bc-layer': 'brainconv layer by layer (T*B convs, scanned LIF)',
    'bs-step': 'brainstate.nn.Conv2d step by step (plain LIF)',
    'snntorch': 'snnTorch Leaky step by step (reset_delay=False)',
    'snntorch-delay': 'snnTorch Leaky step by step (tutorial default reset_delay=True)',
    'sj-s': "SpikingJelly single-step 's'",
    'sj-m': "SpikingJelly multi-step 'm'",
}
TORCH_KEYS = ('snntorch', 'snntorch-delay', 'sj-s', 'sj-m')
DEFAULT_VARIANTS = ('bc-step', 'bc-step-brainpy', 'bc-float', 'bc-event', 'bc-layer', 'bs-step', 'snntorch',
                    'sj-s', 'sj-m')
#: Variants whose neurons are the plain LIF: they must agree to float32 rounding (snnTorch up to its
#: double-reset rule, see the module's docstring).
PLAIN = ('bc-step', 'bc-float', 'bc-event', 'bc-layer', 'bs-step', 'sj-m', 'sj-s', 'snntorch')


def net_data(steps: int, batch: int):
    """Events (T, B, 34, 34, 2) boolean, labels (B,) int64 and the initial weights in JAX layouts
    (GRAD_NAMES' order: kernels (5, 5, C_in, C_out), biases (C_out,), the Linear's (800, 10) with its
    rows in (H, W, C) order, its bias); seeded, the weights the same for every steps and batch."""
    rng = np.random.default_rng(7)
    events = rng.random((steps, batch) + NET['frame']) < NET['density']
    labels = rng.integers(0, NET['classes'], batch).astype(np.int64)
    rng = np.random.default_rng(1)
    weights = []
    for (cin, cout), gain in zip(CONVS, GAINS):
        weights.append((gain * rng.standard_normal((KERNEL, KERNEL, cin, cout)) / math.sqrt(KERNEL ** 2 * cin))
                       .astype(np.float32))
        weights.append((0.1 * rng.standard_normal(cout)).astype(np.float32))
    weights.append((GAINS[2] * rng.standard_normal((FEATURES, NET['classes'])) / math.sqrt(FEATURES))
                   .astype(np.float32))
    weights.append(np.zeros(NET['classes'], np.float32))
    return events, labels, weights


def linear_to_torch(w: np.ndarray) -> np.ndarray:
    """The Linear's (800, 10) weight, rows in (H, W, C) order, as torch's (10, 800), columns in (C, H, W)."""
    h, w_, c = POOLED[1]
    return np.ascontiguousarray(w.reshape(h, w_, c, -1).transpose(3, 2, 0, 1).reshape(-1, FEATURES))


def linear_from_torch(g: np.ndarray) -> np.ndarray:
    """The inverse of :func:`linear_to_torch`."""
    h, w_, c = POOLED[1]
    return np.ascontiguousarray(g.reshape(-1, c, h, w_).transpose(2, 3, 1, 0).reshape(FEATURES, -1))


# --------------------------------------------------------------------------- #
# torch, in a worker process that never imports JAX
# --------------------------------------------------------------------------- #

def _torch_net(kind: str, steps: int, batch: int):
    """snnTorch ('snntorch', 'snntorch-delay') or SpikingJelly ('sj-s', 'sj-m'): 'fb' the training
    step (restore, forward, backward, Adam), 'results' the first step's loss, gradients (JAX layouts),
    spike rates per layer."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    events, labels, weights = net_data(steps, batch)
    xs = torch.from_numpy(np.ascontiguousarray(np.moveaxis(events, -1, 2)).astype(np.float32))  # (T, B, C, H, W)
    ys = torch.from_numpy(labels)
    if kind.startswith('snntorch'):
        import snntorch as snn
        import snntorch.functional as SF
        from snntorch import surrogate, utils
        spike_grad = surrogate.sigmoid(slope=SLOPE)

        def lif(**kw):
            return snn.Leaky(beta=BETA, threshold=THRESHOLD, spike_grad=spike_grad, init_hidden=True,
                             reset_mechanism='subtract', reset_delay=kind == 'snntorch-delay', **kw)
        net = nn.Sequential(nn.Conv2d(2, 12, 5), nn.MaxPool2d(2), lif(), nn.Conv2d(12, 32, 5), nn.MaxPool2d(2), lif(),
                            nn.Flatten(), nn.Linear(FEATURES, 10), lif(output=True))
        count_loss = SF.ce_count_loss()

        def forward():  # the tutorial's loop
            utils.reset(net)
            spk_rec = []
            for step in range(xs.shape[0]):
                spk_out, _ = net(xs[step])
                spk_rec.append(spk_out)
            return torch.stack(spk_rec)

        def loss():
            return count_loss(forward(), ys)
    else:
        from spikingjelly.activation_based import functional, layer, neuron, surrogate

        def lif():
            return neuron.LIFNode(tau=1 / (1 - BETA), decay_input=False, v_threshold=THRESHOLD, v_reset=None,
                                  surrogate_function=surrogate.Sigmoid(alpha=SLOPE))
        net = nn.Sequential(layer.Conv2d(2, 12, 5), layer.MaxPool2d(2), lif(), layer.Conv2d(12, 32, 5),
                            layer.MaxPool2d(2), lif(), layer.Flatten(), layer.Linear(FEATURES, 10), lif())
        mode = kind[-1]
        functional.set_step_mode(net, mode)

        def forward():
            functional.reset_net(net)
            return net(xs) if mode == 'm' else torch.stack([net(x) for x in xs])

        def loss():
            return F.cross_entropy(forward().sum(0), ys)
    w1, b1, w2, b2, wf, bf = weights
    params = [net[0].weight, net[0].bias, net[3].weight, net[3].bias, net[7].weight, net[7].bias]
    with torch.no_grad():
        for p, w in zip(params, (common.torch_kernel(w1), b1, common.torch_kernel(w2), b2, linear_to_torch(wf), bf)):
            p.copy_(torch.as_tensor(w))
    initial = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=NET['lr'])

    def restore():
        with torch.no_grad():
            for p, p0 in zip(params, initial):
                p.copy_(p0)
            for state in opt.state.values():  # Adam's step count and moments back to their first step
                for v in state.values():
                    v.zero_()

    def fb():
        restore()
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
        return value

    def results():
        restore()
        totals = {}

        def hook(i):
            def record(module, inputs, output):
                s = output[0] if isinstance(output, tuple) else output
                n, total = totals.get(i, (0, 0.0))
                totals[i] = (n + s.numel(), total + float(s.detach().sum()))
            return record
        neurons = [net[2], net[5], net[8]]
        handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(neurons)]
        value = loss()
        for h in handles:
            h.remove()
        grads = [g.numpy() for g in torch.autograd.grad(value, params)]
        grads = [common.kernel_from_torch(torch.from_numpy(grads[0])), grads[1],
                 common.kernel_from_torch(torch.from_numpy(grads[2])), grads[3], linear_from_torch(grads[4]), grads[5]]
        return {'loss': float(value.detach()), 'grads': grads, 'rates': [totals[i][1] / totals[i][0] for i in range(3)]}
    fb()  # Adam's state exists from here on: restore() zeroes it
    return {'fb': fb, 'results': results}


def _event_layers_half() -> dict:
    """bench_event_layers.py's NumPy and torch half (its source above its worker switch, where it
    imports no JAX), run into a namespace of its own: its ``SNN`` dict and ``_torch_snn`` builder."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'bench_event_layers.py')
    with open(path) as f:
        source = f.read()
    switch = "if __name__ == '__main__' and '--torch-worker' in sys.argv:"
    namespace = {'__name__': 'bench_event_layers_torch', '__file__': path}
    exec(compile(source[:source.index(switch)], path, 'exec'), namespace)  # noqa: S102 - a sibling benchmark's code
    return namespace


def _torch_versions() -> dict:
    out = {}
    for name in ('snntorch', 'spikingjelly'):
        mod = common.optional(name)
        if mod is not None:
            version = getattr(mod, '__version__', None)
            if version is None:
                from importlib import metadata
                version = metadata.version(name)
            out[name] = str(version)
    return out


def _torch_build(key):
    if key == 'versions':
        return {'results': _torch_versions}
    if key[0] == 'snn3':  # bench_event_layers' network at (steps, batch)
        half = _event_layers_half()
        half['SNN'].update(steps=key[1], batch=key[2])
        return half['_torch_snn']()
    return _torch_net(*key)


if __name__ == '__main__' and '--torch-worker' in sys.argv:
    common.serve(_torch_build)
    sys.exit(0)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import brainstate  # noqa: E402
import braintools  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import brainconv  # noqa: E402

brainpy = common.optional('brainpy')
braintrace = common.optional('braintrace')
optax = common.optional('optax')

#: XLA compilations so far in this process (jax.monitoring's backend-compile events): a JAX step whose
#: second or third call adds any recompiled, whether or not its Python function was traced again.
COMPILES = [0]


def _count_compiles(event, duration, **kwargs):
    if event == '/jax/core/compile/backend_compile_duration':
        COMPILES[0] += 1


jax.monitoring.register_event_duration_secs_listener(_count_compiles)


# --------------------------------------------------------------------------- #
# The network in brainstate modules
# --------------------------------------------------------------------------- #

class PlainLIF(brainstate.nn.Dynamics):
    """The plain LIF (the module's docstring): ``h = 0.5 v + I``, ``s = H(h - 1)`` with braintools'
    sigmoid surrogate (slope 4), ``v = h - s`` (the spike not detached), v0 = 0."""

    def __init__(self, in_size):
        super().__init__(in_size)
        self.spike_fn = braintools.surrogate.Sigmoid(alpha=SLOPE)

    def init_state(self, batch_size=None, **kwargs):
        self.v = brainstate.HiddenState(jnp.zeros((batch_size,) + tuple(self.in_size), jnp.float32))

    def reset_state(self, batch_size=None, **kwargs):
        self.v.value = jnp.zeros((batch_size,) + tuple(self.in_size), jnp.float32)

    def update(self, current):
        h = BETA * self.v.value + current
        spike = self.spike_fn(h - THRESHOLD)
        self.v.value = h - spike * THRESHOLD
        return spike


class SnnTorchLeaky(PlainLIF):
    """snnTorch's ``Leaky(beta=0.5, threshold=1, reset_mechanism='subtract')`` rule in JAX, only to check
    the snnTorch rows: the stored membrane ``m``, ``r = H(m - 1)`` detached (strict ``>``), ``h = 0.5 m + I
    - r``, ``s = H(h - 1)``; ``m = h - (s - r)`` with ``reset_delay=False``, ``m = h`` with its default."""

    def __init__(self, in_size, delay: bool):
        super().__init__(in_size)
        self.delay = delay

    def update(self, current):
        m = self.v.value
        r = jax.lax.stop_gradient((m > THRESHOLD).astype(m.dtype))
        h = BETA * m + current - r * THRESHOLD
        spike = self.spike_fn(h - THRESHOLD)
        self.v.value = h if self.delay else h - (spike - r) * THRESHOLD
        return spike


def brainpy_lif(size):
    """brainpy.state.LIF as a unitless user sets it to the plain LIF: exponential Euler over dt = 1 with
    tau = 1 / ln 2 (decay 0.5) and R = 2 (input gain 1); soft reset (applied at the next step, decayed)."""
    return brainpy.state.LIF(size, R=2., tau=1 / math.log(2), V_th=THRESHOLD, V_reset=0., V_rest=0.,
                             V_initializer=braintools.init.Constant(0.),
                             spk_fun=braintools.surrogate.Sigmoid(alpha=SLOPE))


class Projection(brainstate.nn.Module):
    """The breakdown's stand-in for a VALID k5 convolution: the center crop of its output size and a
    trainable 1x1 channel projection (the kernel's taps summed) plus bias."""

    def __init__(self, in_size, kernel, bias):
        super().__init__()
        self.in_size = tuple(in_size)
        self.out_size = (in_size[0] - KERNEL + 1, in_size[1] - KERNEL + 1, kernel.shape[-1])
        self.weight = brainstate.ParamState({'weight': jnp.asarray(kernel.sum((0, 1))), 'bias': jnp.asarray(bias)})

    def update(self, x):
        c = KERNEL // 2
        x = x[..., c:x.shape[-3] - c, c:x.shape[-2] - c, :]
        return jnp.einsum('...c,cd->...d', x, self.weight.value['weight']) + self.weight.value['bias']


def slice_pool(x):
    """Pooling's stand-in: every other row and column (the breakdown's (a))."""
    return x[..., ::2, ::2, :][..., :x.shape[-3] // 2, :x.shape[-2] // 2, :]


def max_pool(in_size, brainstate_s: bool = False):
    """brainconv.MaxPool2d where brainconv has it (and not ``brainstate_s``), else brainstate.nn.MaxPool2d
    (channels last)."""
    if hasattr(brainconv, 'MaxPool2d') and not brainstate_s:
        return brainconv.MaxPool2d(in_size, 2)
    return brainstate.nn.MaxPool2d(2, 2, channel_axis=-1)


POOL_NAME = 'brainconv.MaxPool2d' if hasattr(brainconv, 'MaxPool2d') else 'brainstate.nn.MaxPool2d'


class Network(brainstate.nn.Module):
    """The network as a brainstate Module stepped one frame per ``update``.  ``conv``: 'brainconv',
    'brainstate', 'braintrace' or 'proj' (:class:`Projection`); ``pool``: 'max' (:func:`max_pool`),
    'brainstate' (brainstate.nn.MaxPool2d) or 'slice'; ``neuron``: 'plain', 'brainpy', 'snntorch',
    'snntorch-delay' (:class:`SnnTorchLeaky`), or stateless: 'threshold' (``H(I - 1)`` with the
    plain LIF's surrogate), 'sigmoid' or 'none'; ``event``: lowering='event' on conv2; ``linear``: the Linear's class;
    ``lif_first``: conv -> LIF -> pool (the neurons on the convolutions' outputs) instead of the
    tutorial's conv -> pool -> LIF.  Weights from :func:`net_data`."""

    def __init__(self, weights, conv='brainconv', pool='max', neuron='plain', event=False,
                 linear=brainstate.nn.Linear, lif_first=False):
        super().__init__()
        w1, b1, w2, b2, wf, bf = (jnp.asarray(w) for w in weights)
        size = NET['frame']
        for i, ((_, cout), w, b) in enumerate(zip(CONVS, (w1, w2), (b1, b2)), 1):
            zeros = braintools.init.ZeroInit()
            if conv == 'proj':
                layer = Projection(size, w, b)
            elif conv == 'brainstate':
                layer = brainstate.nn.Conv2d(size, cout, KERNEL, padding='VALID', b_init=zeros)
            elif conv == 'braintrace':
                layer = braintrace.nn.Conv2d(size, cout, KERNEL, padding='VALID', b_init=zeros)
            else:
                layer = brainconv.Conv2d(size, cout, KERNEL, padding='VALID', b_init=zeros,
                                         lowering='event' if event and i == 2 else None)
            if conv != 'proj':
                layer.weight.value = {'weight': w, 'bias': b.reshape(layer.weight.value['bias'].shape)}
            setattr(self, f'conv{i}', layer)
            setattr(self, f'pool{i}', slice_pool if pool == 'slice' else max_pool(layer.out_size, pool == 'brainstate'))
            setattr(self, f'lif{i}', self._neuron(neuron, layer.out_size if lif_first else POOLED[i - 1]))
            size = POOLED[i - 1]
        self.lif_first = lif_first
        self.fc = linear(FEATURES, NET['classes'])
        self.fc.weight.value = {'weight': wf, 'bias': bf}
        self.lif3 = self._neuron(neuron, (NET['classes'],))

    @staticmethod
    def _neuron(kind, size):
        if kind == 'plain':
            return PlainLIF(size)
        if kind == 'brainpy':
            return brainpy_lif(size)
        if kind.startswith('snntorch'):
            return SnnTorchLeaky(size, delay=kind == 'snntorch-delay')
        if kind == 'threshold':
            spike_fn = braintools.surrogate.Sigmoid(alpha=SLOPE)
            return lambda current: spike_fn(current - THRESHOLD)
        return jax.nn.sigmoid if kind == 'sigmoid' else (lambda x: x)

    def layers(self, x):
        """One frame through every layer: what each of the three layers passes on (the spikes of each
        LIF layer, pooled with ``lif_first``)."""
        if self.lif_first:
            s1 = self.pool1(self.lif1(self.conv1(x)))
            s2 = self.pool2(self.lif2(self.conv2(s1)))
        else:
            s1 = self.lif1(self.pool1(self.conv1(x)))
            s2 = self.lif2(self.pool2(self.conv2(s1)))
        return s1, s2, self.lif3(self.fc(s2.reshape(s2.shape[0], -1)))

    def update(self, x):
        return self.layers(x)[-1]


class LoopOnly(brainstate.nn.Module):
    """The breakdown's loop: a for_loop body that carries the three LIF layers' states (each scaled by
    the decay) and returns one trainable scalar times the frame's mean."""

    def __init__(self):
        super().__init__()
        self.w = brainstate.ParamState(jnp.ones((), jnp.float32))

    def init_state(self, batch_size=None, **kwargs):
        for i, size in enumerate(POOLED + ((NET['classes'],),), 1):
            setattr(self, f'v{i}', brainstate.HiddenState(jnp.zeros((batch_size,) + size, jnp.float32)))

    def reset_state(self, batch_size=None, **kwargs):
        for i, size in enumerate(POOLED + ((NET['classes'],),), 1):
            getattr(self, f'v{i}').value = jnp.zeros((batch_size,) + size, jnp.float32)

    def update(self, x):
        for i in (1, 2, 3):
            state = getattr(self, f'v{i}')
            state.value = BETA * state.value
        return self.w.value * jnp.mean(x)


def xent(logits, labels):
    return braintools.metric.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def step_loss(net):
    """Step by step: reset, the Module's ``update`` over T in brainstate.transform.for_loop, the
    cross-entropy of the output spike counts."""
    def loss(xs, ys):
        brainstate.nn.reset_all_states(net, xs.shape[1])
        return xent(brainstate.transform.for_loop(net, xs).sum(0), ys)
    return loss


def layer_loss(net):
    """Layer by layer: (T*B, ...) calls of the convolutions, pooling and Linear, each LIF layer scanned
    over T by a for_loop of its own."""
    def loss(xs, ys):
        steps, batch = xs.shape[:2]
        brainstate.nn.reset_all_states(net, batch)

        def fold(a):
            return a.reshape((steps * batch,) + a.shape[2:])

        def unfold(a):
            return a.reshape((steps, batch) + a.shape[1:])
        s = brainstate.transform.for_loop(net.lif1, unfold(net.pool1(net.conv1(fold(xs)))))
        s = brainstate.transform.for_loop(net.lif2, unfold(net.pool2(net.conv2(fold(s)))))
        s = brainstate.transform.for_loop(net.lif3, unfold(net.fc(fold(s).reshape(steps * batch, -1))))
        return xent(s.sum(0), ys)
    return loss


def loop_loss(net):
    def loss(xs, ys):
        brainstate.nn.reset_all_states(net, xs.shape[1])
        return brainstate.transform.for_loop(net, xs).sum()
    return loss


def make_adam(lr: float):
    """``(init, update)``: optax.adam where optax imports, else the same Adam in jax.numpy;
    ``update(grads, state, params) -> (params, state)``."""
    if optax is not None:
        opt = optax.adam(lr)

        def update(grads, state, params):
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state
        return opt.init, update
    b1, b2, eps = 0.9, 0.999, 1e-8
    tree = jax.tree.map

    def init(params):
        return jnp.zeros((), jnp.int32), tree(jnp.zeros_like, params), tree(jnp.zeros_like, params)

    def update(grads, state, params):
        count, m, v = state
        count = count + 1
        m = tree(lambda m, g: b1 * m + (1 - b1) * g, m, grads)
        v = tree(lambda v, g: b2 * v + (1 - b2) * g * g, v, grads)
        c1, c2 = 1 - b1 ** count, 1 - b2 ** count
        params = tree(lambda p, m, v: p - lr * (m / c1) / (jnp.sqrt(v / c2) + eps), params, m, v)
        return params, (count, m, v)
    return init, update


def canonical(net, grads: dict, params: dict) -> list:
    """A Network's gradients in GRAD_NAMES' order and layouts (biases flat)."""
    by_state = {id(params[k]): g for k, g in grads.items()}
    out = []
    for layer in (net.conv1, net.conv2, net.fc):
        g = by_state[id(layer.weight)]
        out += [g['weight'], g['bias'].reshape(-1)]
    return out


class JaxStep(common.Timed):
    """One variant's training step, jitted once: ``fb()`` restores the weights and Adam's state, runs
    the step (``grads_fn(xs, ys) -> (gradients, loss)`` over the Network's ParamStates, then Adam) and
    waits for it.  ``first``: the seconds of calls 1-3 (the first: trace, compile, run); ``traces``: how
    often the step was traced; ``compiles``: the XLA compilations of each of calls 1-3 (any in call 2
    or 3: it recompiled); ``out``: the first call's loss and, with ``compare``, gradients in
    GRAD_NAMES' order."""

    def __init__(self, key, net, grads_fn, xs, ys, compare=True):
        self.key, self.net, self.xs, self.ys = key, net, xs, ys
        self.weak = self.weak_states(net)
        params = net.states(brainstate.ParamState)
        init, update = make_adam(NET['lr'])
        self._params = params
        self._opt = brainstate.State(init([p.value for p in params.values()]))
        self._saved = ([p.value for p in params.values()], self._opt.value)
        self.traces = 0

        def step(xs, ys):
            self.traces += 1
            grads, value = grads_fn(xs, ys)
            new, self._opt.value = update([grads[k] for k in params], self._opt.value,
                                          [p.value for p in params.values()])
            for p, v in zip(params.values(), new):
                p.value = v
            return value, (canonical(net, grads, params) if compare else [])

        self._step = brainstate.transform.jit(step)
        self.first, self.compiles, outs = [], [], []
        for _ in range(3):
            c0, t0 = COMPILES[0], time.perf_counter()
            outs.append(self.fb())
            self.first.append(time.perf_counter() - t0)
            self.compiles.append(COMPILES[0] - c0)
        self.out = outs[0]
        #: Whether call 3 (restored) computed call 1's loss: the restore restores.
        self.repeatable = float(outs[2][0]) == float(outs[0][0])

    @classmethod
    def bptt(cls, key, net, loss, xs, ys, compare=True):
        """The BPTT step of ``loss(xs, ys)`` (states initialised here)."""
        brainstate.nn.init_all_states(net, xs.shape[1])
        grads_fn = brainstate.transform.grad(loss, net.states(brainstate.ParamState), return_value=True)
        return cls(key, net, grads_fn, xs, ys, compare)

    @staticmethod
    def weak_states(net) -> list:
        """The paths of ``net``'s states whose value is weakly typed (jax.jit keys its cache on it: a step
        that writes a strongly typed value back compiles again on its second call)."""
        return ['.'.join(map(str, path)) for path, state in net.states().items()
                if any(getattr(leaf, 'weak_type', False) for leaf in jax.tree.leaves(state.value))]

    def compile_cell(self) -> str:
        """'traces; XLA compiles in calls 1/2/3'."""
        return f"{self.traces}; {'/'.join(map(str, self.compiles))}"

    def restore(self):
        for p, v in zip(self._params.values(), self._saved[0]):
            p.value = v
        self._opt.value = self._saved[1]

    def fb(self):
        self.restore()
        return jax.block_until_ready(self._step(self.xs, self.ys))

    def results(self) -> dict:
        value, grads = self.out
        return {'loss': float(value), 'grads': [np.asarray(g) for g in grads]}


def warn_recompiles(impls: dict) -> None:
    """A warning line for each JAX step that compiled again in its second or third call, or was not
    repeatable (the restore did not restore)."""
    for key, impl in impls.items():
        if not isinstance(impl, JaxStep):
            continue
        if impl.compiles[1] or impl.compiles[2] or impl.traces > 1:
            print(f"!! {key} recompiled after its first call: {impl.traces} trace(s), XLA compiles in calls 1/2/3 "
                  f"{'/'.join(map(str, impl.compiles))}, calls took " + ', '.join(f'{t:.3f} s' for t in impl.first)
                  + (f"; weakly typed states before the first call: {', '.join(impl.weak)}" if impl.weak else ''))
        if not impl.repeatable:
            print(f"!! {key}: the third call's loss differs from the first's (the restore did not restore)")


def probe(net, xs) -> dict:
    """Spike rates per LIF layer of a step-by-step forward (jitted on its own, untimed), and, for
    plain LIF neurons, the fraction of neuron-steps whose membrane stays above the threshold after its
    reset (where snnTorch's double-reset rule departs)."""
    brainstate.nn.init_all_states(net, xs.shape[1])
    plain = isinstance(net.lif1, PlainLIF)

    @brainstate.transform.jit
    def run(xs):
        brainstate.nn.reset_all_states(net, xs.shape[1])

        def body(x):
            spikes = net.layers(x)
            over = [jnp.mean(getattr(net, f'lif{i}').v.value > THRESHOLD) if plain else jnp.nan for i in (1, 2, 3)]
            return jnp.stack([jnp.mean(s) for s in spikes]), jnp.stack([jnp.mean(s != 0) for s in spikes]), \
                jnp.stack(over)
        rates, nonzero, over = brainstate.transform.for_loop(body, xs)
        return rates.mean(0), nonzero.mean(0), over.mean(0)

    rates, nonzero, over = run(xs)
    return {'rates': list(map(float, rates)), 'nonzero': list(map(float, nonzero)), 'over': list(map(float, over))}


# --------------------------------------------------------------------------- #
# Sections
# --------------------------------------------------------------------------- #

class Bench:
    """What the sections share: the config, data, load monitor, timing options and the JSON record."""

    def __init__(self, args):
        self.quick = args.quick
        self.steps, self.batch = (QUICK['steps'], QUICK['batch']) if args.quick else (NET['steps'], NET['batch'])
        self.rounds = args.rounds or (1 if args.quick else 7)
        self.target_s = 0.0 if args.quick else 0.25
        self.retries = 0 if args.quick else 3
        self.budget_s = 30.0 if args.quick else 240.0
        events, labels, self.weights = net_data(self.steps, self.batch)
        self.events = jnp.asarray(events)
        self.frames = jnp.asarray(events, jnp.float32)
        self.labels = jnp.asarray(labels)
        self.monitor = common.LoadMonitor()
        self.record = {'config': dict(NET, steps=self.steps, batch=self.batch, gains=GAINS, pool=POOL_NAME,
                                      optimizer='optax.adam' if optax is not None else 'jnp Adam')}

    def time(self, impls):
        return common.time_group(impls, self.monitor, self.rounds, self.target_s, max_retries=self.retries,
                                 budget_s=self.budget_s, min_rounds=min(5, self.rounds), modes=('fb',))


def ms(res, name) -> float:
    values = res.times.get((name, 'fb'))
    return common.med(res.kept(values)) * 1e3 if values else math.nan


def fmt(value, spec) -> str:
    return format(value, spec) if isinstance(value, (int, float)) and math.isfinite(value) else '-'


def row(cells) -> None:
    print('| ' + ' | '.join(cells) + ' |', flush=True)


def table_head(cells) -> None:
    row(cells)
    print('|' + '---|' * len(cells), flush=True)


def jax_variant(key, bench):
    """Variant ``key``'s network, loss and input: a :class:`JaxStep`."""
    neuron = 'brainpy' if key == 'bc-step-brainpy' else 'plain'
    net = Network(bench.weights, conv='brainstate' if key == 'bs-step' else 'brainconv', neuron=neuron,
                  event=key == 'bc-event')
    loss = layer_loss(net) if key == 'bc-layer' else step_loss(net)
    # as a user would feed events: boolean (brainconv's rows; bc-float and brainstate's take floats)
    xs = bench.frames if key in ('bc-float', 'bs-step') else bench.events
    impl = JaxStep.bptt(key, net, loss, xs, bench.labels)
    impl.restore()
    impl.probe = probe(net, xs)
    return impl


def compare(results: dict, reference: str) -> dict:
    """Max relative difference of each variant's loss and gradients from ``reference``'s."""
    want = results[reference]
    out = {}
    for key, got in results.items():
        loss = abs(got['loss'] - want['loss']) / max(abs(want['loss']), 1e-30)
        grads = [common.rel_err(a, b) for a, b in zip(got['grads'], want['grads'])]
        out[key] = max([loss] + grads)
    return out


def bptt_section(bench, keys):
    print(f"\n# Training step (forward over T = {bench.steps}, BPTT, Adam), batch {bench.batch}, 34x34x2 events at "
          f"{NET['density']:.0%}; pooling {POOL_NAME}", flush=True)
    impls = {}
    for key in keys:
        if key in TORCH_KEYS:
            impl = common.remote_torch((key, bench.steps, bench.batch))
            if impl is None:
                print(f"{key}: skipped (no torch worker: set BRAINCONV_TORCH_PYTHON)")
                continue
        elif key == 'bc-step-brainpy' and brainpy is None:
            print(f"{key}: skipped (brainpy not installed)")
            continue
        else:
            impl = jax_variant(key, bench)
        impls[key] = impl
    for key in ('bc-step', 'bc-event'):
        if key in impls:
            net, xs = impls[key].net, impls[key].xs
            s1 = jax.ShapeDtypeStruct((bench.batch,) + POOLED[0], jnp.float32)
            rate = impls[key].probe['rates'][0]
            print(f"{key}: conv1 {net.conv1.formulation(xs[0])}; conv2 (spikes at {rate:.1%}) "
                  f"{net.conv2.formulation(s1, density=rate)}")
    results = {k: i.results() for k, i in impls.items()}
    for key, impl in impls.items():
        if isinstance(impl, JaxStep):
            results[key].update(impl.probe)
    twins = {}
    for key in impls:
        if key.startswith('snntorch'):
            net = Network(bench.weights, neuron=key)
            twins[key] = JaxStep.bptt(f'{key}-twin', net, step_loss(net), bench.frames, bench.labels).results()
    equal = equal_work(results, twins)
    if not impls:
        return
    res = bench.time(impls)
    ref = 'bc-step' if 'bc-step' in impls else None
    torch_ms = {k: ms(res, k) for k in ('snntorch', 'sj-m') if k in impls}
    fastest = min(torch_ms, key=torch_ms.get) if torch_ms else None
    print(f"\n## ms per training step (medians, {res.quiet}/{res.rounds} quiet rounds, {res.retries} re-measured); "
          f"ratios: medians of per-round ratios (> 1: the row is slower); fastest torch: {fastest or '-'}")
    table_head(['variant', 'ms/step', 'vs bc-step', f'vs {fastest or "torch"}', 'first call s', 'call 2 / 3 ms',
                'compile s', 'traces; compiles'])
    record = {}
    for key, impl in impls.items():
        t = ms(res, key)
        r_ref = common.ratio(res, key, ref, 'fb') if ref else math.nan
        r_torch = common.ratio(res, key, fastest, 'fb') if fastest else math.nan
        entry = {'label': LABELS[key], 'ms': t, 'vs_bc_step': r_ref, 'vs_torch': r_torch, 'vs_torch_name': fastest}
        cells = [f'{key}: {LABELS[key]}', fmt(t, '.2f'), fmt(r_ref, '.2f'), fmt(r_torch, '.2f')]
        if isinstance(impl, JaxStep):
            compile_s = impl.first[0] - t / 1e3
            entry.update(first_calls_s=impl.first, compile_s=compile_s, traces=impl.traces, compiles=impl.compiles)
            cells += [f'{impl.first[0]:.2f}', f'{impl.first[1] * 1e3:.1f} / {impl.first[2] * 1e3:.1f}',
                      f'{compile_s:.2f}', impl.compile_cell()]
        else:
            cells += ['-'] * 4
        row(cells)
        record[key] = entry
    warn_recompiles(impls)
    bench.record['bptt'] = {'variants': record, 'equal_work': equal, 'quiet': res.quiet, 'rounds': res.rounds}


def equal_work(results: dict, twins: dict) -> dict:
    """Print each variant's first-step loss, gradient norms and spike rates; compare the plain-LIF ones
    with the first of them, and each snnTorch row with its JAX twin (``twins``: the same step with
    :class:`SnnTorchLeaky` neurons)."""
    plain = [k for k in PLAIN if k in results]
    diffs = compare(results, plain[0]) if plain else {}
    twin_diffs = {k: compare({k: results[k], 'twin': twin}, 'twin')[k] for k, twin in twins.items()}
    print(f"\n## Equal work: the first step from the same weights (max rel. diff: of the loss and every "
          f"gradient from {plain[0] if plain else '-'}'s; plain-LIF rows must agree to {TOL:.0e})")
    table_head(['variant', 'loss'] + [f'|d {n}|' for n in GRAD_NAMES]
               + ['rates LIF1 / LIF2 / out', 'above threshold after reset', 'max rel. diff'])
    for key, r in results.items():
        rates, over = r.get('rates'), r.get('over')
        row([key, f"{r['loss']:.6f}"] + [f'{float(np.linalg.norm(g)):.5g}' for g in r['grads']]
            + [' / '.join(f'{v:.2%}' for v in rates) if rates else '-',
               ' / '.join(f'{v:.3%}' for v in over) if over and all(map(math.isfinite, over)) else '-',
               fmt(diffs.get(key, math.nan), '.1e')])
    over = results[plain[0]].get('over') if plain else None
    for key, d in twin_diffs.items():
        print(f"{key} against its JAX twin (bc-step with snnTorch's Leaky rule, SnnTorchLeaky): max rel. diff "
              f"{d:.1e} ({'agrees' if d <= TOL else 'DIFFERS'})")
    for key in plain:
        if diffs[key] <= TOL:
            continue
        if twin_diffs.get(key, math.inf) <= TOL:
            print(f"note: {key} differs from {plain[0]} by {diffs[key]:.1e} because of snnTorch's double-reset rule "
                  f"(membranes above threshold after their reset: "
                  f"{' / '.join(f'{v:.3%}' for v in over) if over else '?'} of the neuron-steps per layer), not "
                  f"of the work done: it agrees with its JAX twin")
        else:
            print(f"!! {key} differs from {plain[0]}: max relative difference {diffs[key]:.1e}")
    for key, d in twin_diffs.items():
        if d > TOL:
            print(f"!! {key} differs from its JAX twin: max relative difference {d:.1e}")
    return {k: {'loss': r['loss'], 'grad_norms': [float(np.linalg.norm(g)) for g in r['grads']],
                'rates': r.get('rates'), 'over': r.get('over'), 'max_rel_diff': diffs.get(k),
                'max_rel_diff_twin': twin_diffs.get(k)}
            for k, r in results.items()}


#: The breakdown's steps: key -> (what it is, Network options); 'loop' is LoopOnly.  Steps (b) and (c)
#: feed conv2 dense floats where the network feeds it spikes (brainconv then leaves its event kernel):
#: (b2) and (c2) keep the spikes with a stateless threshold.
PARTS = {
    'whole': ('bc-step (plain LIF)', {}),
    'no-pool': ('(a) pooling -> x[:, ::2, ::2]', dict(pool='slice')),
    'bs-pool': ('(a2) pooling -> brainstate.nn.MaxPool2d', dict(pool='brainstate')),
    'no-neuron': ('(b) neurons -> sigmoid(I), no state', dict(neuron='sigmoid')),
    'stateless': ('(b2) neurons -> H(I - 1) with the surrogate, no state', dict(neuron='threshold')),
    'conv-only': ('(c) convolutions + Linear only (pool sliced, no neuron)', dict(pool='slice', neuron='none')),
    'conv-spikes': ('(c2) (c) with H(I - 1) between the layers (spike inputs)', dict(pool='slice', neuron='threshold')),
    'pool-neuron': ('(d) pooling + neurons only (convs -> crop + 1x1 projection)', dict(conv='proj')),
    'loop': ('(e) the loop: empty body, states carried', None),
}


def breakdown_section(bench):
    impls, nonzero = {}, {}
    for key, (_, options) in PARTS.items():
        if key == 'bs-pool' and POOL_NAME != 'brainconv.MaxPool2d':
            continue  # the whole step already pools with brainstate's
        if options is None:
            net = LoopOnly()
            impls[key] = JaxStep.bptt(key, net, loop_loss(net), bench.frames, bench.labels, compare=False)
        else:
            net = Network(bench.weights, **options)
            impls[key] = JaxStep.bptt(key, net, step_loss(net), bench.frames, bench.labels, compare=False)
            impls[key].restore()
            nonzero[key] = probe(net, bench.frames)['nonzero']
    res = bench.time(impls)
    t = {k: ms(res, k) for k in impls}
    whole, e = t['whole'], t['loop']
    parts = [('whole step', 'bc-step (plain LIF)', whole),
             ('pooling', 'whole - (a)', whole - t['no-pool']),
             ('neurons (conv2 then gets dense floats)', 'whole - (b)', whole - t['no-neuron']),
             ("neurons' state: decay, reset, carry", 'whole - (b2)', whole - t['stateless']),
             ('convolutions + Linear, dense inputs', '(c) - (e)', t['conv-only'] - e),
             ('convolutions + Linear, spike inputs (+ thresholds)', '(c2) - (e)', t['conv-spikes'] - e),
             ('pooling + neurons (+ 1x1 projections)', '(d) - (e)', t['pool-neuron'] - e),
             ('loop, loss, Adam, call', '(e)', e),
             ('rest (overlap, fusion)', 'whole - (c2) - (d) + (e)', whole - t['conv-spikes'] - t['pool-neuron'] + e)]
    print(f"\n# Where bc-step's training step goes (T = {bench.steps}, batch {bench.batch}; {res.quiet}/{res.rounds} "
          f"quiet rounds; pooling {POOL_NAME})")
    table_head(['step', 'ms', 'non-zero inputs of conv2 / Linear', 'first call s', 'traces; compiles'])
    for key, impl in impls.items():
        nz = nonzero.get(key)
        row([f'{key}: {PARTS[key][0]}', fmt(t[key], '.2f'), ' / '.join(f'{v:.1%}' for v in nz[:2]) if nz else '-',
             f'{impl.first[0]:.2f}', impl.compile_cell()])
    print()
    table_head(['component', 'measured as', 'ms', 'share'])
    for name, how, value in parts:
        row([name, how, fmt(value, '.2f'), fmt(value / whole * 100, '.0f') + '%'])
    warn_recompiles(impls)
    bench.record['breakdown'] = {'steps_ms': t, 'nonzero': nonzero,
                                 'components_ms': {name: value for name, _, value in parts}}


#: The online section's networks: key -> (convolutions, conv -> LIF -> pool).
ONLINE = {'brainconv': ('brainconv', False), 'braintrace': ('braintrace', False),
          'brainconv, LIF first': ('brainconv', True), 'braintrace, LIF first': ('braintrace', True)}


def online_section(bench):
    print(f"\n# Online learning: braintrace.compile(net, pp_prop), one sequence of T = {bench.steps}, batch "
          f"{bench.batch} (reset, the sequence's online gradients of the per-step loss, Adam)")
    if braintrace is None:
        print("skipped: braintrace not installed (.venv312 has it)")
        return
    ys = jnp.broadcast_to(bench.labels, (bench.steps, bench.batch))
    impls, errors, untraced = {}, {}, {}
    for key, (conv, lif_first) in ONLINE.items():
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter('always')
                impls[key] = online_step(key, conv, lif_first, bench, ys)
            untraced[key] = sorted({m.group(1) for w in caught
                                    for m in [re.search(r"weight=\('(\w+)', 'weight'\)\) reaches a hidden state only",
                                                        str(w.message))] if m})
        except Exception as exc:  # noqa: BLE001 - reported, the other rows still run
            errors[key] = f'{type(exc).__name__}: {exc}'.splitlines()[0][:300]
            print(f"{key}: failed: {errors[key]}")
    if not impls:
        return
    res = bench.time(impls)
    print(f"{res.quiet}/{res.rounds} quiet rounds; 'LIF first': conv -> LIF -> pool (each convolution feeds its "
          f"neurons directly), else the tutorial's conv -> pool -> LIF")
    table_head(['network', 'ms/sequence', 'vs braintrace.nn.Conv2d', 'first call s', 'call 2 / 3 ms',
                'traces; compiles', 'weights not traced', 'first loss'])
    record = {}
    for key, impl in impls.items():
        twin = key.replace('brainconv', 'braintrace')
        t = ms(res, key)
        r = common.ratio(res, key, twin, 'fb') if twin in impls else math.nan
        row([key, fmt(t, '.2f'), fmt(r, '.2f'), f'{impl.first[0]:.2f}',
             f'{impl.first[1] * 1e3:.1f} / {impl.first[2] * 1e3:.1f}', impl.compile_cell(),
             ', '.join(untraced.get(key, [])) or 'none', f'{float(impl.out[0]):.6f}'])
        record[key] = {'ms': t, 'vs_braintrace': r, 'first_calls_s': impl.first, 'traces': impl.traces,
                       'compiles': impl.compiles, 'untraced': untraced.get(key)}
    if any(untraced.values()):
        print("weights not traced: braintrace warns that their outputs reach a hidden state only through another "
              "op (the max pool's shape change) and excludes them from the eligibility traces")
    for key in impls:
        twin = key.replace('brainconv', 'braintrace')
        if twin != key and twin in impls:
            d = max(common.rel_err(a, b) for a, b in zip(impls[key].results()['grads'], impls[twin].results()['grads']))
            print(f"{key} against {twin}: max rel. diff of the gradients {d:.1e}")
            if d > TOL:
                print(f"!! {key}'s online gradients differ from {twin}'s")
    warn_recompiles(impls)
    bench.record['online'] = dict(record, errors=errors)


def online_step(key, conv, lif_first, bench, ys):
    """braintrace.compile(net, pp_prop) of the network with ``conv``'s convolutions: a :class:`JaxStep`
    whose gradients are the sequence's accumulated online gradients of the per-step loss."""
    net = Network(bench.weights, conv=conv, linear=braintrace.nn.Linear, lif_first=lif_first)
    brainstate.nn.init_all_states(net, bench.batch)
    learner = braintrace.compile(net, braintrace.pp_prop, bench.frames[0], batch_size=bench.batch, decay_or_rank=0.9)
    params = net.states(brainstate.ParamState)

    def grads_fn(xs, ys):
        brainstate.nn.reset_all_states(net, xs.shape[1])
        learner.reset_state()
        return learner.etrace_grad(xs, ys, step_fn=lambda x, y: xent(learner(x), y), weights=params,
                                   return_value=True, loss_output='scalar')
    return JaxStep(key, net, grads_fn, bench.frames, ys)


def snn3_section(bench):
    import bench_event_layers as bel
    bel.SNN.update(steps=bench.steps, batch=bench.batch)
    events, labels, *_ = bel.snn_data()
    ev, lab = jnp.asarray(events), jnp.asarray(labels)
    frames = jnp.asarray(ev, jnp.float32)
    impls = {}
    for name, lowering in (('default', None), ('lax', 'lax'), ('brainstate', 'brainstate')):
        impls[name] = bel.snn_impl(name, lowering, frames, lab)
        c0 = COMPILES[0]
        impls[name].more = [common.one_call(impls[name].fb) for _ in range(2)]
        if COMPILES[0] > c0:
            print(f"!! snn3 {name} compiled {COMPILES[0] - c0} time(s) in its second and third calls")
    torch = common.remote_torch(('snn3', bench.steps, bench.batch))
    if torch is not None:
        impls['torch'] = torch
    err = bel.check(impls, reference='default', tol=bel.SNN_TOL)
    res = bench.time(impls)
    print(f"\n# bench_event_layers.py's spiking network (3 convs k3, 32x32x2 events at {bel.SNN['density']:.0%}, "
          f"T = {bench.steps}, batch {bench.batch}): BPTT step (loss and gradients, no update); "
          f"{res.quiet}/{res.rounds} quiet rounds; max rel. err vs default {err:.0e}")
    print("spike rates (default): " + ', '.join(f'{r:.2%}' for r in impls['default'].rates))
    table_head(['conv layers', 'ms/step', 'vs default', 'first call s', 'call 2 / 3 ms', 'compile s'])
    record = {}
    for name, impl in impls.items():
        t = ms(res, name)
        r = common.ratio(res, name, 'default', 'fb')
        if isinstance(impl, bel.Jitted):
            compile_s = impl.first['fb'] - t / 1e3
            row([name, fmt(t, '.2f'), fmt(r, '.2f'), f"{impl.first['fb']:.2f}",
                 ' / '.join(f'{v * 1e3:.1f}' for v in impl.more), f'{compile_s:.2f}'])
            record[name] = {'ms': t, 'vs_default': r, 'first_call_s': impl.first['fb'], 'calls_2_3_s': impl.more,
                            'compile_s': compile_s}
        else:
            row([name, fmt(t, '.2f'), fmt(r, '.2f'), '-', '-', '-'])
            record[name] = {'ms': t, 'vs_default': r}
    bench.record['snn3'] = dict(record, max_rel_err=err)


def versions() -> str:
    parts = [common.versions()]
    for name, mod in (('brainpy', brainpy), ('braintrace', braintrace), ('optax', optax), ('braintools', braintools)):
        if mod is not None:
            parts.append(f"{name} {getattr(mod, '__version__', '?')}")
    proxy = common.TorchProxy.get()
    if proxy is not None:
        proxy.ask('build', 'versions')
        parts += [f'{k} {v}' for k, v in proxy.ask('results', 'versions').items()]
    return ', '.join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help=f"T = {QUICK['steps']}, batch {QUICK['batch']}, 1 round")
    parser.add_argument('--rounds', type=int, default=None, help='timing rounds (default 7; --quick 1)')
    parser.add_argument('--sections', default='bptt,breakdown,online,snn3', help='any of bptt, breakdown, online, snn3')
    parser.add_argument('--variants', default=','.join(DEFAULT_VARIANTS),
                        help='of the bptt section: ' + ', '.join(LABELS))
    parser.add_argument('--neuron', choices=('plain', 'brainpy', 'both'), default=None,
                        help="the step-by-step rows' neuron (default: both where brainpy imports, else plain)")
    parser.add_argument('--json', default=None, help='write the numbers to this file')
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(',') if s.strip()]
    keys = [k.strip() for k in args.variants.split(',') if k.strip()]
    unknown = [k for k in keys if k not in LABELS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(LABELS)}")
    neuron = args.neuron or ('both' if brainpy is not None else 'plain')
    if neuron == 'plain':
        keys = [k for k in keys if k != 'bc-step-brainpy']
    elif neuron == 'brainpy':
        keys = [k for k in keys if k != 'bc-step']
    if brainpy is not None:
        brainstate.environ.set(dt=1.0)
    common.TorchProxy.start(__file__)
    load = os.getloadavg()
    print("# A spiking network's training step: brainconv, brainstate, snnTorch, SpikingJelly (CPU)")
    print(f"versions: {versions()}")
    print(f"machine: {common.machine()}; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at start")
    bench = Bench(args)
    print(f"reference matmul (768^3 float32, jax): {bench.monitor.gflops():.0f} GFLOP/s; up to {bench.rounds} rounds; "
          f"Adam: {bench.record['config']['optimizer']}", flush=True)
    if 'bptt' in sections:
        bptt_section(bench, keys)
    if 'breakdown' in sections:
        breakdown_section(bench)
    if 'online' in sections:
        online_section(bench)
    if 'snn3' in sections:
        snn3_section(bench)
    bench.record['versions'], bench.record['machine'] = versions(), common.machine()
    common.TorchProxy.stop()
    print(f"\nversions: {bench.record['versions']}")
    print(f"machine: {bench.record['machine']}; load average at the end: "
          + ' / '.join(f'{v:.1f}' for v in os.getloadavg()))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(bench.record, f, indent=1, default=float)
    return 0


if __name__ == '__main__':
    sys.exit(main())
