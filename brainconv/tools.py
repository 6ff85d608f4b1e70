"""Shape, parameter and receptive-field tables of a network, without running it.

:func:`summary` walks a brainstate Module tree (a ``brainstate.nn.Sequential``
or any Module holding brainconv layers beside brainstate's own convolution,
pooling, Flatten, Linear, normalisation and activation layers) and reads what
every layer already knows: its ``in_size`` and ``out_size``, its resolved geometry,
its parameter states.  Nothing is traced or run.  :func:`receptive_field`
gives the receptive field of a stack of convolution and pooling layers.

Conventions:

* Sizes exclude batch axes, as everywhere in brainstate.
* MACs are multiply-accumulates per example of the convolution and dense
  layers' weights (:func:`conv_macs`, :func:`dense_macs`); pooling,
  normalisation and activations count none.
* The receptive field of a row is that of the row's output with respect to
  the network input (:class:`brainconv.shapes.ReceptiveField`): pooling is a
  window like a convolution's, element-wise layers leave it alone, and any
  other layer (Flatten, Linear, ...) ends it.
* SynOps (synaptic operations, given ``spike_rates``) are the synaptic
  events per example: a row's input spike rate times the synapses its input
  elements drive (:func:`conv_connections`, :func:`dense_macs`), so padding
  and inserted zeros, which MACs count, make none.  Intermediate values a row
  computes itself (a separable convolution's depthwise output, a recurrent
  cell's hidden state) are not spikes and count as all active.
* A convolutional recurrent cell (:mod:`brainconv.recurrent`) is one row:
  its MACs are those of all its convolutions for one step and its geometry
  that of its input convolution.  It ends the receptive field (its state sees
  every past step).
* The ``State`` column counts, per example, every ``brainstate.HiddenState``
  of the row's module (a streaming buffer, a cell's ``h`` and ``c``, a
  neuron's membrane potential; each state once), and ``states`` gives their
  names and shapes.  A state's batch axes are those it was initialised with:
  the leading axes before the shape its module declares (brainconv's
  ``state_size``; else the module's ``varshape``, ``out_size`` or
  ``in_size`` when the state's shape ends with it), and for a state whose
  module declares none, the batch axes found that way on the first state
  that has them.  brainconv's layers declare their states before
  ``init_state``; other modules' states count once they exist.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple

import brainstate
import jax
import numpy as np

from ._args import ConvSpec, as_sequence
from .layers import Conv, ConvTranspose
from .local import LocalConv
from .recurrent import _ConvRNNCell
from .separable import SeparableConv
from .shapes import (
    ConvGeometry,
    Pads,
    ReceptiveField,
    connections,
    conv_geometry,
    conv_transpose_geometry,
    kernel_span,
    lax_conv_transpose_pads,
    receptive_field_step,
)
from .streaming import StreamingConv

__all__ = ['summary', 'receptive_field', 'Summary', 'LayerSummary', 'conv_macs', 'layer_macs', 'dense_macs',
           'conv_connections']

Size = Tuple[int, ...]

_nn = brainstate.nn


def _classes(*names: str) -> tuple:
    """The named brainstate.nn classes that this brainstate version has."""
    found = []
    for name in names:
        try:
            found.append(getattr(_nn, name))
        except (AttributeError, ImportError):  # some names forward to optional packages
            pass
    return tuple(found)


_POOLS = _classes('MaxPool1d', 'MaxPool2d', 'MaxPool3d', 'AvgPool1d', 'AvgPool2d', 'AvgPool3d',
                  'LPPool1d', 'LPPool2d', 'LPPool3d')
_DENSE = _classes('Linear', 'ScaledWSLinear', 'SignedWLinear')
# Layers that act on each position on its own (as far as receptive fields go):
# activations, dropout, normalisation, neuron dynamics.
_POINTWISE = _classes('ElementWiseBlock', 'BatchNorm0d', 'BatchNorm1d', 'BatchNorm2d', 'BatchNorm3d',
                      'LayerNorm', 'RMSNorm', 'GroupNorm', 'Dynamics')
# brainstate's own convolution layers, read through their attributes (see _brainstate_spec).
_BS_CONVS = _classes('Conv1d', 'Conv2d', 'Conv3d', 'ScaledWSConv1d', 'ScaledWSConv2d', 'ScaledWSConv3d')
_BS_TRANSPOSES = _classes('ConvTranspose1d', 'ConvTranspose2d', 'ConvTranspose3d')
# brainconv layers with a ``spec`` whose geometry is their window (SeparableConv: its depthwise step's).
_OWN_CONVS = (Conv, ConvTranspose, LocalConv, SeparableConv)
_CONVS = _OWN_CONVS + _BS_CONVS + _BS_TRANSPOSES


def conv_macs(spec: ConvSpec) -> int:
    """Multiply-accumulates per example of a (transposed) convolution.

    A convolution makes ``prod(out_spatial) * out_channels`` outputs, each a
    sum over ``prod(kernel_size) * in_channels / groups`` products (taps that
    fall on padding or on inserted zeros included).  A transposed
    convolution multiplies each of its ``prod(in_spatial) * in_channels``
    inputs by the ``prod(kernel_size) * out_channels / groups`` kernel
    entries it meets (products that land in cropped pads included).
    """
    g = spec.geometry
    taps = math.prod(g.kernel_size)
    if g.transposed:
        return math.prod(g.in_spatial) * spec.in_channels * taps * (spec.out_channels // spec.groups)
    return math.prod(g.out_spatial) * spec.out_channels * taps * (spec.in_channels // spec.groups)


def layer_macs(layer: Any) -> int:
    """Multiply-accumulates per example of a brainconv layer.

    A LocalConv makes as many products as the convolution with its geometry
    (each output position has its own kernel, of the same size); a
    SeparableConv adds its depthwise and pointwise steps.
    """
    if isinstance(layer, SeparableConv):
        return conv_macs(layer.spec) + conv_macs(layer.pointwise_spec)
    return conv_macs(layer.spec)


def conv_connections(spec: ConvSpec) -> int:
    """Synapses per example that the input elements of a (transposed) convolution drive.

    Every ``(input position, kernel tap, output position)`` triple in which a
    real input position feeds an output (:func:`brainconv.shapes.connections`;
    with a padding mode other than ZEROS the pads are copies of input
    positions and count), times ``in_channels * out_channels / groups``: the
    synaptic events one example makes when every input element is non-zero.
    Below :func:`conv_macs` by the products that touch padding or inserted zeros.
    """
    spatial = connections(spec.geometry, padded=spec.padding_mode != 'ZEROS')
    return spatial * spec.in_channels * (spec.out_channels // spec.groups)


def dense_macs(in_size: Sequence[int], out_size: Sequence[int]) -> int:
    """Multiply-accumulates per example of a dense layer mapping the last axis of
    ``in_size`` to the last axis of ``out_size`` (leading axes shared)."""
    return math.prod(in_size[:-1]) * in_size[-1] * out_size[-1]


@dataclass(frozen=True)
class LayerSummary:
    """One row of a :class:`Summary`: what one layer does to one example.

    Geometry fields are None where they do not apply; ``macs`` is None when
    the layer holds parameters but is of a kind whose cost is not known
    here; ``receptive_field`` is set on convolution and pooling rows whose
    receptive field with respect to the network input is defined; ``states``
    lists ``(name, size)`` of the ``HiddenState`` s the layer keeps per example,
    and ``state`` their number of values.  ``spike_rate`` is the rate
    :func:`summary` was given for the row's input (None: none given) and
    ``synops`` its synaptic operations per example at that rate (None where
    no rate was given or the cost is not known).
    """

    path: str
    type: str
    in_size: Size | None
    out_size: Size | None
    params: int = 0
    macs: int | None = 0
    kernel_size: Size | None = None
    stride: Size | None = None
    pads: Tuple[Tuple[int, int], ...] | None = None
    rhs_dilation: Size | None = None
    lhs_dilation: Size | None = None
    groups: int | None = None
    receptive_field: ReceptiveField | None = None
    state: int = 0  # values per example carried from one time step to the next (the HiddenStates)
    states: Tuple[Tuple[str, Size], ...] | None = None  # their names and shapes
    spike_rate: float | None = None  # the fraction of the row's input elements that are non-zero
    synops: float | None = None  # synaptic operations per example at that rate

    def to_dict(self) -> Dict[str, Any]:
        """Plain Python values (receptive field as int/float tuples), for pandas and JSON."""
        rf = self.receptive_field
        return {
            'path': self.path, 'type': self.type, 'in_size': self.in_size, 'out_size': self.out_size,
            'kernel_size': self.kernel_size, 'stride': self.stride, 'pads': self.pads,
            'rhs_dilation': self.rhs_dilation, 'lhs_dilation': self.lhs_dilation, 'groups': self.groups,
            'params': self.params, 'macs': self.macs, 'spike_rate': self.spike_rate, 'synops': self.synops,
            'state': self.state,
            'rf_size': None if rf is None else tuple(_plain(v) for v in rf.size),
            'rf_jump': None if rf is None else tuple(_plain(v) for v in rf.jump),
            'rf_start': None if rf is None else tuple(_plain(v) for v in rf.start),
            'states': None if self.states is None else dict(self.states),
        }


class Summary:
    """The table :func:`summary` returns.

    Prints as aligned text (``str``, ``repr``), renders as an HTML table in
    Jupyter (``_repr_html_``), and gives plain rows for a DataFrame
    (``pandas.DataFrame(s.to_rows())``).
    """

    def __init__(self, rows: Sequence[LayerSummary], in_size: Size | None, out_size: Size | None,
                 param_bytes: int, receptive_field: ReceptiveField | None = None,
                 receptive_field_error: str | None = None):
        self.rows: Tuple[LayerSummary, ...] = tuple(rows)
        self.in_size = in_size
        self.out_size = out_size
        self.param_bytes = param_bytes
        self._receptive_field = receptive_field
        #: Why the whole network has no receptive field: the message :func:`receptive_field` raises.
        self.receptive_field_error = receptive_field_error

    @property
    def total_params(self) -> int:
        """Parameters of the whole model (each shared state counted once)."""
        return sum(r.params for r in self.rows)

    @property
    def total_macs(self) -> int:
        """Multiply-accumulates per example over the rows whose cost is known."""
        return sum(r.macs for r in self.rows if r.macs is not None)

    @property
    def total_synops(self) -> float | None:
        """Synaptic operations per example over the rows with a spike rate and a known cost;
        None when :func:`summary` was given no rates."""
        if all(r.spike_rate is None for r in self.rows):
            return None
        return sum(r.synops for r in self.rows if r.synops is not None)

    @property
    def receptive_field(self) -> ReceptiveField | None:
        """The receptive field of the whole network, as :func:`receptive_field` gives it;
        None where that raises (the reason is in ``receptive_field_error``)."""
        return self._receptive_field

    def to_rows(self) -> List[Dict[str, Any]]:
        """One dict of plain values per row (see :meth:`LayerSummary.to_dict`)."""
        return [r.to_dict() for r in self.rows]

    def _cells(self) -> Tuple[List[str], List[List[str]]]:
        """Header and formatted cells, without the columns that are empty in every row."""
        columns = [
            ('Layer', lambda r: r.path),
            ('Type', lambda r: r.type),
            ('In', lambda r: _shape(r.in_size)),
            ('Out', lambda r: _shape(r.out_size)),
            ('Kernel', lambda r: _axes(r.kernel_size)),
            ('Stride', lambda r: _axes(r.stride)),
            ('Pads (lo,hi)', lambda r: _pads(r.pads)),
            ('Dilation', _dilation),
            ('Groups', lambda r: '' if r.groups is None else str(r.groups)),
            ('Params', lambda r: f'{r.params:,}'),
            ('MACs', lambda r: '?' if r.macs is None else f'{r.macs:,}'),
            ('Rate', lambda r: '' if r.spike_rate is None else f'{r.spike_rate:.3g}'),
            ('SynOps', _synops),
            ('State', lambda r: f'{r.state:,}' if r.state else ''),
            ('RF size', lambda r: _axes(r.receptive_field and r.receptive_field.size)),
            ('RF jump', lambda r: _axes(r.receptive_field and r.receptive_field.jump)),
            ('RF start', lambda r: _start(r.receptive_field)),
            ('States', lambda r: '' if not r.states else ' '.join(f'{n}{_shape(z)}' for n, z in r.states)),
        ]
        cells = [[fmt(r) for _, fmt in columns] for r in self.rows]
        keep = [i for i in range(len(columns)) if i < 4 or any(row[i] for row in cells)]
        return [columns[i][0] for i in keep], [[row[i] for i in keep] for row in cells]

    def _footer(self) -> List[str]:
        unknown = [r.path for r in self.rows if r.macs is None]
        macs = f'{self.total_macs:,}'
        if unknown:
            macs += f" (not counting {', '.join(unknown)}: cost unknown)"
        lines = [f'Input {_shape(self.in_size)} -> output {_shape(self.out_size)}',
                 f'Total params: {self.total_params:,} ({_bytes(self.param_bytes)})',
                 f'MACs per example: {macs}']
        if self.total_synops is not None:
            notes = ['at the Rate column\'s input spike rates']
            unknown = [r.path for r in self.rows if r.spike_rate is not None and r.synops is None]
            unrated = [r.path for r in self.rows if r.spike_rate is None and r.macs != 0]
            if unknown:
                notes.append(f"not counting {', '.join(unknown)}: cost unknown")
            if unrated:
                notes.append(f"not counting {', '.join(unrated)}: no rate given")
            lines.append(f'SynOps per example: {round(self.total_synops):,} ({"; ".join(notes)})')
        state = sum(r.state for r in self.rows)
        if state:
            lines.append(f'State per example: {state:,} values (the HiddenStates carried from one time step to the '
                         f'next; the {"MACs and SynOps" if self.total_synops is not None else "MACs"} of '
                         f'streaming layers and recurrent cells are per step)')
        rf = self.receptive_field
        if rf is not None:
            lines.append(f'Receptive field: size {_axes(rf.size)}, jump {_axes(rf.jump)}, start {_start(rf)}')
        elif any(r.receptive_field is not None for r in self.rows):  # only rows up to some layer have one
            lines.append(f'Receptive field: none for the whole network ({self.receptive_field_error}); '
                         f'see the RF columns for each layer')
        return lines

    def __str__(self) -> str:
        header, cells = self._cells()
        numeric = _NUMERIC
        widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(header)]

        def line(values):
            return '  '.join(v.rjust(w) if h in numeric else v.ljust(w)
                             for v, w, h in zip(values, widths, header)).rstrip()

        rule = '-' * len(line(['-' * w for w in widths]))
        return '\n'.join([line(header), rule] + [line(row) for row in cells] + [rule] + self._footer())

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        header, cells = self._cells()
        numeric = _NUMERIC

        def cell(tag, value, h):
            align = ' style="text-align:right"' if h in numeric else ' style="text-align:left"'
            return f'<{tag}{align}>{html.escape(value)}</{tag}>'

        head = ''.join(cell('th', h, h) for h in header)
        body = ''.join('<tr>' + ''.join(cell('td', v, h) for v, h in zip(row, header)) + '</tr>' for row in cells)
        foot = '<br>'.join(html.escape(s) for s in self._footer())
        return (f'<table class="brainconv-summary"><thead><tr>{head}</tr></thead>'
                f'<tbody>{body}</tbody></table><p>{foot}</p>')


# --- formatting ------------------------------------------------------------------------------

def _plain(v: Fraction) -> int | float:
    return int(v) if v.denominator == 1 else float(v)


def _number(v: Any) -> str:
    if isinstance(v, Fraction) and v.denominator != 1:
        return str(float(v)) if Fraction(float(v)) == v else f'{v.numerator}/{v.denominator}'
    return str(int(v))


_NUMERIC = {'Params', 'MACs', 'Rate', 'SynOps', 'State'}  # right-aligned columns


def _synops(r: LayerSummary) -> str:
    if r.spike_rate is None:
        return ''
    return '?' if r.synops is None else f'{round(r.synops):,}'


def _shape(size: Size | None) -> str:
    return '?' if size is None else str(tuple(size))


def _axes(values: Sequence | None) -> str:
    return '' if not values else 'x'.join(_number(v) for v in values)


def _pads(pads) -> str:
    return '' if pads is None else ','.join(f'({lo},{hi})' for lo, hi in pads)


def _dilation(r: LayerSummary) -> str:
    text = _axes(r.rhs_dilation)
    if r.lhs_dilation and any(d != 1 for d in r.lhs_dilation):
        text += f' lhs {_axes(r.lhs_dilation)}'
    return text


def _start(rf: ReceptiveField | None) -> str:
    return '' if rf is None else '(' + ', '.join(_number(v) for v in rf.start) + ')'


def _bytes(n: int) -> str:
    for unit in ('B', 'KiB', 'MiB'):
        if n < 1024 or unit == 'MiB':
            return f'{n} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
        n /= 1024
    return ''


# --- walking the module tree -------------------------------------------------------------------

def _children(module: Any) -> Iterator[Tuple[str, Any]]:
    """Sub-layers of a container, in definition order.

    A Sequential yields its layers (plain functions included); any other
    Module yields the Modules among its attributes, looking one level into
    lists, tuples and dicts.
    """
    if isinstance(module, _nn.Sequential):
        for i, layer in enumerate(module.layers):
            yield f'layers.{i}', layer
        return
    for name, value in vars(module).items():
        if isinstance(value, _nn.Module):
            yield name, value
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                if isinstance(v, _nn.Module):
                    yield f'{name}.{i}', v
        elif isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, _nn.Module):
                    yield f'{name}.{k}', v


def _leaves(obj: Any, path: str, seen: Dict[int, str]) -> Iterator[Tuple[str, Any, str | None]]:
    """``(path, layer, shared_with)`` for every layer of the tree, in order."""
    if id(obj) in seen:
        yield path, obj, seen[id(obj)]
        return
    if isinstance(obj, _CONVS + (StreamingConv, _ConvRNNCell) + _POOLS + _DENSE):
        children = []
    elif isinstance(obj, _nn.Module):
        children = list(_children(obj))
    elif callable(obj):
        children = []
    else:
        raise TypeError(f"expected brainstate Modules or callables, got {type(obj).__name__} at {path or '<root>'}")
    seen[id(obj)] = path or '<root>'
    if not children:
        yield path, obj, None
        return
    for name, child in children:
        yield from _leaves(child, f'{path}.{name}' if path else name, seen)


def _param_states(obj: Any) -> Dict[int, Tuple[str, brainstate.ParamState]]:
    if not isinstance(obj, _nn.Module):
        return {}
    return {id(s): ('.'.join(map(str, p)), s) for p, s in obj.states(brainstate.ParamState).items()}


def _hidden_states(obj: Any) -> List[Tuple[str, brainstate.HiddenState]]:
    if not isinstance(obj, _nn.Module):
        return []
    return [('.'.join(map(str, p)), s) for p, s in obj.states(brainstate.HiddenState).items()]


def _declared_states(layer: Any) -> Dict[str, Size]:
    """The per-example shapes of the HiddenStates a brainconv layer makes in ``init_state``."""
    if isinstance(layer, StreamingConv):
        return {'buffer': tuple(layer.state_size)}
    if isinstance(layer, _ConvRNNCell):
        return {n: tuple(layer.state_size) for n in layer.state_names}
    return {}


def _leaf_shapes(state: brainstate.State) -> List[Size]:
    return [tuple(np.shape(leaf)) for leaf in jax.tree.leaves(state.value)]


def _own_shape(layer: Any, name: str, shape: Size) -> Size | None:
    """The per-example shape ``layer`` declares for a state of this shape, if it declares one.

    brainconv's layers declare their states' shapes; any other module a state whose shape
    ends with its ``varshape`` (a brainstate Dynamics: a neuron group), else its
    ``out_size``, else its ``in_size``.
    """
    declared = _declared_states(layer).get(name)
    candidates = [declared] if declared is not None else [
        getattr(layer, a, None) for a in ('varshape', 'out_size', 'in_size')]
    for size in candidates:
        try:
            size = tuple(int(v) for v in size)
        except TypeError:  # None, or not a sequence of ints
            continue
        if size and len(shape) >= len(size) and shape[len(shape) - len(size):] == size:
            return size
    return None


def _state_size(state: brainstate.State) -> Tuple[int, int]:
    leaves = jax.tree.leaves(state.value)
    return sum(int(np.size(x)) for x in leaves), sum(int(np.size(x)) * np.dtype(x.dtype).itemsize for x in leaves)


def _pool_geometry(layer: Any, in_size: Size) -> Tuple[ConvGeometry, Tuple[int, ...]]:
    """A pooling layer as a window: its geometry and the in_size axes it pools.

    brainstate resolves ``channel_axis`` against the input with one batch axis.
    """
    x_dim = len(in_size) + 1
    axes = list(range(x_dim))
    if layer.channel_axis is not None:
        axes.pop(layer.channel_axis % x_dim)
    pooled = tuple(a - 1 for a in axes[-layer.pool_dim:])
    if any(a < 0 for a in pooled):
        raise ValueError(f"{type(layer).__name__} pools over the batch axis for in_size {in_size}")
    nd = len(pooled)
    padding = layer.padding if isinstance(layer.padding, str) else tuple(tuple(p) for p in layer.padding)
    geometry = conv_geometry(tuple(in_size[a] for a in pooled), tuple(layer.kernel_size), tuple(layer.stride),
                             padding, (1,) * nd, (1,) * nd)
    return geometry, pooled


def _brainstate_spec(layer: Any) -> ConvSpec | None:
    """A brainstate convolution layer as the brainconv ConvSpec that computes the same thing.

    A brainstate Conv's 'SAME', 'VALID' and pairs mean what they mean here.  A
    brainstate ConvTranspose runs a stride-1 convolution of its stride-dilated
    input with the flipped kernel and pads ``(q_lo, q_hi)`` (for 'SAME' and
    'VALID' those of ``jax.lax.conv_transpose``; given pairs as they are): that
    is brainconv's ConvTranspose with pads ``span - 1 - q`` and, where that
    would make the high pad negative, the rest as output_padding.  None when
    the layer's attributes do not give its own ``out_size`` (a brainstate
    version with other meanings): its row then shows no geometry.
    """
    try:
        nd = int(layer.num_spatial_dims)
        size = tuple(int(v) for v in layer.in_size)
        cf = bool(layer.channel_first)
        cin, spatial = (size[0], size[1:]) if cf else (size[-1], size[:-1])
        k, s, rd = (tuple(int(v) for v in getattr(layer, a)) for a in ('kernel_size', 'stride', 'rhs_dilation'))
        padding = layer.padding
        if not isinstance(padding, str):
            padding = tuple((int(lo), int(hi)) for lo, hi in padding)
        if isinstance(layer, _BS_TRANSPOSES):
            lax_pads = (tuple(lax_conv_transpose_pads(kernel_span(kk, d), ss, padding) for kk, ss, d in zip(k, s, rd))
                        if isinstance(padding, str) else padding)
            pads: Pads = ()
            output_padding: Tuple[int, ...] = ()
            for (q_lo, q_hi), kk, d in zip(lax_pads, k, rd):
                span = kernel_span(kk, d)
                pads += ((span - 1 - q_lo, max(span - 1 - q_hi, 0)),)
                output_padding += (max(q_hi - (span - 1), 0),)
            geometry = conv_transpose_geometry(spatial, k, s, pads, rd, output_padding)
            padding = pads
        else:
            geometry = conv_geometry(spatial, k, s, padding, tuple(int(v) for v in layer.lhs_dilation), rd)
        spec = ConvSpec(size, cin, int(layer.out_channels), int(layer.groups), padding, 'ZEROS', cf, geometry)
    except (AttributeError, TypeError, ValueError):
        return None
    if geometry.num_spatial_dims != nd or spec.out_size != tuple(layer.out_size):
        return None
    return spec


class _Walk:
    """Rows of a module tree, with the receptive field carried along the chain."""

    def __init__(self, model: Any, in_size: Size | None):
        self.rows: List[LayerSummary] = []
        # Per row: synapses per example driven by the row's input (scaled by its spike rate) and by values
        # the row computes itself (counted in full); None where the cost is unknown.
        self.synapses: List[Tuple[int, int] | None] = []
        self.rf: ReceptiveField | None = None
        self.rf_ended_by: str | None = None  # why the receptive field stopped being defined
        self.claimed: set = set()
        self.claimed_hidden: set = set()
        self.param_bytes = 0
        roots = list(model) if isinstance(model, (list, tuple)) else [model]
        if not roots:
            raise ValueError("model must hold at least one layer, got an empty sequence")
        model_in = getattr(model, 'in_size', None)
        if in_size is not None:
            in_size = _size_arg(in_size)
            if model_in is not None and tuple(model_in) != in_size:
                raise ValueError(f"in_size {in_size} does not match the model's in_size {tuple(model_in)}")
        self.cur = in_size or (tuple(model_in) if model_in is not None else None)
        self.in_size = self.cur
        self.batch = self._batch_shape(roots, isinstance(model, (list, tuple)))
        seen: dict = {}
        for i, root in enumerate(roots):
            prefix = str(i) if isinstance(model, (list, tuple)) else ''
            for path, layer, shared in _leaves(root, prefix, seen):
                self._add(path, layer, shared)
        # Parameters held by containers rather than by any layer.
        for root in roots:
            for key, (path, state) in _param_states(root).items():
                if key not in self.claimed:
                    self.claimed.add(key)
                    count, nbytes = _state_size(state)
                    self.param_bytes += nbytes
                    self._append(LayerSummary(path, type(state).__name__, None, None, params=count))
            for path, state in _hidden_states(root):  # HiddenStates held by containers
                if id(state) not in self.claimed_hidden:
                    self.claimed_hidden.add(id(state))
                    entries = self._entries(None, path, state)
                    self._append(LayerSummary(path, type(state).__name__, None, None,
                                              state=sum(math.prod(z) for _, z in entries), states=entries))

    def _append(self, row: LayerSummary, synapses: Tuple[int, int] | None = (0, 0)) -> None:
        self.rows.append(row)
        self.synapses.append(None if row.macs is None else synapses)

    def with_rates(self, spike_rates: Any) -> List[LayerSummary]:
        """The rows with ``spike_rate`` and ``synops`` filled in from :func:`summary`'s ``spike_rates``."""
        if spike_rates is None:
            return self.rows
        if isinstance(spike_rates, Mapping):
            paths = [r.path for r in self.rows]
            unknown = [k for k in spike_rates if k not in paths]
            if unknown:
                raise ValueError(f"spike_rates names {unknown!r}, which are not rows of this summary; its rows "
                                 f"are {paths!r}")
            rates = [None if r.path not in spike_rates else _rate(spike_rates[r.path], f'spike_rates[{r.path!r}]')
                     for r in self.rows]
        else:
            rates = [_rate(spike_rates, 'spike_rates', arrays=False)] * len(self.rows)
        return [row if rate is None else
                replace(row, spike_rate=rate, synops=None if syn is None else rate * syn[0] + syn[1])
                for row, rate, syn in zip(self.rows, rates, self.synapses)]

    @staticmethod
    def _batch_shape(roots: Sequence[Any], listed: bool) -> Size | None:
        """The batch axes the states were initialised with: those of the first state whose
        module declares its per-example shape (None when no state tells)."""
        for i, root in enumerate(roots):
            for _, layer, _ in _leaves(root, str(i) if listed else '', {}):
                for name, state in _hidden_states(layer):
                    for shape in _leaf_shapes(state):
                        own = _own_shape(layer, name, shape)
                        if own is not None:
                            return shape[:len(shape) - len(own)]
        return None

    def _entries(self, layer: Any, name: str, state: brainstate.HiddenState) -> Tuple[Tuple[str, Size], ...]:
        """``(name, per-example shape)`` of each array in one state."""
        shapes = _leaf_shapes(state)
        entries = []
        for i, shape in enumerate(shapes):
            own = None if layer is None else _own_shape(layer, name, shape)
            if own is None:
                batch = self.batch or ()
                own = shape[len(batch):] if shape[:len(batch)] == batch else shape
            entries.append((name if len(shapes) == 1 else f'{name}.{i}', own))
        return tuple(entries)

    def _hidden(self, layer: Any) -> Tuple[Tuple[str, Size], ...]:
        """The HiddenStates a row's module keeps (each state once over the table), per example.

        A brainconv layer's states count from the shapes it declares until ``init_state`` has made them.
        """
        declared = _declared_states(layer)
        made = dict(_hidden_states(layer))
        entries: list = []
        for name in list(declared) + [n for n in made if n not in declared]:
            state = made.get(name)
            key = (id(layer), name) if state is None else id(state)
            if key in self.claimed_hidden:
                continue
            self.claimed_hidden.add(key)
            entries += [(name, declared[name])] if state is None else self._entries(layer, name, state)
        return tuple(entries)

    def _params(self, layer: Any) -> int:
        total = 0
        for key, (_, state) in _param_states(layer).items():
            if key not in self.claimed:
                self.claimed.add(key)
                count, nbytes = _state_size(state)
                total += count
                self.param_bytes += nbytes
        return total

    def network_receptive_field(self) -> ReceptiveField:
        """The receptive field of the whole chain; ValueError saying why when it has none."""
        if self.rf_ended_by is not None:
            raise ValueError(f"the receptive field is not defined through this chain: {self.rf_ended_by}")
        if self.rf is None:
            raise ValueError("layers must include at least one convolution or pooling layer, got "
                             f"{[r.type for r in self.rows]}")
        return self.rf

    def _end_rf(self, reason: str) -> None:
        if self.rf_ended_by is None:
            self.rf_ended_by = reason

    def _step_rf(self, geometry: ConvGeometry, where: str) -> ReceptiveField | None:
        if self.rf_ended_by is not None:
            return None
        if self.rf is None:
            self.rf = ReceptiveField.identity(geometry.num_spatial_dims)
        elif len(self.rf.size) != geometry.num_spatial_dims:
            self._end_rf(f"{where} has {geometry.num_spatial_dims} spatial axes, the layers before "
                         f"it {len(self.rf.size)}")
            return None
        self.rf = receptive_field_step(self.rf, geometry)
        return self.rf

    def _add(self, path: str, layer: Any, shared: str | None) -> None:
        name = type(layer).__name__
        if not isinstance(layer, _nn.Module):  # a plain function in a Sequential
            name = getattr(layer, '__name__', name)
        path = path or name  # a single layer given on its own: named by its type
        where = name if path == name else f'{path} ({name})'
        declared_in = getattr(layer, 'in_size', None) if isinstance(layer, _nn.Module) else None
        in_size = tuple(declared_in) if declared_in is not None else self.cur
        if self.cur is not None and in_size != self.cur:
            self._end_rf(f"{where} takes in_size {in_size} but the layer before it gives {self.cur}")
        elif self.cur is None and self.rows:
            self._end_rf(f"{where} follows a layer whose output size is unknown")
        hidden = self._hidden(layer)
        synapses: Tuple[int, int] | None = (0, 0)
        row = LayerSummary(path, name if shared is None else f'{name} (shared with {shared})', in_size, None,
                           params=self._params(layer), state=sum(math.prod(z) for _, z in hidden),
                           states=hidden or None)
        if isinstance(layer, _CONVS):
            own = isinstance(layer, _OWN_CONVS)
            spec = layer.spec if own else _brainstate_spec(layer)
            if spec is None:
                row = replace(row, out_size=tuple(layer.out_size), macs=None)
                self._end_rf(f"{where}: its geometry could not be read")
            else:
                g = spec.geometry
                synapses = (conv_connections(spec),
                            conv_connections(layer.pointwise_spec) if isinstance(layer, SeparableConv) else 0)
                row = replace(row, out_size=tuple(layer.out_size) if own else spec.out_size,
                              macs=layer_macs(layer) if own else conv_macs(spec), kernel_size=g.kernel_size,
                              stride=g.stride, pads=g.pads, rhs_dilation=g.rhs_dilation,
                              lhs_dilation=g.lhs_dilation, groups=spec.groups,
                              receptive_field=self._step_rf(g, where))
        elif isinstance(layer, StreamingConv):
            g = layer.conv.spec.geometry
            synapses = (conv_connections(layer.window_spec), 0)
            row = replace(row, out_size=tuple(layer.out_size), macs=conv_macs(layer.window_spec),
                          kernel_size=g.kernel_size, stride=g.stride, pads=g.pads, rhs_dilation=g.rhs_dilation,
                          lhs_dilation=g.lhs_dilation, groups=layer.conv.groups)
            self._end_rf(f"{where} steps through time")
        elif isinstance(layer, _ConvRNNCell):
            g = layer.input_conv.spec.geometry
            macs = sum(conv_macs(c.spec) for c in (layer.input_conv,) + layer.recurrent_convs)
            synapses = (conv_connections(layer.input_conv.spec),
                        sum(conv_connections(c.spec) for c in layer.recurrent_convs))
            row = replace(row, out_size=tuple(layer.out_size), macs=macs, kernel_size=g.kernel_size, stride=g.stride,
                          pads=g.pads, rhs_dilation=g.rhs_dilation, lhs_dilation=g.lhs_dilation, groups=1)
            self._end_rf(f"{where} is recurrent: its state depends on every earlier step")
        elif isinstance(layer, _POOLS):
            row = self._pool_row(row, layer, where)
        elif isinstance(layer, _DENSE):
            out = tuple(layer.out_size)
            row = replace(row, out_size=out, macs=None if in_size is None else dense_macs(in_size, out))
            synapses = (row.macs or 0, 0)
            if len(out) == 1:  # with more axes it acts on the last one at each position
                self._end_rf(f"{where} mixes all positions")
        elif not isinstance(layer, _nn.Module) or isinstance(layer, _POINTWISE):
            declared_out = getattr(layer, 'out_size', None)
            row = replace(row, out_size=tuple(declared_out) if declared_out is not None else in_size)
            if row.out_size != in_size:
                self._end_rf(f"{where} changes the shape")
        else:
            declared_out = getattr(layer, 'out_size', None)
            row = replace(row, out_size=None if declared_out is None else tuple(declared_out),
                          macs=None if row.params else 0)
            self._end_rf(f"{where} is not a convolution, pooling or element-wise layer")
        self._append(row, synapses)
        self.cur = row.out_size

    def _pool_row(self, row: LayerSummary, layer: Any, where: str) -> LayerSummary:
        if row.in_size is None:
            self._end_rf(f"{where} has no known input size")
            declared_out = getattr(layer, 'out_size', None)
            return replace(row, out_size=None if declared_out is None else tuple(declared_out))
        try:
            g, pooled = _pool_geometry(layer, row.in_size)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        out = list(row.in_size)
        for a, n in zip(pooled, g.out_spatial):
            out[a] = n
        declared_out = getattr(layer, 'out_size', None)
        return replace(row, out_size=tuple(declared_out) if declared_out is not None else tuple(out),
                       kernel_size=g.kernel_size, stride=g.stride, pads=g.pads,
                       receptive_field=self._step_rf(g, where))


def _rate(value: Any, name: str, arrays: bool = True) -> float:
    """A spike rate in [0, 1]; with ``arrays``, an array of at least one axis gives the fraction of its
    elements that are non-zero (a measured input)."""
    if not isinstance(value, (bool, np.bool_)):
        a = np.asarray(value) if isinstance(value, (int, float, np.generic, np.ndarray, jax.Array)) else None
        if a is not None and a.ndim and arrays and a.size:
            return np.count_nonzero(a) / a.size
        if a is not None and not a.ndim and a.dtype.kind in 'iuf' and 0 <= float(a) <= 1:
            return float(a)
    what = ('a number in [0, 1] or an array of the input it measures' if arrays else
            'a number in [0, 1] (the spike rate of every layer\'s input) or a dict {row path: rate}')
    raise ValueError(f"{name} must be {what}, got {value!r}")


def _size_arg(value: Any) -> Size:
    seq = as_sequence(value)  # NumPy arrays too
    if isinstance(seq, (int, np.integer)) and not isinstance(seq, (bool, np.bool_)):
        seq = (seq,)
    if (not isinstance(seq, tuple) or not seq
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and v > 0
                       for v in seq)):
        raise ValueError(f"in_size must be a sequence of positive ints (no batch axis), got {value!r}")
    return tuple(int(v) for v in seq)


def summary(model: Any, in_size: Sequence[int] | None = None,
            spike_rates: float | Mapping[str, Any] | None = None) -> Summary:
    """Tabulate every layer of ``model`` without running it.

    Parameters
    ----------
    model : brainstate Module, or a list/tuple of layers
        A ``brainstate.nn.Sequential``, any Module (its sub-Modules are read
        in the order they were assigned, looking one level into lists,
        tuples and dicts), a single layer, or a sequence of layers.
    in_size : sequence of int, optional
        Size of one example (no batch axis).  Needed only when neither the
        model nor its first layer knows it (for instance a model that starts
        with an activation); ValueError if it disagrees with the model's.
    spike_rates : float or dict, optional
        Input spike rates, for a SynOps column (synaptic operations per
        example; per time step for networks that step through time).  A
        number in [0, 1]: the fraction of every row's input elements that are
        non-zero.  A dict ``{row path: rate}``: the rates of the rows named
        (their paths as the Layer column shows them; ValueError for a path
        that is not a row); a rate may also be an array of the input that row
        received (any batch axes, boolean spikes or floats), whose fraction of
        non-zero elements is used.  Rows not named get no SynOps (blank).
        Without rates the table is exactly as before.

    Returns
    -------
    Summary
        One :class:`LayerSummary` per layer (``.rows``; plain dicts from
        ``.to_rows()``), with totals.  Convolution rows show kernel, stride,
        resolved ``(low, high)`` pads, dilations and groups; pooling rows
        their window.  Parameters are counted from the ``ParamState`` s (a
        state shared by two layers counts once); MACs per example follow
        :func:`conv_macs` and :func:`dense_macs`.  brainstate's own
        convolution layers are read like brainconv's.  The footer (and
        ``Summary.receptive_field``) gives the whole network's receptive
        field exactly when :func:`receptive_field` would, and otherwise its
        reason for refusing.  With ``spike_rates``, a row's SynOps are its
        rate times the synapses its input elements drive: for a convolution
        every ``(input position, kernel tap, output position)`` triple in
        which a real (non-padding) input feeds an output, times ``in_channels
        * out_channels / groups`` (:func:`conv_connections`), for a dense layer
        ``in x out``; pooling, normalisation, activations and neurons drive
        none.  A separable convolution's pointwise step and a recurrent cell's
        recurrent convolutions read values the layer computes itself, not
        spikes, and count in full; a streaming layer counts one step's window.
        The footer gives the total (``Summary.total_synops``).

    Examples
    --------
    >>> import brainstate, brainconv, numpy as np
    >>> w = lambda shape: np.zeros(shape, np.float32)
    >>> net = brainstate.nn.Sequential(
    ...     brainconv.Conv2d((8, 8, 1), 4, 3, w_init=w),
    ...     brainstate.nn.ReLU(),
    ...     brainstate.nn.MaxPool2d(2, 2, channel_axis=-1, in_size=(8, 8, 4)),
    ... )
    >>> s = brainconv.summary(net)
    >>> [r.out_size for r in s.rows]
    [(8, 8, 4), (8, 8, 4), (4, 4, 4)]
    >>> s.total_params, s.total_macs
    (36, 2304)
    >>> s.rows[-1].to_dict()['rf_size'], s.rows[-1].to_dict()['rf_jump']
    ((4, 4), (2, 2))

    Its input elements drive 22 x 22 synapses per output channel (per axis 8
    outputs x 3 taps, less the 2 taps that read padding; MACs count
    8 x 8 x 9), 1,936 in all; at 5% input spikes that is 96.8 SynOps:

    >>> s = brainconv.summary(net, spike_rates=0.05)
    >>> round(s.rows[0].synops, 1), s.total_synops == s.rows[0].synops
    (96.8, True)
    """
    walk = _Walk(model, in_size)
    try:
        rf, why = walk.network_receptive_field(), None
    except ValueError as e:
        rf, why = None, str(e)
    rows = walk.with_rates(spike_rates)
    return Summary(rows, walk.in_size or (walk.rows[0].in_size if walk.rows else None), walk.cur,
                   walk.param_bytes, rf, why)


def receptive_field(layers: Any, in_size: Sequence[int] | None = None) -> ReceptiveField:
    """Receptive field of the last layer's output with respect to the first layer's input.

    ``layers`` is a convolution layer (brainconv's or brainstate's), a pooling
    layer, a sequence of them (with element-wise layers in between if you
    like), or a Module holding them, as for :func:`summary`.  Sizes are in input positions: ``size`` is how many
    input positions one output position depends on, ``jump`` the input
    distance between neighbouring outputs, ``start`` the input coordinate of
    the centre of the first output's field.

    Raises ValueError if a layer in the chain mixes all positions (Flatten,
    Linear, ...), if consecutive sizes do not chain, or if there is no
    convolution or pooling layer.

    Examples
    --------
    >>> import brainconv, numpy as np
    >>> w = lambda shape: np.zeros(shape, np.float32)
    >>> rf = brainconv.receptive_field([
    ...     brainconv.Conv1d((32, 1), 2, 3, w_init=w),
    ...     brainconv.Conv1d((32, 2), 2, 3, stride=2, w_init=w),
    ...     brainconv.Conv1d((16, 2), 2, 3, rhs_dilation=2, w_init=w)])
    >>> [int(v) for v in rf.size + rf.jump + rf.start]
    [13, 2, 1]
    """
    return _Walk(layers, in_size).network_receptive_field()
