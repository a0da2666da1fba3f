"""What a detection worker reports about itself (:mod:`ess.roles.detect.observe`), without a broker:
lag and its age, stalls and the wedged bound, counts by rule and dead-letter reason, and the
``/status``, ``/metrics`` and ``/healthz`` pages served from them. Times are explicit (a
hand-driven monotonic clock); Faust's consumer is a small fake exposing the three accessors
the observer reads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest
from loguru import logger

from ess.core.deadletter import build_dead_letter
from ess.detection.detector import RawRecord, TopicDetector
from ess.observability.status import StatusServer, serve_status
from ess.roles.command.metrics import ProcessorMetrics
from ess.roles.detect.epoch import StaticEpoch
from ess.roles.detect.metrics import DetectMetrics
from ess.roles.detect.observe import (
    DEAD_LETTER_REASONS,
    REBALANCE_GRACE_FACTOR,
    DetectObserver,
    LagTracker,
    dead_letter_reason,
)
from ess.roles.detect.settings import DetectorSettings
from ess.rules.base import Context
from ess.rules.catalog import RECORD_TYPE, build_rules
from ess.rules.config import DetectionConfig
from ess.settings import EssSettings
from schemas import topic_registry
from streams.app import create_app

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
NOW = T0 + timedelta(minutes=5)
CONFIG = DetectionConfig(
    account=DetectionConfig().account.model_copy(update={"trade_rate_max": 3}),
)
RULES = build_rules(CONFIG)
FILLS = "ess.fills"
OBSERVE = "ess.roles.detect.observe"


def fills_detector(**kwargs: Any) -> TopicDetector:
    return TopicDetector(
        logical="fills",
        topic=FILLS,
        record_type=RECORD_TYPE["fills"],
        rules=kwargs.pop("rules", RULES["fills"]),
        key_field="account_id",
        **kwargs,
    )


def fill(account: str, seconds: float) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"{account}-{seconds}",
            "account_id": account,
            "venue": "v",
            "symbol": "BTC",
            "side": "buy",
            "qty": 1.0,
            "price": 10.0,
            "realized_pnl": 0.0,
            "is_stop_loss": False,
            "order_id": "o",
            "ts": (T0 + timedelta(seconds=seconds)).isoformat(),
        }
    )


class Clock:
    """Monotonic seconds, moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


@dataclass
class FakeConsumer:
    """The accessors of Faust's consumer the observer reads."""

    assigned: set[TP] = field(default_factory=set)
    ends: dict[TP, int] = field(default_factory=dict)
    _committed_offset: dict[TP, int | None] = field(default_factory=dict)

    def assignment(self) -> set[TP]:
        return set(self.assigned)

    def highwater(self, tp: TP) -> int | None:
        assert tp in self.assigned, "Partition is not assigned"
        return self.ends.get(tp)


@dataclass
class FakeApp:
    _consumer: FakeConsumer | None = field(default_factory=FakeConsumer)
    rebalancing: bool = False
    in_recovery: bool = False


def observer_on(app: FakeApp, clock: Clock, wedged_after: float = 30.0) -> DetectObserver:
    observer = DetectObserver("ess-detect-u", wedged_after=wedged_after, clock=clock)
    observer.attach(app, [FILLS])
    return observer


# --------------------------------------------------------------------------- lag tracker


def test_lag_is_records_behind_and_its_age_is_the_oldest_waiting_records() -> None:
    tracker = LagTracker()
    tracker.assign([(FILLS, 0)], now=0.0)
    tracker.end(FILLS, 0, 5, now=1.0)  # offsets 0-4 on the broker at t=1
    [p] = tracker.view(now=3.0)
    assert (p.lag, p.lag_seconds) == (5, 2.0)

    tracker.processed(FILLS, 0, 3, now=4.0)
    tracker.end(FILLS, 0, 8, now=6.0)  # offsets 5-7 arrive at t=6
    [p] = tracker.view(now=6.5)
    assert (p.next_offset, p.highwater, p.lag) == (3, 8, 5)
    assert p.lag_seconds == 5.5  # offsets 3-4 have waited since t=1

    tracker.processed(FILLS, 0, 5, now=7.0)
    [p] = tracker.view(now=7.0)
    assert (p.lag, p.lag_seconds) == (3, 1.0)  # now the oldest arrived at t=6

    tracker.processed(FILLS, 0, 8, now=8.0)
    [p] = tracker.view(now=20.0)
    assert (p.lag, p.lag_seconds, p.stalled_seconds) == (0, 0.0, 0.0)


def test_a_partition_stalls_only_with_a_backlog_and_no_progress() -> None:
    tracker = LagTracker()
    tracker.assign([(FILLS, 0)], now=0.0)
    tracker.end(FILLS, 0, 0, now=0.0)
    [p] = tracker.view(now=500.0)
    assert (p.lag, p.stalled_seconds) == (0, 0.0)  # idle for long: not a stall

    tracker.end(FILLS, 0, 10, now=500.0)  # records arrive after a long quiet spell
    [p] = tracker.view(now=510.0)
    assert p.stalled_seconds == 10.0  # counted from their arrival, not from the last batch

    tracker.processed(FILLS, 0, 4, now=512.0)  # busy, still behind: progress
    [p] = tracker.view(now=515.0)
    assert (p.lag, p.stalled_seconds) == (6, 3.0)
    assert p.lag_seconds == 15.0

    tracker.hold(now=530.0)  # a rebalance: not counted as a stall
    [p] = tracker.view(now=531.0)
    assert p.stalled_seconds == 1.0


def test_the_committed_offset_stands_in_until_a_batch_is_done() -> None:
    tracker = LagTracker()
    tracker.assign([(FILLS, 1)], now=0.0)
    tracker.committed(FILLS, 1, None)
    tracker.end(FILLS, 1, 12, now=0.0)
    [p] = tracker.view(now=0.0)
    assert p.lag == 12  # nothing committed: from the start
    tracker.committed(FILLS, 1, 10)
    [p] = tracker.view(now=0.0)
    assert p.lag == 2
    tracker.committed(FILLS, 1, 4)  # never goes back
    [p] = tracker.view(now=0.0)
    assert p.next_offset == 10


def test_close_marks_merge_and_never_make_the_backlog_look_younger() -> None:
    tracker = LagTracker()
    tracker.assign([(FILLS, 0)], now=0.0)
    tracker.end(FILLS, 0, 1, now=0.0)
    tracker.end(FILLS, 0, 2, now=0.05)  # merged into the first mark
    tracker.processed(FILLS, 0, 1, now=0.06)
    [p] = tracker.view(now=1.0)
    assert p.lag == 1
    assert p.lag_seconds >= 1.0 - 0.05  # offset 1 arrived at 0.05; never reported younger


def test_unknown_end_and_revoked_partitions() -> None:
    tracker = LagTracker()
    tracker.assign([(FILLS, 0), (FILLS, 1)], now=0.0)
    [p0, p1] = tracker.view(now=1.0)
    assert (p0.lag, p1.lag) == (None, None)  # no fetch answered yet
    tracker.assign([(FILLS, 1)], now=2.0)
    tracker.processed(FILLS, 0, 5, now=2.0)  # a batch of a revoked partition: ignored
    tracker.end(FILLS, 0, 9, now=2.0)
    assert [(p.topic, p.partition) for p in tracker.view(now=2.0)] == [(FILLS, 1)]


# --------------------------------------------------------------------------- dead letters


def test_dead_letter_reasons_name_why_the_detector_refused_a_record() -> None:
    @dataclass
    class Broken:
        name: str = "broken"
        topic: str = "fills"

        def key(self, record: Any) -> str:
            raise RuntimeError("bug")

    skewed = fills_detector(max_future_skew=timedelta(minutes=5))
    written = int(T0.timestamp() * 1000)
    out = skewed.process(
        [
            RawRecord(0, 0, b"\xff{garbage"),
            RawRecord(0, 1, fill("a", 86_400), timestamp_ms=written),
        ],
        {},
        Context(),
        NOW,
    )
    broken = fills_detector(rules=[Broken()])
    failed = broken.process([RawRecord(0, 2, fill("a", 0))], {}, Context(), NOW)
    letters = [*out.dead_letters, *failed.dead_letters]
    assert [dead_letter_reason(letter) for letter in letters] == [
        "invalid",
        "future_ts",
        "rule_failed",
    ]
    codec = build_dead_letter(
        source_topic=FILLS, partition=0, offset=3, raw=b"", error="decode failed: X", ts=NOW
    )
    assert dead_letter_reason(codec) == "decode_failed"
    assert set(DEAD_LETTER_REASONS) == {
        "invalid",
        "future_ts",
        "rule_failed",
        "decode_failed",
        "key_mismatch",
    }
    # The detector names the reason in the letter itself (extension), with the same label.
    assert [letter.reason for letter in letters] == ["invalid", "future_ts", "rule_failed"]


# --------------------------------------------------------------------------- observer


def test_counts_by_topic_rule_reason_and_dead_letter_reason() -> None:
    clock = Clock()
    observer = observer_on(FakeApp(), clock)
    reg = observer.metrics.registry
    det = fills_detector()
    batch = [RawRecord(0, offset, fill("a", offset)) for offset in range(4)]
    batch.append(RawRecord(0, 4, b"not json"))
    out = det.process(batch, {}, Context(), NOW)
    [trip] = out.detections  # the fourth fill in a minute > 3

    fetched_at = clock.now
    clock.now += 0.02
    observer.trips_sent(out.detections, fetched_at)
    observer.batch_done(det, len(batch), {TP(FILLS, 0): [0, 1, 2, 3, 4]}, fetched_at, out)
    observer.batch_done(det, 1, {TP(FILLS, 0): [5]}, fetched_at, None)  # a failed batch

    def sample(name: str, **labels: str) -> float | None:
        return reg.get_sample_value(name, labels)

    assert sample("ess_detect_records_total", topic=FILLS) == 6
    for rule in det.rules:
        assert sample("ess_detect_rule_records_total", rule=rule.name) == 4
    assert sample("ess_detect_trips_total", rule=trip.rule, reason=trip.reason.value) == 1
    assert sample("ess_detect_dead_letters_total", topic=FILLS, reason="invalid") == 1
    assert sample("ess_detect_batch_errors_total", topic=FILLS) == 1
    assert sample("ess_detect_fetch_to_trip_seconds_count") == 1
    assert sample("ess_detect_fetch_to_trip_seconds_sum") == pytest.approx(0.02)
    assert sample("ess_detect_batch_seconds_count", topic=FILLS) == 2

    status = observer.status().as_json()
    assert status["records"] == {FILLS: 6}
    assert status["trips"] == {trip.rule: 1}
    assert status["dead_letters"] == {"invalid": 1}
    assert status["batch_errors"] == 1


def test_key_mismatches_are_counted_by_action_and_logged_once_per_batch() -> None:
    observer = observer_on(FakeApp(), Clock())
    reg = observer.metrics.registry

    def mismatches(action: str) -> float | None:
        return reg.get_sample_value(
            "ess_input_key_mismatch_total", {"topic": FILLS, "action": action}
        )

    assert (mismatches("dead_lettered"), mismatches("accepted")) == (0, 0)  # declared
    split = fills_detector(partitions=4)
    single = fills_detector(partitions=1)
    refused = split.process(
        [RawRecord(1, offset, fill("a", offset), key=None) for offset in range(3)],
        {},
        Context(),
        NOW,
    )
    accepted = single.process([RawRecord(0, 0, fill("a", 0), key=b"x")], {}, Context(), NOW)
    lines: list[Any] = []
    sink = logger.add(lambda message: lines.append(message.record), level="INFO")
    # `import ess` silences ESS's logs (a library's convention); a worker enables them.
    logger.enable(OBSERVE)
    try:
        observer.batch_done(split, 3, {TP(FILLS, 1): [0, 1, 2]}, 100.0, refused)
        observer.batch_done(single, 1, {TP(FILLS, 0): [0]}, 100.0, accepted)
    finally:
        logger.disable(OBSERVE)
        logger.remove(sink)
    assert (mismatches("dead_lettered"), mismatches("accepted")) == (3, 1)
    assert (
        reg.get_sample_value(
            "ess_detect_dead_letters_total", {"topic": FILLS, "reason": "key_mismatch"}
        )
        == 3
    )
    assert observer.status().dead_letters == {"key_mismatch": 3}
    reports = [line for line in lines if "Kafka key" in line["message"]]
    assert [(r["level"].name, r["extra"]["action"], r["extra"]["count"]) for r in reports] == [
        ("ERROR", "dead_lettered", 3),
        ("WARNING", "accepted", 1),
    ]
    first = reports[0]["extra"]
    assert (first["partition"], first["offset"], first["expected"], first["got"]) == (
        1,
        0,
        "a",
        "no key",
    )


def test_silence_trips_count_without_a_latency() -> None:
    observer = observer_on(FakeApp(), Clock())
    det = fills_detector()
    out = det.process(
        [RawRecord(0, offset, fill("b", offset)) for offset in range(4)], {}, Context(), NOW
    )
    observer.trips_sent(out.detections, None)
    reg = observer.metrics.registry
    assert reg.get_sample_value("ess_detect_fetch_to_trip_seconds_count") == 0
    assert sum(observer.status().trips.values()) == 1


def test_healthz_fails_only_when_started_and_wedged() -> None:
    clock = Clock()
    app = FakeApp()
    consumer = app._consumer
    assert consumer is not None
    tp = TP(FILLS, 2)
    consumer.assigned = {tp, TP("ess-detect-u-detect-fills-changelog", 2)}
    consumer.ends[tp] = 0
    observer = observer_on(app, clock, wedged_after=30.0)

    status = observer.status()
    assert not status.healthy
    assert status.checks["started"] == "starting"
    observer.ready = True
    status = observer.status()
    assert status.healthy
    assert [(p.topic, p.partition) for p in status.partitions] == [(FILLS, 2)]  # inputs only

    consumer.ends[tp] = 7  # records arrive, and nothing processes them
    observer.sample()
    clock.now += 30.0
    assert observer.status().healthy  # at the bound, not past it
    clock.now += 1.0
    status = observer.status()
    assert not status.healthy
    assert status.checks["progress"].startswith(f"wedged: {FILLS}[2] 7 records waiting")
    reg = observer.metrics.registry
    assert reg.get_sample_value("ess_detect_wedged") == 1
    labels = {"topic": FILLS, "partition": "2"}
    assert reg.get_sample_value("ess_detect_consumer_lag_records", labels) == 7
    assert reg.get_sample_value("ess_detect_consumer_lag_seconds", labels) == 31.0

    det = fills_detector()
    observer.batch_done(det, 2, {tp: [0, 1]}, clock.now, det.process([], {}, Context(), NOW))
    status = observer.status()
    assert status.healthy  # progress, though still behind
    assert status.partitions[0].lag == 5
    assert reg.get_sample_value("ess_detect_wedged") == 0


def test_a_rebalance_is_not_a_wedge() -> None:
    clock = Clock()
    app = FakeApp()
    consumer = app._consumer
    assert consumer is not None
    tp = TP(FILLS, 0)
    consumer.assigned = {tp}
    consumer.ends[tp] = 3
    observer = observer_on(app, clock, wedged_after=5.0)
    observer.ready = True
    observer.sample()
    app.in_recovery = True  # a long table recovery
    for _ in range(10):
        clock.now += 2.0
        status = observer.status()
        assert status.healthy
        assert status.checks["rebalancing"] == "yes"
    app.in_recovery = False
    clock.now += 6.0
    assert not observer.status().healthy  # recovered, and still nothing processed


def test_a_rebalance_that_never_ends_is_a_wedge() -> None:
    clock = Clock()
    app = FakeApp(rebalancing=True)
    consumer = app._consumer
    assert consumer is not None
    tp = TP(FILLS, 0)
    consumer.assigned = {tp}
    consumer.ends[tp] = 3
    observer = observer_on(app, clock, wedged_after=5.0)
    observer.ready = True
    grace = 5.0 * REBALANCE_GRACE_FACTOR
    while clock.now < 100.0 + grace:
        assert observer.status().healthy
        clock.now += 2.0
    clock.now += 6.0
    status = observer.status()
    assert not status.healthy
    assert status.checks["rebalancing"] == "yes"


def test_nothing_is_read_before_the_app_has_a_consumer() -> None:
    observer = observer_on(FakeApp(_consumer=None), Clock())
    status = observer.status()
    assert status.partitions == ()
    assert observer.metrics.registry.get_sample_value("ess_detect_ready") == 0


def test_create_app_attaches_an_observer_that_follows_the_input_topics() -> None:
    registry = topic_registry("unit", input_partitions=2)
    settings = DetectorSettings(
        bootstrap="localhost:1", registry=registry, app_id="ess-detect-u", wedged_after_sec=7.0
    )
    app = create_app(settings, outputs=_NoOutputs(), epoch=StaticEpoch())
    observer: DetectObserver = app.ess_observer
    assert observer.wedged_after == 7.0
    assert observer.status().partitions == ()  # not started: the consumer is not touched
    assert app._consumer is None


class _NoOutputs:
    async def send_trips(self, commands: Any) -> None:  # pragma: no cover - not started
        raise AssertionError

    async def send_dead_letters(self, letters: Any) -> None:  # pragma: no cover
        raise AssertionError


# --------------------------------------------------------------------------- HTTP


@pytest.fixture
async def served() -> AsyncIterator[tuple[StatusServer, DetectObserver, FakeApp, Clock]]:
    clock = Clock()
    app = FakeApp()
    observer = observer_on(app, clock, wedged_after=10.0)
    server = await serve_status(observer, observer.metrics.registry, port=0)
    try:
        yield server, observer, app, clock
    finally:
        await server.stop()


async def test_status_metrics_and_healthz_over_http(
    served: tuple[StatusServer, DetectObserver, FakeApp, Clock],
) -> None:
    server, observer, app, clock = served
    consumer = app._consumer
    assert consumer is not None
    tp = TP(FILLS, 1)
    consumer.assigned = {tp}
    consumer.ends[tp] = 0
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/healthz") as response:
            assert response.status == 503  # not started yet
            assert (await response.json())["checks"]["started"] == "starting"
        observer.ready = True
        async with http.get(f"{server.url}/healthz") as response:
            assert response.status == 200

        consumer.ends[tp] = 4
        observer.sample()
        clock.now += 11.0
        async with http.get(f"{server.url}/healthz") as response:
            assert response.status == 503
            body = await response.json()
            assert body["healthy"] is False
            assert body["checks"]["progress"].startswith("wedged:")
        async with http.get(f"{server.url}/status") as response:
            status = await response.json()
        assert status["role"] == "detect"
        assert status["app_id"] == "ess-detect-u"
        assert status["wedged_after_sec"] == 10.0
        assert status["lag_records"] == 4
        [partition] = status["partitions"]
        assert partition == {
            "topic": FILLS,
            "partition": 1,
            "next_offset": None,
            "highwater": 4,
            "lag": 4,
            "lag_seconds": 11.0,
            "stalled_seconds": 11.0,
        }
        async with http.get(f"{server.url}/metrics") as response:
            text = await response.text()
        assert f'ess_detect_consumer_lag_records{{partition="1",topic="{FILLS}"}} 4.0' in text
        assert "ess_detect_wedged 1.0" in text
        assert "ess_detect_ready 1.0" in text


# --------------------------------------------------------------------------- settings


def test_status_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = topic_registry("unit")
    direct = DetectorSettings(bootstrap="b:1", registry=registry)
    assert direct.status_port == -1  # built directly (tests, tools): no server
    monkeypatch.delenv("ESS_DETECT_STATUS_PORT", raising=False)
    monkeypatch.delenv("ESS_DETECT_WEDGED_AFTER_SEC", raising=False)
    monkeypatch.delenv("ESS_STATUS_HOST", raising=False)
    default = DetectorSettings.from_settings(EssSettings(_env_file=None), bootstrap="b:1")
    assert (default.status_port, default.wedged_after_sec) == (9467, 30.0)
    monkeypatch.setenv("ESS_DETECT_STATUS_PORT", "-1")
    monkeypatch.setenv("ESS_DETECT_WEDGED_AFTER_SEC", "12.5")
    monkeypatch.setenv("ESS_STATUS_HOST", "0.0.0.0")
    custom = DetectorSettings.from_settings(EssSettings(_env_file=None), bootstrap="b:1")
    assert (custom.status_host, custom.status_port, custom.wedged_after_sec) == (
        "0.0.0.0",
        -1,
        12.5,
    )


# --------------------------------------------------------------------------- command role


def test_command_processor_liveness_and_lag_metrics() -> None:
    metrics = ProcessorMetrics()
    reg = metrics.registry
    assert reg.get_sample_value("ess_command_processor_beats_total") == 0
    metrics.beat_published(NOW)
    metrics.beat_published(NOW + timedelta(seconds=1))
    metrics.beat_failed()
    metrics.observe_lag(3)
    assert reg.get_sample_value("ess_command_processor_beats_total") == 2
    assert reg.get_sample_value("ess_command_processor_beat_errors_total") == 1
    assert (
        reg.get_sample_value("ess_command_processor_last_beat_timestamp_seconds")
        == (NOW + timedelta(seconds=1)).timestamp()
    )
    assert reg.get_sample_value("ess_command_processor_lag_records") == 3
    metrics.observe_lag(-1)  # a high watermark read before a seek settled
    assert reg.get_sample_value("ess_command_processor_lag_records") == 0


def test_detect_metrics_live_in_their_own_registry() -> None:
    first, second = DetectMetrics(), DetectMetrics()
    first.batch_done(FILLS, 3, 0.01)
    assert second.registry.get_sample_value("ess_detect_records_total", {"topic": FILLS}) is None
