"""What a simulator *family* is: one exchange's API surface over the shared matching engine.

The matching engine (:mod:`ess.sim.book`) speaks one native language, Binance's: its order
parameters, its error codes. A family (:mod:`~ess.sim.families.binance`,
:mod:`~ess.sim.families.bybit`, :mod:`~ess.sim.families.okx`) is everything that differs
between exchanges, and only that: the paths it serves, how a request carries its key and
signature, how answers and errors are shaped, its rate-limit budgets and headers, and how the
engine's parameters and error codes translate into the exchange's own. Accounts, books, faults,
the request log, late fills and dead-man's-switch timers belong to the simulator and are
shared by every family, so one seeded account can be flattened through any of them.

The request pipeline (:meth:`ess.sim.server.ExchangeSimulator._pipeline`) calls a family in a
fixed order: :meth:`Family.parse` the request, find its route, count it against the family's
:class:`~ess.sim.ratelimit.RateLimiter`, apply a fault, :meth:`Family.authenticate` signed
routes, run the handler, and render the payload or error with :meth:`Family.render` /
:meth:`Family.render_error`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from aiohttp import web

from ess.sim.book import Account, ApiError
from ess.sim.faults import FaultKind
from ess.sim.markets import Venue
from ess.sim.ratelimit import RateLimiter, RateLimits

if TYPE_CHECKING:
    from ess.sim.server import ExchangeSimulator, LoggedRequest

__all__ = ["Ctx", "Family", "Handler", "Route"]


@dataclass
class Ctx:
    """What a route handler gets: the parsed request and, on signed routes, the account."""

    method: str
    path: str
    entry: LoggedRequest
    headers: Mapping[str, str]
    raw_query: str = ""
    raw_body: str = ""
    #: Query and body parameters, flattened to text (a JSON body's values as ``str``).
    params: dict[str, str] = field(default_factory=dict)
    #: The JSON body as sent (families whose API takes JSON bodies read nested values here).
    body: Any = None
    signature: str | None = None
    api_key: str | None = None
    account: Account | None = None
    venue: Venue | None = None

    @property
    def acct(self) -> Account:
        assert self.account is not None, "signed routes always have an account"
        return self.account


Handler = Callable[[Ctx], Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    handler: Handler
    signed: bool


class Family(ABC):
    """One exchange's API over the shared simulator; see the module docstring."""

    #: Short name: ``binance``, ``bybit``, ``okx`` (the ``family=`` of inspection helpers).
    name: ClassVar[str]
    #: The body a ``bad_json`` fault answers with (truncated JSON in the family's shape).
    mangled_body: ClassVar[str] = '{"code": 0, "data": [{"id": 1'
    #: The family's published budgets per book, used unless the simulator is given others.
    default_limits: ClassVar[Mapping[Venue, RateLimits]] = {}
    #: Request weights ``(with symbol, without)`` by route; unlisted routes weigh 1.
    default_weights: ClassVar[Mapping[tuple[str, str], tuple[int, int]]] = {}
    #: The routes that count against the order budgets.
    order_endpoints: ClassVar[frozenset[tuple[str, str]]] = frozenset()

    @classmethod
    def make_limiter(cls, limits: Mapping[Venue, RateLimits] | None = None) -> RateLimiter:
        """A rate limiter with the family's budgets, ``limits`` overriding them per book."""
        return RateLimiter(
            {**cls.default_limits, **(limits or {})},
            cls.default_weights,
            order_endpoints=cls.order_endpoints,
        )

    def __init__(self, sim: ExchangeSimulator, limiter: RateLimiter) -> None:
        self.sim = sim
        self.limiter = limiter
        self.routes: dict[tuple[str, str], Route] = self.build_routes()

    @abstractmethod
    def owns(self, path: str) -> bool:
        """Whether ``path`` belongs to this family (paths never overlap between families)."""

    @abstractmethod
    def build_routes(self) -> dict[tuple[str, str], Route]:
        """``(method, path) -> route``."""

    @abstractmethod
    async def parse(self, request: web.Request, ctx: Ctx) -> None:
        """Fill ``ctx``'s params, body, key and signature from the request."""

    @abstractmethod
    def venue_of(self, ctx: Ctx) -> Venue | None:
        """Which book (futures or spot) the request is about; ``None``: not served."""

    @abstractmethod
    def authenticate(self, ctx: Ctx) -> Account:
        """The account a signed request belongs to, or the family's authentication error."""

    @abstractmethod
    def render(self, ctx: Ctx, payload: Any) -> tuple[int, Any]:
        """HTTP status and JSON document of a successful answer carrying ``payload``."""

    @abstractmethod
    def render_error(self, ctx: Ctx, err: ApiError) -> tuple[int, Any]:
        """HTTP status and JSON document of an error, given in the engine's (Binance's)
        codes: the family translates them into its own."""

    @abstractmethod
    def canned(self, kind: FaultKind) -> ApiError:
        """The error a fault of ``kind`` answers with, in the engine's codes (rendered by
        :meth:`render_error` like any other)."""

    def headers(self, ctx: Ctx, *, refused: ApiError | None = None) -> dict[str, str]:
        """Headers of every answer (rate-limit usage); ``refused`` is set on an answer that
        refuses the request for its rate (where a family adds ``Retry-After`` or similar)."""
        return {}
