"""The executor's port to a venue, and the one error type adapters raise.

The flatten engine only sees :class:`VenuePort`; the ccxt adapters in
:mod:`ess.venues.binance` implement it, and tests use hand-written fakes. Adapters translate
every venue failure into a :class:`VenueError` whose :class:`VenueErrorKind` tells the engine
what it may conclude, decided from the venue's own error code, never from ccxt's host-dependent
exception tables.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol, runtime_checkable

from ess.core.flatten import CancelStep, CloseStep, MarketKind, VenueSnapshot
from ess.errors import EssError

__all__ = ["VenueError", "VenueErrorKind", "VenuePort"]


class VenueErrorKind(StrEnum):
    """What a failed venue call means for the engine."""

    #: No answer in time, or the connection broke after sending: the request MAY have been
    #: executed. Safe to retry only because closes are reduce-only with derived client ids.
    TIMEOUT = "timeout"
    #: The venue answered 5xx or is unreachable: retry with backoff.
    UNAVAILABLE = "unavailable"
    #: HTTP 429 or code -1003: over the venue's budget; back off (``retry_after`` if known).
    RATE_LIMITED = "rate_limited"
    #: HTTP 418: the IP is banned for a while; back off for ``retry_after`` (or long).
    BANNED = "banned"
    #: Invalid key, signature or permissions (-2015, -2014, -1022): nothing works until the
    #: credentials are fixed; keep trying slowly and report loudly.
    AUTH = "auth"
    #: The account is set up in a way ESS cannot flatten (hedge mode on an exchange whose
    #: position sides ESS cannot name). Nothing works until it is changed; report loudly.
    UNSUPPORTED = "unsupported"
    #: HTTP 200 with an empty or unparseable body, or a body of the wrong shape: the request may
    #: have been executed, and nothing can be concluded from the answer.
    MALFORMED = "malformed"
    #: The venue refused a reduce-only order (-2022): the position is already smaller or gone.
    REDUCE_ONLY_REJECTED = "reduce_only_rejected"
    #: The client order id was already used (-4116, or -2010 "Duplicate order sent"): an
    #: earlier copy of this close reached the venue.
    DUPLICATE_ID = "duplicate_id"
    #: Any other refusal (filters, insufficient balance, unknown parameters): re-read and
    #: re-plan; report with the venue's code and message.
    REJECTED = "rejected"


class VenueError(EssError):
    """A venue call failed; ``kind`` says how, ``code`` is the venue's own error code."""

    def __init__(
        self,
        kind: VenueErrorKind,
        message: str,
        *,
        code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.retry_after = retry_after

    def __str__(self) -> str:
        code = f" (code {self.code})" if self.code is not None else ""
        return f"{self.kind.value}{code}: {self.args[0]}"


@runtime_checkable
class VenuePort(Protocol):
    """One account on one venue, as the flatten engine needs it.

    Every method is async, bounded by a timeout, and safe to repeat. Reads either return a
    complete :class:`VenueSnapshot` or raise: an adapter never returns "nothing" for a read it
    could not verify.
    """

    @property
    def name(self) -> str:
        """The configured venue name (unique; part of derived client order ids)."""
        ...

    @property
    def account(self) -> str:
        """The account label used in reports (never a credential)."""
        ...

    @property
    def kind(self) -> MarketKind: ...

    @property
    def supports_countdown(self) -> bool:
        """Whether the venue has a native dead-man's switch this adapter can arm."""
        ...

    async def open(self) -> None:
        """Connect and load markets; raises :class:`VenueError`."""
        ...

    async def snapshot(self) -> VenueSnapshot:
        """A fresh, complete read of positions (or balances) and open orders of both books."""
        ...

    async def cancel_all(self, step: CancelStep) -> None:
        """Cancel every open order of ``step.symbol`` in the book ``step.conditional`` names.
        Nothing to cancel (-2011 and the like) is success."""
        ...

    async def close(self, step: CloseStep) -> None:
        """Send the market close described by ``step`` (reduce-only on futures)."""
        ...

    async def arm_countdown(self, symbol: str, countdown_ms: int) -> None:
        """(Re)arm the venue's dead-man's switch for ``symbol``: if it is not re-armed within
        ``countdown_ms``, the venue cancels the symbol's open orders itself."""
        ...

    async def aclose(self) -> None:
        """Release connections (best effort; never raises)."""
        ...
