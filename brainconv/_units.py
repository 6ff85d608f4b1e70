"""The one place that touches brainunit Quantities.

Layers split each operand into a plain mantissa and a unit on the way in, run
the unit-free functional op, and rebuild a Quantity on the way out.  Plain
arrays stay plain arrays.
"""

from __future__ import annotations

from typing import Any, Tuple

import brainunit as u
import jax.numpy as jnp


def split(x: Any) -> Tuple[Any, u.Unit | None]:
    """``(mantissa, unit)``; the unit is None for a plain array or a dimensionless Quantity.

    A Python list or tuple (nested) becomes an array here, as ``jax.numpy`` reads it: every
    layer and op takes its inputs through this function.  A brainevent ``BinaryArray`` becomes the
    boolean array of its non-zeros: a spike is a spike of 1, whatever value marks it (brainevent's
    own operations read it so).
    """
    if isinstance(x, (list, tuple)):
        return jnp.asarray(x), None
    if type(x).__name__ == 'BinaryArray' and type(x).__module__.split('.')[0] == 'brainevent':
        return jnp.asarray(x.value).astype(bool), None
    if isinstance(x, u.Quantity):
        unit = x.unit
        if unit.is_unitless:
            return x.to_decimal(unit), None
        return x.mantissa, unit
    return x, None


def product(a: u.Unit | None, b: u.Unit | None) -> u.Unit | None:
    if a is None:
        return b
    if b is None:
        return a
    return a * b


def bias_scale(bias: Any, out_unit: u.Unit | None, layer: str) -> float:
    """The factor that puts the bias mantissa into ``out_unit`` (1.0 when the units are the same);
    TypeError, saying how to fix it, if their dimensions differ."""
    b_unit = split(bias)[1]
    if b_unit is None and out_unit is None:
        return 1.0
    if b_unit is not None and out_unit is not None and b_unit.has_same_dim(out_unit):
        return float(u.Quantity(1.0, unit=b_unit).to_decimal(out_unit))
    if out_unit is None:
        fix = "give b_init no unit, or give the input or the weights a unit"
    else:
        fix = f"give b_init that unit, e.g. b_init=braintools.init.ZeroInit(unit={_code(out_unit)})"
    raise TypeError(f"{layer}: the bias unit {_name(b_unit)} does not match the output unit "
                    f"{_name(out_unit)} (unit of the input times unit of the weight); {fix}")


def attach(y: Any, unit: u.Unit | None) -> Any:
    return y if unit is None else u.Quantity(y, unit=unit)


def _name(unit: u.Unit | None) -> str:
    return 'dimensionless (no unit)' if unit is None else repr(str(unit))


def unit_arg(value: Any, name: str) -> u.Unit | None:
    """A unit argument: None (plain arrays) or a brainunit Unit; a dimensionless unit counts as None."""
    if value is None:
        return None
    if not isinstance(value, u.Unit):
        raise TypeError(f"{name} must be a brainunit Unit (e.g. brainunit.mV) or None, got {value!r}")
    return None if value.is_unitless else value


def mantissa_in(x: Any, unit: u.Unit | None, what: str) -> Any:
    """``x`` as a plain array in ``unit``; TypeError if its unit has another dimension."""
    m = _in_unit(x, unit)
    if m is None:
        raise TypeError(f"{what} has unit {_name(split(x)[1])} but the state holds {_name(unit)}; "
                        f"pass the unit to init_state(unit=...)")
    return m


def _in_unit(value: Any, unit: u.Unit | None) -> Any:
    """``value`` as a plain array in ``unit`` (both unitless, or units of one dimension), else None."""
    m, v_unit = split(value)
    if v_unit is None and unit is None:
        return m
    if v_unit is not None and unit is not None and v_unit.has_same_dim(unit):
        return value.to_decimal(unit)
    return None


def _code(unit: u.Unit) -> str:
    """How to write ``unit`` in code: ``u.mV`` when brainunit has that name."""
    name = str(unit)
    return f'u.{name}' if name.isidentifier() and isinstance(getattr(u, name, None), u.Unit) else f'<{name}>'
