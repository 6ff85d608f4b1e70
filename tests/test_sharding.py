"""brainconv layers run data-parallel: the batch axis sharded over a device mesh.

Several CPU devices only exist if ``XLA_FLAGS=--xla_force_host_platform_device_count``
is set before JAX initialises, so the check runs in a fresh interpreter and
the rest of the suite keeps its single device.  In that interpreter every
formulation of a few layers (dense, strided, depthwise, grouped, 3-d,
transposed, a circular-padded one) runs forward and backward once on one
device with ``'lax'`` (the reference) and once per formulation with the batch
sharded four ways; outputs and gradients must agree (each formulation equals
``'lax'`` on one device: test_transforms.py), the outputs must stay sharded along
the batch, and the compiled program must not all-gather the activations.  On
boolean spikes the sharded programs must run the event kernel on each device's
shard (forward and kernel gradient), whether the switch is forced or decides.  (CI splits the
(layer, formulation) cells between its two Python lines, ``BRAINCONV_TEST_SHARE``: each line runs
every layer and every formulation, and every layer under the formulation 'auto' picks.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from _configs import in_share_by_index

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def _in_share(row, column, auto):
    """Whether this run takes the cell (layer ``row``, formulation ``column``) of the matrix: a
    checkerboard over the shares of ``BRAINCONV_TEST_SHARE`` (tests/_configs.py), so that each run
    still takes every layer and every formulation; the formulation a layer picks under 'auto' always."""
    return auto or in_share_by_index(row + column)


SCRIPT = textwrap.dedent('''
    import json, os, re
    from test_sharding import _in_share
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import brainconv, brainstate

    assert len(jax.devices()) == 4, jax.devices()
    brainstate.random.seed(0)   # the layers' initial weights: the same every run
    brainconv.lowering.common.CHUNK_BYTES = 4096   # force the row-window scans of im2col and the weight gradient
    mesh = Mesh(np.array(jax.devices()), ('data',))
    batch_sharded, replicated = NamedSharding(mesh, P('data')), NamedSharding(mesh, P())
    layers = {
        'dense': brainconv.Conv2d((10, 10, 6), 8, 3),
        'strided': brainconv.Conv2d((11, 9, 4), 6, 3, stride=2, padding='VALID'),
        'depthwise': brainconv.Conv2d((10, 10, 6), 12, 3, groups=6, padding_mode='REFLECT'),
        'grouped': brainconv.Conv1d((20, 8), 8, 5, groups=2, rhs_dilation=2),
        'conv3d': brainconv.Conv3d((6, 6, 6, 3), 4, 3, channel_first=False),
        'transposed': brainconv.ConvTranspose2d((5, 5, 6), 4, 3, stride=2, padding=1, output_padding=1),
        'circular': brainconv.Conv2d((8, 8, 4), 4, 3, padding_mode='CIRCULAR', channel_first=True),
    }
    def _relative(a, b):
        return float(jnp.max(jnp.abs(a - b)) / (1e-6 + jnp.max(jnp.abs(b))))
    def _value_error(v, ref, y):   # the loss sum(sin(y)) against the size of its terms (it can cancel to ~0)
        return float(jnp.abs(v - ref) / jnp.sum(jnp.abs(jnp.sin(y))))
    report = {'auto': {label: layer.lowering for label, layer in layers.items()}}
    rng = np.random.default_rng(0)
    for row, (label, layer) in enumerate(layers.items()):
        x = jnp.asarray(rng.standard_normal((8,) + layer.in_size), jnp.float32)
        graphdef, params = brainstate.graph.treefy_split(layer)   # pure (params, x) -> y
        def loss(params, x):
            y = brainstate.graph.treefy_merge(graphdef, params)(x)
            return jnp.sum(jnp.sin(y)), y
        with brainconv.use_lowering('lax'):   # the single-device reference: XLA's own convolution
            (v1, y1), (dp1, dx1) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
        for column, name in enumerate(brainconv.LOWERINGS):
            if not _in_share(row, column, name == layer.lowering):
                continue
            step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
            with brainconv.use_lowering(name):
                xs = jax.device_put(x, batch_sharded)
                ps = jax.device_put(params, replicated)
                compiled = step.lower(ps, xs).compile()
                (v4, y4), (dp4, dx4) = compiled(ps, xs)
                hlo = compiled.as_text()
            dw1, dw4 = (jax.tree_util.tree_leaves(d)[0] for d in (dp1, dp4))
            err = max(_relative(y4, y1), _relative(dx4, dx1), _relative(dw4, dw1), _value_error(v4, v1, y1))
            report[f'{label}/{name}'] = dict(
                err=err, y_spec=str(y4.sharding.spec[0]), dx_spec=str(dx4.sharding.spec[0]),
                devices=len(y4.sharding.device_set), all_gathers=len(re.findall(r'all-gather(-start)?\\(', hlo)))
    # spikes under 'auto': each device runs the event kernel on its shard (the kernel gradient summed
    # over the devices): forced on small layers, by the density switch on one large enough to pay
    cases = [(label, layers[label], 'event') for label in ('dense', 'strided', 'grouped', 'transposed', 'conv3d')]
    cases.append(('snn', brainconv.Conv2d((15, 15, 12), 32, 5, padding='VALID'), None))
    for label, layer, branch in cases:
        spikes = jnp.asarray(rng.random((8,) + layer.in_size) < 0.05)
        graphdef, params = brainstate.graph.treefy_split(layer)
        def loss(params, x):
            y = brainstate.graph.treefy_merge(graphdef, params)(x)
            return jnp.sum(jnp.sin(y)), y
        with brainconv.use_lowering('lax'):
            (v1, y1), dp1 = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, spikes.astype(jnp.float32))
        with brainconv.lowering.event_branch(branch):
            xs, ps = jax.device_put(spikes, batch_sharded), jax.device_put(params, replicated)
            compiled = jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(ps, xs).compile()
        (v4, y4), dp4 = compiled(ps, xs)
        hlo = compiled.as_text()
        dw1, dw4 = (jax.tree_util.tree_leaves(d)[0] for d in (dp1, dp4))
        err = max(_relative(y4, y1), _relative(dw4, dw1), _value_error(v4, v1, y1))
        report[f'spikes/{label}'] = dict(
            err=err, y_spec=str(y4.sharding.spec[0]), event_calls=len(re.findall(r'brainconv_event', hlo)),
            conds=len(re.findall(r' conditional\\(', hlo)), all_gathers=len(re.findall(r'all-gather(-start)?\\(', hlo)),
            devices=len(y4.sharding.device_set))
    print('REPORT' + json.dumps(report))
''')


def _report():
    env = dict(os.environ)
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4').strip()
    env['JAX_PLATFORMS'] = 'cpu'
    env['PYTHONPATH'] = os.pathsep.join([ROOT, os.path.join(ROOT, 'tests'), env.get('PYTHONPATH', '')])
    proc = subprocess.run([sys.executable, '-c', SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith('REPORT'))
    return json.loads(line[len('REPORT'):])


# XLA's SPMD partitioner all-gathers around a grouped convolution (feature_group_count > 1)
# when the batch is sharded: raw lax and every formulation that calls it for a grouped kernel
# ('lax', 'lax_vjp', 'fold') inherit that.  The others never call it.
XLA_GROUPED = {(label, name) for label in ('depthwise', 'grouped') for name in ('lax', 'lax_vjp', 'fold')}
# The partitioner also replicates the operand of every FFT op, so 'fft' gathers whatever the layer.
XLA_GROUPED |= {(label, 'fft') for label in ('dense', 'strided', 'depthwise', 'grouped', 'conv3d', 'transposed',
                                              'circular')}


def test_data_parallel_runs_equal_the_single_device_run():
    """One subprocess (it compiles 56 programs), every property checked on its report."""
    import brainconv
    report = _report()
    auto = report.pop('auto')
    spikes = {k: report.pop(k) for k in list(report) if k.startswith('spikes/')}
    assert len(spikes) == 6
    for key, v in spikes.items():
        assert v['err'] < 5e-4 and v['devices'] == 4 and v['y_spec'] == 'data', (key, v)
        assert v['event_calls'] >= 2, f"{key}: the sharded program runs no event kernel: {v}"   # forward, kernel grad
        assert v['all_gathers'] == 0, f"{key}: activations all-gathered: {v}"
    assert spikes['spikes/snn']['conds'] >= 2, spikes['spikes/snn']   # the density switch, on each shard
    assert set(report) == {f'{label}/{name}' for row, label in enumerate(auto)
                           for column, name in enumerate(brainconv.LOWERINGS)
                           if _in_share(row, column, name == auto[label])}
    # float32 rounding only: the sums over the batch are split across devices (the depthwise kernel
    # gradient, a sum over 8 x 6 x 6 positions, differs by up to 1.2e-4 of its largest entry with jax 0.12,
    # raw lax included)
    bad = {k: v['err'] for k, v in report.items() if not v['err'] < 5e-4}
    assert not bad, f"sharded results differ from the single-device run: {bad}"
    for key, v in report.items():
        assert v['devices'] == 4, key
        assert (v['y_spec'], v['dx_spec']) == ('data', 'data'), f"{key}: not batch-sharded: {v}"
    gathered = {k: v['all_gathers'] for k, v in report.items()
                if v['all_gathers'] and tuple(k.split('/')) not in XLA_GROUPED}
    assert not gathered, f"activations all-gathered: {gathered}"
    if auto['dense'] != 'lax':  # on CPU: the chosen formulations never gather, grouped ones included
        for label, name in auto.items():
            assert report[f'{label}/{name}']['all_gathers'] == 0, (label, name)
        assert auto['depthwise'] == 'taps' and auto['grouped'] in ('event', 'im2col')   # im2col behind the switch
