"""Markets the simulator lists, and the ``exchangeInfo`` documents ccxt builds them from.

A :class:`Market` is one tradable symbol on one venue (USD-M futures or spot). Only the fields
ccxt actually reads are modelled (``docs/ccxt-loopback.md``, "Fields ccxt reads"): without
``contractType``/``marginAsset`` a futures symbol would be parsed as spot, without ``"MARKET"`` in
``orderTypes`` ccxt refuses market orders on the client side, and ``LOT_SIZE.stepSize`` is what
``amount_to_precision`` truncates to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final

__all__ = [
    "DEFAULT_MARKETS",
    "FUTURES_ORDER_TYPES",
    "SPOT_ORDER_TYPES",
    "Market",
    "Venue",
    "default_markets",
    "fmt",
    "generate_markets",
]


class Venue(StrEnum):
    """Which Binance API a request or a market belongs to (``/fapi`` or ``/api``)."""

    FUTURES = "futures"
    SPOT = "spot"


FUTURES_ORDER_TYPES: Final = (
    "LIMIT",
    "MARKET",
    "STOP",
    "STOP_MARKET",
    "TAKE_PROFIT",
    "TAKE_PROFIT_MARKET",
    "TRAILING_STOP_MARKET",
)
SPOT_ORDER_TYPES: Final = (
    "LIMIT",
    "LIMIT_MAKER",
    "MARKET",
    "STOP_LOSS",
    "STOP_LOSS_LIMIT",
    "TAKE_PROFIT",
    "TAKE_PROFIT_LIMIT",
)


def fmt(value: Decimal) -> str:
    """Plain decimal text without exponent or trailing zeros (``Decimal("1E+2")`` -> ``"100"``)."""
    text = format(value.normalize(), "f")
    return "0" if text in {"-0", "0"} else text


@dataclass(frozen=True)
class Market:
    """One symbol on one venue, with the filters ccxt turns into precision and limits.

    ``mark_price`` is only the starting mark; the live one is kept by the simulator
    (:meth:`ExchangeSimulator.set_mark_price <ess.sim.ExchangeSimulator.set_mark_price>`).
    """

    symbol: str
    base: str
    quote: str
    venue: Venue
    mark_price: Decimal
    tick_size: Decimal = Decimal("0.01")
    step_size: Decimal = Decimal("0.001")
    min_qty: Decimal = Decimal("0.001")
    max_qty: Decimal = Decimal("1000000")
    min_notional: Decimal = Decimal("5")

    def exchange_info_entry(self) -> dict[str, Any]:
        """This market as one element of ``exchangeInfo.symbols``."""
        lot = {
            "minQty": fmt(self.min_qty),
            "maxQty": fmt(self.max_qty),
            "stepSize": fmt(self.step_size),
        }
        filters: list[dict[str, Any]] = [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": fmt(self.tick_size),
                "maxPrice": "10000000",
                "tickSize": fmt(self.tick_size),
            },
            {"filterType": "LOT_SIZE", **lot},
            {"filterType": "MARKET_LOT_SIZE", **lot},
        ]
        entry: dict[str, Any] = {
            "symbol": self.symbol,
            "status": "TRADING",
            "baseAsset": self.base,
            "quoteAsset": self.quote,
            "baseAssetPrecision": 8,
            "quotePrecision": 8,
        }
        if self.venue is Venue.FUTURES:
            filters.append({"filterType": "MIN_NOTIONAL", "notional": fmt(self.min_notional)})
            entry |= {
                "pair": self.symbol,
                "contractType": "PERPETUAL",
                "marginAsset": self.quote,
                "onboardDate": 1569398400000,
                "deliveryDate": 4133404800000,
                "orderTypes": list(FUTURES_ORDER_TYPES),
                "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
            }
        else:
            filters.append(
                {"filterType": "NOTIONAL", "minNotional": fmt(self.min_notional)},
            )
            entry |= {
                "orderTypes": list(SPOT_ORDER_TYPES),
                "isSpotTradingAllowed": True,
                "isMarginTradingAllowed": False,
                "permissions": ["SPOT"],
            }
        entry["filters"] = filters
        return entry


def _usdt(venue: Venue, base: str, mark: str, tick: str, step: str) -> Market:
    return Market(
        symbol=f"{base}USDT",
        base=base,
        quote="USDT",
        venue=venue,
        mark_price=Decimal(mark),
        tick_size=Decimal(tick),
        step_size=Decimal(step),
        min_qty=Decimal(step),
    )


#: BTC, ETH and SOL perpetuals plus BTC and ETH spot, with Binance-like filters.
DEFAULT_MARKETS: Final[tuple[Market, ...]] = (
    _usdt(Venue.FUTURES, "BTC", "60000", "0.10", "0.001"),
    _usdt(Venue.FUTURES, "ETH", "3000", "0.01", "0.001"),
    _usdt(Venue.FUTURES, "SOL", "150", "0.01", "1"),
    _usdt(Venue.SPOT, "BTC", "60000", "0.01", "0.00001"),
    _usdt(Venue.SPOT, "ETH", "3000", "0.01", "0.0001"),
)


def generate_markets(count: int, venue: Venue, *, prefix: str = "SIM") -> list[Market]:
    """``count`` synthetic USDT markets (``SIM001USDT`` ...) for benchmarks with many symbols.

    Prices spread over 1..1000 so notionals differ; the step of 0.001 lets any seeded quantity
    with three decimals be closed exactly.
    """
    return [
        Market(
            symbol=f"{prefix}{i:03d}USDT",
            base=f"{prefix}{i:03d}",
            quote="USDT",
            venue=venue,
            mark_price=Decimal(1 + (i * 37) % 1000),
            tick_size=Decimal("0.01"),
            step_size=Decimal("0.001"),
            min_qty=Decimal("0.001"),
        )
        for i in range(1, count + 1)
    ]


def default_markets(*, extra_futures: int = 0, extra_spot: int = 0) -> list[Market]:
    """The default markets plus ``extra_futures``/``extra_spot`` generated ones."""
    return [
        *DEFAULT_MARKETS,
        *generate_markets(extra_futures, Venue.FUTURES),
        *generate_markets(extra_spot, Venue.SPOT),
    ]


def index_markets(markets: Iterable[Market]) -> dict[Venue, dict[str, Market]]:
    """Markets by venue, then by exchange symbol; a duplicate symbol on one venue is an error."""
    by_venue: dict[Venue, dict[str, Market]] = {venue: {} for venue in Venue}
    for market in markets:
        book = by_venue[market.venue]
        if market.symbol in book:
            raise ValueError(f"duplicate {market.venue} market {market.symbol}")
        book[market.symbol] = market
    return by_venue


def exchange_info(
    venue: Venue, markets: Mapping[str, Market], rate_limits: list[dict[str, Any]], now_ms: int
) -> dict[str, Any]:
    """The ``exchangeInfo`` document of one venue."""
    return {
        "timezone": "UTC",
        "serverTime": now_ms,
        "rateLimits": rate_limits,
        "exchangeFilters": [],
        **({"assets": []} if venue is Venue.FUTURES else {}),
        "symbols": [market.exchange_info_entry() for market in markets.values()],
    }
