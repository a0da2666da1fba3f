"""The recording format: exact round trip, a readable manifest, and clear errors."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from ess.audit.recording import (
    MANIFEST,
    RecordedMessage,
    RecordingError,
    RecordingWriter,
    load_manifest,
    read_topic,
    select_topics,
)
from schemas import topic_registry

REGISTRY = topic_registry("audit")


def _write(directory: Path, messages: list[RecordedMessage]) -> None:
    writer = RecordingWriter(directory, REGISTRY.prefix)
    fills = writer.topic(REGISTRY.fills)
    writer.topic(REGISTRY.state)
    for m in messages:
        fills.write(m.partition, m.offset, m.timestamp, m.key, m.value)
    writer.close(datetime(2026, 11, 23, tzinfo=UTC))


MESSAGES = [
    RecordedMessage("audit.fills", 1, 5, 1_000, b"acct-1", b'{"a": "\\u00e9t\xc3\xa9"}'),
    RecordedMessage("audit.fills", 0, 0, 1_001, None, b"\xff\xfe not utf-8"),
    RecordedMessage("audit.fills", 1, 6, None, b"\x80key", None),
    RecordedMessage("audit.fills", 0, 1, 999, b"acct-2", b""),
]


@pytest.mark.parametrize("binary", [False, True], ids=["utf-8 only", "with base64"])
def test_records_round_trip_exactly_by_partition_in_offset_order(
    tmp_path: Path, binary: bool
) -> None:
    messages = MESSAGES if binary else [MESSAGES[0], MESSAGES[3]]
    _write(tmp_path, messages)

    manifest = load_manifest(tmp_path)
    [entry] = [e for e in manifest.topics if e.logical == "fills"]
    partitions = read_topic(tmp_path, entry)

    assert sorted(partitions) == [0, 1, 2, 3]
    got = [m for p in sorted(partitions) for m in partitions[p].messages()]
    assert got == sorted(messages, key=lambda m: (m.partition, m.offset))
    assert entry.records == len(messages)
    assert entry.max_timestamp == max(m.timestamp for m in messages if m.timestamp is not None)


def test_manifest_lists_prefix_topics_and_offset_ranges(tmp_path: Path) -> None:
    _write(tmp_path, MESSAGES)

    data = orjson.loads((tmp_path / MANIFEST).read_bytes())

    assert (data["format"], data["version"], data["prefix"]) == ("ess-recording", 1, "audit")
    assert [t["name"] for t in data["topics"]] == ["audit.fills", "audit.state"]
    fills = data["topics"][0]
    assert fills["start_offsets"] == {"0": 0, "1": 5, "2": 0, "3": 0}
    assert fills["end_offsets"] == {"0": 2, "1": 7, "2": 0, "3": 0}
    assert data["topics"][1]["records"] == 0
    # Values that are UTF-8 stay readable text; others are base64, and the line says so.
    lines = (tmp_path / "audit.fills.jsonl").read_bytes().splitlines()
    rows = [orjson.loads(line) for line in lines]
    assert rows[0]["value"] == '{"a": "\\u00e9té"}'
    assert rows[1]["value_encoding"] == "base64"
    assert rows[2]["key_encoding"] == "base64"
    assert rows[2]["value"] is None


def test_writer_refuses_a_directory_that_holds_a_recording(tmp_path: Path) -> None:
    _write(tmp_path, [])

    with pytest.raises(RecordingError, match="already holds a recording"):
        RecordingWriter(tmp_path, "ess")


def test_bad_directories_and_manifests_are_named(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="does not exist"):
        load_manifest(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(RecordingError, match="is not a directory"):
        load_manifest(tmp_path / "file")
    with pytest.raises(RecordingError, match=r"no manifest\.json"):
        load_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(RecordingError, match="not JSON"):
        load_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text('{"format": "ess-recording", "version": 2}')
    with pytest.raises(RecordingError, match="version 2; this ESS reads version 1"):
        load_manifest(tmp_path)


def test_a_damaged_topic_file_names_the_line_or_record(tmp_path: Path) -> None:
    _write(tmp_path, MESSAGES)
    manifest = load_manifest(tmp_path)
    entry = manifest.topics[0]
    path = tmp_path / entry.file
    lines = path.read_bytes().splitlines()

    path.write_bytes(b"\n".join([lines[0], b"{broken", *lines[1:]]))
    with pytest.raises(RecordingError, match=r"audit.fills.jsonl line 2: not JSON"):
        read_topic(tmp_path, entry)

    # Offsets of one partition must increase: a shuffled file is not a faithful copy.
    path.write_bytes(b"\n".join([lines[2], lines[0]]))
    with pytest.raises(RecordingError, match="record 2: offset 5 is not after the previous"):
        read_topic(tmp_path, entry)

    path.write_bytes(lines[0].replace(b'"partition":1', b'"partition":9'))
    with pytest.raises(RecordingError, match="partition 9 is not one of the topic's 4"):
        read_topic(tmp_path, entry)

    path.unlink()
    with pytest.raises(RecordingError, match="is missing"):
        read_topic(tmp_path, entry)


def test_topic_selection_accepts_logical_and_full_names_and_always_adds_the_state_log() -> None:
    assert select_topics(REGISTRY) == [*REGISTRY.inputs(), REGISTRY.state]
    chosen = select_topics(REGISTRY, ["order-errors", "audit.pnl", "fills", "fills"])
    assert [spec.logical for spec in chosen] == ["order_errors", "pnl", "fills", "state"]
    with pytest.raises(RecordingError, match="unknown topic 'trades'"):
        select_topics(REGISTRY, ["trades"])
