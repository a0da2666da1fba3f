"""Signature checks and injected faults, seen through real ccxt clients: each fault kind must
produce the exception (or the silent non-error) ``docs/ccxt-loopback.md`` ("Error tables")
predicts."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from ccxt.base import errors

from ess.sim import ExchangeSimulator, FaultKind, Venue, make_exchange
from tests.helpers import eventually
from tests.sim.conftest import API_KEY, SECRET

pytestmark = pytest.mark.integration

ZERO = Decimal(0)

BTC = "BTC/USDT:USDT"


async def test_wrong_secret_is_rejected_with_1022(sim: ExchangeSimulator, account: str) -> None:
    client = make_exchange("binanceusdm", sim.url, API_KEY, "not-the-secret")
    try:
        with pytest.raises(errors.AuthenticationError):
            await client.fetch_balance()
    finally:
        await client.close()
    assert sim.requests("GET", "/fapi/v3/account")[0].code == -1022


async def test_unknown_key_is_rejected_with_2015(sim: ExchangeSimulator, account: str) -> None:
    client = make_exchange("binanceusdm", sim.url, "someone-else", SECRET)
    try:
        with pytest.raises(errors.AuthenticationError):
            await client.create_order(BTC, "market", "sell", 0.1, None, {"reduceOnly": True})
    finally:
        await client.close()
    entry = sim.requests("POST", "/fapi/v1/order")[0]
    assert (entry.status, entry.code, entry.account) == (401, -2015, None)


async def test_missing_credentials_fail_locally(sim: ExchangeSimulator) -> None:
    client = make_exchange("binanceusdm", sim.url, None, None)
    try:
        await client.load_markets()
        with pytest.raises(errors.AuthenticationError, match="apiKey"):
            await client.fetch_positions()
    finally:
        await client.close()
    assert [e.path for e in sim.log] == ["/fapi/v1/exchangeInfo"]


@pytest.mark.parametrize("skew_ms", [-20_000, 20_000], ids=["client-ahead", "client-behind"])
async def test_timestamp_outside_recv_window_is_invalid_nonce(
    sim: ExchangeSimulator, usdm: Any, skew_ms: int
) -> None:
    sim.clock_skew_ms = skew_ms

    with pytest.raises(errors.InvalidNonce):
        await usdm.fetch_balance()
    await usdm.load_time_difference()  # GET /fapi/v1/time, the documented fix
    await usdm.fetch_balance()

    assert [e.code for e in sim.requests("GET", "/fapi/v3/account")] == [-1021, None]


# kind, expected exception (None: ccxt raises nothing), whether the close was executed
FAULT_MATRIX = [
    (FaultKind.HTTP_429, errors.DDoSProtection, False),
    (FaultKind.HTTP_418, errors.DDoSProtection, False),
    (FaultKind.RATE_LIMIT_CODE, errors.RateLimitExceeded, False),
    (FaultKind.HTTP_500, errors.ExchangeNotAvailable, False),
    (FaultKind.HTTP_502, errors.ExchangeNotAvailable, False),
    (FaultKind.HTTP_503, errors.ExchangeNotAvailable, False),
    (FaultKind.HANG, errors.RequestTimeout, False),
    (FaultKind.EXEC_THEN_HANG, errors.RequestTimeout, True),
    (FaultKind.INVALID_KEY, errors.AuthenticationError, False),
    (FaultKind.UNKNOWN_ORDER, errors.OrderNotFound, False),
    (FaultKind.REDUCE_ONLY_REJECTED, errors.InvalidOrder, False),
    (FaultKind.EMPTY, None, True),
    (FaultKind.BAD_JSON, None, True),
]


def _param_id(value: object) -> str:
    return getattr(value, "__name__", str(value))


@pytest.mark.parametrize(("kind", "expected", "executed"), FAULT_MATRIX, ids=_param_id)
async def test_fault_on_reduce_only_close_maps_to_ccxt_exception(
    sim: ExchangeSimulator,
    account: str,
    kind: FaultKind,
    expected: type[Exception] | None,
    executed: bool,
) -> None:
    sim.seed_position(account, "BTCUSDT", "0.5", "58000")
    client = make_exchange("binanceusdm", sim.url, API_KEY, SECRET, timeout_ms=300)
    try:
        await client.load_markets()
        fault = sim.add_fault("POST", "/fapi/v1/order", kind)
        call = client.create_order(BTC, "market", "sell", 0.5, None, {"reduceOnly": True})
        if expected is None:
            order = await call
            assert (order["id"], order["status"]) == (None, None)  # looks like nothing happened
        else:
            with pytest.raises(expected):
                await call
    finally:
        await client.close()

    assert fault.hits == 1
    assert ("BTCUSDT" not in sim.positions(account)) is executed
    assert sim.requests("POST", "/fapi/v1/order")[0].fault is kind


async def test_generic_error_fault_uses_given_code(
    sim: ExchangeSimulator, account: str, usdm: Any
) -> None:
    sim.add_fault(
        "GET", "/fapi/v3/positionRisk", "error", code=-1008, status=503, msg="Server busy."
    )

    with pytest.raises(errors.OperationFailed, match="-1008"):
        await usdm.fetch_positions()


async def test_empty_body_makes_positions_look_flat(
    sim: ExchangeSimulator, account: str, usdm: Any
) -> None:
    """The trap a verifier must not fall into: ccxt turns an empty 200 into ``[]``."""
    sim.seed_position(account, "BTCUSDT", "0.5", "58000")
    sim.add_fault("GET", "/fapi/v3/positionRisk", FaultKind.EMPTY, times=2)

    assert await usdm.fetch_positions() == []
    raw = await usdm.fapiPrivateV3GetPositionRisk()  # the implicit call shows it: not a list
    assert not isinstance(raw, list)
    positions = await usdm.fetch_positions()  # fault exhausted: the truth again
    assert [p["contracts"] for p in positions] == [0.5]


async def test_bad_json_on_open_orders_surfaces_as_a_raw_python_error(
    sim: ExchangeSimulator, account: str, usdm: Any
) -> None:
    sim.add_fault("GET", "/fapi/v1/openOrders", FaultKind.BAD_JSON)

    with pytest.raises(AttributeError):
        await usdm.fetch_open_orders(BTC)


async def test_hang_is_released_when_the_simulator_stops(account: str) -> None:
    sim = await ExchangeSimulator().start()
    sim.add_account("k2", "s2")
    client = make_exchange("binanceusdm", sim.url, "k2", "s2", timeout_ms=10_000)
    try:
        await client.load_markets()
        sim.add_fault("GET", "/fapi/v3/account", FaultKind.HANG)
        pending = asyncio.ensure_future(client.fetch_balance())
        await eventually(lambda: sim.requests("GET", "/fapi/v3/account"))
        started = time.monotonic()
        await sim.stop()
        with pytest.raises(errors.ExchangeNotAvailable):
            await pending
        assert time.monotonic() - started < 2
    finally:
        await client.close()
        await sim.stop()


async def test_slow_answer_executes_after_the_client_gave_up(
    sim: ExchangeSimulator, account: str
) -> None:
    """``hang`` with ``delay_s``: the request is executed late, after a client timeout."""
    sim.seed_position(account, "BTCUSDT", "0.5", "58000")
    client = make_exchange("binanceusdm", sim.url, API_KEY, SECRET, timeout_ms=200)
    try:
        await client.load_markets()
        sim.add_fault("POST", "/fapi/v1/order", FaultKind.HANG, delay_s=0.4)
        with pytest.raises(errors.RequestTimeout):
            await client.create_order(BTC, "market", "sell", 0.5, None, {"reduceOnly": True})
        assert "BTCUSDT" in sim.positions(account)  # not yet
        await eventually(lambda: "BTCUSDT" not in sim.positions(account), timeout=2)
    finally:
        await client.close()


async def test_partial_fill_targets_one_order_by_client_id(
    sim: ExchangeSimulator, account: str, usdm: Any
) -> None:
    sim.seed_position(account, "BTCUSDT", "0.5", "58000")
    sim.add_fault(
        "POST",
        "/fapi/v1/order",
        FaultKind.PARTIAL_FILL,
        params={"newClientOrderId": "close-1"},
        fill_ratio="0.5",
    )
    close = {"reduceOnly": True}

    first = await usdm.create_order(
        BTC, "market", "sell", 0.5, None, {**close, "clientOrderId": "close-1"}
    )
    assert (first["status"], first["filled"]) == ("expired", 0.25)
    assert sim.positions(account)["BTCUSDT"].qty == Decimal("0.25")
    second = await usdm.create_order(
        BTC, "market", "sell", 0.5, None, {**close, "clientOrderId": "close-2"}
    )

    assert (second["status"], second["filled"]) == ("closed", 0.25)
    assert sim.positions(account) == {}


async def test_partial_fill_on_a_limit_order_rests_the_remainder(
    sim: ExchangeSimulator, account: str, usdm: Any
) -> None:
    sim.add_fault("POST", "/fapi/v1/order", FaultKind.PARTIAL_FILL, fill_ratio="0.4")

    order = await usdm.create_order(BTC, "limit", "buy", 0.05, 59000)

    assert (order["status"], order["filled"]) == ("open", 0.02)
    assert sim.open_orders(account)[0].remaining == Decimal("0.03")
    assert sim.positions(account)["BTCUSDT"].qty == Decimal("0.02")


async def test_late_fill_after_cancel_all_creates_a_position(
    sim: ExchangeSimulator, account: str, usdm: Any
) -> None:
    """A rogue order the client was told is cancelled fills afterwards: flat, then not."""
    order_id = sim.seed_order(account, "BTCUSDT", "BUY", "0.3", "59000")
    sim.add_fault("DELETE", "/fapi/v1/allOpenOrders", FaultKind.LATE_FILL, delay_s=0.3)

    await usdm.cancel_all_orders(BTC)
    assert await usdm.fetch_open_orders(BTC) == []
    assert await usdm.fetch_positions() == []  # the verifier's first look: flat
    assert (await usdm.fetch_order(str(order_id), BTC))["status"] == "canceled"

    async def long_again() -> bool:
        positions = await usdm.fetch_positions()
        return [(p["side"], p["contracts"]) for p in positions] == [("long", 0.3)]

    await eventually(long_again, timeout=3)
    assert (await usdm.fetch_order(str(order_id), BTC))["status"] == "closed"
    assert [(e.kind, e.symbol) for e in sim.events] == [("late_fill", "BTCUSDT")]
    assert sim.fills(account)[-1].late is True


async def test_late_fill_of_a_reduce_only_order_cannot_flip(
    sim: ExchangeSimulator, account: str, usdm: Any
) -> None:
    sim.seed_position(account, "BTCUSDT", "0.5", "58000")
    order_id = sim.seed_order(account, "BTCUSDT", "SELL", "1.2", "60000", reduce_only=True)
    sim.add_fault("DELETE", "/fapi/v1/allOpenOrders", FaultKind.LATE_FILL, delay_s=0)

    await usdm.cancel_all_orders(BTC)

    assert sim.positions(account) == {}  # clipped at 0.5, not short 0.7
    assert sim.order(account, order_id).executed_qty == Decimal("0.5")
    assert sim.open_orders(account) == []


async def test_spot_late_fill_sells_locked_base(
    sim: ExchangeSimulator, account: str, spot: Any
) -> None:
    sim.seed_order(account, "BTCUSDT", "SELL", "0.05", "70000", venue=Venue.SPOT)
    sim.add_fault("DELETE", "/api/v3/openOrders", FaultKind.LATE_FILL)

    cancelled = await spot.cancel_all_orders("BTC/USDT")

    assert [o["status"] for o in cancelled] == ["canceled"]  # what the client was told
    assert sim.spot_balance(account, "BTC") == (Decimal("0.15"), ZERO)
    assert sim.spot_balance(account, "USDT") == (Decimal(1000 + 3500), ZERO)


async def _failure_pattern(seed: int) -> list[bool]:
    async with ExchangeSimulator(seed=seed) as sim:
        sim.add_fault("GET", "/fapi/v1/time", FaultKind.HTTP_503, times=None, probability=0.5)
        client = make_exchange("binanceusdm", sim.url, None, None)
        pattern = []
        try:
            for _ in range(24):
                try:
                    await client.fetch_time()
                    pattern.append(False)
                except errors.ExchangeNotAvailable:
                    pattern.append(True)
        finally:
            await client.close()
        return pattern


async def test_probabilistic_faults_are_reproducible_from_the_seed() -> None:
    first, again, other = [await _failure_pattern(seed) for seed in (11, 11, 12)]

    assert first == again
    assert first != other
    assert 0 < sum(first) < len(first)


async def test_fault_filters_and_budget(sim: ExchangeSimulator, account: str, usdm: Any) -> None:
    other = sim.add_account("other-key", "other-secret")
    sim.add_fault("GET", "/fapi/v3/*", FaultKind.HTTP_500, account=other, times=None)
    limited = sim.add_fault("*", "/fapi/v1/openOrders", FaultKind.HTTP_502, times=2)

    await usdm.fetch_positions()  # other account's fault does not apply
    for _ in range(2):
        with pytest.raises(errors.ExchangeNotAvailable):
            await usdm.fetch_open_orders(BTC)
    assert await usdm.fetch_open_orders(BTC) == []

    assert limited.exhausted
    sim.clear_faults()
    assert sim.faults == []


async def test_raw_http_without_ccxt(sim: ExchangeSimulator, account: str) -> None:
    """What a human with curl sees: unknown paths 404, a missing key -2014, and with signature
    checks off a signed route needs only the key and a timestamp."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{sim.url}/fapi/v1/nope") as missing_route:
            assert missing_route.status == 404
        async with http.get(f"{sim.url}/fapi/v3/account?timestamp=1") as no_key:
            assert (no_key.status, (await no_key.json())["code"]) == (401, -2014)
        sim.verify_signatures = False
        sim.check_recv_window = False
        headers = {"X-MBX-APIKEY": API_KEY}
        async with http.get(f"{sim.url}/fapi/v3/account?timestamp=1", headers=headers) as ok:
            assert ok.status == 200
            assert ok.headers["X-MBX-USED-WEIGHT-1M"] == "10"  # the refused call counted too
            assert (await ok.json())["assets"][0]["walletBalance"] == "10000"
    assert [e.status for e in sim.log] == [404, 401, 200]
