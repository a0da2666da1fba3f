"""Markets the simulator lists, and the ``exchangeInfo`` documents ccxt builds them from.

A :class:`Market` is one tradable symbol on one venue (USD-M futures, COIN-M futures or spot).
COIN-M (inverse) markets trade whole contracts of ``contract_size`` USD each and are margined
and settled in their base coin (``BTCUSD_PERP``: 100 USD contracts, BTC margin). Only the fields
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
    "DERIVATIVE_VENUES",
    "FUTURES_ORDER_TYPES",
    "SPOT_ORDER_TYPES",
    "Market",
    "Venue",
    "default_markets",
    "fmt",
    "generate_markets",
]


class Venue(StrEnum):
    """Which book a request or a market belongs to: Binance's USD-M futures (``/fapi``), spot
    (``/api``) or COIN-M futures (``/dapi``)."""

    FUTURES = "futures"
    SPOT = "spot"
    COINM = "coinm"


#: The books that hold positions (every venue but spot), USD-M first.
DERIVATIVE_VENUES: Final = (Venue.FUTURES, Venue.COINM)


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
    #: COIN-M: the USD value of one contract (quantities are whole contracts).
    contract_size: Decimal = Decimal(1)

    @property
    def inverse(self) -> bool:
        """Margined and settled in the base coin (COIN-M), PnL in the base coin."""
        return self.venue is Venue.COINM

    @property
    def margin_asset(self) -> str:
        """What the market is margined and settled in: the base coin on COIN-M, else the quote."""
        return self.base if self.inverse else self.quote

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
        if self.venue is Venue.COINM:
            # COIN-M lists no notional filter; ``contractStatus`` replaces ``status``.
            del entry["status"]
            entry |= {
                "pair": self.symbol.split("_")[0],
                "contractType": "PERPETUAL",
                "deliveryDate": 4133404800000,
                "onboardDate": 1596006000000,
                "contractStatus": "TRADING",
                "contractSize": _number(self.contract_size),
                "marginAsset": self.base,
                "maintMarginPercent": "2.5000",
                "requiredMarginPercent": "5.0000",
                "pricePrecision": _decimals(self.tick_size),
                "quantityPrecision": 0,
                "equalQtyPrecision": 4,
                "orderTypes": list(FUTURES_ORDER_TYPES),
                "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
            }
        elif self.venue is Venue.FUTURES:
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


def _number(value: Decimal) -> int | float:
    """A JSON number as Binance writes it: an integer when the value is whole."""
    return int(value) if value == value.to_integral_value() else float(value)


def _decimals(step: Decimal) -> int:
    """How many decimals a step has (``0.1`` -> 1, ``1`` -> 0)."""
    exponent = step.normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


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


def _coinm(base: str, mark: str, tick: str, contract_size: int) -> Market:
    """A COIN-M perpetual ``<base>USD_PERP``: whole contracts of ``contract_size`` USD."""
    return Market(
        symbol=f"{base}USD_PERP",
        base=base,
        quote="USD",
        venue=Venue.COINM,
        mark_price=Decimal(mark),
        tick_size=Decimal(tick),
        step_size=Decimal(1),
        min_qty=Decimal(1),
        max_qty=Decimal(100_000),
        min_notional=Decimal(0),
        contract_size=Decimal(contract_size),
    )


#: BTC, ETH and SOL USD-M perpetuals, BTC and ETH spot, and BTC, ETH and SOL COIN-M
#: perpetuals (100, 10 and 10 USD contracts), with Binance-like filters.
DEFAULT_MARKETS: Final[tuple[Market, ...]] = (
    _usdt(Venue.FUTURES, "BTC", "60000", "0.10", "0.001"),
    _usdt(Venue.FUTURES, "ETH", "3000", "0.01", "0.001"),
    _usdt(Venue.FUTURES, "SOL", "150", "0.01", "1"),
    _usdt(Venue.SPOT, "BTC", "60000", "0.01", "0.00001"),
    _usdt(Venue.SPOT, "ETH", "3000", "0.01", "0.0001"),
    _coinm("BTC", "60000", "0.1", 100),
    _coinm("ETH", "3000", "0.01", 10),
    _coinm("SOL", "150", "0.001", 10),
)


def generate_markets(count: int, venue: Venue, *, prefix: str = "SIM") -> list[Market]:
    """``count`` synthetic USDT markets (``SIM001USDT`` ...) for benchmarks with many symbols.

    Prices spread over 1..1000 so notionals differ; the step of 0.001 lets any seeded quantity
    with three decimals be closed exactly. On COIN-M they are ``SIM001USD_PERP`` ... with
    10 USD contracts, margined in ``SIM001`` ... (whole contracts, step 1).
    """
    if venue is Venue.COINM:
        return [
            _coinm(f"{prefix}{i:03d}", str(1 + (i * 37) % 1000), "0.01", 10)
            for i in range(1, count + 1)
        ]
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


def default_markets(
    *, extra_futures: int = 0, extra_spot: int = 0, extra_coinm: int = 0
) -> list[Market]:
    """The default markets plus ``extra_futures``/``extra_spot``/``extra_coinm`` generated
    ones."""
    return [
        *DEFAULT_MARKETS,
        *generate_markets(extra_futures, Venue.FUTURES),
        *generate_markets(extra_spot, Venue.SPOT),
        *generate_markets(extra_coinm, Venue.COINM),
    ]


def index_markets(markets: Iterable[Market]) -> dict[Venue, dict[str, Market]]:
    """Markets by venue, then by exchange symbol. A duplicate symbol on one venue is an error,
    and so is one listed on two derivative books: positions are kept by symbol, so a
    derivative symbol must name one book."""
    by_venue: dict[Venue, dict[str, Market]] = {venue: {} for venue in Venue}
    for market in markets:
        book = by_venue[market.venue]
        if market.symbol in book:
            raise ValueError(f"duplicate {market.venue} market {market.symbol}")
        if market.venue in DERIVATIVE_VENUES and any(
            market.symbol in by_venue[other] for other in DERIVATIVE_VENUES
        ):
            raise ValueError(f"{market.symbol} is listed on two derivative books")
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
