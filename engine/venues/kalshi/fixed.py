"""Kalshi's fixed-point fields: prices `*_dollars` ("0.5600") and counts `*_fp` ("10.00").

They arrive as strings and are parsed with `Decimal`, never float: a price of 0.56 must stay
exactly 0.56 when it is compared with a limit or multiplied by a count. A malformed value raises
`FixedPointError` naming the field and the value, so a changed venue format is loud, not a wrong
number. JSON numbers are read as `Decimal` too (the client parses with `parse_float=Decimal`), so
a number is accepted; a Python float or a bool is a programming error and refused.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = [
    "FixedPointError",
    "format_count",
    "format_dollars",
    "parse_count",
    "parse_dollars",
    "parse_fixed",
    "parse_optional",
]


class FixedPointError(ValueError):
    """A fixed-point field is missing or not a finite decimal number."""

    def __init__(self, field: str, value: Any, problem: str) -> None:
        self.field = field
        self.value = value
        super().__init__(f"Kalshi field {field!r}: {problem}, got {value!r}")


def parse_fixed(value: Any, field: str) -> Decimal:
    """Parse a required fixed-point value ("0.5600", "10.00", or a JSON number read as Decimal)."""
    if value is None:
        raise FixedPointError(field, value, "missing (null)")
    if isinstance(value, bool | float):
        # A float has already lost exactness; a bool is never a number here.
        raise FixedPointError(field, value, "expected a decimal string")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise FixedPointError(field, value, "expected a decimal string, got an empty one")
        try:
            result = Decimal(text)
        except InvalidOperation:
            raise FixedPointError(field, value, "expected a decimal string") from None
    else:
        raise FixedPointError(
            field, value, f"expected a decimal string, not {type(value).__name__}"
        )
    if not result.is_finite():
        raise FixedPointError(field, value, "expected a finite number")
    return result


def parse_dollars(value: Any, field: str) -> Decimal:
    """A price in dollars; Kalshi prices lie in [0, 1] per contract."""
    result = parse_fixed(value, field)
    if result < 0:
        raise FixedPointError(field, value, "a price cannot be negative")
    return result


def parse_count(value: Any, field: str, *, signed: bool = False) -> Decimal:
    """A contract count; `signed` for positions (positive YES, negative NO)."""
    result = parse_fixed(value, field)
    if not signed and result < 0:
        raise FixedPointError(field, value, "a count cannot be negative")
    return result


def parse_optional(data: dict[str, Any], *names: str) -> Decimal | None:
    """The first of `names` present in `data` and not null, parsed; None when none is present.

    For fields the venue leaves out or sends as null when there is nothing to report (no bid, no
    last trade). Several names allow for the old and new spelling of one field.
    """
    for name in names:
        if data.get(name) is not None:
            return parse_fixed(data[name], name)
    return None


def require(data: dict[str, Any], *names: str) -> Decimal:
    """Like `parse_optional`, but a missing field is an error naming the first spelling."""
    result = parse_optional(data, *names)
    if result is None:
        raise FixedPointError(names[0], None, "missing")
    return result


def format_dollars(value: Decimal) -> str:
    """A price as Kalshi writes it: four decimals ("0.4200"), more if the tick is finer."""
    value = Decimal(value)
    if not value.is_finite() or value < 0:
        raise ValueError(f"not a price: {value!r}")
    exponent = value.normalize().as_tuple().exponent
    places = max(4, -exponent) if isinstance(exponent, int) else 4
    if places > 6:
        raise ValueError(f"price {value} has more than 6 decimals")
    return f"{value:.{places}f}"


def format_count(value: Decimal | int) -> str:
    """A count as Kalshi writes it: two decimals ("2.00")."""
    value = Decimal(value)
    if not value.is_finite() or value <= 0:
        raise ValueError(f"not a count: {value!r}")
    if value != value.quantize(Decimal("0.01")):
        raise ValueError(f"count {value} has more than 2 decimals")
    return f"{value:.2f}"
