"""Property tests of the rules: serialization of every state, and order independence only
where it truly holds.

Order independence, precisely: for the rules below, *whether* a key fires over a set of
records does not depend on the order they arrive in, nor on duplicates, as long as every
record is within the out-of-order tolerance (``max_lateness_sec``) of the newest one. *Which*
record triggers does depend on order (it is the one whose arrival completed the condition),
so triggers are not compared. It holds for the count windows (trade_rate, stop_loss_cluster,
order_rejects, execution_errors), flash_crash (below its thinning cap), daily_loss within one
day once the day's first tick has arrived, and position_size for a monotone (buys-only)
position.
It does *not* hold, by design, for equity_drawdown (peak in arrival order), latency_spike
consecutive mode ("the newest K by event time" changes as late samples arrive),
data_feed_corrupt (each tick is classified once, on arrival) and the silence rules.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ess.rules.base import Context, Coordinates
from ess.rules.catalog import Detector
from ess.rules.config import DetectionConfig
from tests.rules.support import (
    at,
    beat,
    fill,
    latency,
    order,
    order_error,
    pnl,
    security,
    tick,
)

# Everything within an hour of T0, tolerance two hours: every record is "on time".
LOOSE = DetectionConfig(max_lateness_sec=7200, latency_quantile=None)
SMALL = settings(max_examples=150, deadline=None)

times = st.integers(min_value=0, max_value=3600)
accounts = st.sampled_from(["a", "b"])


def _fired(config: DetectionConfig, topic: str, records: list[Any]) -> set[tuple[str, str]]:
    detector = Detector(config)
    found: set[tuple[str, str]] = set()
    for offset, record in enumerate(records):
        for hit in detector.process(topic, record, Coordinates(topic, 0, offset), Context()):
            found.add((hit.rule, hit.key))
    return found


@st.composite
def fill_sets(draw: st.DrawFn) -> list[Any]:
    size = draw(st.integers(min_value=1, max_value=25))
    return [
        fill(
            float(draw(st.integers(min_value=0, max_value=900))),
            account=draw(accounts),
            stop_loss=draw(st.booleans()),
            side=draw(st.sampled_from(["buy", "sell"])),
            qty=float(draw(st.integers(min_value=1, max_value=4))),
            event_id=f"f{i}",
        )
        for i in range(size)
    ]


FILL_CONFIG = DetectionConfig(
    max_lateness_sec=7200,
    account={
        "trade_rate_max": 6,
        "trade_rate_window_sec": 120,
        "stop_loss_max": 2,
        "stop_loss_window_sec": 300,
        "max_position_qty": 12,
        "max_position_notional": None,
    },
)


@SMALL
@given(records=fill_sets(), data=st.data())
def test_fill_rules_fire_regardless_of_order_and_duplicates(
    records: list[Any], data: st.DataObject
) -> None:
    """trade_rate, stop_loss_cluster and position_size fire for the same keys.

    position_size only with buys: a net position is a path, and "ever above the limit" is
    order-free only when the path is monotone (with sells, an order that puts the sells
    first never exceeds a limit that buys-first does)."""
    buys = [r.model_copy(update={"side": "buy"}) for r in records]
    shuffled = data.draw(st.permutations(buys))
    duplicated = shuffled + data.draw(st.lists(st.sampled_from(buys), max_size=10))
    assert _fired(FILL_CONFIG, "fills", buys) == _fired(FILL_CONFIG, "fills", duplicated)


@SMALL
@given(records=fill_sets())
def test_count_windows_match_a_brute_force_oracle(records: list[Any]) -> None:
    fired = _fired(FILL_CONFIG, "fills", records)
    for account in ("a", "b"):
        mine = [r for r in records if r.account_id == account]
        for rule, span, limit, keep in (
            ("trade_rate", 120, 6, lambda r: True),
            ("stop_loss_cluster", 300, 2, lambda r: r.is_stop_loss),
        ):
            moments = sorted(r.ts.timestamp() for r in mine if keep(r))
            dense = any(sum(1 for u in moments if t <= u <= t + span) > limit for t in moments)
            assert ((rule, account) in fired) is dense


@SMALL
@given(
    points=st.lists(
        st.tuples(times, st.integers(min_value=900, max_value=1100)), min_size=1, max_size=20
    ),
    data=st.data(),
)
def test_flash_crash_and_daily_loss_are_order_free(
    points: list[tuple[int, int]], data: st.DataObject
) -> None:
    """flash_crash: fully. daily_loss: once the day's first tick has arrived (a tick that
    arrives before it provisionally anchors the day, and a loss judged against that anchor
    stands: a kill switch cannot wait for late data), so the first tick is fed first."""
    config = DetectionConfig(
        max_lateness_sec=7200,
        enabled_rules=frozenset({"flash_crash", "daily_loss"}),
        account={"flash_crash": 0.1, "daily_loss": 0.12},
    )
    # Distinct times for daily_loss: two "first ticks of the day" at the same instant are
    # ambiguous, and the rule then keeps whichever arrived first.
    unique = dict(points)
    records = [pnl(float(e), float(t), event_id=f"p{t}") for t, e in sorted(unique.items())]
    shuffled = [records[0], *data.draw(st.permutations(records[1:]))]
    duplicated = shuffled + data.draw(st.lists(st.sampled_from(records), max_size=5))
    in_order = _fired(config, "pnl", records)
    assert in_order == _fired(config, "pnl", duplicated)
    # And the oracles.
    series = sorted(unique.items())
    crash = any(
        t1 <= t2 <= t1 + 60 and (e1 - e2) / e1 >= 0.1 for t1, e1 in series for t2, e2 in series
    )
    assert (("flash_crash", "acct") in in_order) is crash
    start = series[0][1]
    assert (("daily_loss", "acct") in in_order) is any(
        (start - e) / start >= 0.12 for _, e in series
    )


@SMALL
@given(
    points=st.lists(
        st.tuples(times, st.integers(min_value=900, max_value=1100)), min_size=1, max_size=20
    ),
    data=st.data(),
)
def test_flash_crash_is_order_free_in_any_permutation(
    points: list[tuple[int, int]], data: st.DataObject
) -> None:
    config = DetectionConfig(
        max_lateness_sec=7200,
        enabled_rules=frozenset({"flash_crash"}),
        account={"flash_crash": 0.1},
    )
    # Equal times allowed here: a same-instant pair counts in either arrival order.
    records = [pnl(float(e), float(t), event_id=f"p{i}") for i, (t, e) in enumerate(points)]
    shuffled = data.draw(st.permutations(records))
    crash = any(
        t1 <= t2 <= t1 + 60 and (e1 - e2) / e1 >= 0.1 for t1, e1 in points for t2, e2 in points
    )
    assert bool(_fired(config, "pnl", shuffled)) is crash


@SMALL
@given(
    kinds=st.lists(st.sampled_from(["reject", "error", "timeout"]), min_size=1, max_size=30),
    moments=st.lists(times, min_size=30, max_size=30),
    data=st.data(),
)
def test_order_error_windows_are_order_free(
    kinds: list[str], moments: list[int], data: st.DataObject
) -> None:
    config = DetectionConfig(
        max_lateness_sec=7200,
        account={"order_rejects_max": 3, "execution_errors_max": 2},
    )
    records = [
        order_error(float(m), kind=k, event_id=f"o{i}")
        for i, (k, m) in enumerate(zip(kinds, moments, strict=False))
    ]
    shuffled = data.draw(st.permutations(records))
    assert _fired(config, "order_errors", records) == _fired(config, "order_errors", shuffled)


# --------------------------------------------------------------------------- serialization


def _any_record(draw: st.DrawFn, topic: str, i: int) -> Any:
    t = float(draw(st.integers(min_value=0, max_value=200)))
    eid = f"{topic}-{draw(st.integers(min_value=0, max_value=i))}"  # repeats are duplicates
    if topic == "pnl":
        return pnl(float(draw(st.integers(min_value=-10, max_value=1000))), t, event_id=eid)
    if topic == "fills":
        return fill(
            t,
            stop_loss=draw(st.booleans()),
            side=draw(st.sampled_from(["buy", "sell"])),
            qty=float(draw(st.integers(min_value=1, max_value=1000))),
            event_id=eid,
        )
    if topic == "orders":
        return order(t, qty=float(draw(st.integers(min_value=1, max_value=10**7))), event_id=eid)
    if topic == "order_errors":
        return order_error(
            t, kind=draw(st.sampled_from(["reject", "error", "timeout"])), event_id=eid
        )
    if topic == "health":
        checks = draw(
            st.dictionaries(
                st.sampled_from(["exchange", "policy_store"]),
                st.sampled_from(["up", "down", "ok", "stale"]),
            )
        )
        status = draw(st.sampled_from(["HEALTHY", "DEGRADED", "CRITICAL"]))
        lifecycle = draw(st.sampled_from(["running", "maintenance", "retired"]))
        until = (
            t + draw(st.integers(min_value=1, max_value=300))
            if lifecycle == "maintenance"
            else None
        )
        return beat(t, status=status, event_id=eid, lifecycle=lifecycle, until=until, **checks)
    if topic == "latency":
        return latency(float(draw(st.integers(min_value=0, max_value=9000))), t, event_id=eid)
    if topic == "market":
        bid = float(draw(st.integers(min_value=-1, max_value=120)))
        return tick(t, bid=bid, ask=bid + 0.5, last=bid + 0.25, event_id=eid)
    return security(
        draw(st.sampled_from(["api_key_invalid", "api_key_changed", "unauthorized_access"])),
        t,
        event_id=eid,
    )


@st.composite
def streams(draw: st.DrawFn) -> list[tuple[str, Any, int]]:
    size = draw(st.integers(min_value=1, max_value=40))
    out = []
    epoch = 0
    for i in range(size):
        topic = draw(
            st.sampled_from(
                [
                    "pnl",
                    "fills",
                    "orders",
                    "order_errors",
                    "health",
                    "latency",
                    "market",
                    "security",
                ]
            )
        )
        if draw(st.integers(min_value=0, max_value=15)) == 0:
            epoch += 1
        out.append((topic, _any_record(draw, topic, i), epoch))
    return out


@settings(max_examples=100, deadline=None)
@given(
    stream=streams(),
    quantile=st.sampled_from([None, 0.9]),
    watermarks=st.lists(st.integers(min_value=0, max_value=400), max_size=4),
)
def test_every_state_round_trips_through_json(
    stream: list[tuple[str, Any, int]], quantile: float | None, watermarks: list[int]
) -> None:
    config = DetectionConfig(
        latency_quantile=quantile,
        latency_min_samples=3,
        corrupt_min_ticks=3,
        required_components=frozenset({"risk"}),
        account={"trade_rate_max": 3, "max_position_qty": 500},
    )
    detector = Detector(config)
    rules = {rule.name: rule for rs in detector.rules.values() for rule in rs}
    for offset, (topic, record, epoch) in enumerate(stream):
        ctx = Context(epoch)
        detector.process(topic, record, Coordinates(topic, 0, offset), ctx)
        if offset % 7 == 0 and watermarks:
            detector.tick(at(watermarks[offset % len(watermarks)]), ctx)
        if topic == "market" and offset % 3 == 0:
            detector.invalid("market", "BTC/USDT", Coordinates(topic, 1, offset), at(offset), ctx)
    for name, table in detector.states.items():
        for state in table.values():
            text = json.dumps(rules[name].dump(state), allow_nan=False)
            assert rules[name].load(json.loads(text)) == state
