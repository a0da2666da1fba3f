"""The spot flatten policy (pure): ``sell`` plans the sells, ``cancel_only`` plans only the
cancels and keeps every balance as never-flat exposure named with its reason."""

from __future__ import annotations

from decimal import Decimal

from ess.core.flatten import (
    MarketKind,
    OrderView,
    PositionView,
    VenueSnapshot,
    apply_spot_policy,
    plan_flatten,
)

D = Decimal

SNAPSHOT = VenueSnapshot(
    positions=(PositionView("BTCUSDT", D("0.2")), PositionView("ETHUSDT", D("1.5"))),
    orders=(OrderView("BTCUSDT", "1"), OrderView("SOLUSDT", "2")),
    dust=(PositionView("DOGEUSDT", D("0.4")),),
    stranded=(PositionView("XYZ", D(3)),),
)


def plan(snapshot: VenueSnapshot) -> dict[str, tuple[int, bool]]:
    """``{symbol: (cancels, has a sell)}`` of the spot plan for ``snapshot``."""
    planned = plan_flatten(snapshot, activation_id="a1", venue="spot", kind=MarketKind.SPOT)
    return {item.symbol: (len(item.cancels), bool(item.closes)) for item in planned.symbols}


def test_sell_is_todays_behaviour() -> None:
    assert apply_spot_policy(SNAPSHOT, "sell") is SNAPSHOT
    assert plan(SNAPSHOT) == {"BTCUSDT": (1, True), "ETHUSDT": (0, True), "SOLUSDT": (1, False)}


def test_cancel_only_cancels_every_order_and_sells_nothing() -> None:
    kept = apply_spot_policy(SNAPSHOT, "cancel_only")

    assert plan(kept) == {"BTCUSDT": (1, False), "SOLUSDT": (1, False)}
    assert kept.orders == SNAPSHOT.orders


def test_cancel_only_reports_every_unsold_balance_as_stranded_with_the_policy_named() -> None:
    kept = apply_spot_policy(SNAPSHOT, "cancel_only")

    assert kept.positions == ()
    assert kept.stranded == (
        PositionView("XYZ", D(3)),  # no market: stranded under any policy, named as before
        PositionView("BTCUSDT (not sold: spot_policy=cancel_only)", D("0.2")),
        PositionView("ETHUSDT (not sold: spot_policy=cancel_only)", D("1.5")),
    )
    assert kept.dust == SNAPSHOT.dust  # too small to sell under either policy


def test_cancel_only_never_reads_flat_while_a_balance_is_held() -> None:
    """Even once every order is gone: a held balance is exposure left in place, not flat."""
    balances_only = VenueSnapshot(positions=(PositionView("BTCUSDT", D("0.2")),))

    kept = apply_spot_policy(balances_only, "cancel_only")

    assert not kept.flat
    assert plan(kept) == {}  # nothing any order could do: the engine reports it as stalled


def test_cancel_only_without_balances_is_flat() -> None:
    """Only dust, the quote and kept assets left (none of them positions): flat as before."""
    dust_only = VenueSnapshot(dust=(PositionView("BTCUSDT", D("0.000001")),))

    assert apply_spot_policy(dust_only, "cancel_only").flat
