"""Tools that read a network without running it: :func:`summary` (shapes, parameters, MACs,
SynOps, states, receptive fields, per layer) and :func:`receptive_field`.

* :mod:`~brainconv.tools.summary` / :mod:`~brainconv.tools.table` -- the table and its rows;
* :mod:`~brainconv.tools.receptive` -- the receptive field of a chain;
* :mod:`~brainconv.tools.walk` -- the walk over a module tree both read;
* :mod:`~brainconv.tools.costs` -- MACs and synapses per example;
* :mod:`~brainconv.tools.readers` -- brainstate's own layers, read as brainconv's.
"""

from .costs import conv_connections, conv_macs, dense_macs, layer_macs
from .receptive import receptive_field
from .summary import summary
from .table import LayerSummary, Summary

__all__ = ['summary', 'receptive_field', 'Summary', 'LayerSummary', 'conv_macs', 'layer_macs', 'dense_macs',
           'conv_connections']
