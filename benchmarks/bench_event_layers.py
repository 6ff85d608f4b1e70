"""brainconv's event path through its layers on CPU: a layer, a streaming step and a spiking network's training step.

Sections (``--sections``; all three by default):

  layers     bench_event.py's configs A (Conv2d 32x32x64 -> 64, k3), B (depthwise Conv2d
             32x32x128, k3, groups 128) and C (Conv1d L1024 64 -> 64, k5), batch 32, SAME, at
             densities 1, 2, 5, 10, 20 and 50%, each measured three ways:
               forward          the layer on boolean spikes (the event path under 'auto')
                                against the same spikes as float32 (the dense default) and torch
               kernel gradient  d vdot(layer(x), g) / d weights only (g a fixed Gaussian output
                                gradient), boolean spikes against float32 spikes
               fwd+bwd          the gradient with respect to the weights and the input: float
                                spikes with lowering='event' (the input gradient runs densely)
                                against the dense default and torch
             then, per config, the targets: forward >= 5x the dense default and >= 3x torch at
             densities <= 2%, kernel gradient >= 5x and fwd+bwd >= 2x there, and nowhere slower
             than 1.05x the dense default.
  streaming  a Conv3d over (time, 32, 32, 32) frames, causal in time, stepped by StreamingConv in
             a jitted brainstate.transform.for_loop over 100 frames of boolean spikes at 2% (the
             event path) against the same frames as float32 (dense): time per step (target 5x).
  snn        the BPTT training step (loss and the gradients of every weight, no update, so that
             every timed step sees the same weights and spike rates) of a convolutional spiking
             network: 32x32x2 events (boolean, 3%, 20 steps, batch 16) -> Conv2d 16 s2 -> LIF ->
             Conv2d 32 -> LIF -> Conv2d 64 s2 -> LIF -> linear readout, averaged over time,
             cross-entropy.  The LIF neurons (decay exp(-1/4), threshold 1, soft reset) emit float
             spikes with braintools' arctan surrogate gradient.  Event: the convolutions built with
             lowering='event' and the events boolean; dense: the default lowering, the events as
             float32; lax: lowering='lax' (XLA's own convolution and its own gradients); brainstate:
             brainstate.nn.Conv2d (the same); torch: the same network with a hand-written LIF and
             surrogate.  Reported: the
             spike rates each layer's neurons produce, the forward (the loss) and the training
             step, and the compile time (first call minus the steady step; target: event <= 1.5x
             dense).

How: timing is bench_cpu.py's (``_common.time_group``): interleaved rounds in rotated order, a
reference matmul (JAX and torch) before and after each, a round more than 30% slower than the
quietest re-measured up to three times, medians over the quiet rounds (over all rounds if fewer than
3 were quiet), ratios as medians of per-round ratios (dense / event: > 1 means the event path is
faster).  torch runs in a worker process that never imports JAX (bench_event.py's arrangement, this
file's own worker), with the same arrays, seeded.  Before timing, every result (outputs, gradients,
losses) is checked against the dense default (max |difference| / max |reference|).  "first" is the
first call (trace + compile + first run, in this process, the event kernels' library already built).
The event path is measured as users get it: its run-time density switch left on.  Not a test:
nothing here asserts a speed.

Usage::

    python benchmarks/bench_event_layers.py                   # everything (about 15 minutes)
    python benchmarks/bench_event_layers.py --quick --sections layers --configs A
    python benchmarks/bench_event_layers.py --sections streaming,snn
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import _common as common
import numpy as np
from _common import EVENT_BATCH as BATCH
from _common import EVENT_CONFIGS as CONFIGS

#: Densities of the layers section.
DENSITIES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
#: The convolutions of the spiking network: (C_in, C_out, stride), kernel 3, padding 1.
SNN_CONVS = ((2, 16, 2), (16, 32, 1), (32, 64, 2))
#: The spiking network's input (frame, steps, batch, event density), classes and neurons.
SNN = dict(frame=(32, 32, 2), steps=20, batch=16, density=0.03, classes=10, decay=math.exp(-1 / 4), v_th=1.0)
#: Input weight scales of the three convolutions (gain over a unit-variance kernel): set so
#: that the neurons fire at a few percent.
SNN_GAINS = (3.0, 2.0, 2.0)


def layer_data(cfg, batch: int, density: float):
    """Boolean spikes (N, *spatial, C_in), kernel (*k, C_in // groups, C_out) and output gradient
    (N, *spatial, C_out) for a bench_event config, seeded: the same here and in torch's worker."""
    _, spatial, cin, cout, k, groups = cfg
    rng = np.random.default_rng(round(density * 1e4) + cin + 100 * len(spatial) + groups)
    x = rng.random((batch,) + spatial + (cin,)) < density
    fan_in = k ** len(spatial) * cin // groups
    w = (rng.standard_normal((k,) * len(spatial) + (cin // groups, cout)) / math.sqrt(fan_in)).astype(np.float32)
    gy = rng.standard_normal((batch,) + spatial + (cout,)).astype(np.float32)
    return x, w, gy


def snn_data():
    """Events (T, B, 32, 32, 2) boolean, labels (B,), conv kernels (3, 3, C_in, C_out), readout weight
    (features, classes) and bias; seeded."""
    rng = np.random.default_rng(9)
    events = rng.random((SNN['steps'], SNN['batch']) + SNN['frame']) < SNN['density']
    labels = rng.integers(0, SNN['classes'], SNN['batch'])
    kernels = [(gain * rng.standard_normal((3, 3, cin, cout)) / math.sqrt(9 * cin)).astype(np.float32)
               for (cin, cout, _), gain in zip(SNN_CONVS, SNN_GAINS)]
    side = SNN['frame'][0] // math.prod(s for _, _, s in SNN_CONVS)
    features = side * side * SNN_CONVS[-1][1]
    readout = (rng.standard_normal((features, SNN['classes'])) / math.sqrt(features)).astype(np.float32)
    return events, labels, kernels, readout, np.zeros(SNN['classes'], np.float32)


# --------------------------------------------------------------------------- #
# torch, in a worker process that never imports JAX
# --------------------------------------------------------------------------- #

def _torch_layer(cfg, batch, density):
    """A config's forward and fwd+bwd (input and weight gradients) in torch, NC* layouts."""
    import torch
    F = torch.nn.functional
    _, spatial, _, _, k, groups = cfg
    x, w, gy = layer_data(cfg, batch, density)
    xt, gt = common.to_torch(x.astype(np.float32)), common.to_torch(gy)
    wt = common.torch_kernel(w)  # (C_out, C_in/g, *k)
    conv = getattr(F, f'conv{len(spatial)}d')
    pad = (k - 1) // 2
    xg, wg = xt.clone().requires_grad_(), wt.clone().requires_grad_()

    def fwd():
        with torch.no_grad():
            return conv(xt, wt, padding=pad, groups=groups)

    def fb():
        return torch.autograd.grad(conv(xg, wg, padding=pad, groups=groups), (xg, wg), gt)

    def results():
        dx, dw = fb()
        return {'fwd': (common.from_torch(fwd()),), 'fb': (common.kernel_from_torch(dw), common.from_torch(dx))}
    return {'fwd': fwd, 'fb': fb, 'results': results}


def _torch_snn():
    """The spiking network in torch: 'fwd' the loss, 'fb' the loss and every weight's gradient."""
    import torch
    F = torch.nn.functional
    events, labels, kernels, readout, bias = snn_data()
    xs = common.to_torch(events.astype(np.float32), channels_to=2)  # (T, B, C, H, W)
    ys = torch.from_numpy(labels)
    params = [common.torch_kernel(k).requires_grad_() for k in kernels]
    params += [torch.from_numpy(readout).requires_grad_(), torch.from_numpy(bias).requires_grad_()]
    decay, v_th = SNN['decay'], SNN['v_th']

    class Spike(torch.autograd.Function):
        """Heaviside with braintools' Arctan(alpha=1) surrogate: 1 / (2 (1 + (pi v / 2)^2))."""

        @staticmethod
        def forward(ctx, v):
            ctx.save_for_backward(v)
            return (v >= 0).to(v.dtype)

        @staticmethod
        def backward(ctx, g):
            (v,) = ctx.saved_tensors
            return g / (2 * (1 + (math.pi / 2 * v) ** 2))

    def loss():
        vs = [None] * len(SNN_CONVS)
        total = 0
        for x in xs:
            for i, (_, _, stride) in enumerate(SNN_CONVS):
                current = F.conv2d(x, params[i], stride=stride, padding=1)
                v = current if vs[i] is None else decay * vs[i] + current
                x = Spike.apply(v - v_th)
                vs[i] = v - x.detach() * v_th
            total = total + x.permute(0, 2, 3, 1).reshape(x.shape[0], -1) @ params[-2] + params[-1]
        return F.cross_entropy(total / len(xs), ys)

    def fwd():
        with torch.no_grad():
            return loss()

    def fb():
        value = loss()
        return value, torch.autograd.grad(value, params)

    def results():
        value, grads = fb()
        kernels = [common.kernel_from_torch(g) for g in grads[:-2]]
        return {'fwd': (fwd().numpy(),), 'fb': (value.detach().numpy(), *kernels, grads[-2].numpy(), grads[-1].numpy())}
    return {'fwd': fwd, 'fb': fb, 'results': results}


if __name__ == '__main__' and '--torch-worker' in sys.argv:
    common.serve(lambda key: _torch_snn() if key == 'snn' else _torch_layer(*key))
    sys.exit(0)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import brainstate  # noqa: E402
import braintools  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import brainconv  # noqa: E402
from brainconv.lowering import event as _event  # noqa: E402

#: _common.time_group times 'fwd', 'fb' and, where an implementation sets the attribute
#: ``jvp``, a third callable under that name: here the third slot holds the kernel gradient.
DW = 'jvp'
MODES = {'fwd': 'forward', DW: 'kernel gradient', 'fb': 'fwd+bwd'}
#: Largest relative difference from the dense default accepted before timing (float32 sums in
#: another order); the spiking network's spikes may flip where a membrane sits at the threshold.
TOL = 2e-4
SNN_TOL = 1e-3


class Jitted(common.Timed):
    """Jitted functions on fixed arguments, one per mode (the attributes ``fwd``, ``jvp`` = DW, ``fb``),
    timed by time_group; ``first[mode]`` is the first call's time.  A mode it lacks times as NaN."""

    def __init__(self, name: str, calls: dict):
        self.name, self.calls, self.first = name, {}, {}
        for mode, (fn, args) in calls.items():
            self.first[mode] = common.one_call(fn, *args)
            self.calls[mode] = (lambda f, a: lambda: jax.block_until_ready(f(*a)))(fn, args)
            setattr(self, mode, self.calls[mode])

    def results(self):
        return {mode: tuple(np.asarray(a) for a in jax.tree.leaves(call())) for mode, call in self.calls.items()}


def check(impls, reference='dense', tol=TOL) -> float:
    """Max relative difference of every implementation's results from ``reference``'s, per mode they share."""
    want = impls[reference].results()
    worst = 0.0
    for name, impl in impls.items():
        if name == reference:
            continue
        for mode, got in impl.results().items():
            if mode not in want:
                continue
            err = max(common.rel_err(a, b) for a, b in zip(got, want[mode]))
            if not err <= tol:
                print(f"  !! {name} {MODES.get(mode, mode)} differs from {reference}: max relative error {err:.1e}",
                      flush=True)
            worst = max(worst, err)
    return worst


def _ms(res, name, mode):
    return common.med(res.kept(res.times[(name, mode)])) * 1e3 if (name, mode) in res.times else math.nan


def _cells(values, fmt):
    return ['-' if not math.isfinite(v) else format(v, fmt) for v in values]


def _row(cells):
    print('| ' + ' | '.join(cells) + ' |', flush=True)


# --------------------------------------------------------------------------- #
# Layers
# --------------------------------------------------------------------------- #

def layer_functions(key):
    """The config's layer under 'auto' and with lowering='event', and the jitted functions timed."""
    _, spatial, cin, cout, k, groups = CONFIGS[key]
    auto = brainconv.Conv(len(spatial), spatial + (cin,), cout, k, groups=groups)
    event = brainconv.Conv(len(spatial), spatial + (cin,), cout, k, groups=groups, lowering='event')

    def loss(layer):
        return lambda p, x, g: jnp.vdot(layer.apply(p, x), g)

    forward = jax.jit(auto.apply)
    kernel_grad = jax.jit(jax.grad(loss(auto)))
    both = {'auto': jax.jit(jax.grad(loss(auto), argnums=(0, 1))),
            'event': jax.jit(jax.grad(loss(event), argnums=(0, 1)))}
    return auto, forward, kernel_grad, both


def layer_impls(key, density, fns):
    auto, forward, kernel_grad, both = fns
    x, w, gy = layer_data(CONFIGS[key], BATCH, density)
    p, xb, xf, g = {'weight': jnp.asarray(w)}, jnp.asarray(x), jnp.asarray(x, jnp.float32), jnp.asarray(gy)
    impls = {'event': Jitted('event', {'fwd': (forward, (p, xb)), DW: (kernel_grad, (p, xb, g)),
                                       'fb': (both['event'], (p, xf, g))}),
             'dense': Jitted('dense', {'fwd': (forward, (p, xf)), DW: (kernel_grad, (p, xf, g)),
                                       'fb': (both['auto'], (p, xf, g))})}
    torch = common.remote_torch((CONFIGS[key], BATCH, density))
    if torch is not None:
        impls['torch'] = torch
    return impls, int(x.sum())


def layers_section(keys, monitor, rounds, budget, target_s):
    print(f"\n# Layers (batch {BATCH}, SAME, float32; ms: medians over quiet rounds; x: dense / event and "
          f"torch / event, medians of per-round ratios, > 1 = event faster)")
    for key in keys:
        title, spatial, cin, cout, _, groups = CONFIGS[key]
        fns = layer_functions(key)
        auto = fns[0]
        g = auto.spec.geometry
        switch = {kind: _event.crossover(g, groups, BATCH, cin, cout, kind) / (BATCH * math.prod(spatial) * cin)
                  for kind in ('forward', 'weight_grad')}
        rows, first = [], None
        for density in DENSITIES:
            impls, nnz = layer_impls(key, density, fns)
            first = first or {n: i.first for n, i in impls.items() if isinstance(i, Jitted)}
            err = check(impls)
            rows.append((density, nnz, common.time_group(impls, monitor, rounds, target_s, budget_s=budget), err))
        dense_name = auto.lowering  # float input: what 'auto' picks
        print(f"\n## {key}: {title}   (dense default: '{dense_name}'; the event path's switch runs the dense "
              f"formulation above {switch['forward']:.1%} (forward), {switch['weight_grad']:.1%} (kernel gradient))")
        ratios = {}
        for mode, label in MODES.items():
            peers = ['dense', 'torch'] if mode != DW and 'torch' in impls else ['dense']
            print(f"\n### {key} {label}")
            head = ['density', 'nnz', 'event ms'] + [f'{n} ms' for n in peers] + [f'{n}/event' for n in peers]
            _row(head + ['quiet/rounds', 'max err'])
            print('|' + '---|' * (len(head) + 2))
            for density, nnz, res, err in rows:
                x = [common.ratio(res, n, 'event', mode) for n in peers]
                ratios[(mode, density)] = dict(zip(peers, x))
                _row([f'{density:.0%}', str(nnz)] + _cells([_ms(res, n, mode) for n in ['event'] + peers], '.2f')
                     + _cells(x, '.2f') + [f'{res.quiet}/{res.rounds}', f'{err:.0e}'])
        print("\nfirst call (trace + compile + first run, s): " + '; '.join(
            f"{MODES[m]} event {first['event'][m]:.2f}, dense {first['dense'][m]:.2f}" for m in MODES))
        targets(key, ratios)


def targets(key, ratios) -> None:
    """The issue's targets for one config, met or not."""
    low = [d for d in DENSITIES if d <= 0.02]
    parts = []
    for mode, peer, want in (('fwd', 'dense', 5), ('fwd', 'torch', 3), (DW, 'dense', 5), ('fb', 'dense', 2)):
        got = [ratios[(mode, d)].get(peer, math.nan) for d in low]
        if not all(math.isfinite(v) for v in got):
            continue
        parts.append(f"{MODES[mode]} >= {want}x {peer} at <= 2%: {', '.join(f'{v:.1f}x' for v in got)} "
                     f"{'met' if min(got) >= want else 'MISSED'}")
    slowest = max(((1 / r['dense'], m, d) for (m, d), r in ratios.items()), key=lambda t: t[0])
    parts.append(f"event / dense <= 1.05 at every density: worst {slowest[0]:.2f} ({MODES[slowest[1]]} at "
                 f"{slowest[2]:.0%}) {'met' if slowest[0] <= 1.05 else 'MISSED'}")
    print(f"\ntargets {key}: " + '; '.join(parts))


# --------------------------------------------------------------------------- #
# StreamingConv
# --------------------------------------------------------------------------- #

#: Conv3d over (time, 32, 32, 32) -> 32, kernel 3x3x3, causal in time, SAME in space; batch, steps.
STREAM = dict(frame=(32, 32, 32), cout=32, kernel=3, batch=8, steps=100, density=0.02)


def streaming_section(monitor, rounds, budget, target_s):
    s = STREAM
    h, w, c = s['frame']
    conv = brainconv.Conv3d((s['steps'], h, w, c), s['cout'], s['kernel'], padding=('CAUSAL', 'SAME', 'SAME'))
    step = conv.streaming()
    step.init_state(batch_size=s['batch'])

    def run(xs):
        step.reset_state()
        return brainstate.transform.for_loop(step, xs)

    rng = np.random.default_rng(3)
    xs = rng.random((s['steps'], s['batch']) + s['frame']) < s['density']
    impls = {'event': Jitted('event', {'fwd': (brainstate.transform.jit(run), (jnp.asarray(xs),))}),
             'dense': Jitted('dense', {'fwd': (brainstate.transform.jit(run), (jnp.asarray(xs, jnp.float32),))})}
    err = check(impls)
    res = common.time_group(impls, monitor, rounds, target_s, budget_s=budget)
    print(f"\n# StreamingConv: Conv3d over (T, {h}x{w}x{c}) -> {s['cout']}, k{s['kernel']}, CAUSAL in time, SAME "
          f"in space, batch {s['batch']}; {s['steps']} steps in a jitted for_loop, frames of {s['density']:.0%} "
          f"spikes, boolean (event) or float32 (dense)")
    _row(['', 'first call s', 'ms per step', 'dense/event'])
    print('|---|---|---|---|')
    speedup = common.ratio(res, 'dense', 'event', 'fwd')
    for name in impls:
        _row([name, f"{impls[name].first['fwd']:.2f}", f"{_ms(res, name, 'fwd') / s['steps']:.3f}"]
             + _cells([speedup if name == 'event' else math.nan], '.2f'))
    print(f"quiet/rounds {res.quiet}/{res.rounds}, max err {err:.0e}; target >= 5x: {speedup:.1f}x "
          f"{'met' if speedup >= 5 else 'MISSED'}")


# --------------------------------------------------------------------------- #
# A convolutional spiking network's BPTT step
# --------------------------------------------------------------------------- #

class LIF(brainstate.nn.Dynamics):
    """Leaky integrate-and-fire neurons (notebook 09's): ``v <- decay v + I``, a spike where ``v >= v_th``
    (float, braintools' arctan surrogate gradient), soft reset."""

    def __init__(self, in_size):
        super().__init__(in_size)
        self.spike_fn = braintools.surrogate.Arctan()

    def init_state(self, batch_size=None, **kwargs):
        self.v = brainstate.HiddenState(jnp.zeros((batch_size,) + self.in_size))

    def reset_state(self, batch_size=None, **kwargs):
        self.v.value = jnp.zeros((batch_size,) + self.in_size)

    def update(self, current):
        v = SNN['decay'] * self.v.value + current
        spike = self.spike_fn(v - SNN['v_th'])
        self.v.value = v - jax.lax.stop_gradient(spike) * SNN['v_th']
        return spike


class SpikingNet(brainstate.nn.Module):
    """SNN_CONVS with LIF neurons after each, a linear readout of the last spikes, with snn_data's weights;
    the convolutions ``module``'s (brainconv, or an older copy of it: ab_versions.py --snn)."""

    def __init__(self, lowering, module=brainconv):
        super().__init__()
        _, _, kernels, readout, bias = snn_data()
        size = SNN['frame']
        self.convs, self.lifs = [], []
        for (_, cout, stride), kernel in zip(SNN_CONVS, kernels):
            if lowering == 'brainstate':
                conv = brainstate.nn.Conv2d(size, cout, 3, stride=stride, padding=1)
            else:
                conv = module.Conv2d(size, cout, 3, stride=stride, padding=1, lowering=lowering)
            conv.weight.value = {'weight': jnp.asarray(kernel)}
            size = conv.out_size
            self.convs.append(conv)
            self.lifs.append(LIF(size))
        self.readout = brainstate.nn.Linear(math.prod(size), SNN['classes'])
        self.readout.weight.value = {'weight': jnp.asarray(readout), 'bias': jnp.asarray(bias)}

    def step(self, frame):
        spikes = []
        x = frame
        for conv, lif in zip(self.convs, self.lifs):
            x = lif(conv(x))
            spikes.append(jnp.mean(x))
        return self.readout(x.reshape(x.shape[0], -1)), jnp.stack(spikes)

    def loss(self, events, labels):
        """Cross-entropy of the time-averaged readout, and each layer's spike rate."""
        brainstate.nn.reset_all_states(self, events.shape[1])
        logits, rates = brainstate.transform.for_loop(self.step, events)
        xent = braintools.metric.softmax_cross_entropy_with_integer_labels(logits.mean(axis=0), labels).mean()
        return xent, rates.mean(axis=0)


def snn_impl(name, lowering, events, labels):
    net = SpikingNet(lowering)
    brainstate.nn.init_all_states(net, SNN['batch'])
    params = net.states(brainstate.ParamState)
    forward = brainstate.transform.jit(net.loss)
    grads = brainstate.transform.grad(net.loss, params, has_aux=True, return_value=True)

    @brainstate.transform.jit
    def train_step(events, labels):
        g, value, _ = grads(events, labels)
        readout = g[('readout', 'weight')]
        return (value, *(g[('convs', i, 'weight')]['weight'] for i in range(len(SNN_CONVS))), readout['weight'],
                readout['bias'])

    impl = Jitted(name, {'fwd': (forward, (events, labels)), 'fb': (train_step, (events, labels))})
    impl.rates = np.asarray(forward(events, labels)[1])
    return impl


def snn_section(monitor, rounds, budget, target_s):
    events, labels, *_ = snn_data()
    ev, lab = jnp.asarray(events), jnp.asarray(labels)
    frames = jnp.asarray(ev, jnp.float32)
    impls = {'event': snn_impl('event', 'event', ev, lab), 'dense': snn_impl('dense', None, frames, lab),
             'lax': snn_impl('lax', 'lax', frames, lab),
             'brainstate': snn_impl('brainstate', 'brainstate', frames, lab)}
    torch = common.remote_torch('snn')
    if torch is not None:
        impls['torch'] = torch
    err = check(impls, tol=SNN_TOL)
    res = common.time_group(impls, monitor, rounds, target_s, budget_s=budget)
    sizes = ' -> '.join(f"conv{c}{' s2' if s == 2 else ''}" for _, c, s in SNN_CONVS)
    print(f"\n# Spiking network, BPTT: 32x32x2 events ({SNN['density']:.0%}, {SNN['steps']} steps, batch "
          f"{SNN['batch']}) -> {sizes} (k3, LIF after each) -> readout {SNN['classes']}")
    print("spike rates (event inputs, then each LIF layer): "
          + ', '.join(f'{r:.2%}' for r in [float(events.mean())] + list(impls['event'].rates))
          + f"; dense run: {', '.join(f'{r:.2%}' for r in impls['dense'].rates)}")
    _row(['', 'forward ms', 'train step ms', 'first call s (fwd / step)', 'compile s (first - steady step)'])
    print('|---|---|---|---|---|')
    compile_s = {}
    for name, impl in impls.items():
        ms = [_ms(res, name, m) for m in ('fwd', 'fb')]
        if isinstance(impl, Jitted):
            compile_s[name] = impl.first['fb'] - ms[1] / 1e3
            first = f"{impl.first['fwd']:.2f} / {impl.first['fb']:.2f}"
            comp = f"{impl.first['fwd'] - ms[0] / 1e3:.2f} / {compile_s[name]:.2f}"
        else:
            first = comp = '-'
        _row([name] + _cells(ms, '.1f') + [first, comp])
    ratios = {(n, m): common.ratio(res, n, 'event', m) for n in impls if n != 'event' for m in ('fwd', 'fb')}
    print(f"quiet/rounds {res.quiet}/{res.rounds}, max err {err:.0e}; "
          + '; '.join(f"{n}/event forward {ratios[(n, 'fwd')]:.2f}x, train step {ratios[(n, 'fb')]:.2f}x"
                      for n in impls if n != 'event'))
    slower = compile_s['event'] / compile_s['dense']
    print(f"target: compile (train step) event <= 1.5x dense: {compile_s['event']:.2f} s / {compile_s['dense']:.2f} s"
          f" = {slower:.2f}x {'met' if slower <= 1.5 else 'MISSED'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sections', default='layers,streaming,snn')
    parser.add_argument('--configs', default='A,B,C', help='of the layers section')
    parser.add_argument('--quick', action='store_true', help='3 rounds, shorter repetitions')
    parser.add_argument('--rounds', type=int, default=None)
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(',') if s.strip()]
    rounds = args.rounds or (3 if args.quick else 7)
    budget, target_s = (2.0, 0.01) if args.quick else (8.0, 0.03)
    common.TorchProxy.start(__file__)  # LoadMonitor and versions() then use this file's worker
    _event.backend()  # build or load the kernels' library now, outside every first-call time
    load = os.getloadavg()
    print("# brainconv's event path in layers, a streaming step and a spiking network, on CPU")
    print(f"versions: {common.versions()}; event backend {_event.backend()}")
    print(f"machine: {common.machine()}; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at start")
    monitor = common.LoadMonitor()
    print(f"reference matmul (768^3 float32, jax): {monitor.gflops():.0f} GFLOP/s; up to {rounds} rounds, "
          f"{budget:.0f} s of timing per group", flush=True)
    if 'layers' in sections:
        layers_section([k.strip() for k in args.configs.split(',') if k.strip()], monitor, rounds, budget, target_s)
    if 'streaming' in sections:
        streaming_section(monitor, rounds, budget, target_s)
    if 'snn' in sections:
        snn_section(monitor, rounds, budget, target_s)
    common.TorchProxy.stop()
    print(f"\nload average at the end: {' / '.join(f'{v:.1f}' for v in os.getloadavg())}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
