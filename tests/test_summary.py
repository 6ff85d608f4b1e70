"""brainconv.summary and brainconv.receptive_field against what really happens.

Every network here is run once for real; each row's sizes are checked against
the arrays that came out, parameter counts against the states, MACs against a
count from the actual weight arrays and output shapes, and receptive fields
against the support of an input gradient.
"""

import contextlib
import dataclasses
import html.parser
import math
from fractions import Fraction

import brainstate
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import brainconv

nn = brainstate.nn


def w_init(scale=0.1, seed=0):
    rng = np.random.default_rng(seed)
    return lambda shape: (rng.normal(size=shape) * scale).astype(np.float32)


def ones(shape):
    return np.ones(shape, np.float32)


def jax_init(init):
    """brainstate's layers want JAX arrays (its weight standardisation fails on NumPy ones)."""
    return lambda shape: jnp.asarray(init(shape))


BS_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ScaledWSConv1d, nn.ScaledWSConv2d, nn.ScaledWSConv3d)
BS_TRANSPOSES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def bias(shape):
    return np.full(shape, 0.01, np.float32)


@contextlib.contextmanager
def lenient_promotion():
    """brainstate's own layers rely on implicit promotion (Linear adds its bias by rank
    promotion, AvgPool divides by an int); conftest.py makes both strict."""
    with jax.numpy_rank_promotion('allow'), jax.numpy_dtype_promotion('standard'):
        yield


# --- independent counts -----------------------------------------------------------------------

def state_params(module):
    """Number of parameter entries held by a module's ParamStates."""
    return sum(int(np.size(leaf)) for s in module.states(brainstate.ParamState).values()
               for leaf in jax.tree.leaves(s.value))


def macs_from_run(layer, x, y):
    """MACs per example from the real weight array and the real input/output arrays.

    A convolution: every kernel entry is used once per output position; a
    transposed convolution: once per input position; a dense layer: once per
    leading position.  Everything else: zero.
    """
    if isinstance(layer, (brainconv.Conv, brainconv.ConvTranspose) + BS_CONVS + BS_TRANSPOSES):
        kernel = np.asarray(layer.weight.value['weight'])
        nd = layer.num_spatial_dims
        side = x if isinstance(layer, (brainconv.ConvTranspose,) + BS_TRANSPOSES) else y
        spatial = side.shape[2:] if layer.channel_first else side.shape[1:1 + nd]
        return kernel.size * math.prod(spatial)
    if isinstance(layer, nn.Linear):
        return layer.weight.value['weight'].size * math.prod(x.shape[1:-1])
    return 0


def run_sequential(net, x):
    """Run a Sequential layer by layer; (input, output) arrays for every layer."""
    records = []
    with lenient_promotion():
        for layer in net.layers:
            y = layer(x)
            records.append((layer, x, y))
            x = y
    return records


def check_against_run(rows, records):
    assert len(rows) == len(records)
    for row, (layer, x, y) in zip(rows, records):
        assert row.in_size == tuple(x.shape[1:]), row.path
        assert row.out_size == tuple(y.shape[1:]), row.path
        expected_params = state_params(layer) if isinstance(layer, nn.Module) else 0
        assert row.params == expected_params, row.path
        assert row.macs == macs_from_run(layer, x, y), row.path


# --- networks ---------------------------------------------------------------------------------

def vision_net():
    return nn.Sequential(
        brainconv.Conv2d((12, 12, 1), 4, 3, w_init=w_init(), b_init=bias),
        nn.ReLU(),
        nn.MaxPool2d(2, 2, channel_axis=-1, in_size=(12, 12, 4)),
        brainconv.Conv2d((6, 6, 4), 8, (3, 2), stride=(1, 2), padding='VALID', groups=2, w_init=w_init()),
        jax.nn.relu,
        brainconv.ScaledWSConv2d((4, 3, 8), 8, 3, rhs_dilation=2, padding='SAME', w_init=w_init()),
        nn.AvgPool2d(2, 1, padding='SAME', channel_axis=-1),  # no in_size: summary works it out
        nn.Flatten(in_size=(4, 3, 8)),
        nn.Linear(96, 10),
    )


def channel_first_net():
    return nn.Sequential(
        brainconv.Conv2d((2, 9, 7), 3, 3, stride=2, padding='CAUSAL', channel_first=True, w_init=w_init()),
        nn.Tanh(),
        nn.MaxPool2d(2, 1, padding=1, channel_axis=-3),
        brainconv.Conv2d((3, 6, 5), 4, 1, channel_first=True, lhs_dilation=2, padding=((1, 0), (0, 2)),
                         w_init=w_init()),
    )


def decoder_net():
    return nn.Sequential(
        brainconv.Conv1d((16, 2), 4, 4, stride=2, padding='SAME_LOWER', w_init=w_init()),
        brainconv.ConvTranspose1d((8, 4), 3, 4, stride=2, w_init=w_init(), b_init=bias),
        brainconv.ConvTranspose1d((16, 3), 2, 3, stride=3, padding='VALID', output_padding=1, groups=1,
                                  w_init=w_init()),
        brainconv.Conv1d((49, 2), 2, 5, padding_mode='REFLECT', groups=2, w_init=w_init()),
    )


def volume_net():
    return nn.Sequential(
        brainconv.Conv3d((6, 6, 6, 1), 2, 3, padding='VALID', w_init=w_init()),
        nn.MaxPool3d(2, 2, channel_axis=-1),
        brainconv.Conv3d((2, 2, 2, 2), 4, 2, w_init=w_init()),
    )


def brainstate_net():
    """brainconv layers mixed with brainstate's own, every kind and padding meaning."""
    with lenient_promotion():
        return nn.Sequential(
            brainconv.Conv2d((10, 9, 2), 4, 3, w_init=w_init()),
            nn.Conv2d((10, 9, 4), 4, [3], stride=2, groups=2, w_init=jax_init(w_init()), b_init=jax_init(bias)),
            nn.ConvTranspose2d((5, 5, 4), 3, 3, stride=2, w_init=jax_init(w_init())),
            nn.ScaledWSConv2d((10, 10, 3), 2, 2, padding='VALID', rhs_dilation=2, w_init=jax_init(w_init())),
            nn.ConvTranspose2d((8, 8, 2), 2, 2, stride=3, padding='VALID', w_init=jax_init(w_init())),
            nn.ReLU(),
            # pads of the stride-dilated input; 3 is more than the kernel span less one
            nn.ConvTranspose2d((24, 24, 2), 1, 3, padding=(3, 1), w_init=jax_init(w_init())),
            nn.Conv2d((28, 24, 1), 2, 3, lhs_dilation=2, padding=((1, 0), (2, 1)), w_init=jax_init(w_init())),
        )


def pooling_net():
    """brainconv's own pooling layers between convolutions, channels first."""
    return nn.Sequential(
        brainconv.Conv2d((2, 13, 12), 4, 3, channel_first=True, w_init=w_init()),
        brainconv.MaxPool2d((4, 13, 12), 3, 2, 'SAME', channel_first=True),
        brainconv.Conv2d((4, 7, 6), 4, 3, channel_first=True, w_init=w_init()),
        brainconv.AvgPool2d((4, 7, 6), 2, padding=((0, 1), (0, 0)), channel_first=True, count_include_pad=False),
    )


@pytest.mark.parametrize('make, in_shape', [
    (pooling_net, (2, 13, 12)),
    (brainstate_net, (10, 9, 2)),
    (vision_net, (12, 12, 1)),
    (channel_first_net, (2, 9, 7)),
    (decoder_net, (16, 2)),
    (volume_net, (6, 6, 6, 1)),
])
def test_rows_match_a_real_run(make, in_shape):
    net = make()
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2,) + in_shape).astype(np.float32))
    s = brainconv.summary(net)
    records = run_sequential(net, x)
    check_against_run(s.rows, records)
    assert s.in_size == in_shape
    assert s.out_size == tuple(records[-1][2].shape[1:])
    assert s.total_params == state_params(net)
    assert s.total_macs == sum(macs_from_run(layer, x, y) for layer, x, y in records)


def test_geometry_columns_of_a_known_layer():
    s = brainconv.summary(vision_net())
    conv = s.rows[3].to_dict()
    assert conv['kernel_size'] == (3, 2) and conv['stride'] == (1, 2) and conv['groups'] == 2
    assert conv['pads'] == ((0, 0), (0, 0)) and conv['rhs_dilation'] == (1, 1)
    ws = s.rows[5].to_dict()
    # SAME with a dilated 3-tap kernel spans 5: two pads on each side.
    assert ws['pads'] == ((2, 2), (2, 2)) and ws['rhs_dilation'] == (2, 2)
    pool = s.rows[6].to_dict()
    # lax's SAME for a 2-window at stride 1 pads one at the end.
    assert pool['kernel_size'] == (2, 2) and pool['pads'] == ((0, 1), (0, 1))
    assert [r.type for r in s.rows][:3] == ['Conv2d', 'ReLU', 'MaxPool2d']
    assert s.rows[4].type == 'relu' and s.rows[4].params == 0


class Net(nn.Module):
    """A non-Sequential model: layers in attributes, a list, a dict, and a parameter of its own."""

    def __init__(self):
        super().__init__()
        self.conv = brainconv.Conv2d((8, 8, 3), 6, 3, stride=2, w_init=w_init(), b_init=bias)
        self.blocks = [brainconv.Conv2d((4, 4, 6), 6, 3, groups=3, w_init=w_init()), nn.ReLU()]
        self.pool = nn.AvgPool2d(2, 2, in_size=(4, 4, 6))
        self.head = {'flat': nn.Flatten(in_size=(2, 2, 6)), 'fc': nn.Linear(24, 5)}
        self.scale = brainstate.ParamState(jnp.ones(5))

    def update(self, x, record=None):
        record = [] if record is None else record
        for layer in (self.conv, *self.blocks, self.pool, self.head['flat'], self.head['fc']):
            y = layer(x)
            record.append((layer, x, y))
            x = y
        return x * self.scale.value


def test_a_custom_module():
    with lenient_promotion():  # AvgPool2d runs itself on a dummy input to learn its out_size
        net = Net()
    x = jnp.ones((3, 8, 8, 3))
    records = []
    with lenient_promotion():
        net(x, records)
    s = brainconv.summary(net)
    assert [r.path for r in s.rows] == ['conv', 'blocks.0', 'blocks.1', 'pool', 'head.flat', 'head.fc', 'scale']
    check_against_run(s.rows[:-1], records)
    assert s.total_macs == sum(macs_from_run(layer, x, y) for layer, x, y in records)
    assert s.rows[-1].params == 5
    assert s.total_params == state_params(net) == sum(state_params(layer) for layer, _, _ in records) + 5
    assert s.param_bytes == 4 * state_params(net)


def test_a_shared_layer_counts_its_parameters_once():
    conv = brainconv.Conv1d((10, 2), 2, 3, w_init=w_init())
    net = nn.Sequential(conv, nn.ReLU(), conv)
    s = brainconv.summary(net)
    assert [r.params for r in s.rows] == [conv.num_params, 0, 0]
    assert 'shared with layers.0' in s.rows[2].type
    assert s.total_params == state_params(net) == 2 * 3 * 2
    assert s.total_macs == 2 * (10 * 2 * 3 * 2)  # it runs twice


def test_quantity_weights_count_their_mantissa():
    import brainunit as u
    layer = brainconv.Conv2d((5, 5, 2), 3, 3, w_init=lambda shape: u.Quantity(np.ones(shape, np.float32), unit=u.mS))
    s = brainconv.summary(layer)
    assert s.total_params == 3 * 3 * 2 * 3
    assert s.rows[0].path == 'Conv2d' and s.rows[0].type == 'Conv2d'  # a layer on its own: named by its type


def test_in_size_argument():
    net = nn.Sequential(nn.ReLU(), brainconv.Conv1d((7, 1), 1, 3, w_init=ones))
    s = brainconv.summary(net)  # the ReLU first: the model's in_size is unknown
    assert s.rows[0].in_size is None and s.rows[1].in_size == (7, 1)
    s = brainconv.summary(net, in_size=(7, 1))
    assert s.rows[0].in_size == s.rows[0].out_size == (7, 1)
    assert s.rows[1].receptive_field is not None
    with pytest.raises(ValueError, match=r"in_size \(8, 1\) does not match the model's in_size \(7, 1\)"):
        brainconv.summary(brainconv.Conv1d((7, 1), 1, 3, w_init=ones), in_size=(8, 1))
    with pytest.raises(ValueError, match='in_size must be a sequence of positive ints'):
        brainconv.summary(net, in_size=(7, 0))
    with pytest.raises(ValueError, match='at least one layer'):
        brainconv.summary([])
    with pytest.raises(TypeError, match='expected brainstate Modules or callables, got int'):
        brainconv.summary([brainconv.Conv1d((7, 1), 1, 3, w_init=ones), 3])


def test_summary_runs_nothing(monkeypatch):
    net = vision_net()

    def refuse(*args, **kwargs):
        raise AssertionError('summary must not run or trace anything')

    for target in (brainconv.functional, jax.lax):
        for name in ('conv_resolved', 'conv_transpose_resolved', 'conv_general_dilated', 'reduce_window'):
            if hasattr(target, name):
                monkeypatch.setattr(target, name, refuse)
    monkeypatch.setattr(jax, 'eval_shape', refuse)
    monkeypatch.setattr(jax, 'jit', refuse)
    s = brainconv.summary(net)
    assert s.out_size == (10,)


# --- receptive fields -------------------------------------------------------------------------

def input_supports(layers, in_shape):
    """For every output position, the input box (min, max per spatial axis) it depends on.

    Read off the Jacobian of the (channels-last) output with respect to the input.
    """
    def f(x):
        for layer in layers:
            x = layer(x)
        return x[0]

    with lenient_promotion():
        jac = np.abs(np.asarray(jax.jacrev(f)(jnp.ones((1,) + tuple(in_shape)))))
    nd = len(in_shape) - 1
    out_spatial = jac.shape[:nd]
    # Sum over output channel, the batch axis of the input, and the input channel.
    dep = jac.sum(axis=(nd, nd + 1, jac.ndim - 1))
    supports = {}
    for index in np.ndindex(*out_spatial):
        nz = np.nonzero(dep[index])
        supports[index] = [(int(a.min()), int(a.max())) for a in nz]
    return supports


RF_CHAINS = {
    'stride and dilation': lambda: [
        brainconv.Conv2d((40, 40, 1), 2, (3, 5), stride=(1, 2), w_init=ones),
        brainconv.Conv2d((40, 20, 2), 2, 3, stride=2, rhs_dilation=(2, 1), padding='VALID', w_init=ones),
        nn.AvgPool2d(2, 2, channel_axis=-1),
        brainconv.Conv2d((9, 4, 2), 1, 3, padding='CAUSAL', w_init=ones),
    ],
    'explicit pads and SAME_LOWER': lambda: [
        brainconv.Conv2d((30, 30, 1), 1, 4, padding=((3, 0), (1, 2)), w_init=ones),
        nn.ReLU(),
        nn.AvgPool2d(3, 2, padding='SAME', channel_axis=-1),
        brainconv.Conv2d((15, 15, 1), 1, 2, stride=2, padding='SAME_LOWER', w_init=ones),
    ],
}


@pytest.mark.parametrize('chain', sorted(RF_CHAINS))
def test_receptive_field_is_the_gradient_support(chain):
    layers = RF_CHAINS[chain]()
    rf = brainconv.receptive_field(layers)
    in_shape = layers[0].in_size
    checked = 0
    for index, support in input_supports(layers, in_shape).items():
        predicted = [(st + i * j - (r - 1) / 2, st + i * j + (r - 1) / 2)
                     for st, i, j, r in zip(rf.start, index, rf.jump, rf.size)]
        inside = all(lo >= 0 and hi <= n - 1 for (lo, hi), n in zip(predicted, in_shape))
        if inside:  # away from the border the support is the whole field
            assert support == [(int(lo), int(hi)) for lo, hi in predicted], index
            checked += 1
    assert checked > 0


RF_CHAINS['per-axis padding'] = lambda: [
    brainconv.Conv2d((20, 20, 1), 1, 3, padding=('CAUSAL', 'SAME'), w_init=ones),
    brainconv.Conv2d((20, 20, 1), 1, (2, 3), stride=2, padding=('same_lower', (2, 0)), w_init=ones),
]

RF_CHAINS['brainconv pools'] = lambda: [
    brainconv.Conv2d((20, 20, 1), 2, 3, w_init=ones),
    brainconv.AvgPool2d((20, 20, 2), 3, 2, 'SAME'),
    brainconv.Conv2d((10, 10, 2), 1, 3, padding='VALID', w_init=ones),
    brainconv.AvgPool2d((8, 8, 1), 2, 1, padding=((1, 0), (0, 1))),
]

RF_CHAINS['brainstate layers'] = lambda: [
    nn.Conv2d((24, 24, 1), 2, (3, 5), stride=(2, 1), w_init=jax_init(ones)),
    brainconv.Conv2d((12, 24, 2), 2, 3, rhs_dilation=2, padding='VALID', w_init=ones),
    nn.ScaledWSConv2d((8, 20, 2), 1, 2, stride=2, padding=((1, 0), (0, 1)), w_init=jax_init(w_init())),
]


def test_receptive_field_recurrence_by_hand():
    # k=3 (SAME), then k=3 stride 2 (SAME: pads (0, 1)), then k=3 dilated by 2.
    rf = brainconv.receptive_field([
        brainconv.Conv1d((32, 1), 1, 3, w_init=ones),
        brainconv.Conv1d((32, 1), 1, 3, stride=2, w_init=ones),
        brainconv.Conv1d((16, 1), 1, 3, rhs_dilation=2, w_init=ones)])
    assert rf.size == (13,) and rf.jump == (2,) and rf.start == (1,)
    # A stride-2 transposed convolution halves the jump.
    rf = brainconv.receptive_field(brainconv.ConvTranspose1d((8, 1), 1, 4, stride=2, w_init=ones))
    assert rf.jump == (Fraction(1, 2),) and rf.size == (Fraction(5, 2),)


def test_summary_receptive_field_column_matches_receptive_field():
    net = vision_net()
    s = brainconv.summary(net)
    assert s.rows[6].receptive_field == brainconv.receptive_field(net.layers[:7])
    assert s.rows[0].receptive_field == brainconv.receptive_field(net.layers[0])
    assert s.rows[7].receptive_field is None and s.rows[8].receptive_field is None
    # The network as a whole has none: Flatten mixes all positions.
    assert s.receptive_field is None and 'layers.7 (Flatten)' in s.receptive_field_error


def test_receptive_field_errors():
    conv = brainconv.Conv1d((8, 1), 1, 3, w_init=ones)
    with pytest.raises(ValueError, match=r'layers.1 \(Flatten\) is not a convolution, pooling'):
        brainconv.receptive_field(nn.Sequential(conv, nn.Flatten(in_size=(8, 1)), conv))
    with pytest.raises(ValueError, match=r'takes in_size \(9, 1\) but the layer before it gives \(8, 1\)'):
        brainconv.receptive_field([conv, brainconv.Conv1d((9, 1), 1, 3, w_init=ones)])
    with pytest.raises(ValueError, match='at least one convolution or pooling layer'):
        brainconv.receptive_field([nn.ReLU()], in_size=(8, 1))
    with pytest.raises(ValueError, match=r'0 \(Linear\) mixes all positions'):
        brainconv.receptive_field([nn.Linear(8, 8, w_init=ones)])


def test_a_dense_layer_on_the_channel_axis_keeps_the_receptive_field():
    layers = [brainconv.Conv1d((8, 2), 3, 3, w_init=ones), nn.Linear((8, 3), (8, 4), w_init=ones),
              brainconv.Conv1d((8, 4), 1, 3, w_init=ones)]
    assert brainconv.receptive_field(layers).size == (5,)
    assert brainconv.summary(layers).rows[1].macs == 8 * 3 * 4


# --- rendering --------------------------------------------------------------------------------

class _Table(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self._row = [], None

    def handle_starttag(self, tag, attrs):
        if tag == 'tr':
            self._row = []
            self.rows.append(self._row)

    def handle_data(self, data):
        if self._row is not None and self.lasttag in ('td', 'th'):
            self._row.append(data)


def test_text_and_html():
    s = brainconv.summary(vision_net())
    text = str(s)
    assert repr(s) == text
    lines = text.splitlines()
    header, rule = lines[0], lines[1]
    assert set(rule) == {'-'}
    body = lines[2:2 + len(s.rows)]
    # Columns line up: each header label starts where every row's cell starts or above blank space.
    start = header.index('Out')
    for line, row in zip(body, s.rows):
        assert line[start:].startswith(str(row.out_size))
    params_end = header.index('Params') + len('Params')
    for line, row in zip(body, s.rows):
        assert line[:params_end].endswith(f'{row.params:,}')  # right-aligned numbers
    assert f'Total params: {s.total_params:,}' in text
    assert f'MACs per example: {s.total_macs:,}' in text

    table = _Table()
    table.feed(s._repr_html_())
    assert len(table.rows) == len(s.rows) + 1
    assert table.rows[0][:4] == ['Layer', 'Type', 'In', 'Out']
    assert table.rows[1][:2] == ['layers.0', 'Conv2d']


def test_unknown_costs_are_marked():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.in_size, self.out_size = (4,), (4,)
            self.w = brainstate.ParamState(jnp.ones(4))

    s = brainconv.summary([brainconv.Conv1d((4, 1), 1, 3, w_init=ones), nn.Flatten(in_size=(4, 1)), Custom()])
    assert s.rows[2].macs is None and s.rows[2].params == 4
    assert '?' in str(s).splitlines()[4] and 'not counting 2' in str(s)


def test_rows_for_pandas():
    pd = pytest.importorskip('pandas')
    s = brainconv.summary(decoder_net())
    df = pd.DataFrame(s.to_rows())
    assert list(df['path']) == [r.path for r in s.rows]
    assert df['params'].sum() == s.total_params
    assert df['rf_jump'].iloc[1] == (1,) and df['rf_jump'].iloc[2] == (1 / 3,)


# --- brainstate's own convolution layers -------------------------------------------------------

@pytest.mark.parametrize('theirs, ours', [
    # brainstate's arguments; brainconv's for the layer computing the same (docs/brainstate_differences.md)
    (dict(kernel_size=3, stride=2), dict(kernel_size=3, stride=2)),
    (dict(kernel_size=2, stride=3, padding='SAME', rhs_dilation=2), dict(kernel_size=2, stride=3, rhs_dilation=2)),
    (dict(kernel_size=4, stride=2, padding='VALID'), dict(kernel_size=4, stride=2, padding='VALID')),
    (dict(kernel_size=2, stride=3, padding='VALID'), dict(kernel_size=2, stride=3, padding='VALID',
                                                          output_padding=1)),
    (dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=3, stride=2, padding=1)),
    (dict(kernel_size=3, stride=2, padding=((0, 2),)), dict(kernel_size=3, stride=2, padding=((2, 0),))),
    (dict(kernel_size=3, stride=1, padding=2, groups=2), dict(kernel_size=3, stride=1, padding=0, groups=2)),
])
def test_a_brainstate_conv_transpose_reads_as_the_brainconv_layer_it_equals(theirs, ours):
    with lenient_promotion():
        bs = nn.ConvTranspose1d((6, 2), 2, **theirs, w_init=jax_init(w_init()))
    bc = brainconv.ConvTranspose1d((6, 2), 2, **ours, w_init=np.asarray(bs.weight.value['weight']))
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 6, 2)).astype(np.float32))
    with lenient_promotion():
        np.testing.assert_allclose(np.asarray(bc(x)), np.asarray(bs(x)), rtol=1e-5, atol=1e-5)
    row_bs, row_bc = brainconv.summary(bs).rows[0], brainconv.summary(bc).rows[0]
    assert row_bs.type == 'ConvTranspose1d' and row_bs.kernel_size == (theirs['kernel_size'],)
    assert row_bs == dataclasses.replace(row_bc, formulation=None)  # sizes, geometry, parameters, MACs and RF
    assert brainconv.receptive_field(bs) == brainconv.receptive_field(bc)


def test_a_brainstate_layer_whose_geometry_does_not_add_up_is_not_guessed():
    with lenient_promotion():
        layer = nn.Conv1d((8, 2), 2, 3, w_init=jax_init(ones))
    layer.out_size = (7, 2)  # as a brainstate version with other padding rules might say
    s = brainconv.summary([brainconv.Conv1d((8, 2), 2, 3, w_init=ones), layer])
    assert s.rows[1].out_size == (7, 2) and s.rows[1].macs is None and s.rows[1].kernel_size is None
    assert s.rows[1].receptive_field is None and s.receptive_field is None
    with pytest.raises(ValueError, match=r'1 \(Conv1d\): its geometry could not be read'):
        brainconv.receptive_field([brainconv.Conv1d((8, 2), 2, 3, w_init=ones), layer])


def _rf_text(rf):
    """The footer's receptive-field line, written out here: binary fractions as decimals, others as n/d."""
    def number(v):
        if v.denominator == 1:
            return str(int(v))
        return str(float(v)) if v.denominator in (2, 4, 8) else f'{v.numerator}/{v.denominator}'

    size, jump = ('x'.join(number(v) for v in values) for values in (rf.size, rf.jump))
    return f"Receptive field: size {size}, jump {jump}, start ({', '.join(number(v) for v in rf.start)})"


@pytest.mark.parametrize('make', [
    vision_net, channel_first_net, volume_net, brainstate_net,
    lambda: RF_CHAINS['brainstate layers'](),
    lambda: [brainconv.Conv1d((8, 1), 1, 3, w_init=ones), nn.Flatten(in_size=(8, 1))],
    lambda: [brainconv.Conv1d((8, 1), 1, 3, w_init=ones), brainconv.Conv1d((9, 1), 1, 3, w_init=ones)],
    lambda: [nn.Flatten(in_size=(8, 1)), nn.Linear(8, 2, w_init=ones)],
])
def test_the_footer_says_what_receptive_field_says(make):
    net = make()
    s = brainconv.summary(net)
    text = str(s)
    try:
        rf = brainconv.receptive_field(net)
    except ValueError as e:
        assert s.receptive_field is None and s.receptive_field_error == str(e)
        assert 'Receptive field: size' not in text
        if any(r.receptive_field is not None for r in s.rows):
            assert str(e) in text
        else:
            assert 'Receptive field' not in text
    else:
        assert s.receptive_field == rf and s.receptive_field_error is None
        assert text.splitlines()[-1] == _rf_text(rf)


# --- per-axis padding and hidden states -----------------------------------------------------------

def test_per_axis_padding_rows():
    """Pads written out from the definitions: CAUSAL (span - 1, 0), SAME ceil(n / s) outputs (odd pad at the end)."""
    net = nn.Sequential(brainconv.Conv3d((6, 8, 8, 1), 2, 3, stride=(1, 2, 2), padding=('CAUSAL', 'SAME', (1, 0)),
                                         w_init=ones),
                        brainconv.ConvTranspose3d((6, 4, 4, 2), 1, 3, stride=(1, 2, 2),
                                                  padding=('CAUSAL', 'SAME', 'VALID'), w_init=ones))
    rows = brainconv.summary(net).rows
    assert rows[0].pads == ((2, 0), (0, 1), (1, 0)) and rows[0].out_size == (6, 4, 4, 2)
    # The transpose: (m - 1) * s + 1 + ... with output_padding None: 6, 4 * 2 = 8, and (4 - 1) * 2 + 3 = 9.
    assert rows[1].out_size == (6, 8, 9, 1) and rows[1].pads == ((2, 0), (0, 1), (0, 0))
    rf = brainconv.receptive_field(net.layers[0])
    # start = (span - 1) / 2 - lo: 1 - 2, 1 - 0, 1 - 1
    assert rf.size == (3, 3, 3) and rf.jump == (1, 2, 2) and rf.start == (-1, 1, 0)


class Leaky(nn.Module):
    """A brainstate-only stateful module: a HiddenState per position, made by init_state."""

    def __init__(self, size):
        super().__init__()
        self.in_size = self.out_size = tuple(size)

    def init_state(self, batch_size=None, **kwargs):
        batch = () if batch_size is None else (batch_size,)
        self.v = brainstate.HiddenState(jnp.zeros(batch + self.in_size))

    def update(self, x):
        self.v.value = 0.5 * self.v.value + x
        return self.v.value


class Holder(nn.Module):
    """A container holding a HiddenState of its own beside its layers."""

    def __init__(self):
        super().__init__()
        self.step = brainconv.Conv1d((10, 2), 3, 3, padding='CAUSAL', w_init=ones).streaming()
        self.leak = Leaky((3,))
        self.trace = brainstate.HiddenState(jnp.zeros((4, 5)))  # batch 4, 5 values per example


def hidden_per_example(module, batch):
    """Values per example in every HiddenState of module: their sizes divided by the batch size."""
    total = sum(int(np.size(leaf)) for st in module.states(brainstate.HiddenState).values()
                for leaf in jax.tree.leaves(st.value))
    assert total % batch == 0
    return total // batch


def test_state_counts_every_hidden_state():
    net = Holder()
    s = brainconv.summary(net)  # before init_state: brainconv's declared states, and the states that exist
    assert [(r.path, r.state) for r in s.rows[:2]] == [('step', 3 * 2), ('leak', 0)]
    assert s.rows[2].path == 'trace'  # no state tells its batch axes yet: counted whole (4 x 5)
    brainstate.nn.init_all_states(net, 4)
    s = brainconv.summary(net)
    assert [(r.path, r.state) for r in s.rows] == [('step', 3 * 2), ('leak', 3), ('trace', 5)]
    assert s.rows[1].states == (('v', (3,)),) and s.rows[2].type == 'HiddenState'
    assert sum(r.state for r in s.rows) == hidden_per_example(net, 4) == 14
    assert 'State per example: 14 values' in str(s) and 'v(3,)' in str(s)
    # Without a batch axis the per-example shapes are the same; other columns are unchanged.
    brainstate.nn.init_all_states(net)
    s2 = brainconv.summary(net)
    assert [r.state for r in s2.rows[:2]] == [6, 3]
    assert [(r.params, r.macs, r.out_size) for r in s2.rows] == [(r.params, r.macs, r.out_size) for r in s.rows]


def test_a_shared_state_counts_once_and_every_row_has_a_name():
    cell = brainconv.ConvGRUCell1d((5, 1), 2, 3)
    s = brainconv.summary(cell)
    assert s.rows[0].path == 'ConvGRUCell1d' and s.rows[0].state == 10 and s.rows[0].states == (('h', (5, 2)),)
    net = nn.Sequential(cell, brainconv.Conv1d((5, 2), 1, 1, w_init=ones), nn.Tanh(), cell)
    brainstate.nn.init_all_states(net, 2)
    s = brainconv.summary(net)
    assert [r.state for r in s.rows] == [10, 0, 0, 0]
    assert all(r.path for r in s.rows)


def test_state_of_a_spiking_network():
    """A brainpy.state LIF's membrane potential counts beside brainconv's states (brainpy: Python >= 3.12)."""
    brainpy = pytest.importorskip('brainpy')
    lif = brainpy.state.LIF((6, 6, 4))
    net = nn.Sequential(brainconv.Conv3d((5, 6, 6, 1), 4, 3, padding=('CAUSAL', 'SAME', 'SAME'), w_init=ones)
                        .streaming(), lif, brainconv.ConvLSTMCell2d((6, 6, 4), 2, 3))
    brainstate.nn.init_all_states(net, 3)
    s = brainconv.summary(net)
    buffer, v, hc = 3 * 6 * 6 * 1, 6 * 6 * 4, 2 * 6 * 6 * 2  # span-3 buffer of (6, 6, 1) frames; V; h and c
    assert [r.state for r in s.rows] == [buffer, v, hc]
    assert s.rows[1].states == (('V', (6, 6, 4)),) and s.rows[1].type == 'LIF'
    assert sum(r.state for r in s.rows) == hidden_per_example(net, 3)
    assert f'State per example: {buffer + v + hc:,} values' in str(s)


# --- SynOps -----------------------------------------------------------------------------------

def synapses_from_run(layer, in_size):
    """Synapses per example from a real run: with every weight 1 and no bias, each output element sums one
    term per synapse that reaches it, so the outputs for an all-ones input add up to the synapses (pads
    count where a padding mode fills them with copies of the input)."""
    weights = {k: jnp.ones_like(v) if k == 'weight' else jnp.zeros_like(v) for k, v in layer.weight.value.items()}
    layer.weight.value = weights
    with lenient_promotion():
        y = layer(jnp.ones((1,) + tuple(in_size), jnp.float32))
    return int(round(float(np.sum(np.asarray(y, np.float64)))))


SYNAPSE_LAYERS = {
    # 1-, 2- and 3-d; stride; rhs and lhs dilation; padding strings, ints, pairs and per axis; groups; modes
    'conv1d same stride': lambda: brainconv.Conv1d((11, 2), 3, 4, stride=3),
    'conv1d causal rhs': lambda: brainconv.Conv1d((9, 1), 2, 3, padding='CAUSAL', rhs_dilation=3),
    'conv1d lhs': lambda: brainconv.Conv1d((6, 2), 2, 3, lhs_dilation=3, stride=2, padding=(2, 4)),
    'conv1d lhs rhs': lambda: brainconv.Conv1d((7, 1), 1, 3, lhs_dilation=2, rhs_dilation=3, padding='SAME'),
    'conv2d same_lower groups': lambda: brainconv.Conv2d((7, 6, 4), 6, (3, 2), padding='SAME_LOWER', groups=2),
    'conv2d depthwise': lambda: brainconv.Conv2d((6, 5, 3), 6, 3, stride=2, groups=3),
    'conv2d per axis': lambda: brainconv.Conv2d((8, 5, 2), 3, 3, padding=('CAUSAL', (0, 3)), lhs_dilation=(1, 2)),
    'conv2d channel first': lambda: brainconv.Conv2d((2, 6, 6), 2, 3, channel_first=True, rhs_dilation=2),
    'conv2d valid': lambda: brainconv.Conv2d((6, 6, 2), 3, 3, padding='VALID', stride=2),
    'conv2d reflect': lambda: brainconv.Conv2d((6, 5, 2), 2, 3, padding_mode='REFLECT', stride=2),
    'conv2d replicate': lambda: brainconv.Conv2d((6, 5, 1), 2, (4, 3), padding_mode='REPLICATE'),
    'conv2d circular': lambda: brainconv.Conv2d((5, 5, 1), 2, 3, padding=2, padding_mode='CIRCULAR'),
    'conv3d': lambda: brainconv.Conv3d((4, 5, 3, 2), 2, 3, stride=(1, 2, 1), padding=((0, 2), 1, (2, 0))),
    'transpose1d': lambda: brainconv.ConvTranspose1d((5, 2), 3, 4, stride=3, padding=(2, 1), output_padding=1),
    'transpose1d rhs': lambda: brainconv.ConvTranspose1d((6, 1), 2, 3, stride=2, rhs_dilation=2),
    'transpose2d groups': lambda: brainconv.ConvTranspose2d((4, 3, 4), 2, 3, stride=2, groups=2, padding='VALID'),
    'transpose2d circular': lambda: brainconv.ConvTranspose2d((3, 4, 1), 2, 3, stride=2, padding_mode='CIRCULAR'),
    'transpose3d': lambda: brainconv.ConvTranspose3d((3, 2, 3, 1), 2, 2, stride=(2, 1, 3), padding='CAUSAL'),
    'local2d': lambda: brainconv.LocalConv2d((5, 6, 2), 3, 3, stride=(1, 2)),
    'brainstate conv2d': lambda: nn.Conv2d((7, 6, 2), 4, 3, stride=2, groups=2, w_init=jax_init(ones)),
    'brainstate transpose2d': lambda: nn.ConvTranspose2d((4, 4, 2), 2, 3, stride=2, w_init=jax_init(ones)),
}


@pytest.mark.parametrize('name', list(SYNAPSE_LAYERS))
def test_synops_are_the_rate_times_the_synapses_of_a_run(name):
    with lenient_promotion():
        layer = SYNAPSE_LAYERS[name]()
    s = brainconv.summary(layer, spike_rates=0.25)
    row, = s.rows
    synapses = synapses_from_run(layer, layer.in_size)
    assert row.spike_rate == 0.25 and row.synops == pytest.approx(0.25 * synapses)
    assert s.total_synops == row.synops
    if isinstance(layer, (brainconv.Conv, brainconv.ConvTranspose, brainconv.LocalConv)):
        assert brainconv.tools.conv_connections(layer.spec) == synapses
    # MACs count the products that read zero pads or inserted zeros (or land in cropped pads); pads that
    # hold copies of the input (padding modes) are synapses.
    no_zeros = all(lo == 0 and hi == 0 for lo, hi in row.pads) and set(row.lhs_dilation) == {1}
    if no_zeros or getattr(getattr(layer, 'spec', None), 'padding_mode', 'ZEROS') != 'ZEROS':
        assert synapses == row.macs
    else:
        assert synapses < row.macs


def spiking_net():
    """Spikes in, a strided convolution, a grouped one with padding, a dense read-out."""
    return nn.Sequential(
        brainconv.Conv2d((8, 8, 2), 4, 3, stride=2, w_init=w_init()),
        nn.ReLU(),
        brainconv.Conv2d((4, 4, 4), 4, 3, groups=2, rhs_dilation=2, padding='SAME', w_init=w_init()),
        nn.Flatten(in_size=(4, 4, 4)),
        nn.Linear(64, 3),
    )


def test_synops_of_a_network_from_measured_inputs():
    net = spiking_net()
    x = jnp.asarray(np.random.default_rng(2).random((5, 8, 8, 2)) < 0.1)
    records = run_sequential(net, x)
    given = {f'layers.{i}': xi for i, (_, xi, _) in enumerate(records) if i in (0, 2, 4)}
    s = brainconv.summary(net, spike_rates=given)

    rates = [np.count_nonzero(np.asarray(xi)) / np.size(xi) for _, xi, _ in records]
    synapses = [synapses_from_run(brainconv.Conv2d((8, 8, 2), 4, 3, stride=2), (8, 8, 2)), 0,
                synapses_from_run(brainconv.Conv2d((4, 4, 4), 4, 3, groups=2, rhs_dilation=2, padding='SAME'),
                                  (4, 4, 4)), 0, 64 * 3]
    expected = [rates[i] * synapses[i] if i in (0, 2, 4) else None for i in range(5)]
    assert [r.spike_rate for r in s.rows] == [rates[0], None, rates[2], None, rates[4]]
    assert [r.synops is None for r in s.rows] == [e is None for e in expected]
    assert [r.synops for r in s.rows if r.synops is not None] == pytest.approx(expected[::2], rel=1e-12)
    assert s.total_synops == pytest.approx(expected[0] + expected[2] + expected[4], rel=1e-12)
    check_against_run(s.rows, records)  # the other columns are unchanged

    text = str(s)
    header = text.splitlines()[0].split()
    assert header.index('MACs') + 1 == header.index('Rate') and header.index('SynOps') == header.index('Rate') + 1
    assert f'SynOps per example: {round(s.total_synops):,}' in text
    assert 'layers.1' not in text.split('SynOps per example')[1]  # ReLU and Flatten drive no synapses
    table = _Table()
    table.feed(s._repr_html_())
    assert 'SynOps' in table.rows[0] and table.rows[1][table.rows[0].index('SynOps')] == f'{round(expected[0]):,}'
    row = s.to_rows()[4]
    assert row['spike_rate'] == rates[4] and row['synops'] == pytest.approx(expected[4])

    # One rate for every layer: the layers without synapses count 0.
    s = brainconv.summary(net, spike_rates=0.1)
    assert [r.spike_rate for r in s.rows] == [0.1] * 5
    assert [r.synops for r in s.rows] == pytest.approx([0.1 * n for n in synapses], rel=1e-12)


def test_without_rates_nothing_changes():
    net = spiking_net()
    s = brainconv.summary(net)
    assert s.total_synops is None and all(r.spike_rate is None and r.synops is None for r in s.rows)
    assert 'SynOps' not in str(s) and 'Rate' not in str(s) and 'SynOps' not in s._repr_html_()
    assert str(brainconv.summary(net, spike_rates={})) == str(s)


def test_synops_of_rows_that_compute_their_own_inputs():
    """A separable convolution's pointwise step and a cell's recurrent convolutions read values the layer
    computes itself: counted in full, beside the rate-scaled input convolution.  A streaming layer: one
    step's window, every tap in time reading a real frame."""
    sep = brainconv.SeparableConv2d((6, 5, 2), 6, 3, stride=2, depth_multiplier=2)
    depthwise = synapses_from_run(brainconv.Conv2d((6, 5, 2), 4, 3, stride=2, groups=2), (6, 5, 2))
    pointwise = synapses_from_run(brainconv.Conv2d((3, 3, 4), 6, 1), (3, 3, 4))
    cell = brainconv.ConvGRUCell2d((6, 6, 2), 3, 3, stride=2, padding='VALID', recurrent_kernel_size=2)
    input_conv = synapses_from_run(brainconv.Conv2d((6, 6, 2), 9, 3, stride=2, padding='VALID'), (6, 6, 2))
    recurrent = sum(synapses_from_run(c, c.in_size) for c in cell.recurrent_convs)
    step = brainconv.Conv2d((4, 6, 2), 3, (3, 3), rhs_dilation=(2, 1), padding=('CAUSAL', 'SAME')).streaming()
    brainstate.nn.init_all_states(step, 1)
    step.conv.weight.value = {'weight': jnp.ones_like(step.conv.weight.value['weight'])}
    for _ in range(step.span):  # fill the frame buffer with ones
        frame = step(jnp.ones((1, 6, 2), jnp.float32))
    window = int(round(float(jnp.sum(frame))))

    s = brainconv.summary([sep, cell, step], spike_rates=0.5)
    assert [r.synops for r in s.rows] == pytest.approx([0.5 * depthwise + pointwise,
                                                        0.5 * input_conv + recurrent, 0.5 * window])
    assert window == 3 * (6 * 3 - 2) * 2 * 3  # 3 time taps x (6 positions x 3 taps, less 2 on pads) x 2 x 3
    assert 'and SynOps of streaming layers and recurrent cells are per step' in str(s)


def test_unknown_costs_and_unnamed_rows_in_the_footer():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.in_size, self.out_size = (4,), (4,)
            self.w = brainstate.ParamState(jnp.ones(4))

    layers = [brainconv.Conv1d((4, 1), 1, 3, w_init=ones), nn.Flatten(in_size=(4, 1)), Custom(),
              nn.Linear(4, 2)]
    s = brainconv.summary(layers, spike_rates={'2': 0.5, '3': 0.5})
    assert [r.synops for r in s.rows] == [None, None, None, 4.0]
    lines = str(s).splitlines()
    assert lines[4].split()[-2:] == ['0.5', '?']
    assert 'SynOps per example: 4 (' in str(s) and 'not counting 2: cost unknown' in str(s)
    assert 'not counting 0: no rate given' in str(s)


@pytest.mark.parametrize('rates, match', [
    ({'layers.9': 0.1}, r"names \['layers.9'\], which are not rows"),
    (1.5, 'spike_rates must be a number in'),
    (-0.1, 'spike_rates must be a number in'),
    (True, 'spike_rates must be a number in'),
    ('0.1', 'spike_rates must be a number in'),
    (np.ones(3), 'spike_rates must be a number in'),
    ({'layers.0': float('nan')}, r"spike_rates\['layers.0'\] must be a number in \[0, 1\] or an array"),
    ({'layers.0': np.zeros((0, 2))}, r"spike_rates\['layers.0'\] must be"),
])
def test_bad_rates(rates, match):
    with pytest.raises(ValueError, match=match):
        brainconv.summary(spiking_net(), spike_rates=rates)


def test_the_summary_says_what_each_convolution_runs_as():
    """A 'Runs as' column: the formulation of each brainconv convolution (the event switch as
    'event|<dense>'), and at a spike rate the branch that computes its output -- what
    layer.formulation says for that density."""
    net = brainstate.nn.Sequential(
        brainconv.Conv2d((15, 15, 12), 32, 5, padding='VALID', w_init=w_init()),
        brainconv.MaxPool2d((11, 11, 32), 2),
        brainconv.Conv2d((5, 5, 32), 8, 3, groups=8, lowering='taps', w_init=w_init()),
    )
    conv = net.layers[0]
    plain = brainconv.summary(net)
    assert [r.formulation for r in plain.rows] == [f'event|{conv.formulation().dense}', None, 'taps']
    assert 'Runs as' in str(plain) and plain.to_rows()[0]['formulation'] == plain.rows[0].formulation
    low, high = (brainconv.summary(net, spike_rates=rate).rows[0].formulation for rate in (0.02, 0.9))
    assert low == 'event' and high == conv.formulation(density=0.9).forward == 'lax_vjp'
