"""Shape checks of venue answers, shared by the adapters: an answer that is not the shape the
adapter reads raises ``MALFORMED`` (never read as "nothing"), naming what was expected."""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

from ess.core.flatten import PositionSide
from ess.venues.ports import VenueError, VenueErrorKind

__all__ = [
    "QUERY",
    "exposure_order",
    "malformed",
    "mapping",
    "order_id",
    "position_side",
    "retry_after",
    "rows",
    "text",
]

#: The query string of a URL in an error message (it may carry a signature): cut from it.
QUERY: Final = re.compile(r"\?\S*")


def malformed(message: str) -> VenueError:
    """The error of an answer that cannot be read."""
    return VenueError(VenueErrorKind.MALFORMED, message)


def _describe(value: Any) -> str:
    """What an unexpected answer was, short (a raw body is shown, a structure only named)."""
    return repr(value)[:60] if isinstance(value, str) else type(value).__name__


def mapping(value: Any, what: str) -> Mapping[str, Any]:
    """``value`` if it is an object."""
    if not isinstance(value, dict):
        raise malformed(f"{what}: expected an object, got {_describe(value)}")
    return value


def rows(value: Any, what: str) -> list[Mapping[str, Any]]:
    """``value`` if it is a list of objects."""
    if not isinstance(value, list):
        raise malformed(f"{what}: expected a list, got {_describe(value)}")
    return [mapping(row, what) for row in value]


def text(row: Mapping[str, Any], key: str, what: str) -> str:
    """A non-empty string field."""
    value = row.get(key)
    if not isinstance(value, str) or not value:
        raise malformed(f"{what}: no {key!r} in {row!r:.200}")
    return value


def order_id(row: Mapping[str, Any], key: str, what: str) -> str:
    """An order id field (a non-empty string or an integer), as text."""
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise malformed(f"{what}: no {key!r} in {row!r:.200}")
    return str(value)


def position_side(side: PositionSide | None, quantity: Decimal, what: str) -> PositionSide | None:
    """``side`` (``None`` in one-way mode) once it agrees with the signed ``quantity``: a long
    of a hedge-mode account is > 0 and a short < 0. A row that says otherwise was garbled and
    cannot be closed from: closing it on the wrong side would do nothing, or add risk."""
    if side is not None and quantity and (quantity > 0) != (side == "long"):
        raise malformed(f"{what}: a {side} position of size {quantity}")
    return side


def exposure_order(item: tuple[tuple[str, PositionSide | None], Decimal]) -> tuple[str, str]:
    """Sort key of exposure keyed by (symbol, hedge-mode side): by symbol, one-way first."""
    (symbol, side), _ = item
    return symbol, side or ""


def retry_after(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` in seconds (an HTTP date is ignored: the caller backs off its own way)."""
    for name, value in headers.items():
        if name.lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None
