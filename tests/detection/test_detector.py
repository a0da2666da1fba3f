"""The pure batch core of the detection worker (:mod:`ess.detection.detector`), the epoch follower's
fold and the app factory's wiring: everything that needs no broker."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from ess.core.reader import seal_entry
from ess.detection import build_detectors
from ess.detection.detector import RawRecord, Slot, TopicDetector, split_table_key, table_key
from ess.detection.keys import key_matches, show_key
from ess.roles.detect.epoch import EpochFollower, StaticEpoch
from ess.roles.detect.settings import DetectorSettings
from ess.rules.base import Context, Coordinates
from ess.rules.catalog import RECORD_TYPE, Detector, build_rules
from ess.rules.config import DetectionConfig
from schemas import ActivatedEntry, ReasonCode, ResetEntry, encode, topic_registry
from streams.app import create_app
from tests.statelog_support import PROCESSOR, LogBuilder, trust

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
NOW = T0 + timedelta(minutes=5)
CONFIG = DetectionConfig(
    account=DetectionConfig().account.model_copy(update={"trade_rate_max": 3}),
    data_feed_stale_sec=10,
    required_symbols=frozenset({"REQ"}),
)
RULES = build_rules(CONFIG)


def detector(logical: str, topic: str | None = None) -> TopicDetector:
    return TopicDetector(
        logical=logical,
        topic=topic or f"ess.{logical}",
        record_type=RECORD_TYPE[logical],
        rules=RULES[logical],
        key_field={"fills": "account_id", "market": "symbol", "health": "component"}[logical],
    )


def fill(account: str, seconds: float, event_id: str | None = None) -> bytes:
    return orjson.dumps(
        {
            "event_id": event_id or f"{account}-{seconds}",
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


def tick(symbol: str, seconds: float, bid: float = 9.0) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"{symbol}-{seconds}",
            "symbol": symbol,
            "bid": bid,
            "ask": 11.0,
            "last": 10.0,
            "ts": (T0 + timedelta(seconds=seconds)).isoformat(),
        }
    )


def records(*values: bytes, partition: int = 0) -> list[RawRecord]:
    return [RawRecord(partition, offset, value) for offset, value in enumerate(values)]


def apply(table: dict[str, Any], out: Any) -> None:
    for write in out.writes:
        table[write.key] = write.slot


def test_table_key_round_trips_keys_that_contain_the_separator() -> None:
    assert split_table_key(table_key("trade_rate", "a|b")) == ("trade_rate", "a|b")


def test_batch_when_split_anywhere_then_same_detections_as_one_record_at_a_time() -> None:
    values = [fill(f"acct-{i % 3}", i) for i in range(15)]
    raws = records(*values)
    reference = Detector(CONFIG)
    expected = []
    for raw in raws:
        record = RECORD_TYPE["fills"].model_validate_json(raw.value or b"")
        expected += reference.process(
            "fills", record, Coordinates("ess.fills", 0, raw.offset), Context()
        )
    for cut in (1, 2, 7, 15):
        det, table, found = detector("fills"), {}, []
        for start in range(0, len(raws), cut):
            out = det.process(raws[start : start + cut], table, Context(), NOW)
            apply(table, out)
            found += out.detections
        assert found == expected, cut
    assert [d.rule for d in expected] == ["trade_rate"] * 3


def test_duplicates_and_reordering_in_one_batch_do_not_double_count() -> None:
    det = detector("fills")
    twice = [fill("a", s, f"id-{s}") for s in (2, 1, 0)] * 2  # 3 distinct, each twice
    out = det.process(records(*twice), {}, Context(), NOW)
    assert out.detections == []
    table = {write.key: write.slot for write in out.writes}
    out = det.process(records(fill("a", 3, "id-3")), table, Context(), NOW)
    assert [d.reason for d in out.detections] == [ReasonCode.TRADE_RATE]


def test_state_is_read_once_per_key_and_written_once_per_changed_key() -> None:
    det = detector("fills")
    out = det.process(records(fill("a", 0), fill("a", 1), fill("b", 0)), {}, Context(), NOW)
    keys = [write.key for write in out.writes]
    # One write per changed (rule, key), however many records touched it; stop_loss_cluster
    # saw no stop-loss fill, so its state never changed and is not written.
    assert sorted(keys) == [
        "position_size|a|BTC",
        "position_size|b|BTC",
        "trade_rate|a",
        "trade_rate|b",
    ]
    assert all(isinstance(write.slot, Slot) for write in out.writes)
    assert out.valid == 3


def test_state_in_changelog_form_is_loaded_like_a_live_slot() -> None:
    det = detector("fills")
    out = det.process(records(*(fill("a", s) for s in range(3))), {}, Context(), NOW)
    stored = {write.key: write.value for write in out.writes}  # what recovery puts back
    stored = orjson.loads(orjson.dumps(stored))
    out2 = det.process(records(fill("a", 3)), stored, Context(), NOW)
    assert [d.reason for d in out2.detections] == [ReasonCode.TRADE_RATE]


def test_invalid_records_are_dead_lettered_with_coordinates_and_counted_as_corrupt() -> None:
    det = detector("market")
    bad_utf8 = b"\xff\xfe"
    out = det.process(
        [
            RawRecord(2, 10, bad_utf8),
            RawRecord(2, 11, tick("S", 0).replace(b'"bid":9.0', b'"bid":"x"')),
            RawRecord(2, 12, None),
        ],
        {},
        Context(),
        NOW,
    )
    letters = {letter.offset: letter for letter in out.dead_letters}
    assert sorted(letters) == [10, 11, 12]
    assert letters[10].raw_encoding == "base64"
    assert base64.b64decode(letters[10].raw) == bad_utf8
    assert letters[11].source_topic == "ess.market"
    assert letters[11].partition == 2
    assert "bid" in letters[11].error
    assert letters[11].ts == NOW
    # The readable one counts against its symbol in data_feed_corrupt's window.
    assert [w.key for w in out.writes] == [table_key("data_feed_corrupt", "S")]


def test_an_event_time_far_after_the_kafka_timestamp_is_dead_lettered() -> None:
    det = TopicDetector(
        logical="fills",
        topic="ess.fills",
        record_type=RECORD_TYPE["fills"],
        rules=RULES["fills"],
        key_field="account_id",
        max_future_skew=timedelta(minutes=5),
    )
    written = int((T0 + timedelta(seconds=10)).timestamp() * 1000)
    batch = [
        RawRecord(0, 0, fill("a", 0), timestamp_ms=written),  # a little before: fine
        RawRecord(0, 1, fill("a", 290), timestamp_ms=written),  # within the skew: fine
        RawRecord(0, 2, fill("a", 86_400), timestamp_ms=written),  # a day ahead: refused
        RawRecord(0, 3, fill("a", 86_400)),  # no Kafka timestamp: nothing to compare with
    ]

    out = det.process(batch, {}, Context(), NOW)

    assert out.valid == 3
    [letter] = out.dead_letters
    assert letter.offset == 2
    assert "after the record's Kafka timestamp" in letter.error


def test_a_failing_rule_dead_letters_the_record_and_other_rules_still_run() -> None:
    @dataclass
    class Broken:
        name: str = "broken"
        topic: str = "fills"

        def key(self, record: Any) -> str:
            raise RuntimeError("bug")

    rules = [Broken(), *RULES["fills"]]
    det = TopicDetector(
        logical="fills",
        topic="ess.fills",
        record_type=RECORD_TYPE["fills"],
        rules=rules,  # type: ignore[list-item]
        key_field="account_id",
    )
    out = det.process(records(*(fill("a", s) for s in range(4))), {}, Context(), NOW)
    assert [d.reason for d in out.detections] == [ReasonCode.TRADE_RATE]
    assert len(out.dead_letters) == 4
    assert "rule broken failed" in out.dead_letters[0].error


def test_silence_tick_only_for_owned_partitions_and_required_keys_fire_once() -> None:
    det = detector("market")
    table: dict[str, Any] = {}
    apply(table, det.process(records(tick("A", 0)), table, Context(), NOW))
    apply(table, det.process(records(tick("B", 0), partition=1), table, Context(), NOW))
    later = T0 + timedelta(seconds=60)

    def run(owned: set[int]) -> list[str]:
        out = det.tick(
            table,
            owns=owned.__contains__,
            partition_of=lambda key: 3,
            watermark=later,
            ctx=Context(),
        )
        apply(table, out)
        return sorted(d.key for d in out.detections)

    assert run({0}) == ["A"]
    assert run({0, 1}) == ["B"]  # A is latched now
    assert run({0, 1, 3}) == []  # REQ: its silence clock starts at this tick
    assert (
        det.tick(
            table,
            owns=lambda p: True,
            partition_of=lambda key: 3,
            watermark=later + timedelta(seconds=11),
            ctx=Context(),
        )
        .detections[0]
        .key
        == "REQ"
    )


def test_silence_trigger_points_at_the_last_record_with_deterministic_event_time() -> None:
    det = detector("health")
    table: dict[str, Any] = {}
    beat = orjson.dumps(
        {"event_id": "b", "component": "svc", "status": "HEALTHY", "ts": T0.isoformat()}
    )
    apply(table, det.process([RawRecord(1, 41, beat)], table, Context(), NOW))
    out = det.tick(
        table, owns=lambda p: True, partition_of=lambda k: 0, watermark=NOW, ctx=Context()
    )
    (hit,) = out.detections
    assert hit.reason is ReasonCode.HEARTBEAT_LOST
    assert (hit.trigger.topic, hit.trigger.partition, hit.trigger.offset) == ("ess.health", 1, 41)
    assert hit.trigger.event_ts == T0 + timedelta(seconds=CONFIG.heartbeat_timeout_sec)


@dataclass
class _Rec:
    offset: int
    value: bytes | None


def test_epoch_follower_counts_resets_and_keeps_the_epoch_on_a_corrupt_log() -> None:
    log = LogBuilder()
    log.trip(ts=T0, source="operator:x")
    log.reset(ts=T0 + timedelta(hours=1))
    follower = EpochFollower("unused:9092", trust())
    follower._apply([_Rec(record.offset, record.value) for record in log.records()])
    assert follower.context == Context(1, T0 + timedelta(hours=1))

    # Records that do not verify never move the epoch: garbage, and an unsigned reset.
    log.trip(ts=T0 + timedelta(hours=2))
    forged = ResetEntry(
        seq=3, command_id="c2", ts=T0 + timedelta(hours=3), operators=("alice",), nonce="n"
    )
    follower._apply([_Rec(2, log.values[2]), _Rec(3, b"not json"), _Rec(4, encode(forged))])
    assert follower.epoch == 1
    assert follower._reader.folded.state.active

    # An authentic entry out of sequence: the log cannot be folded; the epoch is kept, and
    # nothing after it (not even a genuine reset) is applied.
    gap = ActivatedEntry(
        seq=7, command_id="c7", ts=T0, reason=ReasonCode.MANUAL, source="operator:x"
    )
    _, gap_value = seal_entry(gap, PROCESSOR, scope="ess.state", prev=log.head)
    follower._apply([_Rec(5, gap_value)])
    log.reset(ts=T0 + timedelta(hours=4))
    follower._apply([_Rec(6, log.values[-1])])
    assert follower.epoch == 1


def test_static_epoch_is_a_fixed_context() -> None:
    assert StaticEpoch(3).context == Context(3, None)


class _NoOutputs:
    async def send_trips(self, commands: Any) -> None:  # pragma: no cover - not started
        raise AssertionError

    async def send_dead_letters(self, letters: Any) -> None:  # pragma: no cover
        raise AssertionError


def test_create_app_wires_one_agent_and_one_copartitioned_table_per_input_topic() -> None:
    registry = topic_registry("unit", input_partitions=3)
    settings = DetectorSettings(bootstrap="localhost:1", registry=registry, app_id="ess-detect-u")
    app = create_app(settings, outputs=_NoOutputs(), epoch=StaticEpoch())
    assert app.conf.id == "ess-detect-u"
    assert app.conf.broker_session_timeout == 6.0
    assert app.ess_fetch_max_wait_ms == settings.fetch_max_wait_ms
    tables = {name: table.partitions for name, table in app.tables.items()}
    assert tables == {f"detect-{spec.logical}": spec.partitions for spec in registry.inputs()}
    assert tables["detect-security"] == 1
    assert len(app.agents) == len(registry.inputs())
    # The silence rules' topics registered a timer.
    assert [lane.detector.logical for lane in app.ess_lanes if lane.detector.ticks] == [
        "health",
        "market",
    ]
    # The thresholds point never-seen silence triggers at the physical topics.
    assert settings.detection.market_topic == "unit.market"


def test_build_detectors_covers_every_input_topic_with_the_catalog_rules() -> None:
    settings = DetectorSettings(bootstrap="x:1", registry=topic_registry("p"))
    detectors = {d.logical: d for d in build_detectors(settings.detection, settings.registry)}
    assert set(detectors) == set(RECORD_TYPE)
    assert detectors["order_errors"].topic == "p.order-errors"
    assert [r.name for r in detectors["pnl"].rules] == [
        "daily_loss",
        "equity_drawdown",
        "flash_crash",
    ]


def test_rule_names_with_the_separator_are_refused() -> None:
    @dataclass
    class Odd:
        name: str = "a|b"

    with pytest.raises(ValueError, match="must not contain"):
        TopicDetector(
            logical="fills",
            topic="t",
            record_type=RECORD_TYPE["fills"],
            rules=[Odd()],  # type: ignore[list-item]
            key_field="account_id",
        )


# --------------------------------------------------------------------------- Kafka keys


def test_key_matches_only_the_utf8_of_the_key_field() -> None:
    assert key_matches("acct-1", b"acct-1")
    assert key_matches("ü", "ü".encode())
    assert not key_matches("acct-1", None)  # produced without a key
    assert not key_matches("acct-1", b"")
    assert not key_matches("acct-1", b"ACCT-1")
    assert not key_matches("acct-1", b"acct-1 ")
    assert not key_matches("acct-1", b'"acct-1"')  # a JSON-serialized key is another key
    assert show_key(None) == "no key"
    assert show_key(b"acct") == "'acct'"
    assert show_key(b"\xff\x00") == "b'\\xff\\x00'"
    assert len(show_key(b"k" * 1000)) == 64


def keyed(partition: int, offset: int, value: bytes, key: bytes | None) -> RawRecord:
    return RawRecord(partition, offset, value, key=key)


def test_a_mis_keyed_record_is_dead_lettered_and_never_folded() -> None:
    det = TopicDetector(
        logical="fills",
        topic="ess.fills",
        record_type=RECORD_TYPE["fills"],
        rules=RULES["fills"],
        key_field="account_id",
        partitions=4,
    )
    out = det.process(
        [
            keyed(0, 0, fill("a", 0), b"a"),
            keyed(1, 0, fill("a", 1), None),
            keyed(2, 0, fill("a", 2), b"venue-x"),
            keyed(0, 1, fill("a", 3), b"a"),
        ],
        {},
        Context(),
        NOW,
    )
    # Only the two correctly keyed fills counted (four would trip trade_rate > 3).
    assert out.detections == []
    assert out.valid == 2
    assert {write.partition for write in out.writes} == {0}
    [unkeyed, wrong] = out.dead_letters
    assert (unkeyed.partition, unkeyed.offset, unkeyed.reason) == (1, 0, "key_mismatch")
    assert unkeyed.error.startswith(
        "key_mismatch: expected Kafka key 'a' (the record's account_id)"
    )
    assert "got no key" in unkeyed.error
    assert "got 'venue-x'" in wrong.error
    assert [(m.partition, m.expected, m.got, m.action) for m in out.key_mismatches] == [
        (1, "a", None, "dead_lettered"),
        (2, "a", b"venue-x", "dead_lettered"),
    ]


def test_a_record_of_unknown_key_is_not_checked() -> None:
    # Fuzzers and benchmarks feed values only; the live shell always passes the key.
    det = detector("fills")
    out = det.process(records(*(fill("a", s) for s in range(4))), {}, Context(), NOW)
    assert [d.reason for d in out.detections] == [ReasonCode.TRADE_RATE]
    assert out.key_mismatches == []
    assert out.dead_letters == []


def test_a_single_partition_topic_processes_a_mis_keyed_record_and_reports_it() -> None:
    det = TopicDetector(
        logical="fills",
        topic="ess.fills",
        record_type=RECORD_TYPE["fills"],
        rules=RULES["fills"],
        key_field="account_id",
        partitions=1,
    )
    assert not det.refuses_mismatched_keys
    out = det.process(
        [keyed(0, offset, fill("a", offset), None) for offset in range(4)], {}, Context(), NOW
    )
    assert [d.reason for d in out.detections] == [ReasonCode.TRADE_RATE]
    assert out.dead_letters == []
    assert [m.action for m in out.key_mismatches] == ["accepted"] * 4


def test_an_invalid_mis_keyed_record_is_not_counted_for_its_key() -> None:
    # data_feed_corrupt counts invalid ticks per symbol: a mis-keyed one would be counted in
    # a state on the wrong partition.
    det = TopicDetector(
        logical="market",
        topic="ess.market",
        record_type=RECORD_TYPE["market"],
        rules=RULES["market"],
        key_field="symbol",
        partitions=4,
    )
    broken = tick("S", 0).replace(b'"bid":9.0', b'"bid":"x"')
    out = det.process(
        [keyed(3, 0, broken, b"other"), keyed(0, 0, broken, b"S")], {}, Context(), NOW
    )
    [mis, fine] = out.dead_letters
    assert (mis.reason, fine.reason) == ("invalid", "invalid")
    assert "; also key_mismatch: expected Kafka key 'S'" in mis.error
    assert "key_mismatch" not in fine.error
    assert [(m.partition, m.got) for m in out.key_mismatches] == [(3, b"other")]
    # Only the correctly keyed invalid tick was attributed to S, on its own partition.
    assert {(w.key, w.partition) for w in out.writes} == {("data_feed_corrupt|S", 0)}


def test_build_detectors_check_every_input_topic_by_its_registry_key() -> None:
    registry = topic_registry("p")
    for det in build_detectors(DetectionConfig(), registry):
        spec = getattr(registry, det.logical)
        assert det.key_field == spec.key
        assert det.key_field in det.record_type.model_fields, det.logical
        assert det.partitions == spec.partitions
        assert det.refuses_mismatched_keys is (spec.partitions > 1)
