"""Walking a module tree: its layers in order, their states, and the rows of a summary, with
the receptive field carried along the chain (nothing is traced or run)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple

import brainstate
import jax
import jax.numpy as jnp
import numpy as np

from .._args import as_sequence
from ..layers import Conv, ConvTranspose
from ..local import LocalConv
from ..pooling import AvgPool, MaxPool
from ..recurrent import _ConvRNNCell
from ..separable import SeparableConv
from ..shapes import ConvGeometry, ReceptiveField, receptive_field_step
from ..streaming import StreamingConv
from .costs import conv_connections, conv_macs, dense_macs, layer_macs
from .readers import _BS_CONVS, _BS_TRANSPOSES, _DENSE, _POINTWISE, _POOLS, _brainstate_spec, _pool_geometry
from .table import LayerSummary

Size = Tuple[int, ...]

_nn = brainstate.nn

# brainconv layers with a ``spec`` whose geometry is their window (SeparableConv: its depthwise step's).
_OWN_CONVS = (Conv, ConvTranspose, LocalConv, SeparableConv)
_CONVS = _OWN_CONVS + _BS_CONVS + _BS_TRANSPOSES
# brainconv's pooling layers, whose ``geometry`` is their window; with brainstate's, the pooling rows.
_OWN_POOLS = (MaxPool, AvgPool)
_ALL_POOLS = _OWN_POOLS + _POOLS


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
    if isinstance(obj, _CONVS + (StreamingConv, _ConvRNNCell) + _ALL_POOLS + _DENSE):
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


class _Walk:
    """Rows of a module tree, with the receptive field carried along the chain."""

    def __init__(self, model: Any, in_size: Size | None):
        self.rows: List[LayerSummary] = []
        # Per row: synapses per example driven by the row's input (scaled by its spike rate) and by values
        # the row computes itself (counted in full); None where the cost is unknown.
        self.synapses: List[Tuple[int, int] | None] = []
        # Per row: the brainconv layer whose formulation the row reports (None for others).
        self.convs: List[Any] = []
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

    def _append(self, row: LayerSummary, synapses: Tuple[int, int] | None = (0, 0), conv: Any = None) -> None:
        self.rows.append(row)
        self.synapses.append(None if row.macs is None else synapses)
        self.convs.append(conv)

    def _runs_as(self, conv: Any, rate: float | None) -> str | None:
        """What ``conv`` runs as (at ``rate``, for the batch the states were made with, else one example)."""
        if conv is None:
            return None
        # a row given a spike rate reads spikes (boolean), any other float inputs
        dtype = jnp.float32 if rate is None else jnp.bool_
        example = jax.ShapeDtypeStruct(tuple(self.batch or (1,)) + tuple(conv.in_size), dtype)
        choice = conv.formulation(example, density=rate)
        if choice.dense is None:
            return choice.formulation
        if rate is None:
            return f'{choice.formulation}|{choice.dense}'
        return 'event' if choice.forward == 'event kernel' else choice.forward

    def with_rates(self, spike_rates: Any) -> List[LayerSummary]:
        """The rows with ``spike_rate`` and ``synops`` filled in from :func:`summary`'s ``spike_rates``."""
        if spike_rates is None:
            return [replace(row, formulation=self._runs_as(conv, None)) for row, conv in zip(self.rows, self.convs)]
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
        return [replace(row, formulation=self._runs_as(conv, rate)) if rate is None else
                replace(row, spike_rate=rate, synops=None if syn is None else rate * syn[0] + syn[1],
                        formulation=self._runs_as(conv, rate))
                for row, rate, syn, conv in zip(self.rows, rates, self.synapses, self.convs)]

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
        elif isinstance(layer, _ALL_POOLS):
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
        self._append(row, synapses, layer if isinstance(layer, _OWN_CONVS) else None)
        self.cur = row.out_size

    def _pool_row(self, row: LayerSummary, layer: Any, where: str) -> LayerSummary:
        if isinstance(layer, _OWN_POOLS):
            g = layer.geometry
            return replace(row, out_size=tuple(layer.out_size), kernel_size=g.kernel_size, stride=g.stride,
                           pads=g.pads, receptive_field=self._step_rf(g, where))
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

