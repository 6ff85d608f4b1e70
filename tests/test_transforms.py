"""Every layer kind, with every formulation, under every JAX transform, against ``'lax'``.

``'lax'`` itself is checked against the NumPy oracle in ``test_lowering.py`` (forward and both
gradients); here each formulation must give what ``'lax'`` gives under jvp, linearize, jacfwd,
jacrev, hessian, grad of grad, linear_transpose, checkpoint, vmap (input, per-example gradients,
kernels), grad through scan, and jit -- all of them computed in one jitted program per (layer, formulation),
so a formulation that cannot be transformed fails here.  Shapes are tiny: the programs, not the
arithmetic, are under test.  (CI splits the layer kinds between its two Python lines,
``BRAINCONV_TEST_SHARE``: each line runs every formulation under every transform on half the kinds.)
"""

from __future__ import annotations

import brainstate
import braintools
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _configs import in_share_by_index

import brainconv

# name -> constructor.  Every formulation runs every kind here: between them they give each
# formulation every core geometry it meets (strided, grouped, depthwise, lhs-dilated, 1-, 2-, 3-d,
# anisotropic stride) and the layer-level paths around it (padding modes, channel-first, bias).
LAYERS = {
    'conv-stride-circular': lambda: brainconv.Conv2d((5, 4, 2), 3, 3, stride=2, padding_mode='CIRCULAR'),
    'grouped-dilated': lambda: brainconv.Conv2d((6, 5, 4), 4, 2, groups=2, rhs_dilation=2, padding='VALID'),
    'depthwise-bias': lambda: brainconv.Conv2d((5, 5, 2), 4, 3, groups=2, b_init=braintools.init.Constant(0.5)),
    'transposed': lambda: brainconv.ConvTranspose2d((3, 3, 2), 2, 3, stride=2),
    'transposed-circular-grouped-1d': lambda: brainconv.ConvTranspose1d((4, 2), 2, 3, stride=2, groups=2,
                                                                        padding_mode='CIRCULAR'),
    'conv2d': lambda: brainconv.Conv2d((4, 4, 2), 2, 3),
    'nd-causal-lhs-dilated': lambda: brainconv.Conv(1, (5, 2), 3, 3, padding='CAUSAL', lhs_dilation=2,
                                                    rhs_dilation=2, stride=2),
    'conv3d': lambda: brainconv.Conv3d((4, 3, 4, 2), 2, 2, stride=(2, 1, 1)),
    'reflect-channel-first': lambda: brainconv.Conv2d((2, 5, 5), 3, 3, stride=(1, 2), channel_first=True,
                                                      padding_mode='REFLECT'),
}

# Layer kinds whose extra work sits above the convolution (a kernel transform the same for every
# formulation, whose core geometry a kind above already has): run under the formulation 'auto' picks.
FEATURE_LAYERS = {
    'scaled-ws': lambda: brainconv.ScaledWSConv2d((4, 4, 2), 2, 3),
}

FORMULATIONS = [name for name in brainconv.LOWERINGS if name != 'lax']


def _transforms(layer, x, params):
    """Every transform of the layer's pure form ``f(params, x)``, as one pytree."""
    f = layer.apply

    def loss(p, a):
        return jnp.sum(jnp.tanh(f(p, a)) ** 2)

    weight = params['weight']
    tangent_p = jax.tree_util.tree_map(lambda v: jnp.cos(v), params)
    tangent_x = jnp.sin(x)
    out = {}
    out['jvp'] = jax.jvp(f, (params, x), (tangent_p, tangent_x))
    y, f_lin = jax.linearize(f, params, x)
    out['linearize'] = f_lin(tangent_p, tangent_x)
    out['jacfwd_x'] = jax.jacfwd(f, argnums=1)(params, x[:1])
    out['jacrev_w'] = jax.jacrev(lambda w: f({**params, 'weight': w}, x[:1]))(weight)
    out['hessian_w'] = jax.hessian(lambda w: loss({**params, 'weight': w}, x[:1]))(weight)
    out['grad_grad'] = jax.grad(lambda p: jnp.sum(jax.grad(loss, argnums=1)(p, x) ** 2))(params)
    no_bias = {k: v for k, v in params.items() if k != 'bias'}
    out['linear_transpose'] = jax.linear_transpose(lambda a: f(no_bias, a), x)(y)
    out['checkpoint'] = jax.grad(jax.checkpoint(loss), argnums=(0, 1))(params, x)
    out['vmap_x'] = jax.vmap(lambda a: f(params, a), in_axes=1, out_axes=1)(jnp.stack([x, 2 * x], axis=1))
    out['per_example_grad'] = jax.vmap(jax.grad(loss), in_axes=(None, 0))(params, x)
    out['vmap_w'] = jax.vmap(lambda w: f({**params, 'weight': w}, x))(jnp.stack([weight, -weight]))

    out['scan_grad'] = jax.grad(lambda p: jax.lax.scan(
        lambda c, a: (c + loss(p, a), None), jnp.zeros(()), jnp.stack([x, x[::-1]]))[0])(params)
    return out


def _run(layer, lowering, x):
    with brainconv.use_lowering(lowering):
        return jax.jit(lambda p, a: _transforms(layer, a, p))(layer.weight.value, x)


_REFERENCE = {}


def _reference(kind):
    """``'lax'``'s results for one layer kind (computed once per test process)."""
    if kind not in _REFERENCE:
        brainstate.random.seed(7)
        layer = {**LAYERS, **FEATURE_LAYERS}[kind]()
        x = jnp.asarray(np.random.default_rng(3).standard_normal((2,) + layer.in_size), jnp.float32)
        _REFERENCE[kind] = layer, x, _run(layer, 'lax', x)
    return _REFERENCE[kind]


def _assert_close(got, want, what):
    flat_got, tree_got = jax.tree_util.tree_flatten_with_path(got)
    flat_want, tree_want = jax.tree_util.tree_flatten_with_path(want)
    assert tree_got == tree_want, what
    for (path, a), (_, b) in zip(flat_got, flat_want):
        a, b = np.asarray(a), np.asarray(b)
        scale = max(1.0, float(np.max(np.abs(b)))) if b.size else 1.0
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5 * scale,
                                   err_msg=f"{what}: {jax.tree_util.keystr(path)}")


@pytest.mark.parametrize('lowering', FORMULATIONS)
@pytest.mark.parametrize('kind', list(LAYERS))
def test_every_transform_matches_lax(kind, lowering):
    if not in_share_by_index(list(LAYERS).index(kind)):
        pytest.skip(f'layer kind {kind!r} runs in another share of the suite (BRAINCONV_TEST_SHARE)')
    layer, x, want = _reference(kind)
    got = _run(layer, lowering, x)
    _assert_close(got, want, f"{kind} / {lowering}")


@pytest.mark.parametrize('kind', list(FEATURE_LAYERS))
def test_layer_features_under_every_transform(kind):
    layer, x, want = _reference(kind)
    lowering = layer.lowering
    assert lowering != 'lax'
    _assert_close(_run(layer, lowering, x), want, f"{kind} / {lowering}")


def test_the_reference_is_not_trivial():
    """The checks above compare non-zero, distinct results (a broken rule returning zeros would not pass)."""
    _, _, want = _reference('depthwise-bias')
    for key in ('jvp', 'jacfwd_x', 'hessian_w', 'grad_grad', 'linear_transpose', 'per_example_grad', 'vmap_w'):
        leaves = jax.tree_util.tree_leaves(want[key])
        assert any(float(jnp.max(jnp.abs(v))) > 1e-3 for v in leaves), key
    per_example = want['per_example_grad']['weight']
    assert not np.allclose(per_example[0], per_example[1])


def test_auto_picks_a_transformable_formulation():
    """'auto' is one of the formulations above on every layer kind (so the matrix covers it)."""
    for kind, make in {**LAYERS, **FEATURE_LAYERS}.items():
        layer = make()
        assert layer.lowering in brainconv.LOWERINGS, kind


def test_brainstate_transforms_on_stateful_layers():
    """brainstate's own transforms (which read and write states) through a non-'lax' formulation."""
    brainstate.random.seed(1)
    for lowering in ('taps', 'im2col'):
        layer = brainconv.Conv2d((5, 5, 2), 2, 3, groups=2, lowering=lowering)
        ref = brainconv.Conv2d((5, 5, 2), 2, 3, groups=2, lowering='lax')
        ref.weight.value = layer.weight.value
        x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 5, 2)), jnp.float32)
        results = {}
        for name, net in (('f', layer), ('lax', ref)):
            def loss(a, net=net):
                return jnp.sum(net(a) ** 2)

            params = net.states(brainstate.ParamState)
            results[name] = (
                brainstate.transform.jacfwd(lambda a, net=net: net(a))(x[:1]),
                brainstate.transform.hessian(loss)(x[:1]),
                brainstate.transform.fwd_grad(lambda x=x: loss(x), params, key=0)(),
                brainstate.transform.grad(loss, params)(x),
                brainstate.transform.for_loop(lambda a, net=net: net(a), jnp.stack([x, -x])),
                brainstate.transform.vmap(lambda a, net=net: net(a))(x),
            )
        _assert_close(results['f'], results['lax'], f"brainstate transforms / {lowering}")
