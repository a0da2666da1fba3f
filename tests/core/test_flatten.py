"""Flatten planning: the pure decisions that make a retried flatten safe."""

from __future__ import annotations

from decimal import Decimal

from ess.core.flatten import (
    MarketKind,
    OrderView,
    PositionView,
    VenueSnapshot,
    close_order_id,
    plan_flatten,
    quantity_text,
)

D = Decimal


def snapshot(*positions: tuple[str, str], orders: tuple[OrderView, ...] = ()) -> VenueSnapshot:
    return VenueSnapshot(tuple(PositionView(s, D(q)) for s, q in positions), orders)


def test_flat_means_no_position_and_no_order_but_dust_is_ignored() -> None:
    assert VenueSnapshot().flat
    assert VenueSnapshot(dust=(PositionView("BTCUSDT", D("0.0001")),)).flat
    assert not snapshot(("BTCUSDT", "1")).flat
    assert not VenueSnapshot(orders=(OrderView("BTCUSDT", "1"),)).flat


def test_futures_closes_are_reduce_only_in_the_opposite_direction() -> None:
    plan = plan_flatten(
        snapshot(("BTCUSDT", "0.5"), ("ETHUSDT", "-2")),
        activation_id="a1",
        venue="futures",
        kind=MarketKind.FUTURES,
    )
    closes = {p.symbol: p.close for p in plan.symbols}
    btc, eth = closes["BTCUSDT"], closes["ETHUSDT"]
    assert btc is not None
    assert eth is not None
    assert (btc.side, btc.amount, btc.reduce_only) == ("sell", D("0.5"), True)
    assert (eth.side, eth.amount, eth.reduce_only) == ("buy", D("2"), True)
    assert plan.closes == 2
    assert plan.cancels == 0


def test_cancels_come_per_book_and_symbols_are_sorted() -> None:
    orders = (
        OrderView("SOLUSDT", "1"),
        OrderView("BTCUSDT", "2", conditional=True),
        OrderView("BTCUSDT", "3"),
        OrderView("BTCUSDT", "4"),
    )
    plan = plan_flatten(
        snapshot(("BTCUSDT", "1"), orders=orders),
        activation_id="a1",
        venue="futures",
        kind=MarketKind.FUTURES,
    )
    assert [p.symbol for p in plan.symbols] == ["BTCUSDT", "SOLUSDT"]
    btc, sol = plan.symbols
    assert [c.conditional for c in btc.cancels] == [False, True]
    assert btc.close is not None
    assert [c.conditional for c in sol.cancels] == [False]
    assert sol.close is None


def test_spot_sells_balances_without_reduce_only() -> None:
    plan = plan_flatten(
        snapshot(("BTCUSDT", "0.2")), activation_id="a", venue="spot", kind=MarketKind.SPOT
    )
    (only,) = plan.symbols
    assert only.close is not None
    assert (only.close.side, only.close.reduce_only) == ("sell", False)


def test_a_negative_spot_balance_is_never_bought() -> None:
    plan = plan_flatten(
        snapshot(("BTCUSDT", "-1")), activation_id="a", venue="spot", kind=MarketKind.SPOT
    )
    assert plan.empty


def test_the_same_observation_gives_the_same_id_and_a_changed_one_a_new_id() -> None:
    first = close_order_id("act", "venue", "BTCUSDT", D("0.50"))
    assert first == close_order_id("act", "venue", "BTCUSDT", D("0.5"))
    assert len(first) == 36
    assert first.startswith("ess-")
    assert first != close_order_id("act", "venue", "BTCUSDT", D("0.4"))
    assert first != close_order_id("act", "venue", "BTCUSDT", D("-0.5"))
    assert first != close_order_id("other", "venue", "BTCUSDT", D("0.5"))
    assert first != close_order_id("act", "venue", "BTCUSDT", D("0.5"), attempt=1)


def test_attempts_move_the_id_of_an_unchanged_position_only() -> None:
    snap = snapshot(("BTCUSDT", "0.5"), ("ETHUSDT", "1"))
    plain = plan_flatten(snap, activation_id="a", venue="v", kind=MarketKind.FUTURES)
    bumped = plan_flatten(
        snap,
        activation_id="a",
        venue="v",
        kind=MarketKind.FUTURES,
        attempts={("BTCUSDT", "0.5"): 1},
    )
    ids = {p.symbol: p.close.client_order_id for p in plain.symbols if p.close}
    bumped_ids = {p.symbol: p.close.client_order_id for p in bumped.symbols if p.close}
    assert bumped_ids["ETHUSDT"] == ids["ETHUSDT"]
    assert bumped_ids["BTCUSDT"] == close_order_id("a", "v", "BTCUSDT", D("0.5"), 1)


def test_quantity_text_is_canonical() -> None:
    assert quantity_text(D("0.500")) == "0.5"
    assert quantity_text(D("-0")) == "0"
    assert quantity_text(D("1E+2")) == "100"
