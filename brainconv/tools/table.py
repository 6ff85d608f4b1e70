"""The table :func:`brainconv.summary` returns: its rows, totals, text and HTML."""

from __future__ import annotations

import html
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Dict, List, Sequence, Tuple

from ..shapes import ReceptiveField

Size = Tuple[int, ...]


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
    no rate was given or the cost is not known).  ``formulation`` is what a brainconv
    convolution runs as (:meth:`brainconv.Conv.formulation`): a formulation's name, or
    for the event switch ``'event|<dense>'``, and at a given spike rate the branch that
    computes the output (``'event'`` or the dense formulation's name).
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
    formulation: str | None = None  # what a brainconv convolution runs as (at spike_rate, where given)

    def to_dict(self) -> Dict[str, Any]:
        """Plain Python values (receptive field as int/float tuples), for pandas and JSON."""
        rf = self.receptive_field
        return {
            'path': self.path, 'type': self.type, 'in_size': self.in_size, 'out_size': self.out_size,
            'kernel_size': self.kernel_size, 'stride': self.stride, 'pads': self.pads,
            'rhs_dilation': self.rhs_dilation, 'lhs_dilation': self.lhs_dilation, 'groups': self.groups,
            'params': self.params, 'macs': self.macs, 'spike_rate': self.spike_rate, 'synops': self.synops,
            'state': self.state, 'formulation': self.formulation,
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
            ('Runs as', lambda r: r.formulation or ''),
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

