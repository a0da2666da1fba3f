"""System rules: component health (topic ``health``, key ``component``) and latency (topic
``latency``, key ``component|operation``).

Every health rule skips :attr:`DetectionConfig.ignore_components` (by default ``ess``: ESS
beats CRITICAL while ACTIVE and must not trip on itself), except
``ess_policy_store_failing``, which exists to read ESS's own beats.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from datetime import datetime
from math import ceil

from ess.rules._common import (
    EMPTY_LATCH,
    LatchState,
    StateCodec,
    compound_key,
    detection,
    fire_latch,
    fmt_sec,
    from_us,
    latch_gate,
    sec_to_us,
    to_us,
)
from ess.rules.base import Context, Coordinates, Detection
from ess.rules.config import DetectionConfig
from ess.rules.silence import SilenceRule
from schemas import HealthBeat, HealthStatus, LatencySample, ReasonCode


class _HealthRule(StateCodec):
    topic = "health"

    def key(self, record: HealthBeat) -> str:
        """The component."""
        return record.component

    def tick(
        self, state: object, key: str, watermark: datetime, ctx: Context
    ) -> tuple[object, None]:
        """Not a silence rule."""
        return state, None


class SystemCriticalRule(_HealthRule):
    """``system_critical``: a beat with status ``CRITICAL`` (per component and epoch).

    Whatever the beat's ``lifecycle``: a component that reports CRITICAL while announcing
    maintenance or retirement still trips. The lifecycle only says whether silence is
    expected; the status says whether the component is fine, and a bot going down *because*
    it is broken (positions it cannot manage) is exactly what must stop trading. Announcing
    retirement must never be a way to mute a critical report. The check-run rules below
    read ``checks`` the same way."""

    name = "system_critical"
    reason = ReasonCode.SYSTEM_CRITICAL
    state_type = LatchState

    def __init__(self, config: DetectionConfig) -> None:
        self._ignore = config.ignore_components

    def initial(self) -> LatchState:
        """Armed, nothing seen."""
        return EMPTY_LATCH

    def step(
        self, state: LatchState, record: HealthBeat, coords: Coordinates, ctx: Context
    ) -> tuple[LatchState, Detection | None]:
        """Fire on the first CRITICAL beat of the component."""
        if record.component in self._ignore:
            return state, None
        new, armed = latch_gate(state, to_us(record.ts), ctx)
        if not armed or record.status is not HealthStatus.CRITICAL:
            return new, None
        checks = ", ".join(f"{k}={v}" for k, v in sorted(record.checks.items()))
        detail = f"component {record.component} reported CRITICAL" + (
            f" ({checks})" if checks else ""
        )
        return fire_latch(new), detection(
            self.name, self.reason, record.component, detail, (coords, record.ts)
        )


# --------------------------------------------------------------------------- check runs

#: Bad beats kept per run (see :class:`CheckRunState`).
MAX_RUN_BEATS = 128


@dataclass(frozen=True, slots=True)
class CheckRunState:
    """The current bad run of one check of one component.

    ``cleared`` is the newest beat time whose check was good; ``bad`` the sorted times of
    bad beats after it. The run lasts from ``bad[0]`` to ``bad[-1]``: a late good beat
    inside it cuts it to the bad beats after that (which is why the times are kept, not only
    the first). Beats without the check say nothing about it and are skipped. At most
    :data:`MAX_RUN_BEATS` are kept (the first and the newest): beats more often than
    ``MAX_RUN_BEATS`` per limit only lose precision for a late good beat.
    """

    epoch: int = 0
    fired: bool = False
    newest: int | None = None
    floor: int | None = None
    cleared: int | None = None
    bad: tuple[int, ...] = ()


_EMPTY_RUN = CheckRunState()


class CheckRunRule(_HealthRule):
    """Fire when ``checks[check] == bad_value`` continuously for longer than the limit, from
    the first such beat (event time); any other value of the check clears the run."""

    state_type = CheckRunState

    def __init__(
        self,
        *,
        name: str,
        reason: ReasonCode,
        check: str,
        bad_value: str,
        limit_sec: float,
        ignore: frozenset[str],
    ) -> None:
        self.name = name
        self.reason = reason
        self._check = check
        self._bad_value = bad_value
        self._limit = sec_to_us(limit_sec)
        self._ignore = ignore

    def initial(self) -> CheckRunState:
        """No run."""
        return _EMPTY_RUN

    def step(
        self, state: CheckRunState, record: HealthBeat, coords: Coordinates, ctx: Context
    ) -> tuple[CheckRunState, Detection | None]:
        """Extend or clear the run; fire when it lasts longer than the limit."""
        value = record.checks.get(self._check)
        if value is None or record.component in self._ignore:
            return state, None
        moment = to_us(record.ts)
        epoch, fired, newest, floor = state.epoch, state.fired, state.newest, state.floor
        cleared, bad = state.cleared, state.bad
        if ctx.epoch > epoch:
            # Re-anchor: a run continuing after the reset counts from its first beat after it.
            epoch, fired, floor, cleared, bad = ctx.epoch, False, newest, None, ()
        if newest is None or moment > newest:
            newest = moment
        if fired or (floor is not None and moment <= floor):
            if (epoch, newest) == (state.epoch, state.newest):
                return state, None
            return CheckRunState(epoch, fired, newest, floor, cleared, bad), None
        if value != self._bad_value:
            if cleared is None or moment > cleared:
                cleared = moment
                bad = bad[bisect_right(bad, moment) :]
            return CheckRunState(epoch, False, newest, floor, cleared, bad), None
        if (cleared is not None and moment <= cleared) or (
            (index := bisect_left(bad, moment)) < len(bad) and bad[index] == moment
        ):
            # Before the newest good beat (not part of the run), or a duplicate.
            return CheckRunState(epoch, False, newest, floor, cleared, bad), None
        bad = (*bad[:index], moment, *bad[index:])
        duration = bad[-1] - bad[0]
        if duration <= self._limit:
            if len(bad) > MAX_RUN_BEATS:
                bad = (bad[0], *bad[-(MAX_RUN_BEATS - 1) :])
            return CheckRunState(epoch, False, newest, floor, cleared, bad), None
        detail = (
            f"component {record.component} reported {self._check}={self._bad_value} "
            f"continuously from {from_us(bad[0]).isoformat()} to {from_us(bad[-1]).isoformat()} "
            f"({fmt_sec(duration)}): limit {fmt_sec(self._limit)}"
        )
        return CheckRunState(epoch, True, newest, floor, cleared, ()), detection(
            self.name, self.reason, record.component, detail, (coords, record.ts)
        )


def exchange_disconnected(config: DetectionConfig) -> CheckRunRule:
    """``checks["exchange"] == "down"`` continuously for longer than ``exchange_down_sec``."""
    return CheckRunRule(
        name="exchange_disconnected",
        reason=ReasonCode.EXCHANGE_DISCONNECTED,
        check="exchange",
        bad_value="down",
        limit_sec=config.exchange_down_sec,
        ignore=config.ignore_components,
    )


def policy_store_stale(config: DetectionConfig) -> CheckRunRule:
    """``checks["policy_store"] == "stale"`` continuously for longer than the limit."""
    return CheckRunRule(
        name="policy_store_stale",
        reason=ReasonCode.POLICY_STORE_STALE,
        check="policy_store",
        bad_value="stale",
        limit_sec=config.policy_store_stale_sec,
        ignore=config.ignore_components,
    )


def ess_policy_store_failing(config: DetectionConfig) -> CheckRunRule:
    """ESS's own projector cannot write the ``emergency_stop`` record
    (``checks["policy_store_writes"] == "failing"``) for longer than
    ``ess_policy_store_failing_sec``: ``policy_store_stale``.

    The one health rule that reads ESS's own beats (no component is ignored; only ESS's
    projector reports this check). Gates already fail closed on a record nobody refreshes;
    the trip makes the executor flatten too, since bots that cannot trade cannot manage
    their positions either. Not vouching (writer gone, untrusted log) is not a failing store
    and does not trip: that would stop trading on every processor restart."""
    return CheckRunRule(
        name="ess_policy_store_failing",
        reason=ReasonCode.POLICY_STORE_STALE,
        check="policy_store_writes",
        bad_value="failing",
        limit_sec=config.ess_policy_store_failing_sec,
        ignore=frozenset(),
    )


def heartbeat_lost(config: DetectionConfig) -> SilenceRule:
    """No beat from a seen or required component for longer than ``heartbeat_timeout_sec``,
    unless its newest beat announced the silence: ``retired`` (not watched; a required
    component cannot retire itself) or ``maintenance`` (watched again from its end, at most
    ``max_maintenance_sec`` after the beat). See :mod:`ess.rules.silence`."""
    return SilenceRule(
        name="heartbeat_lost",
        topic="health",
        reason=ReasonCode.HEARTBEAT_LOST,
        what="health beat",
        key_field="component",
        timeout_sec=config.heartbeat_timeout_sec,
        required=config.required_components,
        ignore=config.ignore_components,
        never_seen_topic=config.health_topic,
        max_maintenance_sec=config.max_maintenance_sec,
    )


# --------------------------------------------------------------------------- latency


@dataclass(frozen=True, slots=True)
class LatencyState:
    """Recent samples of one component/operation, sorted by event time (aligned tuples).

    Consecutive mode keeps the newest ``latency_consecutive`` samples; quantile mode the
    samples of the last ``latency_window_sec`` (at most ``latency_max_samples``).
    """

    epoch: int = 0
    fired: bool = False
    newest: int | None = None
    floor: int | None = None
    times: tuple[int, ...] = ()
    latencies: tuple[float, ...] = ()
    ids: tuple[str, ...] = ()


_EMPTY_LATENCY = LatencyState()


class LatencySpikeRule(StateCodec):
    """``latency_spike``: latency above ``latency_threshold_ms``, sustained.

    * consecutive mode (default): the newest ``latency_consecutive`` samples by event time
      are all above the threshold;
    * quantile mode (``latency_quantile`` set): the nearest-rank quantile of the samples in
      the last ``latency_window_sec`` is above the threshold, once there are at least
      ``latency_min_samples``. With ``n`` samples that is "more than ``n - ceil(q n)``
      samples above", so no sort is needed per record.
    """

    name = "latency_spike"
    topic = "latency"
    reason = ReasonCode.LATENCY_SPIKE
    state_type = LatencyState

    def __init__(self, config: DetectionConfig) -> None:
        self._threshold = config.latency_threshold_ms
        self._quantile = config.latency_quantile
        if self._quantile is None:
            self._keep = config.latency_consecutive
        else:
            self._keep = config.latency_max_samples
        self._min = config.latency_min_samples
        self._span = sec_to_us(config.latency_window_sec)

    def key(self, record: LatencySample) -> str:
        """``component|operation``."""
        return compound_key(record.component, record.operation)

    def initial(self) -> LatencyState:
        """No samples."""
        return _EMPTY_LATENCY

    def step(
        self, state: LatencyState, record: LatencySample, coords: Coordinates, ctx: Context
    ) -> tuple[LatencyState, Detection | None]:
        """Insert the sample; judge the consecutive run or the quantile."""
        moment = to_us(record.ts)
        epoch, fired, newest, floor = state.epoch, state.fired, state.newest, state.floor
        times, lats, ids = state.times, state.latencies, state.ids
        if ctx.epoch > epoch:
            epoch, fired, floor, times, lats, ids = ctx.epoch, False, newest, (), (), ()
        if newest is None or moment > newest:
            newest = moment
        index = bisect_right(times, moment)
        quantile = self._quantile
        too_old = (
            len(times) >= self._keep and index == 0
            if quantile is None
            else moment < newest - self._span
        )
        if fired or (floor is not None and moment <= floor) or too_old or record.event_id in ids:
            if (epoch, newest) == (state.epoch, state.newest):
                return state, None
            return LatencyState(epoch, fired, newest, floor, times, lats, ids), None
        times = (*times[:index], moment, *times[index:])
        lats = (*lats[:index], record.latency_ms, *lats[index:])
        ids = (*ids[:index], record.event_id, *ids[index:])
        cut = len(times) - self._keep
        if quantile is not None:
            cut = max(cut, bisect_left(times, newest - self._span))
        if cut > 0:
            times, lats, ids = times[cut:], lats[cut:], ids[cut:]
        threshold = self._threshold
        name = f"{record.component} {record.operation}"
        if quantile is None:
            if len(lats) < self._keep or min(lats) <= threshold:
                return LatencyState(epoch, False, newest, floor, times, lats, ids), None
            shown = ", ".join(f"{v:g}" for v in lats[-10:])
            detail = (
                f"latency of {name} above {threshold:g} ms on {len(lats)} consecutive "
                f"samples (last ones: {shown} ms; from {from_us(times[0]).isoformat()})"
            )
        else:
            count = len(lats)
            above = sum(1 for v in lats if v > threshold)
            rank = ceil(quantile * count - 1e-9)
            if count < self._min or above <= count - rank:
                return LatencyState(epoch, False, newest, floor, times, lats, ids), None
            value = sorted(lats)[rank - 1]
            detail = (
                f"p{quantile * 100:g} latency of {name} is {value:g} ms over {count} samples "
                f"in the last {fmt_sec(self._span)} ({above} above): threshold {threshold:g} ms"
            )
        key = self.key(record)
        return LatencyState(epoch, True, newest, floor), detection(
            self.name, self.reason, key, detail, (coords, record.ts)
        )

    def tick(
        self, state: LatencyState, key: str, watermark: datetime, ctx: Context
    ) -> tuple[LatencyState, Detection | None]:
        """Not a silence rule."""
        return state, None
