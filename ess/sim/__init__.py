"""An exchange simulator for ESS, served over loopback HTTP to unmodified ccxt clients.

``ExchangeSimulator`` speaks enough of three exchanges' REST APIs for a kill switch, over one
shared matching engine (:mod:`ess.sim.families`): Binance (USD-M and COIN-M futures, spot),
Bybit v5 (linear perpetuals, spot) and OKX v5 (swaps, spot). Each family has its own paths,
signing, error codes, rate limits and dead-man's switch; all share markets, balances,
positions (one-way or hedge mode), regular and conditional orders, cancels, reduce-only
closes, fault injection and a request log. ``make_exchange`` builds a Binance ccxt client for
it; any other ccxt client reaches it through ``localize_urls``.

The package is an edge adapter: tests, demos and benchmarks use it; production code only uses
the base-URL override pattern of :mod:`ess.venues.ccxt_client` (re-exported here).
"""

from __future__ import annotations

from ess.sim.book import Account, ApiError, Fill, Order, Position
from ess.sim.faults import Fault, FaultKind
from ess.sim.markets import Market, Venue, default_markets, generate_markets
from ess.sim.ratelimit import RateCounters, RateLimits
from ess.sim.server import ExchangeSimulator, LoggedRequest, SimEvent
from ess.venues.ccxt_client import localize_urls, make_exchange, route_exceptions_by_path

__all__ = [
    "Account",
    "ApiError",
    "ExchangeSimulator",
    "Fault",
    "FaultKind",
    "Fill",
    "LoggedRequest",
    "Market",
    "Order",
    "Position",
    "RateCounters",
    "RateLimits",
    "SimEvent",
    "Venue",
    "default_markets",
    "generate_markets",
    "localize_urls",
    "make_exchange",
    "route_exceptions_by_path",
]
