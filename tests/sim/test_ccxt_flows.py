"""Unmodified ccxt clients (``binanceusdm`` and ``binance``) against the simulator over HTTP:
markets, seeded reads, reduce-only closes, cancels, the spot flatten and the request log."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from ccxt.base import errors

from ess.sim import ExchangeSimulator, Venue, default_markets, make_exchange
from ess.sim.demo import seed_many
from tests.sim.conftest import API_KEY, SECRET

pytestmark = pytest.mark.integration

ZERO = Decimal(0)

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"
SOL = "SOL/USDT:USDT"


def seed_book(sim: ExchangeSimulator, account: str) -> None:
    sim.seed_position(account, "BTCUSDT", "0.5", "58000")
    sim.seed_position(account, "ETHUSDT", "-2", "3100")
    sim.seed_position(account, "SOLUSDT", "10", "140")
    sim.seed_order(account, "BTCUSDT", "BUY", "0.01", "50000", client_order_id="rogue-1")
    sim.seed_order(account, "ETHUSDT", "BUY", "1", "2800", reduce_only=True)
    sim.seed_order(
        account, "BTCUSDT", "SELL", "0.5", order_type="STOP_MARKET", trigger_price="55000"
    )


async def test_load_markets_is_one_request_per_client(
    sim: ExchangeSimulator, usdm: Any, spot: Any
) -> None:
    await usdm.load_markets()
    await spot.load_markets()

    assert [(e.method, e.path) for e in sim.log] == [
        ("GET", "/fapi/v1/exchangeInfo"),
        ("GET", "/api/v3/exchangeInfo"),
    ]
    btc = usdm.market(BTC)
    assert (btc["swap"], btc["linear"], btc["settle"]) == (True, True, "USDT")
    assert btc["precision"]["amount"] == 0.001
    assert usdm.amount_to_precision(BTC, 0.12345) == "0.123"  # LOT_SIZE truncates
    assert set(spot.markets) == {"BTC/USDT", "ETH/USDT"}
    assert spot.market("BTC/USDT")["spot"] is True


async def test_reads_return_seeded_state(sim: ExchangeSimulator, account: str, usdm: Any) -> None:
    seed_book(sim, account)

    positions = {p["symbol"]: p for p in await usdm.fetch_positions()}
    regular = await usdm.fetch_open_orders(BTC)
    conditional = await usdm.fetch_open_orders(BTC, params={"trigger": True})
    balance = await usdm.fetch_balance()

    assert {s: (p["side"], p["contracts"], p["entryPrice"]) for s, p in positions.items()} == {
        BTC: ("long", 0.5, 58000.0),
        ETH: ("short", 2.0, 3100.0),
        SOL: ("long", 10.0, 140.0),
    }
    assert [(o["side"], o["amount"], o["price"], o["clientOrderId"]) for o in regular] == [
        ("buy", 0.01, 50000.0, "rogue-1")
    ]
    assert [(o["side"], o["triggerPrice"], o["status"]) for o in conditional] == [
        ("sell", 55000.0, "open")
    ]
    # unrealized: BTC +1000, ETH +200, SOL +100 at the default marks
    assert balance["USDT"]["total"] == pytest.approx(11_300)
    paths = [e.path for e in sim.log]
    assert paths[:3] == [
        "/fapi/v1/exchangeInfo",
        "/fapi/v1/leverageBracket",
        "/fapi/v3/positionRisk",
    ]
    assert "/fapi/v1/openAlgoOrders" in paths
    assert "/fapi/v3/account" in paths


async def test_positions_v2_lists_flat_symbols_that_ccxt_drops(
    sim: ExchangeSimulator, account: str, usdm: Any
) -> None:
    sim.seed_position(account, "BTCUSDT", "-0.25", "61000")

    positions = await usdm.fetch_positions(params={"useV2": True})
    raw = await usdm.fapiPrivateV2GetPositionRisk()

    assert [(p["symbol"], p["side"], p["contracts"]) for p in positions] == [(BTC, "short", 0.25)]
    assert len(raw) == 3  # every symbol; the flat ones carry entryPrice "0"
    assert sim.requests("GET", "/fapi/v2/positionRisk")


async def test_reduce_only_market_orders_close_exactly_and_never_flip(
    sim: ExchangeSimulator, account: str, usdm: Any
) -> None:
    seed_book(sim, account)
    sim.set_mark_price("BTCUSDT", 61_000, venue=Venue.FUTURES)

    oversized = await usdm.create_order(BTC, "market", "sell", 0.8, None, {"reduceOnly": True})
    exact = await usdm.create_order(ETH, "market", "buy", 2, None, {"reduceOnly": True})
    sol = await usdm.create_order(SOL, "market", "sell", 10, None, {"reduceOnly": True})

    assert (oversized["status"], oversized["amount"], oversized["filled"]) == ("closed", 0.8, 0.5)
    assert oversized["average"] == 61_000.0
    assert sim.mark_price("BTCUSDT", Venue.SPOT) == Decimal(60_000)  # spot mark untouched
    assert (exact["status"], exact["filled"], exact["average"]) == ("closed", 2.0, 3000.0)
    assert sol["reduceOnly"] is True
    assert sim.positions(account) == {}
    assert await usdm.fetch_positions() == []
    # realized PnL booked: BTC +1500, ETH +200, SOL +100
    assert sim.futures_wallet(account) == Decimal(11_800)

    with pytest.raises(errors.InvalidOrder, match="-2022"):  # flat: nothing to reduce
        await usdm.create_order(BTC, "market", "sell", 0.1, None, {"reduceOnly": True})
    assert sim.positions(account) == {}


async def test_reduce_only_that_would_grow_is_rejected(
    sim: ExchangeSimulator, account: str, usdm: Any
) -> None:
    sim.seed_position(account, "ETHUSDT", "-2", "3100")

    with pytest.raises(errors.InvalidOrder):
        await usdm.create_order(ETH, "market", "sell", 1, None, {"reduceOnly": True})

    assert sim.positions(account)["ETHUSDT"].qty == Decimal(-2)
    assert sim.requests("POST", "/fapi/v1/order")[-1].code == -2022


async def test_without_path_routing_ccxt_maps_reduce_only_rejection_to_exchange_error(
    sim: ExchangeSimulator, account: str, usdm: Any
) -> None:
    """Why ``make_exchange`` installs ``route_exceptions_by_path``: on a non-Binance host ccxt
    falls back to its shared table, where -2022 is no ``InvalidOrder``."""
    del usdm.get_exceptions_by_url  # back to ccxt's host-based lookup

    with pytest.raises(errors.ExchangeError) as caught:
        await usdm.create_order(BTC, "market", "sell", 0.1, None, {"reduceOnly": True})

    assert not isinstance(caught.value, errors.InvalidOrder)


async def test_cancel_all_orders_regular_then_conditional(
    sim: ExchangeSimulator, account: str, usdm: Any
) -> None:
    seed_book(sim, account)

    await usdm.cancel_all_orders(BTC)
    assert await usdm.fetch_open_orders(BTC) == []
    assert len(await usdm.fetch_open_orders(BTC, params={"trigger": True})) == 1  # separate book

    await usdm.cancel_all_orders(BTC, {"trigger": True})
    assert await usdm.fetch_open_orders(BTC, params={"trigger": True}) == []
    assert [o.symbol for o in sim.open_orders(account)] == ["ETHUSDT"]  # other symbol untouched
    assert [e.path for e in sim.requests("DELETE")] == [
        "/fapi/v1/allOpenOrders",
        "/fapi/v1/algoOpenOrders",
    ]


async def test_single_orders_create_query_cancel(
    sim: ExchangeSimulator, account: str, usdm: Any
) -> None:
    sim.seed_position(account, "ETHUSDT", "-2", "3100")

    limit = await usdm.create_order(ETH, "limit", "buy", 0.5, 2500, {"clientOrderId": "ks-1"})
    stop = await usdm.create_order(
        ETH, "market", "buy", 2, None, {"triggerPrice": 3500, "reduceOnly": True}
    )
    fetched = await usdm.fetch_order(limit["id"], ETH)
    cancelled = await usdm.cancel_order(limit["id"], ETH)
    cancelled_stop = await usdm.cancel_order(stop["id"], ETH, {"trigger": True})

    assert (limit["status"], limit["clientOrderId"]) == ("open", "ks-1")
    assert sim.requests("POST", "/fapi/v1/order")[0].params["newClientOrderId"] == "ks-1"
    assert (stop["status"], stop["triggerPrice"]) == ("open", 3500.0)
    assert sim.requests("POST", "/fapi/v1/algoOrder")[0].params["algoType"] == "CONDITIONAL"
    assert fetched["status"] == "open"
    assert (await usdm.fetch_order(stop["id"], ETH, {"trigger": True}))["status"] == "canceled"
    assert cancelled["status"] == "canceled"
    assert cancelled_stop["id"] == stop["id"]
    assert sim.open_orders(account) == []
    with pytest.raises(errors.OrderNotFound):
        await usdm.cancel_order(limit["id"], ETH)
    with pytest.raises(errors.OrderNotFound):
        await usdm.fetch_order("42", ETH)


async def test_duplicate_client_order_id_is_rejected(
    sim: ExchangeSimulator, account: str, usdm: Any
) -> None:
    await usdm.create_order(BTC, "limit", "buy", 0.01, 50000, {"clientOrderId": "act-1-BTC"})

    with pytest.raises(errors.InvalidOrder, match="-4116"):
        await usdm.create_order(BTC, "limit", "buy", 0.01, 50000, {"clientOrderId": "act-1-BTC"})

    assert len(sim.open_orders(account)) == 1


async def test_resting_order_fill_opens_a_position(
    sim: ExchangeSimulator, account: str, usdm: Any
) -> None:
    order = await usdm.create_order(BTC, "limit", "buy", 0.02, 59000)

    sim.fill_order(account, int(order["id"]), qty="0.01")
    partial = await usdm.fetch_order(order["id"], BTC)
    sim.fill_order(account, int(order["id"]))

    assert (partial["status"], partial["filled"]) == ("open", 0.01)
    assert (await usdm.fetch_order(order["id"], BTC))["status"] == "closed"
    assert sim.positions(account)["BTCUSDT"].qty == Decimal("0.02")
    assert sim.positions(account)["BTCUSDT"].entry_price == Decimal(59000)


async def test_spot_flatten_cancels_then_sells_free_base(
    sim: ExchangeSimulator, account: str, spot: Any
) -> None:
    sim.seed_order(account, "BTCUSDT", "SELL", "0.05", "70000", venue=Venue.SPOT)
    sim.seed_order(account, "ETHUSDT", "BUY", "0.1", "2000", venue=Venue.SPOT)
    assert sim.spot_balance(account, "BTC") == (Decimal("0.15"), Decimal("0.05"))

    before = await spot.fetch_balance()
    for symbol in ("BTC/USDT", "ETH/USDT"):
        assert len(await spot.cancel_all_orders(symbol)) == 1
    with pytest.raises(errors.OrderNotFound):  # Binance answers -2011 when nothing is open
        await spot.cancel_all_orders("BTC/USDT")
    balance = await spot.fetch_balance()
    sells = [
        await spot.create_order(
            f"{asset}/USDT", "market", "sell", spot.amount_to_precision(f"{asset}/USDT", free)
        )
        for asset, free in ((a, balance[a]["free"]) for a in ("BTC", "ETH"))
    ]

    assert before["BTC"] == {"free": 0.15, "used": 0.05, "total": 0.2}
    assert [(s["status"], s["filled"]) for s in sells] == [("closed", 0.2), ("closed", 1.5)]
    assert sim.spot_balance(account, "BTC") == (ZERO, ZERO)
    assert sim.spot_balance(account, "ETH") == (ZERO, ZERO)
    assert sim.spot_balance(account, "USDT") == (Decimal(1000 + 12_000 + 4_500), ZERO)
    assert sim.open_orders(account) == []
    with pytest.raises(errors.BadRequest, match="-1104"):  # spot has no reduceOnly
        await spot.create_order("BTC/USDT", "market", "buy", 0.001, None, {"reduceOnly": True})


async def test_request_log_records_calls_without_secrets(
    sim: ExchangeSimulator, account: str, usdm: Any
) -> None:
    sim.seed_position(account, "BTCUSDT", "0.5", "58000")
    await usdm.create_order(BTC, "market", "sell", 0.5, None, {"reduceOnly": True})

    entry = sim.requests("POST", "/fapi/v1/order")[0]
    assert entry.account == account
    assert entry.venue is Venue.FUTURES
    assert entry.status == 200
    assert entry.code is None
    assert entry.params["reduceOnly"] == "true"
    assert entry.params["quantity"] == "0.5"
    assert entry.params["side"] == "SELL"
    assert entry.ts > 0
    for logged in sim.log:
        assert "signature" not in logged.params
        assert API_KEY not in repr(logged)
        assert SECRET not in repr(logged)


async def test_fifty_positions_across_two_venues_flatten_in_parallel() -> None:
    markets = default_markets(extra_futures=25, extra_spot=25)
    async with ExchangeSimulator(markets=markets) as sim:
        account = sim.add_account(API_KEY, SECRET)
        seed_many(sim, account, futures=25, spot=25, seed=7)
        usdm = make_exchange("binanceusdm", sim.url, API_KEY, SECRET)
        spot = make_exchange("binance", sim.url, API_KEY, SECRET)
        try:
            await asyncio.gather(usdm.load_markets(), spot.load_markets())
            positions = await usdm.fetch_positions()
            balance = await spot.fetch_balance()
            symbols = [m.symbol for m in sim.markets(Venue.FUTURES) if m.symbol.startswith("SIM")]
            spot_markets = [m for m in sim.markets(Venue.SPOT) if m.symbol.startswith("SIM")]

            await asyncio.gather(
                *(usdm.cancel_all_orders(usdm.safe_symbol(s)) for s in symbols),
                *(spot.cancel_all_orders(f"{m.base}/USDT") for m in spot_markets),
            )
            balance = await spot.fetch_balance()
            await asyncio.gather(
                *(
                    usdm.create_order(
                        p["symbol"],
                        "market",
                        "sell" if p["side"] == "long" else "buy",
                        p["contracts"],
                        None,
                        {"reduceOnly": True},
                    )
                    for p in positions
                ),
                *(
                    spot.create_order(f"{m.base}/USDT", "market", "sell", balance[m.base]["free"])
                    for m in spot_markets
                ),
            )

            assert len(positions) == 25
            assert sim.positions(account) == {}
            assert sim.open_orders(account) == []
            assert all(sim.spot_balance(account, m.base) == (ZERO, ZERO) for m in spot_markets)
        finally:
            await usdm.close()
            await spot.close()


async def test_spot_single_order_create_query_cancel(
    sim: ExchangeSimulator, account: str, spot: Any
) -> None:
    order = await spot.create_order(
        "ETH/USDT", "limit", "sell", 0.5, 3500, {"clientOrderId": "s-1"}
    )

    fetched = await spot.fetch_order(order["id"], "ETH/USDT")
    assert sim.spot_balance(account, "ETH") == (Decimal(1), Decimal("0.5"))
    cancelled = await spot.cancel_order(order["id"], "ETH/USDT")

    assert (order["status"], order["clientOrderId"]) == ("open", "s-1")
    assert fetched["status"] == "open"
    assert cancelled["status"] == "canceled"
    assert sim.spot_balance(account, "ETH") == (Decimal("1.5"), ZERO)
    with pytest.raises(errors.OrderNotFound):
        await spot.cancel_order(order["id"], "ETH/USDT")
    with pytest.raises(errors.OrderNotFound):
        await spot.fetch_order("7", "ETH/USDT")
