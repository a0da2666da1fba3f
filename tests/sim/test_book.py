"""The simulator's trading rules without HTTP: position arithmetic, reduce-only clipping, spot
funds locking, parameter validation, hedge (two-sided) mode and the sliding rate windows."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ess.sim.book import Account, ApiError, Engine
from ess.sim.markets import DEFAULT_MARKETS, Venue, fmt, generate_markets, index_markets
from ess.sim.ratelimit import RateLimiter, RateLimits, SlidingWindow

D = Decimal


@pytest.fixture
def engine() -> Engine:
    markets = index_markets(DEFAULT_MARKETS)
    marks = {(v, s): m.mark_price for v, book in markets.items() for s, m in book.items()}
    return Engine(markets, marks, lambda: 1_700_000_000_000)


@pytest.fixture
def acct() -> Account:
    return Account(name="a", api_key="k", secret="s", spot_free={"BTC": D(1), "USDT": D(1000)})


def market_order(side: str, qty: str, **extra: str) -> dict[str, str]:
    return {"symbol": "BTCUSDT", "side": side, "type": "MARKET", "quantity": qty, **extra}


def test_position_grows_at_average_entry_and_realizes_on_reduce(
    engine: Engine, acct: Account
) -> None:
    engine.place_futures(acct, market_order("BUY", "1"))  # @60000
    engine.marks[(Venue.FUTURES, "BTCUSDT")] = D(62000)
    engine.place_futures(acct, market_order("BUY", "1"))  # @62000
    assert acct.positions["BTCUSDT"].entry_price == D(61000)

    engine.marks[(Venue.FUTURES, "BTCUSDT")] = D(63000)
    engine.place_futures(acct, market_order("SELL", "0.5", reduceOnly="true"))

    assert acct.positions["BTCUSDT"].qty == D("1.5")
    assert acct.futures_wallet == D(10_000) + D(1000)  # (63000 - 61000) * 0.5


def test_non_reduce_only_order_can_flip_and_reopens_at_the_fill_price(
    engine: Engine, acct: Account
) -> None:
    engine.place_futures(acct, market_order("BUY", "0.5"))
    engine.place_futures(acct, market_order("SELL", "0.8"))

    assert acct.positions["BTCUSDT"].qty == D("-0.3")
    assert acct.positions["BTCUSDT"].entry_price == D(60000)


def test_reduce_only_clips_to_the_position(engine: Engine, acct: Account) -> None:
    engine.place_futures(acct, market_order("BUY", "0.5"))

    order = engine.place_futures(acct, market_order("SELL", "3", reduceOnly="true"))

    assert (order.status, order.executed_qty, order.orig_qty) == ("FILLED", D("0.5"), D(3))
    assert "BTCUSDT" not in acct.positions


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"quantity": "0.0005"}, -1111),
        ({"quantity": "0"}, -4003),
        ({"quantity": "1e3"}, -1100),
        ({"quantity": "2000000"}, -4005),
        ({"symbol": "NOPE"}, -1121),
        ({"symbol": ""}, -1102),
        ({"side": "UP"}, -1117),
        ({"type": "STOP_MARKET"}, -4120),
        ({"type": "ICEBERG"}, -1116),
        ({"positionSide": "LONG"}, -4061),
        ({"reduceOnly": "true"}, -2022),
        ({"type": "LIMIT"}, -1102),
        ({"type": "LIMIT", "price": "60000.05", "timeInForce": "GTC"}, -4014),
        ({"type": "LIMIT", "price": "60000"}, -1102),
        ({"newClientOrderId": "has space"}, -4015),
    ],
)
def test_futures_order_validation(
    engine: Engine, acct: Account, params: dict[str, str], code: int
) -> None:
    with pytest.raises(ApiError) as caught:
        engine.place_futures(acct, {**market_order("BUY", "0.01"), **params})
    assert caught.value.code == code


def test_spot_limit_orders_lock_and_release_funds(engine: Engine, acct: Account) -> None:
    sell = {"symbol": "BTCUSDT", "side": "SELL", "type": "LIMIT", "quantity": "0.4"}
    order = engine.place_spot(acct, {**sell, "price": "70000", "timeInForce": "GTC"})
    buy = {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "quantity": "0.01"}
    bid = engine.place_spot(acct, {**buy, "price": "50000", "timeInForce": "GTC"})
    assert (acct.spot_free["BTC"], acct.spot_locked["BTC"]) == (D("0.6"), D("0.4"))
    assert (acct.spot_free["USDT"], acct.spot_locked["USDT"]) == (D(500), D(500))

    engine.fill_resting(acct, order, D("0.1"))
    engine.cancel(acct, order)
    engine.fill_resting(acct, bid, price=D(49000))

    assert (acct.spot_free["BTC"], acct.spot_locked["BTC"]) == (D("0.91"), D(0))
    assert acct.spot_free["USDT"] == D(500) + D(7000) + D(10)  # sale, and the bid's change
    assert acct.spot_locked["USDT"] == D(0)


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"quantity": "5"}, -2010),
        ({"quantity": "0.000001"}, -1013),
        ({"reduceOnly": "true"}, -1104),
        ({"type": "OCO"}, -1116),
    ],
)
def test_spot_order_validation(
    engine: Engine, acct: Account, params: dict[str, str], code: int
) -> None:
    base = {"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.1"}
    with pytest.raises(ApiError) as caught:
        engine.place_spot(acct, {**base, **params})
    assert caught.value.code == code


def test_spot_market_buy_by_quote_amount(engine: Engine, acct: Account) -> None:
    params = {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quoteOrderQty": "600"}

    order = engine.place_spot(acct, params)

    assert order.executed_qty == D("0.01")
    assert acct.spot_free["USDT"] == D(400)


def test_seeded_spot_order_needs_the_funds(engine: Engine, acct: Account) -> None:
    with pytest.raises(ValueError, match="not enough free BTC"):
        engine.seed_order(
            acct,
            Venue.SPOT,
            "BTCUSDT",
            side="SELL",
            qty=D(2),
            price=D(70000),
            order_type="LIMIT",
            reduce_only=False,
            client_order_id=None,
            trigger_price=D(0),
        )


def test_generated_markets_and_formatting() -> None:
    markets = generate_markets(3, Venue.FUTURES)

    assert [m.symbol for m in markets] == ["SIM001USDT", "SIM002USDT", "SIM003USDT"]
    assert markets[0].exchange_info_entry()["contractType"] == "PERPETUAL"
    assert (fmt(D("1E+2")), fmt(D("0.500")), fmt(D("-0"))) == ("100", "0.5", "0")
    with pytest.raises(ValueError, match="duplicate"):
        index_markets([*markets, markets[0]])


def test_sliding_window_forgets_old_weight() -> None:
    window = SlidingWindow(10.0)
    window.add(0.0, 5)
    window.add(4.0, 3)

    assert window.used(9.9) == 8
    assert window.used(10.0) == 3
    assert window.peak == 8


def test_rate_limiter_counts_only_admitted_requests() -> None:
    now = [0.0]
    limiter = RateLimiter(
        {Venue.FUTURES: RateLimits(weight_per_window=10, weight_window_s=1)}, clock=lambda: now[0]
    )
    for _ in range(2):
        _, refusal = limiter.admit(Venue.FUTURES, "a", "GET", "/fapi/v3/account", {})
        assert refusal is None
    weight, refusal = limiter.admit(Venue.FUTURES, "a", "GET", "/fapi/v3/account", {})

    assert (weight, refusal is not None) == (5, True)
    assert limiter.weight_of("GET", "/fapi/v1/openOrders", {}) == 40
    assert limiter.weight_of("GET", "/fapi/v1/openOrders", {"symbol": "BTCUSDT"}) == 1
    now[0] = 1.5
    assert limiter.counters(Venue.FUTURES).used_weight == 0
    assert limiter.counters(Venue.FUTURES).peak_weight == 10


# -- hedge (two-sided) position mode ---------------------------------------------------------------


@pytest.fixture
def hedged() -> Account:
    return Account(name="h", api_key="k", secret="s", hedge_mode=True)


def order(side: str, qty: str, position_side: str | None, **extra: str) -> dict[str, str]:
    """A BTCUSDT market order on ``position_side`` (``None``: the parameter left out)."""
    params = {"symbol": "BTCUSDT", "side": side, "type": "MARKET", "quantity": qty, **extra}
    if position_side is not None:
        params["positionSide"] = position_side
    return params


def sides(account: Account) -> dict[tuple[str, str], Decimal]:
    return {key: position.qty for key, position in account.hedge_positions.items()}


def test_each_side_opens_and_grows_on_its_own(engine: Engine, hedged: Account) -> None:
    engine.place_futures(hedged, order("BUY", "1", "LONG"))  # @60000
    engine.place_futures(hedged, order("SELL", "0.4", "SHORT"))
    engine.marks[(Venue.FUTURES, "BTCUSDT")] = D(62000)
    engine.place_futures(hedged, order("BUY", "1", "LONG"))

    assert sides(hedged) == {("BTCUSDT", "LONG"): D(2), ("BTCUSDT", "SHORT"): D("-0.4")}
    assert hedged.hedge_positions[("BTCUSDT", "LONG")].entry_price == D(61000)
    assert hedged.hedge_positions[("BTCUSDT", "SHORT")].entry_price == D(60000)
    assert hedged.positions == {}  # no one-way position in hedge mode
    assert [f.position_side for f in hedged.fills] == ["LONG", "SHORT", "LONG"]


def test_a_close_is_clipped_to_its_side_and_never_opens_the_other(
    engine: Engine, hedged: Account
) -> None:
    engine.place_futures(hedged, order("BUY", "0.5", "LONG"))  # @60000
    engine.place_futures(hedged, order("SELL", "0.2", "SHORT"))
    engine.marks[(Venue.FUTURES, "BTCUSDT")] = D(61000)

    closed = engine.place_futures(hedged, order("SELL", "3", "LONG"))

    assert (closed.executed_qty, closed.status) == (D("0.5"), "FILLED")
    assert sides(hedged) == {("BTCUSDT", "SHORT"): D("-0.2")}  # the short is untouched
    assert hedged.futures_wallet == D(10_000) + D(500)  # (61000 - 60000) x 0.5

    bought = engine.place_futures(hedged, order("BUY", "1", "SHORT"))  # closes the short @61000
    assert bought.executed_qty == D("0.2")
    assert sides(hedged) == {}
    assert hedged.futures_wallet == D(10_500) - D(200)  # short from 60000: -1000 x 0.2


@pytest.mark.parametrize(("side", "position_side"), [("SELL", "LONG"), ("BUY", "SHORT")])
def test_a_close_of_a_flat_side_is_refused(
    engine: Engine, hedged: Account, side: str, position_side: str
) -> None:
    other = "SHORT" if position_side == "LONG" else "LONG"
    engine.place_futures(hedged, order("BUY" if other == "LONG" else "SELL", "0.5", other))
    before = sides(hedged)

    with pytest.raises(ApiError) as refused:
        engine.place_futures(hedged, order(side, "0.1", position_side))

    assert refused.value.code == -2022
    assert sides(hedged) == before


def test_the_position_side_must_match_the_mode(engine: Engine, hedged: Account) -> None:
    one_way = Account(name="o", api_key="k2", secret="s")
    for account, position_side in ((hedged, None), (hedged, "BOTH"), (one_way, "LONG")):
        with pytest.raises(ApiError) as refused:
            engine.place_futures(account, order("BUY", "0.1", position_side))
        assert refused.value.code == -4061
    with pytest.raises(ApiError) as refused:
        engine.place_algo(
            hedged,
            order("SELL", "0.1", None, type="STOP_MARKET", algoType="CONDITIONAL")
            | {"triggerPrice": "50000"},
        )
    assert refused.value.code == -4061
    assert hedged.fills == one_way.fills == []


def test_reduce_only_in_hedge_mode_is_1106_unless_the_family_accepts_it(
    engine: Engine, hedged: Account
) -> None:
    engine.place_futures(hedged, order("BUY", "0.5", "LONG"))
    with pytest.raises(ApiError) as refused:
        engine.place_futures(hedged, order("SELL", "0.5", "LONG", reduceOnly="true"))
    assert refused.value.code == -1106

    # Bybit accepts it: a close is fine, an opening order marked reduce-only is not.
    with pytest.raises(ApiError) as opening:
        engine.place_futures(
            hedged, order("BUY", "0.1", "LONG", reduceOnly="true"), reduce_only_in_hedge=True
        )
    assert opening.value.code == -2022
    engine.place_futures(
        hedged, order("SELL", "0.9", "LONG", reduceOnly="true"), reduce_only_in_hedge=True
    )
    assert sides(hedged) == {}


def test_a_resting_close_fills_at_most_its_side(engine: Engine, hedged: Account) -> None:
    engine.place_futures(hedged, order("BUY", "0.5", "LONG"))
    resting = engine.place_futures(
        hedged, order("SELL", "2", "LONG", type="LIMIT", price="61000", timeInForce="GTC")
    )
    assert resting.is_open

    engine.fill_resting(hedged, resting)

    assert (resting.executed_qty, resting.status) == (D("0.5"), "FILLED")
    assert sides(hedged) == {}


def test_a_late_fill_of_a_hedge_close_is_clipped(engine: Engine, hedged: Account) -> None:
    """The close rests for 0.5; the long shrinks to 0.3 meanwhile; the cancel turns into a late
    fill of the whole order: it fills 0.3 and opens no short."""
    engine.place_futures(hedged, order("BUY", "0.5", "LONG"))
    resting = engine.place_futures(
        hedged, order("SELL", "0.5", "LONG", type="LIMIT", price="61000", timeInForce="GTC")
    )
    engine.place_futures(hedged, order("SELL", "0.2", "LONG"))
    engine.detach(resting)

    fill = engine.fill_resting(hedged, resting, late=True)

    assert fill is not None
    assert (fill.qty, fill.late, fill.position_side) == (D("0.3"), True, "LONG")
    assert sides(hedged) == {}
    assert resting.status == "FILLED"


def test_a_late_fill_of_a_close_on_a_side_gone_flat_fills_nothing(
    engine: Engine, hedged: Account
) -> None:
    engine.place_futures(hedged, order("SELL", "0.1", "SHORT"))
    late = engine.place_futures(
        hedged, order("BUY", "0.1", "SHORT", type="LIMIT", price="59000", timeInForce="GTC")
    )
    engine.place_futures(hedged, order("BUY", "0.1", "SHORT"))  # the short is closed meanwhile
    engine.detach(late)

    assert engine.fill_resting(hedged, late, late=True) is None
    assert (late.status, late.executed_qty, sides(hedged)) == ("EXPIRED", D(0), {})


def test_a_partial_fill_of_a_hedge_close_leaves_the_rest_of_its_side(
    engine: Engine, hedged: Account
) -> None:
    engine.place_futures(hedged, order("SELL", "1", "SHORT"))
    closed = engine.place_futures(hedged, order("BUY", "4", "SHORT"), fill_ratio=D("0.5"))

    assert closed.executed_qty == D("0.5")  # half of the clipped 1, not of the 4 asked
    assert (closed.status, sides(hedged)) == ("EXPIRED", {("BTCUSDT", "SHORT"): D("-0.5")})


def test_a_coinm_hedge_close_realizes_inverse_pnl(engine: Engine, hedged: Account) -> None:
    def coinm(side: str, qty: str, position_side: str) -> dict[str, str]:
        return order(side, qty, position_side, symbol="BTCUSD_PERP")

    engine.place_futures(hedged, coinm("BUY", "10", "LONG"), venue=Venue.COINM)  # @60000
    engine.place_futures(hedged, coinm("SELL", "4", "SHORT"), venue=Venue.COINM)
    engine.marks[(Venue.COINM, "BTCUSD_PERP")] = D(64000)

    engine.place_futures(hedged, coinm("SELL", "50", "LONG"), venue=Venue.COINM)

    assert sides(hedged) == {("BTCUSD_PERP", "SHORT"): D(-4)}
    assert hedged.coinm_wallet["BTC"] == (1000 * (1 / D(60000) - 1 / D(64000))).quantize(D("1e-8"))
