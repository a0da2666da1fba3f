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
    closes = {p.symbol: p.closes for p in plan.symbols}
    (btc,), (eth,) = closes["BTCUSDT"], closes["ETHUSDT"]
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
    assert len(btc.closes) == 1
    assert [c.conditional for c in sol.cancels] == [False]
    assert sol.closes == ()


def test_spot_sells_balances_without_reduce_only() -> None:
    plan = plan_flatten(
        snapshot(("BTCUSDT", "0.2")), activation_id="a", venue="spot", kind=MarketKind.SPOT
    )
    (only,) = plan.symbols
    (close,) = only.closes
    assert (close.side, close.reduce_only, close.position_side) == ("sell", False, None)


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


def test_one_way_close_ids_never_change_between_releases() -> None:
    """A restarted executor of a newer release must derive the ids its predecessor sent."""
    assert close_order_id("act", "venue", "BTCUSDT", D("0.5")) == (
        "ess-47a6fe62d84c56e8b52ee64b23b39619"
    )


def hedged(*positions: tuple[str, str, str]) -> VenueSnapshot:
    return VenueSnapshot(
        tuple(PositionView(s, D(q), side) for s, q, side in positions)  # type: ignore[arg-type]
    )


def test_hedge_mode_closes_each_side_with_its_own_position_side_and_id() -> None:
    plan = plan_flatten(
        hedged(("BTCUSDT", "-0.3", "short"), ("BTCUSDT", "0.5", "long")),
        activation_id="a",
        venue="v",
        kind=MarketKind.FUTURES,
    )
    (btc,) = plan.symbols
    long_close, short_close = btc.closes
    assert (long_close.side, long_close.amount, long_close.position_side) == (
        "sell",
        D("0.5"),
        "long",
    )
    assert (short_close.side, short_close.amount, short_close.position_side) == (
        "buy",
        D("0.3"),
        "short",
    )
    assert long_close.reduce_only
    assert short_close.reduce_only
    assert long_close.client_order_id == close_order_id(
        "a", "v", "BTCUSDT", D("0.5"), position_side="long"
    )
    assert long_close.client_order_id != close_order_id("a", "v", "BTCUSDT", D("0.5"))
    assert plan.closes == 2


def test_a_flat_side_of_a_hedged_symbol_gets_no_close() -> None:
    plan = plan_flatten(
        hedged(("ETHUSDT", "0", "long"), ("ETHUSDT", "-2", "short")),
        activation_id="a",
        venue="v",
        kind=MarketKind.FUTURES,
    )
    (eth,) = plan.symbols
    assert [(c.position_side, c.side) for c in eth.closes] == [("short", "buy")]


def test_a_hedge_position_is_named_with_its_side_in_reports() -> None:
    assert PositionView("BTCUSDT", D("1"), "long").label == "BTCUSDT long"
    assert PositionView("BTCUSDT", D("1")).label == "BTCUSDT"


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
    ids = {c.symbol: c.client_order_id for p in plain.symbols for c in p.closes}
    bumped_ids = {c.symbol: c.client_order_id for p in bumped.symbols for c in p.closes}
    assert bumped_ids["ETHUSDT"] == ids["ETHUSDT"]
    assert bumped_ids["BTCUSDT"] == close_order_id("a", "v", "BTCUSDT", D("0.5"), 1)


def test_quantity_text_is_canonical() -> None:
    assert quantity_text(D("0.500")) == "0.5"
    assert quantity_text(D("-0")) == "0"
    assert quantity_text(D("1E+2")) == "100"
