"""Recordings: ESS topics copied to plain files, and :func:`record`, which makes them.

Format (``ess-recording``, version 1): one directory holding

* ``manifest.json``: ``format``, ``version``, ``prefix`` (the topic prefix recorded),
  ``recorded_at`` (ISO-8601 UTC, when recording started) and ``topics``, one entry per topic
  with ``name`` (``ess.fills``), ``logical`` (``fills``), ``role``, ``partitions``, ``file``,
  ``records``, per partition ``start_offsets`` (first offset recorded) and ``end_offsets``
  (the offset after the last one: the snapshot's end), and ``max_timestamp`` (the largest
  record timestamp, ms; ``null`` for an empty topic). The manifest is written last, so a
  directory with a manifest holds a complete recording.
* one JSON-lines file per topic (``ess.fills.jsonl``), one Kafka record per line, each
  partition's records in offset order (partitions may interleave)::

      {"topic": "ess.fills", "partition": 0, "offset": 17, "timestamp": 1796073219687,
       "key": "acct-1", "key_encoding": "utf-8", "value": "{\\"event_id\\": ...}",
       "value_encoding": "utf-8"}

  ``timestamp`` is the Kafka record timestamp in milliseconds (``null`` when the broker gave
  none). ``key`` and ``value`` are the exact bytes: as text when they are valid UTF-8
  (``*_encoding`` ``"utf-8"``), otherwise base64 (``"base64"``); ``null`` for a null key or
  value. Text rather than an embedded JSON object because the bytes must survive exactly:
  a poison record is evidence too.

Reading to the end: every partition is read up to the high watermark of the first fetch
response (the snapshot), never to ``end_offsets()`` alone, which Tansu under-reports after
multi-record batches (see :mod:`ess.kafka.clients`). Records appended while recording are left out.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import IO, Any, Final, Literal

import orjson
from aiokafka import TopicPartition
from loguru import logger
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from ess.errors import EssError
from ess.kafka.clients import KafkaSecurity, consumer
from schemas import TopicRegistry, TopicSpec

__all__ = [
    "FORMAT",
    "MANIFEST",
    "VERSION",
    "Manifest",
    "PartitionData",
    "RecordedMessage",
    "RecordingError",
    "RecordingWriter",
    "TopicEntry",
    "TopicFile",
    "load_manifest",
    "read_topic",
    "record",
    "select_topics",
]

FORMAT: Final = "ess-recording"
VERSION: Final = 1
MANIFEST: Final = "manifest.json"

#: Records fetched per poll while recording.
_POLL_RECORDS: Final = 5_000
_POLL_MS: Final = 100

Encoding = Literal["utf-8", "base64"]
#: ``on_progress(topic, records written so far, records expected)``.
ProgressCallback = Callable[[str, int, int], None]


class RecordingError(EssError, ValueError):
    """A recording that cannot be made or read; the message says what to fix."""


# --------------------------------------------------------------------------- manifest


class TopicEntry(BaseModel):
    """One recorded topic in the manifest."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str = Field(min_length=1)
    logical: str = Field(min_length=1)
    role: str
    partitions: int = Field(ge=1)
    file: str = Field(min_length=1)
    records: int = Field(ge=0)
    start_offsets: dict[int, int]
    end_offsets: dict[int, int]
    #: Largest Kafka timestamp (ms) recorded in the topic; ``None`` when it has no records.
    max_timestamp: int | None = None


class Manifest(BaseModel):
    """``manifest.json`` of a recording."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    format: Literal["ess-recording"] = FORMAT
    version: Literal[1] = VERSION
    prefix: str
    recorded_at: AwareDatetime
    topics: tuple[TopicEntry, ...]

    def topic(self, logical: str) -> TopicEntry | None:
        """The entry of logical topic ``logical`` (``"fills"``, ``"state"``), if recorded."""
        return next((entry for entry in self.topics if entry.logical == logical), None)


def load_manifest(directory: Path) -> Manifest:
    """The manifest of the recording in ``directory``; :class:`RecordingError` when the
    directory is missing, has no manifest, or the manifest is not a version-1 recording."""
    if not directory.exists():
        raise RecordingError(f"{directory} does not exist")
    if not directory.is_dir():
        raise RecordingError(f"{directory} is not a directory")
    path = directory / MANIFEST
    if not path.is_file():
        raise RecordingError(
            f"{directory} has no {MANIFEST}: not an ESS recording, or an unfinished one "
            "(make one with `ess record --out DIR`)"
        )
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise RecordingError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RecordingError(f"{path} is not an {FORMAT} manifest")
    if data.get("version") != VERSION:
        raise RecordingError(
            f"{path} has format version {data.get('version')!r}; this ESS reads version {VERSION}"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise RecordingError(f"{path} is invalid: {exc}") from exc


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class RecordedMessage:
    """One Kafka record as recorded (``timestamp`` in milliseconds)."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None
    key: bytes | None
    value: bytes | None


@dataclass(slots=True)
class PartitionData:
    """One partition of a recorded topic, column-wise (cheap to build for many records)."""

    topic: str
    partition: int
    offsets: list[int] = field(default_factory=list)
    timestamps: list[int | None] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.offsets)

    def messages(self) -> Iterator[RecordedMessage]:
        """The records as :class:`RecordedMessage`, in offset order."""
        for offset, timestamp, key, value in zip(
            self.offsets, self.timestamps, self.keys, self.values, strict=True
        ):
            yield RecordedMessage(self.topic, self.partition, offset, timestamp, key, value)


def _as_text(data: bytes | None) -> tuple[str | None, Encoding]:
    if data is None:
        return None, "utf-8"
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def _as_bytes(text: Any, encoding: Any) -> bytes | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise TypeError(f"expected a string or null, got {type(text).__name__}")
    if encoding == "utf-8":
        return text.encode("utf-8")
    if encoding == "base64":
        return base64.b64decode(text, validate=True)
    raise ValueError(f"unknown encoding {encoding!r}")


def encode_line(message: RecordedMessage) -> bytes:
    """One line of a topic file (with its newline)."""
    key, key_encoding = _as_text(message.key)
    value, value_encoding = _as_text(message.value)
    return (
        orjson.dumps(
            {
                "topic": message.topic,
                "partition": message.partition,
                "offset": message.offset,
                "timestamp": message.timestamp,
                "key": key,
                "key_encoding": key_encoding,
                "value": value,
                "value_encoding": value_encoding,
            }
        )
        + b"\n"
    )


def _parse_rows(path: Path) -> list[Any]:
    data = path.read_bytes().strip()
    if not data:
        return []
    # One parser call for the whole file: lines are JSON objects without raw newlines (the
    # writer never emits one), so joining them with commas makes one array, much faster than
    # a Python loop over lines (figures: BENCHMARKS.md); a damaged file falls back to the
    # loop, which can name the line.
    with contextlib.suppress(orjson.JSONDecodeError):
        rows = orjson.loads(b"[" + data.replace(b"\n", b",") + b"]")
        if isinstance(rows, list):
            return rows
    rows = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        try:
            rows.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            raise RecordingError(f"{path} line {number}: not JSON ({exc})") from exc
    return rows


def read_topic(directory: Path, entry: TopicEntry) -> dict[int, PartitionData]:
    """Every recorded record of one topic, by partition (partitions without records are
    present and empty). :class:`RecordingError` names the file and record of a bad one."""
    path = directory / entry.file
    if not path.is_file():
        raise RecordingError(f"{path} is missing (the manifest lists topic {entry.name})")
    rows = _parse_rows(path)
    # The common case (valid file, UTF-8 keys and values) column by column, which is several
    # times faster than a Python loop per record; anything unusual takes the checked loop.
    fast = _columns(rows, entry)
    return fast if fast is not None else _checked(rows, entry, path)


def _columns(rows: list[Any], entry: TopicEntry) -> dict[int, PartitionData] | None:
    try:
        encodings = {r["value_encoding"] for r in rows} | {r["key_encoding"] for r in rows}
        if encodings - {"utf-8"}:
            return None
        partition_of = [r["partition"] for r in rows]
        offsets = [r["offset"] for r in rows]
        timestamps = [r["timestamp"] for r in rows]
        keys = [None if r["key"] is None else r["key"].encode() for r in rows]
        values = [None if r["value"] is None else r["value"].encode() for r in rows]
    except (KeyError, TypeError, AttributeError):
        return None
    if not set(partition_of) <= set(range(entry.partitions)):
        return None
    # type() rather than isinstance(): a JSON true must not pass for the integer 1.
    if not all(type(t) is int for t in timestamps if t is not None):
        return None
    indexes: dict[int, list[int]] = {p: [] for p in range(entry.partitions)}
    for i, p in enumerate(partition_of):
        indexes[p].append(i)
    partitions = {}
    for p, idx in indexes.items():
        part = PartitionData(
            entry.name,
            p,
            [offsets[i] for i in idx],
            [timestamps[i] for i in idx],
            [keys[i] for i in idx],
            [values[i] for i in idx],
        )
        offs = part.offsets
        if not all(type(o) is int for o in offs) or any(a >= b for a, b in pairwise(offs)):
            return None
        partitions[p] = part
    return partitions


def _checked(rows: list[Any], entry: TopicEntry, path: Path) -> dict[int, PartitionData]:
    partitions = {p: PartitionData(entry.name, p) for p in range(entry.partitions)}
    for number, row in enumerate(rows, start=1):
        try:
            part = partitions.get(row["partition"])
            if part is None:
                raise ValueError(
                    f"partition {row['partition']!r} is not one of the topic's {entry.partitions}"
                )
            offset = row["offset"]
            if type(offset) is not int or (part.offsets and offset <= part.offsets[-1]):
                raise ValueError(f"offset {offset!r} is not after the previous one")
            timestamp = row["timestamp"]
            if timestamp is not None and type(timestamp) is not int:
                raise TypeError(f"timestamp {timestamp!r} is not an integer")
            key = _as_bytes(row["key"], row["key_encoding"])
            value = _as_bytes(row["value"], row["value_encoding"])
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise RecordingError(f"{path} record {number}: {what}") from exc
        part.offsets.append(offset)
        part.timestamps.append(timestamp)
        part.keys.append(key)
        part.values.append(value)
    return partitions


# --------------------------------------------------------------------------- writing


class TopicFile:
    """Writes one topic's file; tracks what the manifest needs."""

    def __init__(self, directory: Path, spec: TopicSpec) -> None:
        self.spec = spec
        self.file = f"{spec.name}.jsonl"
        self.records = 0
        self.start_offsets: dict[int, int] = {}
        self.end_offsets: dict[int, int] = {}
        self.max_timestamp: int | None = None
        self._out: IO[bytes] = (directory / self.file).open("wb")

    def write(
        self,
        partition: int,
        offset: int,
        timestamp: int | None,
        key: bytes | None,
        value: bytes | None,
    ) -> None:
        """Append one record (offsets ascending within a partition)."""
        self._out.write(
            encode_line(RecordedMessage(self.spec.name, partition, offset, timestamp, key, value))
        )
        self.records += 1
        if timestamp is not None and (self.max_timestamp is None or timestamp > self.max_timestamp):
            self.max_timestamp = timestamp
        self.start_offsets.setdefault(partition, offset)
        self.end_offsets[partition] = offset + 1

    def mark_range(self, partition: int, start: int, end: int) -> None:
        """The recorded range of a partition when it differs from the records written (an
        empty partition; records deleted by retention before ``start``)."""
        self.start_offsets.setdefault(partition, start)
        self.end_offsets[partition] = max(end, self.end_offsets.get(partition, 0))

    def abandon(self) -> None:
        self._out.close()

    def close(self) -> TopicEntry:
        self._out.close()
        for partition in range(self.spec.partitions):
            self.mark_range(partition, 0, 0)
        return TopicEntry(
            name=self.spec.name,
            logical=self.spec.logical,
            role=self.spec.role.value,
            partitions=self.spec.partitions,
            file=self.file,
            records=self.records,
            start_offsets=dict(sorted(self.start_offsets.items())),
            end_offsets=dict(sorted(self.end_offsets.items())),
            max_timestamp=self.max_timestamp,
        )


class RecordingWriter:
    """Writes a recording directory: :meth:`topic` files, then :meth:`close` writes the
    manifest (atomically, last). Used by :func:`record`, the benchmark and tests."""

    def __init__(self, directory: Path, prefix: str) -> None:
        self.check_target(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.prefix = prefix
        self._files: list[TopicFile] = []

    @staticmethod
    def check_target(directory: Path) -> None:
        """Refuse a path that is a file or already holds a recording."""
        if directory.exists() and not directory.is_dir():
            raise RecordingError(f"{directory} exists and is not a directory")
        if (directory / MANIFEST).exists():
            raise RecordingError(f"{directory} already holds a recording; choose a new directory")

    def topic(self, spec: TopicSpec) -> TopicFile:
        """A new topic file for ``spec``."""
        handle = TopicFile(self.directory, spec)
        self._files.append(handle)
        return handle

    def abandon(self) -> None:
        """Close the topic files without writing a manifest (a failed recording)."""
        for handle in self._files:
            handle.abandon()

    def close(self, recorded_at: datetime) -> Manifest:
        """Close every topic file and write the manifest."""
        manifest = Manifest(
            prefix=self.prefix,
            recorded_at=recorded_at.astimezone(UTC),
            topics=tuple(handle.close() for handle in self._files),
        )
        path = self.directory / MANIFEST
        partial = path.with_suffix(".json.partial")
        partial.write_bytes(
            orjson.dumps(manifest.model_dump(mode="json"), option=orjson.OPT_INDENT_2) + b"\n"
        )
        os.replace(partial, path)
        return manifest


# --------------------------------------------------------------------------- recording


def select_topics(registry: TopicRegistry, names: Sequence[str] | None = None) -> list[TopicSpec]:
    """The topics to record: ``names`` (logical like ``fills`` or ``order-errors``, or full
    like ``ess.fills``), by default every input topic; the state log is always added, since
    a replay compares against it."""
    if not names:
        chosen = registry.inputs()
    else:
        chosen = []
        for name in names:
            wanted = name.strip()
            spec = next(
                (
                    s
                    for s in registry.topics
                    if wanted in {s.name, s.logical, s.logical.replace("_", "-")}
                ),
                None,
            )
            if spec is None:
                known = ", ".join(s.logical.replace("_", "-") for s in registry.topics)
                raise RecordingError(f"unknown topic {name!r}; known: {known}")
            if spec not in chosen:
                chosen.append(spec)
    if registry.state not in chosen:
        chosen.append(registry.state)
    return chosen


async def record(
    bootstrap: str,
    registry: TopicRegistry,
    directory: Path,
    *,
    topics: Sequence[str] | None = None,
    security: KafkaSecurity | None = None,
    on_progress: ProgressCallback | None = None,
    timeout: float = 120.0,  # noqa: ASYNC109 - per topic; the error names the topic
    now: datetime | None = None,
) -> Manifest:
    """Copy ``topics`` (see :func:`select_topics`) from the beginning of each partition to
    its end into a new recording in ``directory``; returns the manifest.

    Input topics are recorded before the state log, so every trip in the recorded log can
    point at a record that was recorded (a trip whose trigger came later is recognizable:
    its offset is at or past the partition's ``end_offsets``). Topics are never created:
    a missing one raises :class:`RecordingError`.
    """
    specs = select_topics(registry, topics)
    recorded_at = now or datetime.now(UTC)
    RecordingWriter.check_target(directory)  # before any network: the cheap mistake first
    await _check_topics(bootstrap, registry, specs, security)
    writer = RecordingWriter(directory, registry.prefix)
    try:
        await _record_all(
            bootstrap,
            specs,
            writer,
            security=security,
            on_progress=on_progress,
            timeout=timeout,
        )
    except BaseException:
        writer.abandon()  # no manifest: the directory is recognizably unfinished
        raise
    return writer.close(recorded_at)


async def _record_all(
    bootstrap: str,
    specs: Sequence[TopicSpec],
    writer: RecordingWriter,
    *,
    security: KafkaSecurity | None,
    on_progress: ProgressCallback | None,
    timeout: float,  # noqa: ASYNC109 - per topic
) -> None:
    for spec in specs:
        # One consumer per topic: after an assign() a client keeps only the assigned
        # topics' metadata, and topics are read one after the other anyway.
        reader = consumer(
            bootstrap,
            group_id=None,
            client_id="ess-recorder",
            security=security,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        try:
            async with asyncio.timeout(timeout), _started(reader):
                count = await _record_topic(reader, writer.topic(spec), on_progress)
        except TimeoutError as exc:
            raise RecordingError(
                f"recording {spec.name} took over {timeout:g}s; is the broker reachable?"
            ) from exc
        logger.bind(topic=spec.name, records=count).info("topic recorded")


@contextlib.asynccontextmanager
async def _started(client: Any) -> AsyncIterator[Any]:
    """A started aiokafka client, stopped on exit even when starting it failed."""
    try:
        await client.start()
        yield client
    finally:
        await client.stop()


async def _check_topics(
    bootstrap: str, registry: TopicRegistry, specs: Sequence[TopicSpec], security: Any
) -> None:
    """Refuse before writing anything when a topic is missing."""
    probe = consumer(bootstrap, group_id=None, client_id="ess-recorder", security=security)
    async with _started(probe):
        # topics() asks for all topics' metadata, which never auto-creates one (Tansu
        # creates a topic that a client merely names, see ess.kafka.broker).
        existing = await probe.topics()
    missing = [spec.name for spec in specs if spec.name not in existing]
    if missing:
        raise RecordingError(
            f"topics {', '.join(missing)} do not exist (is ESS_TOPIC_PREFIX "
            f"{registry.prefix!r} right?)"
        )


async def _record_topic(reader: Any, out: TopicFile, on_progress: ProgressCallback | None) -> int:
    name = out.spec.name
    await reader.topics()  # metadata of every topic, without creating any
    partitions = reader.partitions_for_topic(name)
    if not partitions:  # pragma: no cover - a listed topic has partitions
        raise RecordingError(f"topic {name} has no partitions")
    tps = [TopicPartition(name, p) for p in sorted(partitions)]
    reader.assign(tps)
    await reader.seek_to_beginning(*tps)
    begin: dict[TopicPartition, int] = await reader.beginning_offsets(tps)
    listed: dict[TopicPartition, int] = await reader.end_offsets(tps)
    # The snapshot's end per partition: max(listed end, high watermark of the first fetch
    # response). Fixed once known, so that recording a busy topic still ends.
    targets: dict[TopicPartition, int] = {}
    expected = sum(max(0, listed[tp] - begin[tp]) for tp in tps)

    def target(tp: TopicPartition) -> int | None:
        nonlocal expected
        if tp not in targets:
            highwater: int | None = reader.highwater(tp)
            if highwater is None:
                return None
            targets[tp] = max(highwater, listed[tp])
            expected += targets[tp] - listed[tp]
        return targets[tp]

    done: set[TopicPartition] = set()
    if on_progress is not None:
        on_progress(name, 0, expected)
    while len(done) < len(tps):
        fetched = await reader.getmany(*tps, timeout_ms=_POLL_MS, max_records=_POLL_RECORDS)
        for tp, records in fetched.items():
            end = target(tp)
            for rec in records:
                if end is None or rec.offset < end:
                    # -1: a record without a timestamp (old message format).
                    stamp = rec.timestamp if (rec.timestamp or 0) >= 0 else None
                    out.write(tp.partition, rec.offset, stamp, rec.key, rec.value)
        for tp in tps:
            end = target(tp)
            if tp not in done and end is not None and await reader.position(tp) >= end:
                done.add(tp)
                reader.pause(tp)
        if on_progress is not None:
            on_progress(name, out.records, max(expected, out.records))
    for tp in tps:
        out.mark_range(tp.partition, begin[tp], targets[tp])
    return out.records
