"""Fault injection: what can go wrong between a client and the exchange, on demand.

A :class:`Fault` matches requests by HTTP method and path pattern (``fnmatch`` style, e.g.
``"/fapi/v1/*"``), optionally by account and by request parameters (``{"symbol": "BTCUSDT"}`` or a
client order id, which is how a single order is targeted). It fires ``times`` times (``None``:
forever), each match with ``probability`` drawn from the simulator's seeded RNG, so a
probabilistic run is reproducible from its seed.

Kinds fall in three groups, by *when* they act:

* **instead of the exchange** (the request is not executed): ``http429``, ``http418``,
  ``http500/502/503``, ``rate_limit_code`` (-1003), ``invalid_key`` (-2015), ``unknown_order``
  (-2011), ``reduce_only_rejected`` (-2022), ``error`` (any code/status/msg), and ``hang`` (no
  answer until the simulator stops; with ``delay_s`` a slow answer: the request is executed after
  the delay even if the client has long given up).
* **after the exchange** (executed, then the answer is lost or mangled): ``exec_then_hang``,
  ``empty`` (HTTP 200, empty body), ``bad_json`` (HTTP 200, unparseable body). The empty and
  invalid bodies model a proxy or gateway eating the payload after the exchange acted; ccxt does
  not raise on them (``fetch_positions`` returns ``[]``), which is exactly the case a kill switch
  must not read as "flat".
* **inside the exchange**, consumed only by the endpoints they apply to: ``partial_fill``
  (order placement: fill only ``fill_ratio``) and ``late_fill`` (cancel endpoints: the orders
  leave the book as if cancelled but are filled ``delay_s`` later, creating or growing a position
  after the client was told they were cancelled).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Final

__all__ = ["ENGINE_KINDS", "POST_KINDS", "Fault", "FaultKind"]


class FaultKind(StrEnum):
    """What a fault does; see the module docstring for when each acts."""

    HTTP_429 = "http429"
    HTTP_418 = "http418"
    HTTP_500 = "http500"
    HTTP_502 = "http502"
    HTTP_503 = "http503"
    RATE_LIMIT_CODE = "rate_limit_code"
    HANG = "hang"
    EXEC_THEN_HANG = "exec_then_hang"
    EMPTY = "empty"
    BAD_JSON = "bad_json"
    INVALID_KEY = "invalid_key"
    UNKNOWN_ORDER = "unknown_order"
    REDUCE_ONLY_REJECTED = "reduce_only_rejected"
    ERROR = "error"
    PARTIAL_FILL = "partial_fill"
    LATE_FILL = "late_fill"


#: Kinds applied after the request was executed.
POST_KINDS: Final = frozenset({FaultKind.EXEC_THEN_HANG, FaultKind.EMPTY, FaultKind.BAD_JSON})
#: Kinds only the order and cancel handlers consume.
ENGINE_KINDS: Final = frozenset({FaultKind.PARTIAL_FILL, FaultKind.LATE_FILL})


@dataclass
class Fault:
    """One injected fault; ``hits`` counts how often it fired (assert on it in tests).

    ``code``/``status``/``msg`` configure ``error`` (defaults: -1000, HTTP 400); ``fill_ratio``
    configures ``partial_fill``; ``delay_s`` configures ``late_fill`` (0: the fill is applied
    before the cancel answer leaves) and ``hang`` (``None``: until the simulator stops).
    """

    kind: FaultKind
    method: str = "*"
    path: str = "*"
    times: int | None = 1
    probability: float = 1.0
    account: str | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    fill_ratio: Decimal = Decimal("0.5")
    delay_s: float | None = None
    code: int = -1000
    status: int = 400
    msg: str = "An unknown error occured while processing the request."
    hits: int = 0

    def __post_init__(self) -> None:
        self.kind = FaultKind(self.kind)
        self.method = self.method.upper()
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        if self.times is not None and self.times < 0:
            raise ValueError("times must be >= 0 or None")
        if not Decimal(0) <= self.fill_ratio <= Decimal(1):
            raise ValueError("fill_ratio must be within [0, 1]")

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times

    def matches(
        self, method: str, path: str, account: str | None, params: Mapping[str, str]
    ) -> bool:
        """Whether this fault applies to the request (ignoring ``times`` and ``probability``)."""
        if self.method not in {"*", method}:
            return False
        if not fnmatch.fnmatchcase(path, self.path):
            return False
        if self.account is not None and self.account != account:
            return False
        return all(params.get(key) == value for key, value in self.params.items())
