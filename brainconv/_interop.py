"""Telling other libraries of the brain-modelling ecosystem what brainconv's primitives are.

braintrace (online learning) decides how hidden states couple by the *names* of the primitives
between them: ``dot_general`` and ``conv_general_dilated`` mix positions, anything else it does
not know is taken as element-wise.  Every brainconv formulation but ``'lax'`` reaches JAX as
:data:`brainconv.lowering.conv_p` (``'brainconv_conv'``), which mixes positions exactly as
``conv_general_dilated`` does; without this registration braintrace's default
``recurrence_scope='diagonal'`` would merge the spiking layers around a brainconv layer into one
hidden group and treat the convolution as element-wise (wrong eligibility traces, no error).
braintrace 0.2.8 has no public hook for it, so the name is added to its private set; a test
(``tests/test_braintrace.py``) fails if braintrace renames it.
"""

from __future__ import annotations

import sys

#: The name of :data:`brainconv.lowering.conv_p`.
CONV_PRIMITIVE = 'brainconv_conv'
_SET = '_RECURRENT_WEIGHT_MIXING_PRIMITIVES'
_STATE = {'registered': False}


def register_with_braintrace() -> bool:
    """Add brainconv's convolution primitive to braintrace's mixing primitives.

    Returns True when braintrace is importable and now knows the primitive.
    """
    try:
        from braintrace._compiler import hidden_group
    except ImportError:
        return False
    known = getattr(hidden_group, _SET, None)
    if known is None:
        return False
    if CONV_PRIMITIVE not in known:
        setattr(hidden_group, _SET, frozenset(known) | {CONV_PRIMITIVE})
    return True


def notice_braintrace() -> None:
    """Register once braintrace has been imported (checked whenever a convolution is traced,
    which braintrace does before it reads the program)."""
    if not _STATE['registered'] and 'braintrace' in sys.modules:
        _STATE['registered'] = register_with_braintrace()
