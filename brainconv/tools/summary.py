"""Shape, parameter, cost and state tables of a network, without running it.

:func:`summary` walks a brainstate Module tree (a ``brainstate.nn.Sequential``
or any Module holding brainconv layers beside brainstate's own convolution,
pooling, Flatten, Linear, normalisation and activation layers) and reads what
every layer already knows: its ``in_size`` and ``out_size``, its resolved geometry,
its parameter states.  Nothing is traced or run.

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

from typing import Any, Mapping, Sequence

from .table import Summary
from .walk import _Walk


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
