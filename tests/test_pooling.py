"""MaxPool and AvgPool against a NumPy oracle that loops over the windows.

The oracle (below) finds each window's real input positions in row-major order, takes their
maximum (and the first position that holds it: ``np.argmax`` returns the first) or their mean,
and builds the gradient by sending each output's cotangent to that first maximum (MaxPool) or
spreading it over the window (AvgPool).  Each geometry compiles one program.
"""

from __future__ import annotations

import inspect
import itertools
import math

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import brainconv
from brainconv import pooling

nn = brainstate.nn


# --- the oracle ---------------------------------------------------------------------------------

def _resolve(n, k, s, padding):
    """(lo, hi) pads of one axis, written out here (TensorFlow's SAME: the odd pad at the end)."""
    if padding == 'VALID':
        return 0, 0
    if padding == 'SAME':
        total = max((-(-n // s) - 1) * s + k - n, 0)
        return total // 2, total - total // 2
    return padding


class Oracle:
    """A pooling of inputs ``(*batch, *in_size)``, computed window by window."""

    def __init__(self, nd, in_size, k, s, padding, channel_first):
        self.nd, self.cf = nd, channel_first
        self.spatial = tuple(in_size[1:] if channel_first else in_size[:-1])
        self.k, self.s = (k,) * nd, (s,) * nd
        paddings = padding if isinstance(padding, list) else [padding] * nd
        self.pads = [_resolve(n, kk, ss, p) for n, kk, ss, p in zip(self.spatial, self.k, self.s, paddings)]
        self.out = tuple((n + lo + hi - kk) // ss + 1 for n, kk, ss, (lo, hi) in zip(self.spatial, self.k, self.s,
                                                                                        self.pads))

    def windows(self):
        """``(output index, window size, real input positions in row-major order)`` for every output."""
        for o in itertools.product(*(range(m) for m in self.out)):
            ranges = [range(i * ss - lo, i * ss - lo + kk) for i, ss, kk, (lo, _) in zip(o, self.s, self.k, self.pads)]
            real = [p for p in itertools.product(*ranges) if all(0 <= q < n for q, n in zip(p, self.spatial))]
            yield o, math.prod(self.k), real

    def _flat(self, x):
        """``(N, *spatial, C)`` and a function putting an ``(N, *spatial, C)`` result back in x's layout."""
        x = np.asarray(x)
        lead = x.shape[:x.ndim - self.nd - 1]
        xf = x.reshape((-1,) + x.shape[len(lead):])
        if self.cf:
            xf = np.moveaxis(xf, 1, -1)

        def back(yf):
            yf = np.moveaxis(yf, -1, 1) if self.cf else yf
            return yf.reshape(lead + yf.shape[1:])

        return xf, back

    def max(self, x, cotangent=None):
        """The maxima; with a cotangent also the input gradient (first maximum of each window)."""
        xf, back = self._flat(x)
        y = np.empty((xf.shape[0],) + self.out + (xf.shape[-1],), xf.dtype)
        gf, gx = (None, None) if cotangent is None else (self._flat(cotangent)[0], np.zeros(xf.shape))
        for o, _, real in self.windows():
            values = np.stack([xf[(slice(None),) + p] for p in real], axis=1)  # (N, window, C)
            y[(slice(None),) + o] = values.max(axis=1)
            if gx is not None:
                first = values.argmax(axis=1)  # the first maximum (or the first NaN)
                for w, p in enumerate(real):
                    gx[(slice(None),) + p] += np.where(first == w, gf[(slice(None),) + o], 0)
        return back(y) if gx is None else (back(y), back(gx))

    def avg(self, x, count_include_pad=True, cotangent=None):
        xf, back = self._flat(x)
        xf = xf.astype(np.float64)
        y = np.empty((xf.shape[0],) + self.out + (xf.shape[-1],))
        gf, gx = (None, None) if cotangent is None else (self._flat(cotangent)[0], np.zeros(xf.shape))
        for o, size, real in self.windows():
            count = size if count_include_pad else len(real)
            y[(slice(None),) + o] = sum(xf[(slice(None),) + p] for p in real) / count
            if gx is not None:
                for p in real:
                    gx[(slice(None),) + p] += gf[(slice(None),) + o] / count
        return back(y) if gx is None else (back(y), back(gx))


def pullback(layer, x, c):
    """``(layer(x), the input gradient for cotangent c)``, in one program."""
    def run(x, c):
        y, vjp = jax.vjp(layer, x)
        return y, vjp(c)[0]
    return jax.jit(run)(jnp.asarray(x), jnp.asarray(c))


def spatial_shape(nd):
    return (7, 6, 5)[:nd] if nd < 3 else (5, 4, 6)


def in_size_of(nd, channels, channel_first):
    spatial = spatial_shape(nd)
    return (channels,) + spatial if channel_first else spatial + (channels,)


def tied(rng, shape, dtype=np.float32):
    """Small integers: many ties in every window, negative values too."""
    return rng.integers(-2, 3, size=shape).astype(dtype)


# --- forward, gradient and shapes over the geometry matrix ----------------------------------------

GEOMETRIES = [  # (kernel, stride, padding): tiling, tiling with a pad, tiling with a crop, overlapping
    (2, 2, 'VALID'),
    (2, 2, 'SAME'),
    (3, 3, 'VALID'),
    (3, 2, 'VALID'),
    (3, 1, 'SAME'),
    (3, 2, [(1, 2), (2, 0), (0, 1)]),
]
BATCHES = [(), (2,), (2, 3)]


@pytest.mark.parametrize('nd', [1, 2, 3])
@pytest.mark.parametrize('geometry', range(len(GEOMETRIES)))
@pytest.mark.parametrize('channel_first', [False, True])
def test_forward_and_gradient_against_the_oracle(nd, geometry, channel_first):
    k, s, padding = GEOMETRIES[geometry]
    padding = padding[:nd] if isinstance(padding, list) else padding
    batch = BATCHES[(nd + geometry) % 3]
    in_size = in_size_of(nd, 3, channel_first)
    rng = np.random.default_rng(nd * 100 + geometry * 10 + channel_first)
    x = tied(rng, batch + in_size)
    layers = [brainconv.MaxPool(nd, in_size, k, s, padding, channel_first),
              brainconv.AvgPool(nd, in_size, k, s, padding, channel_first),
              brainconv.AvgPool(nd, in_size, k, s, padding, channel_first, count_include_pad=False)]
    oracle = Oracle(nd, in_size, k, s, [tuple(p) for p in padding] if isinstance(padding, list) else padding,
                    channel_first)
    assert all(layer.out_size == layers[0].out_size for layer in layers)
    out_shape = batch + layers[0].out_size
    cotangent = rng.integers(1, 9, size=out_shape).astype(np.float32)  # overlapping windows' sums are exact

    @jax.jit
    def run(x, c):
        out = []
        for layer in layers:
            y, vjp = jax.vjp(layer, x)
            out.append((y, vjp(c)[0]))
        return out

    (y_max, g_max), (y_avg, g_avg), (y_real, g_real) = run(x, cotangent)
    want_max, want_g_max = oracle.max(x, cotangent)
    assert y_max.shape == out_shape and y_max.dtype == jnp.float32
    np.testing.assert_array_equal(y_max, want_max)
    np.testing.assert_array_equal(g_max, want_g_max)
    for (y, g), include in ((y_avg, g_avg), True), ((y_real, g_real), False):
        want_y, want_g = oracle.avg(x, include, cotangent)
        assert y.shape == out_shape and y.dtype == jnp.float32
        np.testing.assert_allclose(y, want_y, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(g, want_g, rtol=1e-5, atol=1e-6)


def test_spikes_send_each_window_gradient_to_its_first_spike():
    """0/1 inputs: every window full of ties (all zeros, or several spikes)."""
    rng = np.random.default_rng(1)
    in_size = (9, 8, 2)
    x = (rng.random((4,) + in_size) < 0.3).astype(np.float32)
    for k, s, padding in ((2, 2, 'VALID'), (3, 2, 'SAME')):
        layer = brainconv.MaxPool2d(in_size, k, s, padding)
        c = rng.integers(1, 9, size=(4,) + layer.out_size).astype(np.float32)
        _, g = pullback(layer, x, c)
        np.testing.assert_array_equal(g, Oracle(2, in_size, k, s, padding, False).max(x, c)[1])
    # By hand: the window [[0, 1], [1, 1]] sends its gradient to (0, 1); [[0, 0], [0, 0]] to (0, 0).
    x = jnp.asarray(np.array([[0, 1, 0, 0], [1, 1, 0, 0]], np.float32)[..., None])
    g = jax.grad(lambda x: jnp.sum(brainconv.MaxPool2d((2, 4, 1), 2)(x) * jnp.array([[[3.], [5.]]])))(x)
    np.testing.assert_array_equal(g[..., 0], [[0, 3, 5, 0], [0, 0, 0, 0]])


def test_pads_never_win_and_never_take_the_gradient():
    """Windows whose real inputs are all -inf: the maximum is -inf, from a real input."""
    in_size = (5, 5, 1)
    x = np.full((1,) + in_size, -np.inf, np.float32)
    x[0, 2, 2, 0] = 1.0
    c = np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1) + 1
    for padding in ('SAME', [(2, 1), (1, 2)]):
        layer = brainconv.MaxPool2d(in_size, 3, 2, padding)
        oracle = Oracle(2, in_size, 3, 2, padding, False)
        y, g = pullback(layer, x, c)
        want_y, want_g = oracle.max(x, c)
        np.testing.assert_array_equal(y, want_y)
        np.testing.assert_array_equal(g, want_g)
        assert float(g.sum()) == float(c.sum())  # nothing lost to the pads


def test_nan_propagates_and_takes_the_gradient():
    x = np.zeros((6, 1), np.float32)
    x[1] = x[3] = np.nan
    for k, s in ((2, 2), (3, 1)):
        layer = brainconv.MaxPool1d((6, 1), k, s)
        c = np.ones(layer.out_size, np.float32)
        y, g = pullback(layer, x, c)
        want_y, want_g = Oracle(1, (6, 1), k, s, 'VALID', False).max(x, c)
        np.testing.assert_array_equal(y, want_y)
        np.testing.assert_array_equal(g, want_g)


# --- dtypes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('dtype', [np.bool_, np.int8, np.int32, np.uint8])
def test_max_pool_keeps_boolean_and_integer_dtypes(dtype):
    rng = np.random.default_rng(2)
    in_size = (7, 7, 2)
    x = (rng.random((2,) + in_size) < 0.2) if dtype == np.bool_ else rng.integers(-100, 100, (2,) + in_size)
    x = np.asarray(x).astype(dtype) if dtype != np.uint8 else np.abs(x).astype(dtype)
    for k, s, padding in ((2, 2, 'VALID'), (3, 2, 'SAME'), (2, 2, 'SAME')):
        y = brainconv.MaxPool2d(in_size, k, s, padding)(jnp.asarray(x))
        assert y.dtype == dtype
        np.testing.assert_array_equal(y, Oracle(2, in_size, k, s, padding, False).max(x))


def test_spikes_stay_spikes_into_the_next_convolution():
    net = nn.Sequential(brainconv.MaxPool2d((8, 8, 2), 2), brainconv.Conv2d.desc(out_channels=3, kernel_size=3))
    x = jnp.asarray(np.random.default_rng(3).random((2, 8, 8, 2)) < 0.2)
    pooled = net.layers[0](x)
    assert pooled.dtype == jnp.bool_
    np.testing.assert_allclose(net(x), net.layers[1](pooled.astype(jnp.float32)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('dtype', [np.bool_, np.int32])
def test_avg_pool_of_spikes_is_float32(dtype):
    x = (np.random.default_rng(4).random((3, 6, 2)) < 0.5).astype(dtype)
    y = brainconv.AvgPool1d((6, 2), 3, 1, 'SAME', count_include_pad=False)(jnp.asarray(x))
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, Oracle(1, (6, 2), 3, 1, 'SAME', False).avg(x, False), rtol=1e-6)


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
def test_16_bit_inputs(dtype):
    """AvgPool sums in float32: the result is the exact mean rounded once; MaxPool is exact."""
    rng = np.random.default_rng(5)
    in_size = (12, 12, 4)
    x = jnp.asarray(rng.normal(size=(2,) + in_size), dtype)
    xf = np.asarray(x.astype(jnp.float32), np.float64)
    oracle = Oracle(2, in_size, 3, 1, 'SAME', False)
    y = brainconv.AvgPool2d(in_size, 3, 1, 'SAME')(x)
    assert y.dtype == dtype
    want = oracle.avg(xf)
    eps = float(jnp.finfo(dtype).eps)
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=eps, atol=eps * np.abs(want).max() / 2)
    ym = brainconv.MaxPool2d(in_size, 3, 1, 'SAME')(x)
    assert ym.dtype == dtype
    np.testing.assert_array_equal(np.asarray(ym, np.float64), oracle.max(xf))


# --- every transform --------------------------------------------------------------------------------

def selection_matrix(oracle, x):
    """The MaxPool Jacobian from the oracle: row o is one-hot at o's window's first maximum."""
    xf = np.asarray(x, np.float64).ravel()
    y = oracle.max(x)
    rows = []
    for i in range(y.size):
        c = np.zeros(y.size)
        c[i] = 1
        rows.append(oracle.max(x, c.reshape(y.shape))[1].ravel())
    return np.array(rows).reshape(y.shape + x.shape), xf


def test_max_pool_every_transform():
    rng = np.random.default_rng(6)
    in_size = (5, 4, 1)
    x = jnp.asarray(tied(rng, in_size))
    xs = jnp.stack([x, -x, 2 * x])
    t = jnp.asarray(rng.normal(size=in_size).astype(np.float32))
    layer = brainconv.MaxPool2d(in_size, 3, 2, 'SAME')
    oracle = Oracle(2, in_size, 3, 2, 'SAME', False)
    jac, _ = selection_matrix(oracle, np.asarray(x))
    ny, nx = math.prod(layer.out_size), math.prod(in_size)
    J = jac.reshape(ny, nx)

    def scanned(xs):
        step = jax.checkpoint(lambda c, x: (c + jnp.sum(layer(x) ** 2), None))
        return lax.scan(step, jnp.zeros((), jnp.float32), xs)[0]

    @jax.jit  # one program for every transform
    def transforms(x, xs, t):
        return dict(
            jvp=jax.jvp(layer, (x,), (t,))[1],
            linearize=jax.linearize(layer, x)[1](t),
            jacfwd=jax.jacfwd(layer)(x),
            jacrev=jax.jacrev(layer)(x),
            # sum(pool(x) ** 2) has Hessian 2 J^T J: second order through the rule and its own derivative
            hessian=jax.hessian(lambda x: jnp.sum(layer(x) ** 2))(x),
            # jvp of jvp: the tangent map is linear, its derivative along x is zero
            jvp_jvp=jax.jvp(lambda x: jax.jvp(layer, (x,), (t,))[1], (x,), (t,))[1],
            vmap=jax.vmap(layer)(xs), batched=layer(xs),
            vmap_grad=jax.vmap(jax.grad(lambda x: jnp.sum(layer(x))))(xs),
            scan_grad=jax.grad(scanned)(xs),  # through lax.scan over time and jax.checkpoint
        )

    r = transforms(x, xs, t)
    for name in ('jvp', 'linearize'):
        np.testing.assert_array_equal(r[name], (J @ np.asarray(t, np.float64).ravel()).reshape(layer.out_size))
    np.testing.assert_array_equal(r['jacfwd'], jac)
    np.testing.assert_array_equal(r['jacrev'], jac)
    np.testing.assert_array_equal(np.asarray(r['hessian']).reshape(nx, nx), 2 * J.T @ J)
    np.testing.assert_array_equal(r['jvp_jvp'], 0)
    np.testing.assert_array_equal(r['vmap'], r['batched'])
    for v, g, gs in zip(np.asarray(xs), r['vmap_grad'], r['scan_grad']):
        np.testing.assert_array_equal(g, oracle.max(v, np.ones(layer.out_size))[1])
        np.testing.assert_array_equal(gs, oracle.max(v, 2 * oracle.max(v))[1])


def test_avg_pool_every_transform():
    rng = np.random.default_rng(7)
    in_size = (2, 5, 4)  # channel first
    layer = brainconv.AvgPool2d(in_size, 3, 2, ((1, 1), (1, 0)), channel_first=True, count_include_pad=False)
    oracle = Oracle(2, in_size, 3, 2, [(1, 1), (1, 0)], True)
    nx, ny = math.prod(in_size), math.prod(layer.out_size)
    A = np.stack([oracle.avg(np.eye(nx)[i].reshape(in_size), False).ravel() for i in range(nx)], axis=1)
    x = jnp.asarray(rng.normal(size=in_size).astype(np.float32))
    xs = jnp.stack([x, 2 * x])
    c = jnp.asarray(rng.normal(size=layer.out_size).astype(np.float32))

    def scanned(xs):  # sum over steps of <pool(x), x[:, :3, :2]>
        step = jax.checkpoint(lambda acc, x: (acc + jnp.sum(layer(x) * x[:, :3, :2]), None))
        return lax.scan(step, jnp.zeros((), jnp.float32), xs)[0]

    @jax.jit
    def transforms(x, xs, c):
        return dict(
            transpose=jax.linear_transpose(layer, x)(c)[0],
            jacfwd=jax.jacfwd(layer)(x), jacrev=jax.jacrev(layer)(x),
            hessian=jax.hessian(lambda x: jnp.sum(layer(x) ** 2))(x),
            vmap=jax.vmap(layer)(xs), batched=layer(xs), scan_grad=jax.grad(scanned)(xs))

    r = transforms(x, xs, c)
    close = dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(r['transpose']).ravel(), A.T @ np.asarray(c).ravel(), **close)
    np.testing.assert_allclose(np.asarray(r['jacfwd']).reshape(ny, nx), A, **close)
    np.testing.assert_allclose(np.asarray(r['jacrev']).reshape(ny, nx), A, **close)
    np.testing.assert_allclose(np.asarray(r['hessian']).reshape(nx, nx), 2 * A.T @ A, **close)
    np.testing.assert_allclose(r['vmap'], r['batched'], **close)
    for v, g in zip(np.asarray(xs, np.float64), r['scan_grad']):
        pooled = (A @ v.ravel()).reshape(layer.out_size)
        want = A.T @ v[:, :3, :2].ravel() + np.pad(pooled, ((0, 0), (0, 2), (0, 2))).ravel()
        np.testing.assert_allclose(np.asarray(g).ravel(), want, **close)


def test_quantities_keep_their_unit():
    x = u.Quantity(np.arange(8, dtype=np.float32).reshape(4, 2), unit=u.mV)
    for layer in (brainconv.MaxPool1d((4, 2), 2), brainconv.AvgPool1d((4, 2), 2)):
        y = layer(x)
        assert isinstance(y, u.Quantity) and y.unit == u.mV
    np.testing.assert_array_equal(brainconv.MaxPool1d((4, 2), 2)(x).mantissa, [[2, 3], [6, 7]])


# --- construction: shapes, signatures, reprs, errors ------------------------------------------------

@pytest.mark.parametrize('args, out_size, pads', [
    (((28, 28, 16), 2), (14, 14, 16), ((0, 0), (0, 0))),
    (((28, 28, 16), 3, 2, 'SAME'), (14, 14, 16), ((0, 1), (0, 1))),
    (((27, 27, 16), 3, 2, 1), (14, 14, 16), ((1, 1), (1, 1))),
    (((16, 9, 9), 2, None, 'SAME', True), (16, 5, 5), ((0, 1), (0, 1))),
    (((10, 7, 1), (2, 3), (1, 2), ('CAUSAL', (1, 1))), (10, 4, 1), ((1, 0), (1, 1))),
    (((5, 5, 1), 2, 2), (2, 2, 1), ((0, 0), (0, 0))),
])
def test_out_size_and_pads(args, out_size, pads):
    for cls in (brainconv.MaxPool2d, brainconv.AvgPool2d):
        layer = cls(*args)
        assert layer.out_size == out_size and layer.pads == pads
        shape = jax.eval_shape(layer, jax.ShapeDtypeStruct((3,) + tuple(args[0]), jnp.float32)).shape
        assert shape == (3,) + out_size


def test_fixed_rank_classes_only_fix_the_rank():
    for base in (brainconv.MaxPool, brainconv.AvgPool):
        generic = list(inspect.signature(base).parameters.values())
        assert generic[0].name == 'num_spatial_dims'
        for nd in (1, 2, 3):
            cls = getattr(brainconv, f'{base.__name__}{nd}d')
            assert issubclass(cls, base) and cls.__module__ == 'brainconv.pooling'
            assert list(inspect.signature(cls).parameters.values()) == generic[1:]
            assert f'{nd}-d' in cls.__doc__ and cls.__doc__ != base.__doc__
    assert list(inspect.signature(brainconv.MaxPool2d).parameters) == [
        'in_size', 'kernel_size', 'stride', 'padding', 'channel_first', 'name']
    assert list(inspect.signature(brainconv.AvgPool2d).parameters)[-1] == 'count_include_pad'


def test_repr():
    assert repr(brainconv.MaxPool2d((28, 28, 16), 3, 2, 'same')) == (
        "MaxPool2d((28, 28, 16) -> (14, 14, 16), kernel=(3, 3), stride=(2, 2), padding=SAME ((0, 1), (0, 1)))")
    assert repr(brainconv.AvgPool1d((4, 10), 2, padding=1, channel_first=True, count_include_pad=False)) == (
        "AvgPool1d((4, 10) -> (4, 6), kernel=(2,), stride=(2,), padding=explicit ((1, 1),), "
        "count_include_pad=False, channel_first=True)")


def test_desc_in_a_sequential():
    net = nn.Sequential(
        brainconv.Conv2d((12, 12, 1), 4, 3),
        brainconv.MaxPool2d.desc(kernel_size=2),
        brainconv.Conv2d.desc(out_channels=6, kernel_size=3),
        brainconv.AvgPool2d.desc(kernel_size=3, stride=2, padding='SAME'),
    )
    assert net.out_size == (3, 3, 6)
    assert net(jnp.ones((2, 12, 12, 1))).shape == (2, 3, 3, 6)


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(kernel_size=0), ValueError, r"kernel_size must be positive on every axis, got 0"),
    (dict(kernel_size=(2, 2, 2)), ValueError, r"kernel_size must be an int or a sequence of 1 or 2 ints"),
    (dict(kernel_size=2.5), TypeError, r"kernel_size must be an int or a sequence of 1 or 2 ints, got 2.5"),
    (dict(kernel_size=9), ValueError, r"kernel_size must fit in the padded input: 9 on axis 0"),
    (dict(stride=0), ValueError, r"stride must be positive on every axis, got 0"),
    (dict(stride=(1, 2, 3)), ValueError, r"stride must be an int or a sequence of 1 or 2 ints"),
    (dict(padding='FULL'), ValueError, r"padding must be one of \('SAME', 'SAME_LOWER', 'VALID', 'CAUSAL'\)"),
    (dict(padding=-1), ValueError, r"padding must be non-negative, got -1"),
    (dict(padding=2), ValueError, r"padding must leave an input position in every window, got padding=2: "
                                  r"pads \(2, 2\) on axis 0 .* window 0"),
    (dict(padding=((0, 0), (0, 4)), kernel_size=3, stride=3), ValueError, r"window 3 entirely in the padding"),
    (dict(in_size=(8, 8)), ValueError, r"in_size must be a sequence of 3 ints \(\*spatial, C\) for a 2-d pooling"),
    (dict(in_size=(8, 0, 2)), ValueError, r"in_size entries must be positive"),
    (dict(in_size=(8, 8.0, 2)), TypeError, r"in_size must hold ints"),
    (dict(channel_first=True, in_size=(2, 8)), ValueError, r"\(C, \*spatial\) for a 2-d pooling"),
    (dict(channel_first='yes'), TypeError, r"channel_first must be a bool, got 'yes'"),
])
def test_argument_errors(kwargs, error, match):
    args = dict(in_size=(8, 8, 2), kernel_size=2)
    args.update(kwargs)
    for cls in (brainconv.MaxPool2d, brainconv.AvgPool2d):
        with pytest.raises(error, match=match):
            cls(**args)


def test_other_errors():
    with pytest.raises(ValueError, match='num_spatial_dims must be a positive int, got 0'):
        brainconv.MaxPool(0, (8, 2), 2)
    with pytest.raises(TypeError, match="count_include_pad must be a bool, got 'yes'"):
        brainconv.AvgPool1d((8, 2), 2, count_include_pad='yes')
    layer = brainconv.MaxPool2d((8, 8, 2), 2)
    with pytest.raises(ValueError, match=r"MaxPool2d expects input of shape \(\*batch, \*in_size\) = "
                                         r"\(\*batch, 8, 8, 2\), got shape \(8, 8, 3\)"):
        layer(jnp.ones((8, 8, 3)))
    with pytest.raises(TypeError, match='MaxPool2d expects a real input'):
        layer(jnp.ones((8, 8, 2), jnp.complex64))


# --- summary rows and receptive fields ---------------------------------------------------------------

def test_summary_rows_match_brainstates_pools():
    """brainconv's pools give the rows brainstate's pools with the same windows give."""
    w = lambda shape: np.full(shape, 0.1, np.float32)  # noqa: E731
    head = brainconv.Conv2d((16, 16, 2), 4, 3, w_init=w)
    ours = [head, brainconv.MaxPool2d((16, 16, 4), 3, 2, 'SAME'), brainconv.AvgPool2d((8, 8, 4), 2),
            brainconv.MaxPool2d((4, 4, 4), 2, 1, ((1, 0), (0, 1)))]
    theirs = [head, nn.MaxPool2d(3, 2, padding='SAME', channel_axis=-1), nn.AvgPool2d(2, 2, channel_axis=-1),
              nn.MaxPool2d(2, 1, padding=((1, 0), (0, 1)), channel_axis=-1)]
    a, b = brainconv.summary(ours, in_size=(16, 16, 2)), brainconv.summary(theirs, in_size=(16, 16, 2))
    assert [r.type for r in a.rows] == ['Conv2d', 'MaxPool2d', 'AvgPool2d', 'MaxPool2d']
    for ra, rb in zip(a.rows, b.rows):
        assert {**ra.to_dict(), 'path': None} == {**rb.to_dict(), 'path': None}
    assert a.rows[1].pads == ((0, 1), (0, 1)) and a.rows[1].kernel_size == (3, 3) and a.rows[1].macs == 0
    assert brainconv.receptive_field(ours) == brainconv.receptive_field(theirs)
    rf = brainconv.receptive_field(ours)
    # 3 (conv), + 2 (3-window at jump 1), + 2 (2-window at jump 2), + 4 (2-window at jump 4)
    assert rf.size == (11, 11) and rf.jump == (4, 4)
    assert str(a) and a.out_size == (4, 4, 4)


def test_receptive_field_is_the_gradient_support_of_an_avg_pool_chain():
    layers = [brainconv.AvgPool1d((20, 1), 3, 2, 'SAME'), brainconv.AvgPool1d((10, 1), 2, 1, 'VALID')]
    rf = brainconv.receptive_field(layers)
    jac = np.asarray(jax.jacrev(lambda x: layers[1](layers[0](x)))(jnp.ones((20, 1))))[:, 0, :, 0]
    for o in range(2, 7):  # away from the border
        support = np.nonzero(jac[o])[0]
        centre, half = float(rf.start[0] + o * rf.jump[0]), (float(rf.size[0]) - 1) / 2
        assert (support.min(), support.max()) == (centre - half, centre + half)


def test_pooling_module_exports():
    assert set(pooling.__all__) <= set(brainconv.__all__)
