"""Hedge (two-sided) position mode in the simulator (the engine's arithmetic is in
``test_book.py``): the simulator's seeding and switching rules, and every family through real,
unmodified ccxt clients over HTTP (Binance USD-M and COIN-M ``positionSide``, Bybit linear
``positionIdx``, OKX swap ``posSide``): ccxt reads two ``hedged`` rows per symbol, an order
without a side is refused, a close with the family's native parameters reduces only its side,
an empty side's close is refused and the mode cannot be switched with positions open."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from ccxt.base import errors

from ess.sim import ExchangeSimulator, FaultKind, Venue, make_exchange
from tests.sim.test_bybit import make_bybit
from tests.sim.test_coinm import coinm_client
from tests.sim.test_okx import okx_client

pytestmark = pytest.mark.integration

D = Decimal
KEY = "hedge-key"
SECRET = "hedge-secret"
PASSPHRASE = "hedge-Passphrase-1"
BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"
BTC_INVERSE = "BTC/USD:BTC"


# -- the simulator's seeding and switching rules -------------------------------------------------


async def test_seeding_and_switching_follow_the_mode(sim: ExchangeSimulator) -> None:
    name = sim.add_account("rules-key", "rules-secret", spot={"USDT": "1000"})
    with pytest.raises(ValueError, match="no position_side"):
        sim.seed_position(name, "BTCUSDT", "0.5", "60000", position_side="LONG")
    sim.seed_position(name, "BTCUSDT", "0.5", "60000")
    with pytest.raises(ValueError, match="futures position"):
        sim.set_hedge_mode(name)
    sim.seed_position(name, "BTCUSDT", 0, "60000")
    sim.seed_order(name, "ETHUSDT", "BUY", "1", "2900")
    with pytest.raises(ValueError, match="open derivative orders"):
        sim.set_hedge_mode(name)
    sim.account(name).orders.clear()
    sim.seed_order(name, "BTCUSDT", "BUY", "0.01", "60000", venue=Venue.SPOT)  # spot: no matter
    with pytest.raises(ValueError, match="no position side"):
        sim.seed_order(name, "BTCUSDT", "BUY", "0.01", "1", venue=Venue.SPOT, position_side="LONG")

    sim.set_hedge_mode(name)

    with pytest.raises(ValueError, match="LONG or SHORT"):
        sim.seed_position(name, "BTCUSDT", "0.5", "60000")
    with pytest.raises(ValueError, match="qty must be < 0"):
        sim.seed_position(name, "BTCUSDT", "0.5", "60000", position_side="SHORT")
    with pytest.raises(ValueError, match="LONG or SHORT"):
        sim.seed_order(name, "BTCUSDT", "SELL", "0.1", "61000")
    sim.seed_position(name, "BTCUSDT", "0.5", "60000", position_side="LONG")
    sim.seed_position(name, "BTCUSDT", "-0.2", "61000", position_side="SHORT")
    sim.seed_position(name, "BTCUSD_PERP", 10, "60000", position_side="LONG")

    assert sim.positions(name) == {}  # one-way positions only, as before
    held = sim.hedge_positions(name)
    assert {key: p.qty for key, p in held.items()} == {
        ("BTCUSDT", "LONG"): D("0.5"),
        ("BTCUSDT", "SHORT"): D("-0.2"),
        ("BTCUSD_PERP", "LONG"): D(10),
    }
    assert {p.side for p in held.values()} == {"LONG", "SHORT"}
    sim.seed_position(name, "BTCUSD_PERP", 0, "60000", position_side="LONG")
    assert ("BTCUSD_PERP", "LONG") not in sim.hedge_positions(name)
    with pytest.raises(ValueError, match="futures position"):
        sim.set_hedge_mode(name, False)
    assert sim.account(name).hedge_mode is True


# -- clients --------------------------------------------------------------------------------------


@pytest.fixture
def account(sim: ExchangeSimulator) -> str:
    """One hedge-mode account every family can use (the OKX passphrase included)."""
    name = sim.add_account(KEY, SECRET, name="hedge", passphrase=PASSPHRASE)
    sim.set_hedge_mode(name)
    return name


def seed_both_sides(sim: ExchangeSimulator, account: str) -> None:
    """BTC long 0.5 and short 0.2; ETH short 2 only."""
    sim.seed_position(account, "BTCUSDT", "0.5", "60000", position_side="LONG")
    sim.seed_position(account, "BTCUSDT", "-0.2", "61000", position_side="SHORT")
    sim.seed_position(account, "ETHUSDT", "-2", "3000", position_side="SHORT")


def held(sim: ExchangeSimulator, account: str) -> dict[tuple[str, str], Decimal]:
    return {key: p.qty for key, p in sim.hedge_positions(account).items()}


def rows(positions: list[dict[str, Any]]) -> list[tuple[str, str, float, bool]]:
    return sorted((p["symbol"], p["side"], p["contracts"], p["hedged"]) for p in positions)


@pytest.fixture
async def usdm(sim: ExchangeSimulator, account: str) -> AsyncIterator[Any]:
    client = make_exchange("binanceusdm", sim.url, KEY, SECRET, timeout_ms=2000)
    yield client
    await client.close()


@pytest.fixture
async def coinm(sim: ExchangeSimulator, account: str) -> AsyncIterator[Any]:
    client = coinm_client(sim, KEY, SECRET, timeout_ms=2000)
    yield client
    await client.close()


@pytest.fixture
async def bybit(sim: ExchangeSimulator, account: str) -> AsyncIterator[Any]:
    client = make_bybit(sim, api_key=KEY, secret=SECRET)
    yield client
    await client.close()


@pytest.fixture
async def okx(sim: ExchangeSimulator, account: str) -> AsyncIterator[Any]:
    client = okx_client(sim, key=KEY, secret=SECRET, password=PASSPHRASE, timeout_ms=2000)
    yield client
    await client.close()


# -- Binance USD-M ---------------------------------------------------------------------------------


async def test_binance_usdm_reads_one_hedged_row_per_side(
    sim: ExchangeSimulator, account: str, usdm: Any
) -> None:
    seed_both_sides(sim, account)

    assert rows(await usdm.fetch_positions()) == [
        (BTC, "long", 0.5, True),
        (BTC, "short", 0.2, True),
        (ETH, "short", 2.0, True),
    ]
    assert (await usdm.fetch_position_mode())["hedged"] is True
    raw = await usdm.fapiPrivateV3GetPositionRisk({"symbol": "BTCUSDT"})
    assert [(r["positionSide"], r["positionAmt"]) for r in raw] == [
        ("LONG", "0.5"),
        ("SHORT", "-0.2"),
    ]
    every = await usdm.fapiPrivateV2GetPositionRisk()  # v2: both sides of every symbol
    assert {r["positionSide"] for r in every} == {"LONG", "SHORT"}
    assert len(every) == 2 * len(sim.markets(Venue.FUTURES))
    account_doc = await usdm.fapiPrivateV3GetAccount()
    assert sorted((p["symbol"], p["positionSide"]) for p in account_doc["positions"]) == [
        ("BTCUSDT", "LONG"),
        ("BTCUSDT", "SHORT"),
        ("ETHUSDT", "SHORT"),
    ]


async def test_binance_usdm_order_without_its_side_is_4061(
    sim: ExchangeSimulator, account: str, usdm: Any
) -> None:
    seed_both_sides(sim, account)

    with pytest.raises(errors.OperationRejected, match="-4061"):
        await usdm.create_order(BTC, "market", "sell", 0.1)
    with pytest.raises(errors.OperationRejected, match="-4061"):
        await usdm.create_order(BTC, "market", "sell", 0.1, None, {"positionSide": "BOTH"})

    one_way = sim.add_account("one-way-key", "one-way-secret")
    sim.seed_position(one_way, "BTCUSDT", "0.5", "60000")
    client = make_exchange("binanceusdm", sim.url, "one-way-key", "one-way-secret")
    try:
        with pytest.raises(errors.OperationRejected, match="-4061"):
            await client.create_order(BTC, "market", "sell", 0.1, None, {"positionSide": "LONG"})
        assert (await client.fetch_position_mode())["hedged"] is False
    finally:
        await client.close()
    assert sim.fills(account) == sim.fills(one_way) == []


async def test_binance_usdm_close_reduces_only_its_side_and_is_clipped(
    sim: ExchangeSimulator, account: str, usdm: Any
) -> None:
    seed_both_sides(sim, account)

    long_close = await usdm.create_order(BTC, "market", "sell", 3, None, {"positionSide": "LONG"})
    # ccxt's own way: hedged + reduceOnly sends positionSide SHORT for a buy, no reduceOnly.
    short_close = await usdm.create_order(
        BTC, "market", "buy", 3, None, {"hedged": True, "reduceOnly": True}
    )

    assert (long_close["filled"], long_close["status"]) == (0.5, "closed")
    assert (short_close["filled"], short_close["status"]) == (0.2, "closed")
    assert held(sim, account) == {("ETHUSDT", "SHORT"): D(-2)}
    sent = [r.params for r in sim.requests("POST", "/fapi/v1/order")]
    assert [(p["side"], p["positionSide"], "reduceOnly" in p) for p in sent] == [
        ("SELL", "LONG", False),
        ("BUY", "SHORT", False),
    ]
    fetched = await usdm.fetch_order(short_close["id"], BTC)
    assert fetched["info"]["positionSide"] == "SHORT"
    assert rows(await usdm.fetch_positions()) == [(ETH, "short", 2.0, True)]


async def test_binance_usdm_close_of_an_empty_side_is_2022(
    sim: ExchangeSimulator, account: str, usdm: Any
) -> None:
    seed_both_sides(sim, account)

    with pytest.raises(errors.InvalidOrder, match="-2022"):
        await usdm.create_order(ETH, "market", "sell", 1, None, {"positionSide": "LONG"})

    assert held(sim, account)[("ETHUSDT", "SHORT")] == D(-2)
    assert ("ETHUSDT", "LONG") not in held(sim, account)


async def test_binance_usdm_reduce_only_in_hedge_mode_is_1106(
    sim: ExchangeSimulator, account: str, usdm: Any
) -> None:
    seed_both_sides(sim, account)

    with pytest.raises(errors.BadRequest, match="-1106"):
        await usdm.create_order(
            BTC, "market", "sell", 0.5, None, {"positionSide": "LONG", "reduceOnly": True}
        )

    assert held(sim, account)[("BTCUSDT", "LONG")] == D("0.5")


async def test_binance_usdm_mode_switch_is_refused_with_positions_or_orders(
    sim: ExchangeSimulator, account: str, usdm: Any
) -> None:
    sim.seed_position(account, "BTCUSDT", "0.5", "60000", position_side="LONG")
    with pytest.raises(errors.OperationRejected, match="-4068"):
        await usdm.set_position_mode(False)
    sim.seed_position(account, "BTCUSDT", 0, "60000", position_side="LONG")
    sim.seed_order(account, "BTCUSDT", "BUY", "0.01", "50000", position_side="LONG")
    with pytest.raises(errors.OperationRejected, match="-4067"):
        await usdm.set_position_mode(False)
    await usdm.cancel_all_orders(BTC)
    with pytest.raises(errors.OperationRejected, match="-4059"):
        await usdm.set_position_mode(True)

    await usdm.set_position_mode(False)

    assert (await usdm.fetch_position_mode())["hedged"] is False
    assert sim.account(account).hedge_mode is False
    await usdm.create_order(BTC, "market", "buy", 0.1)  # one-way again: BOTH
    assert sim.positions(account)["BTCUSDT"].qty == D("0.1")


async def test_binance_usdm_algo_orders_carry_the_position_side(
    sim: ExchangeSimulator, account: str, usdm: Any
) -> None:
    seed_both_sides(sim, account)

    stop = await usdm.create_order(
        BTC, "market", "sell", 0.5, None, {"stopLossPrice": 55000, "positionSide": "LONG"}
    )
    with pytest.raises(errors.OperationRejected, match="-4061"):
        await usdm.create_order(BTC, "market", "sell", 0.5, None, {"stopLossPrice": 55000})

    (listed,) = await usdm.fetch_open_orders(BTC, params={"trigger": True})
    assert (listed["id"], listed["info"]["positionSide"]) == (stop["id"], "LONG")
    assert sim.requests("POST", "/fapi/v1/algoOrder")[0].params["positionSide"] == "LONG"


async def test_binance_usdm_late_fill_of_a_close_never_opens_the_other_side(
    sim: ExchangeSimulator, account: str, usdm: Any
) -> None:
    """A resting close sized past its side, cancelled, fills late: clipped to the side."""
    sim.seed_position(account, "BTCUSDT", "0.5", "58000", position_side="LONG")
    order_id = sim.seed_order(account, "BTCUSDT", "SELL", "1.2", "60000", position_side="LONG")
    sim.add_fault("DELETE", "/fapi/v1/allOpenOrders", FaultKind.LATE_FILL, delay_s=0)

    await usdm.cancel_all_orders(BTC)

    assert held(sim, account) == {}  # clipped at 0.5: no short 0.7
    assert sim.order(account, order_id).executed_qty == D("0.5")
    assert [(f.qty, f.late, f.position_side) for f in sim.fills(account)] == [
        (D("0.5"), True, "LONG")
    ]


# -- Binance COIN-M -------------------------------------------------------------------------------


async def test_binance_coinm_hedge_rows_closes_and_mode(
    sim: ExchangeSimulator, account: str, coinm: Any
) -> None:
    sim.seed_position(account, "BTCUSD_PERP", 10, "60000", position_side="LONG")
    sim.seed_position(account, "BTCUSD_PERP", -4, "61000", position_side="SHORT")

    assert rows(await coinm.fetch_positions([BTC_INVERSE])) == [
        (BTC_INVERSE, "long", 10.0, True),
        (BTC_INVERSE, "short", 4.0, True),
    ]
    assert (await coinm.fetch_position_mode())["hedged"] is True
    assert (await coinm.dapiPrivateGetPositionSideDual())["dualSidePosition"] is True
    with pytest.raises(errors.OperationRejected, match="-4061"):
        await coinm.create_order(BTC_INVERSE, "market", "buy", 1)
    with pytest.raises(errors.BadRequest, match="-1106"):
        await coinm.create_order(
            BTC_INVERSE, "market", "buy", 1, None, {"positionSide": "SHORT", "reduceOnly": True}
        )

    closed = await coinm.create_order(
        BTC_INVERSE, "market", "buy", 9, None, {"positionSide": "SHORT"}
    )

    assert closed["filled"] == 4
    assert held(sim, account) == {("BTCUSD_PERP", "LONG"): D(10)}
    with pytest.raises(errors.InvalidOrder, match="-2022"):
        await coinm.create_order(BTC_INVERSE, "market", "buy", 1, None, {"positionSide": "SHORT"})
    with pytest.raises(errors.OperationRejected, match="-4068"):
        await coinm.set_position_mode(False)
    assert held(sim, account) == {("BTCUSD_PERP", "LONG"): D(10)}


# -- Bybit linear ---------------------------------------------------------------------------------


async def test_bybit_reads_position_idx_1_and_2_as_hedged_rows(
    sim: ExchangeSimulator, account: str, bybit: Any
) -> None:
    seed_both_sides(sim, account)

    assert rows(await bybit.fetch_positions()) == [
        (BTC, "long", 0.5, True),
        (BTC, "short", 0.2, True),
        (ETH, "short", 2.0, True),
    ]
    answer = await bybit.privateGetV5PositionList({"category": "linear", "symbol": "ETHUSDT"})
    assert [(r["positionIdx"], r["side"], r["size"]) for r in answer["result"]["list"]] == [
        (1, "", "0"),  # by symbol each side is listed, flat or not
        (2, "Sell", "2"),
    ]


async def test_bybit_order_without_its_position_idx_is_10001(
    sim: ExchangeSimulator, account: str, bybit: Any
) -> None:
    seed_both_sides(sim, account)

    with pytest.raises(errors.BadRequest, match="position idx not match position mode"):
        await bybit.create_order(BTC, "market", "sell", 0.1)
    with pytest.raises(errors.BadRequest, match="10001"):
        await bybit.create_order(BTC, "market", "sell", 0.1, None, {"positionIdx": 0})

    sim.add_account("bybit-one-way", "bybit-one-way-secret")
    client = make_bybit(sim, api_key="bybit-one-way", secret="bybit-one-way-secret")
    try:
        with pytest.raises(errors.BadRequest, match="position idx not match position mode"):
            await client.create_order(BTC, "market", "buy", 0.1, None, {"positionIdx": 1})
    finally:
        await client.close()
    assert held(sim, account)[("BTCUSDT", "LONG")] == D("0.5")


async def test_bybit_close_reduces_only_its_side_and_is_clipped(
    sim: ExchangeSimulator, account: str, bybit: Any
) -> None:
    seed_both_sides(sim, account)

    long_close = await bybit.create_order(
        BTC, "market", "sell", 3, None, {"positionIdx": 1, "reduceOnly": True}
    )
    # ccxt's own way: hedged + reduceOnly sends positionIdx 2 for a buy, without reduceOnly.
    await bybit.create_order(BTC, "market", "buy", 3, None, {"hedged": True, "reduceOnly": True})

    assert held(sim, account) == {("ETHUSDT", "SHORT"): D(-2)}
    sent = [r.params for r in sim.requests("POST", "/v5/order/create")]
    assert [(p["side"], p["positionIdx"], p.get("reduceOnly")) for p in sent] == [
        ("Sell", "1", "true"),
        ("Buy", "2", None),
    ]
    fetched = await bybit.fetch_order(long_close["id"], BTC, {"acknowledged": True})
    assert (fetched["filled"], fetched["status"]) == (0.5, "closed")
    assert fetched["info"]["positionIdx"] == 1
    assert [(f.side, f.qty, f.position_side) for f in sim.fills(account)] == [
        ("SELL", D("0.5"), "LONG"),
        ("BUY", D("0.2"), "SHORT"),
    ]


async def test_bybit_close_of_an_empty_side_is_110017(
    sim: ExchangeSimulator, account: str, bybit: Any
) -> None:
    seed_both_sides(sim, account)

    with pytest.raises(errors.InvalidOrder, match="110017"):
        await bybit.create_order(ETH, "market", "sell", 1, None, {"positionIdx": 1})
    with pytest.raises(errors.InvalidOrder, match="110017"):  # an opening order: reduce-only
        await bybit.create_order(
            ETH, "market", "sell", 1, None, {"positionIdx": 2, "reduceOnly": True}
        )

    assert held(sim, account)[("ETHUSDT", "SHORT")] == D(-2)
    assert sim.fills(account) == []


async def test_bybit_mode_switch_is_refused_with_positions_or_orders(
    sim: ExchangeSimulator, account: str, bybit: Any
) -> None:
    sim.seed_position(account, "BTCUSDT", "0.5", "60000", position_side="LONG")
    with pytest.raises(errors.BadRequest, match="110024"):
        await bybit.set_position_mode(False)
    sim.seed_position(account, "BTCUSDT", 0, "60000", position_side="LONG")
    sim.seed_order(account, "BTCUSDT", "BUY", "0.01", "50000", position_side="LONG")
    with pytest.raises(errors.BadRequest, match="110028"):
        await bybit.set_position_mode(False)
    await bybit.cancel_all_orders(BTC)
    with pytest.raises(errors.NoChange, match="110025"):
        await bybit.set_position_mode(True)

    await bybit.set_position_mode(False)

    assert sim.account(account).hedge_mode is False
    assert sim.requests("POST", "/v5/position/switch-mode")[-1].params["mode"] == "0"
    await bybit.create_order(BTC, "market", "sell", 0.1)  # one-way again: positionIdx 0
    assert sim.positions(account)["BTCUSDT"].qty == D("-0.1")


# -- OKX swap -------------------------------------------------------------------------------------


async def test_okx_reads_long_short_rows_and_the_mode(
    sim: ExchangeSimulator, account: str, okx: Any
) -> None:
    seed_both_sides(sim, account)

    assert rows(await okx.fetch_positions()) == [  # contracts of 0.001 BTC or ETH
        (BTC, "long", 500.0, True),
        (BTC, "short", 200.0, True),
        (ETH, "short", 2000.0, True),
    ]
    assert (await okx.fetch_position_mode())["hedged"] is True
    raw = await okx.privateGetAccountPositions({"instId": "BTC-USDT-SWAP"})
    assert [(r["posSide"], r["pos"]) for r in raw["data"]] == [("long", "500"), ("short", "200")]


async def test_okx_order_without_its_pos_side_is_51000(
    sim: ExchangeSimulator, account: str, okx: Any
) -> None:
    seed_both_sides(sim, account)

    for params in ({}, {"posSide": "net"}):
        with pytest.raises(errors.BadRequest, match="Parameter posSide error"):
            await okx.create_order(BTC, "market", "sell", 100, None, params)
    with pytest.raises(errors.BadRequest, match="posSide"):  # algo orders too
        await okx.create_order(BTC, "market", "sell", 100, None, {"stopLossPrice": 50000})

    stop = await okx.create_order(
        BTC, "market", "sell", 100, None, {"stopLossPrice": 50000, "posSide": "long"}
    )
    (listed,) = await okx.fetch_open_orders(BTC, params={"ordType": "conditional"})
    assert (listed["id"], listed["info"]["posSide"]) == (stop["id"], "long")
    assert sim.fills(account) == []


async def test_okx_close_reduces_only_its_side_and_is_clipped(
    sim: ExchangeSimulator, account: str, okx: Any
) -> None:
    seed_both_sides(sim, account)

    long_close = await okx.create_order(BTC, "market", "sell", 3000, None, {"posSide": "long"})
    # ccxt's own way: hedged + reduceOnly sends posSide short for a buy, without reduceOnly.
    await okx.create_order(BTC, "market", "buy", 3000, None, {"hedged": True, "reduceOnly": True})
    # reduceOnly sent with a posSide is accepted and ignored (OKX: net mode only).
    await okx.create_order(ETH, "market", "buy", 50, None, {"posSide": "short", "reduceOnly": True})

    assert held(sim, account) == {("ETHUSDT", "SHORT"): D("-1.95")}
    fetched = await okx.fetch_order(long_close["id"], BTC)
    assert (fetched["filled"], fetched["status"], fetched["info"]["posSide"]) == (
        500,
        "closed",
        "long",
    )
    sent = [r.params for r in sim.requests("POST", "/api/v5/trade/batch-orders")]
    assert [(p["side"], p["posSide"], p.get("reduceOnly")) for p in sent] == [
        ("sell", "long", None),
        ("buy", "short", None),
        ("buy", "short", "true"),
    ]


async def test_okx_close_of_an_empty_side_is_51169(
    sim: ExchangeSimulator, account: str, okx: Any
) -> None:
    seed_both_sides(sim, account)

    with pytest.raises(errors.ExchangeError, match="51169"):
        await okx.create_order(ETH, "market", "sell", 100, None, {"posSide": "long"})

    assert held(sim, account)[("ETHUSDT", "SHORT")] == D(-2)
    assert sim.fills(account) == []


async def test_okx_mode_switch_is_refused_with_positions_or_orders(
    sim: ExchangeSimulator, account: str, okx: Any
) -> None:
    sim.seed_position(account, "BTCUSDT", "0.5", "60000", position_side="LONG")
    with pytest.raises(errors.ExchangeError, match="59000"):
        await okx.set_position_mode(False)
    sim.seed_position(account, "BTCUSDT", 0, "60000", position_side="LONG")
    order_id = sim.seed_order(account, "BTCUSDT", "BUY", "0.01", "50000", position_side="LONG")
    with pytest.raises(errors.ExchangeError, match="59000"):
        await okx.set_position_mode(False)
    await okx.cancel_order(str(order_id), BTC)

    answer = await okx.set_position_mode(False)

    assert answer["data"] == [{"posMode": "net_mode"}]
    assert (await okx.fetch_position_mode())["hedged"] is False
    with pytest.raises(errors.BadRequest, match="posSide"):  # net mode refuses long/short
        await okx.create_order(BTC, "market", "buy", 100, None, {"posSide": "long"})
    await okx.create_order(BTC, "market", "buy", 100)
    assert sim.positions(account)["BTCUSDT"].qty == D("0.1")
