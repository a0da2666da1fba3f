"""Generates the trading-gate conformance fixtures (one JSON file per case, next to this file).

The fixtures are what implementers of the gate in other languages test against; the protocol
they exercise and the file format are in ``docs/gate-protocol.md``. The generator is pure and
deterministic (fixed instants, no randomness, no keys: the record is not signed), so the
committed files can be checked against it: ``tests/gate/test_conformance.py`` regenerates them
in memory and fails when they differ.

Records the writer would produce are built the writer's way (``PolicyRecord`` dumped to JSON,
then the PolicyStore codec ``encode_value``), so their bytes are exactly what the projector
stores in Redis. Malformed records are written out by hand.

Usage: ``.venv/bin/python tests/gate/conformance/generate.py`` (rewrite the files) or
``... generate.py --check`` (exit 1 when a file is missing, different or extra).
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from ess.api.protocols import EMERGENCY_STOP_KEY
from ess.policystore.base import encode_value
from schemas import PolicyRecord, ReasonCode

HERE: Final = Path(__file__).resolve().parent
FORMAT: Final = "ess-gate-conformance/1"

#: The gate's settings in every case: the Python gate's defaults (10 s, 1 s reserved for skew).
MAX_RECORD_AGE_S: Final = 10
MAX_CLOCK_SKEW_S: Final = 1
#: Every case starts at this instant of the gate's wall clock.
T0: Final = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)

#: Verdict reason codes, in the order the checks run (docs/gate-protocol.md, "Verdicts").
REASONS: Final = (
    "open",
    "read_failed",
    "no_record",
    "unparsable",
    "invalid",
    "active",
    "seq_regression",
    "future",
    "stale",
)


def at(seconds: float) -> datetime:
    """``T0`` plus ``seconds`` (microsecond precision)."""
    return T0 + timedelta(seconds=seconds)


def rfc3339(when: datetime) -> str:
    """The fixtures' spelling of an instant: UTC, microseconds, ``Z``."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------- records


def writer_fields(
    *,
    active: bool = False,
    seq: int | None = 4,
    refreshed_at: datetime | None = None,
    timestamp: datetime | None = None,
    reason: ReasonCode | None = None,
    detail: str = "",
) -> dict[str, Any]:
    """The JSON object the projector writes (``PolicyRecord`` in JSON mode).

    Defaults: inactive, seq 4, refreshed 2 s before ``T0``, state changed an hour before.
    An active record gets ``flash_crash`` unless told otherwise."""
    if active and reason is None:
        reason = ReasonCode.FLASH_CRASH
    return PolicyRecord(
        active=active,
        reason=reason,
        timestamp=timestamp or at(-3600),
        seq=seq,
        detail=detail if detail or not active else "BTC/USDT -9% in 40 s",
        refreshed_at=refreshed_at if refreshed_at is not None else at(-2),
    ).model_dump(mode="json")


def writer_bytes(**kwargs: Any) -> bytes:
    """Exactly the bytes the projector would store for ``writer_fields(**kwargs)``."""
    return encode_value(EMERGENCY_STOP_KEY, writer_fields(**kwargs)).encode()


def patched(fields: Mapping[str, Any] | None = None, /, **changes: Any) -> bytes:
    """A writer record (default ``writer_fields()``) with fields changed, added, or removed
    (a change to the sentinel ``DROP``), serialised like the writer (compact, UTF-8)."""
    body = dict(fields if fields is not None else writer_fields())
    for name, value in changes.items():
        if value is DROP:
            body.pop(name, None)
        else:
            body[name] = value
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


DROP: Final = object()


# ---------------------------------------------------------------------- steps and cases


@dataclass(frozen=True)
class Step:
    """What the gate observes at one instant and what it must answer then."""

    now: float  # seconds after T0
    read: str  # "value" | "missing" | "error" | "none"
    allowed: bool
    reason: str
    value: bytes | None = None
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        if self.reason not in REASONS or (self.reason == "open") != self.allowed:
            raise ValueError(f"inconsistent expectation {self.allowed} / {self.reason}")
        step: dict[str, Any] = {"now": rfc3339(at(self.now)), "read": self.read}
        if self.read == "value":
            assert self.value is not None
            try:
                text: str | None = self.value.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            step["value_b64"] = base64.b64encode(self.value).decode()
            step["value_text"] = text
        step["expect"] = {"allowed": self.allowed, "reason": self.reason}
        if self.note:
            step["note"] = self.note
        return step


def value(now: float, raw: bytes, reason: str, note: str = "") -> Step:
    """A successful GET returning ``raw`` at ``now``."""
    return Step(now, "value", reason == "open", reason, raw, note)


def missing(now: float, reason: str = "no_record", note: str = "") -> Step:
    """A successful GET that found no key (Redis nil)."""
    return Step(now, "missing", reason == "open", reason, note=note)


def error(now: float, note: str = "") -> Step:
    """A GET that failed (connection refused, timeout, WRONGTYPE...)."""
    return Step(now, "error", False, "read_failed", note=note)


def check(now: float, reason: str, note: str = "") -> Step:
    """No read: time passes and the gate is asked again (its last verdict ages)."""
    return Step(now, "none", reason == "open", reason, note=note)


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    steps: tuple[Step, ...] = field(default_factory=tuple)

    def as_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "case": self.name,
            "description": self.description,
            "key": EMERGENCY_STOP_KEY,
            "params": {"max_record_age_s": MAX_RECORD_AGE_S, "max_clock_skew_s": MAX_CLOCK_SKEW_S},
            "steps": [step.as_json() for step in self.steps],
        }


def case(name: str, description: str, *steps: Step) -> Case:
    return Case(name, description, steps)


def cases() -> Iterator[Case]:
    """Every conformance case, in file-name order of appearance."""
    fresh = writer_bytes()

    # ------------------------------------------------------------------ open
    yield case(
        "open-inactive-fresh",
        "The projector's INACTIVE record, refreshed 1.875 s before the gate reads it: open. "
        "(The worked example of docs/gate-protocol.md.)",
        value(0, writer_bytes(refreshed_at=at(-1.875)), "open"),
    )
    yield case(
        "open-empty-log",
        "What the projector writes before ESS ever changed state: timestamp 1970-01-01, seq "
        "null, refreshed now. Freshness is judged by refreshed_at, so it opens; the old "
        "timestamp is not an error.",
        value(0, writer_bytes(seq=None, timestamp=datetime(1970, 1, 1, tzinfo=UTC)), "open"),
    )
    yield case(
        "open-extra-fields-ignored",
        "Unknown members (objects, arrays, non-ASCII text, a 'signer'/'signature' pair that "
        "means nothing here) are ignored.",
        value(
            0,
            patched(
                note="écrit à la main — ok",
                signer="0123456789abcdef",
                signature="AAAA",
                nested={"a": [1, 2.5, None, True]},
            ),
            "open",
        ),
    )
    yield case(
        "open-offset-timestamp",
        "refreshed_at with a +01:00 offset and milliseconds: 10:59:58.500+01:00 is 1.5 s "
        "before now.",
        value(0, patched(refreshed_at="2026-11-22T10:59:58.500+01:00"), "open"),
    )
    yield case(
        "open-minimal-record",
        "Only the required members (active, reason, timestamp): no refreshed_at, so freshness "
        "is judged by timestamp (3 s old); no seq.",
        value(0, b'{"active":false,"reason":null,"timestamp":"2026-11-22T09:59:57Z"}', "open"),
    )
    yield case(
        "open-refreshed-null-uses-timestamp",
        "refreshed_at is null: freshness falls back to timestamp (1 s old).",
        value(0, patched(timestamp="2026-11-22T09:59:59Z", refreshed_at=None), "open"),
    )
    yield case(
        "open-inactive-with-reason",
        "An inactive record that still names a (valid) reason opens: only 'active' decides.",
        value(0, writer_bytes(reason=ReasonCode.MANUAL), "open"),
    )
    yield case(
        "open-age-just-below-limit",
        "Age 8.999999 s: below max_record_age - max_clock_skew = 9 s, open.",
        value(0, writer_bytes(refreshed_at=at(-8.999999)), "open"),
    )
    yield case(
        "open-future-within-skew",
        "refreshed_at exactly 1 s (the skew allowance) ahead of the gate's clock: open, with "
        "its age taken as 0, so it stays open for 9 s after the read and then goes stale.",
        value(0, writer_bytes(refreshed_at=at(1)), "open"),
        check(8.999, "open"),
        check(9, "stale"),
    )

    # ------------------------------------------------------------------ stale
    yield case(
        "stale-at-limit",
        "Age exactly 9 s (max_record_age - max_clock_skew): stale. The bound is strict.",
        value(0, writer_bytes(refreshed_at=at(-9)), "stale"),
    )
    yield case(
        "stale-old",
        "Refreshed an hour ago: the projector stopped vouching (or died).",
        value(0, writer_bytes(refreshed_at=at(-3600)), "stale"),
    )
    yield case(
        "stale-ages-between-reads",
        "Open at a read of a record 2 s old; with no further read the verdict expires 7 s "
        "later (9 s after the refresh), and a new fresh read reopens.",
        value(0, fresh, "open"),
        check(6.999, "open"),
        check(7, "stale", "no read since t=0: the record is now 9 s old"),
        value(7.5, writer_bytes(refreshed_at=at(7)), "open"),
    )
    yield case(
        "stale-timestamp-fallback",
        "No refreshed_at: freshness falls back to timestamp, an hour old: stale.",
        value(0, patched(refreshed_at=DROP), "stale"),
    )
    yield case(
        "stale-refreshed-behind-timestamp",
        "refreshed_at is judged, not timestamp: a fresh timestamp does not save a record "
        "whose refreshed_at is 30 s old.",
        value(0, writer_bytes(timestamp=at(-1), refreshed_at=at(-30)), "stale"),
    )

    # ------------------------------------------------------------------ future
    yield case(
        "future-beyond-skew",
        "refreshed_at 1.000001 s ahead of the gate's clock: more than the skew allowance, "
        "so one of the clocks is wrong: closed.",
        value(0, writer_bytes(refreshed_at=at(1.000001)), "future"),
    )
    yield case(
        "future-far",
        "refreshed_at an hour ahead: closed (a record cannot vouch for the future).",
        value(0, writer_bytes(refreshed_at=at(3600)), "future"),
    )

    # ------------------------------------------------------------------ active
    yield case(
        "active-fresh",
        "The emergency stop is on: closed.",
        value(0, writer_bytes(active=True, seq=7, timestamp=at(-5)), "active"),
    )
    yield case(
        "active-stale",
        "An active record closes whatever its age (reason 'active', checked before freshness).",
        value(0, writer_bytes(active=True, seq=7, refreshed_at=at(-3600)), "active"),
    )
    yield case(
        "active-then-reset",
        "Active at seq 7, then the reset's INACTIVE record at seq 8: open again.",
        value(0, writer_bytes(active=True, seq=7), "active"),
        value(1, writer_bytes(seq=8, timestamp=at(0.5), refreshed_at=at(0.5)), "open"),
    )
    yield case(
        "active-after-open",
        "Open, then the record turns active: closed at the next read.",
        value(0, fresh, "open"),
        value(
            0.5, writer_bytes(active=True, seq=5, timestamp=at(0.2), refreshed_at=at(0.2)), "active"
        ),
    )

    # ------------------------------------------------------------------ seq
    yield case(
        "seq-regression-equal",
        "After active seq 7, an INACTIVE record at seq 7 cannot be the reset (a reset is a "
        "later entry): closed until a higher seq arrives.",
        value(0, writer_bytes(active=True, seq=7), "active"),
        value(1, writer_bytes(seq=7, refreshed_at=at(0.5)), "seq_regression"),
    )
    yield case(
        "seq-regression-lower-then-reset",
        "After active seq 7: INACTIVE seq 6 (an old value) stays closed; INACTIVE seq 8 opens.",
        value(0, writer_bytes(active=True, seq=7), "active"),
        value(1, writer_bytes(seq=6, refreshed_at=at(0.5)), "seq_regression"),
        value(2, writer_bytes(seq=8, refreshed_at=at(1.5)), "open"),
    )
    yield case(
        "seq-regression-null",
        "After active seq 7, an INACTIVE record without seq (null) is not newer: closed.",
        value(0, writer_bytes(active=True, seq=7), "active"),
        value(1, writer_bytes(seq=None, refreshed_at=at(0.5)), "seq_regression"),
    )
    yield case(
        "seq-highest-active-counts",
        "What counts is the highest active seq seen, not the last: active 7, active 5, then "
        "INACTIVE 6 is still an old value.",
        value(0, writer_bytes(active=True, seq=7), "active"),
        value(1, writer_bytes(active=True, seq=5, refreshed_at=at(0.5)), "active"),
        value(2, writer_bytes(seq=6, refreshed_at=at(1.5)), "seq_regression"),
        value(3, writer_bytes(seq=8, refreshed_at=at(2.5)), "open"),
    )
    yield case(
        "seq-survives-failures",
        "Failed reads, a missing key, garbage and an invalid record change nothing of the "
        "seq state: INACTIVE 7 after active 7 is still refused; 8 opens.",
        value(0, writer_bytes(active=True, seq=7), "active"),
        error(1),
        missing(2),
        value(3, b"garbage", "unparsable"),
        value(4, patched(active="false", seq=9), "invalid"),
        value(5, writer_bytes(seq=7, refreshed_at=at(4.5)), "seq_regression"),
        value(6, writer_bytes(seq=8, refreshed_at=at(5.5)), "open"),
    )
    yield case(
        "seq-inactive-regression-ignored",
        "Only active records set the seq bound: INACTIVE seq 9, then INACTIVE seq 3, both "
        "open (freshness alone limits old inactive values).",
        value(0, writer_bytes(seq=9), "open"),
        value(1, writer_bytes(seq=3, refreshed_at=at(0.5)), "open"),
    )
    yield case(
        "seq-invalid-active-sets-nothing",
        "An active record that fails validation is refused as invalid and does not set the "
        "seq bound: a later INACTIVE seq 6 opens.",
        value(0, patched(writer_fields(active=True, seq=7), reason="meteor_strike"), "invalid"),
        value(1, writer_bytes(seq=6, refreshed_at=at(0.5)), "open"),
    )

    # ------------------------------------------------------------------ missing / failures
    yield case(
        "missing-key",
        "GET returns nil: no record, closed.",
        missing(0),
    )
    yield case(
        "missing-after-open",
        "Open, then the key disappears: closed at once.",
        value(0, fresh, "open"),
        missing(0.5),
    )
    yield case(
        "read-error-closes-at-once",
        "Open, then a read fails (connection refused, timeout, WRONGTYPE...): closed at once, "
        "not when the record would have aged out; the next good read reopens.",
        value(0, fresh, "open"),
        error(0.5),
        check(0.6, "read_failed"),
        value(1, writer_bytes(refreshed_at=at(0.8)), "open"),
    )

    # ------------------------------------------------------------------ unparsable
    unparsable = [
        ("unparsable-not-json", "Plain text.", b"emergency stop: off"),
        ("unparsable-empty", "An empty string.", b""),
        ("unparsable-json-array", "A JSON array, not an object.", b"[" + fresh + b"]"),
        ("unparsable-json-null", "The JSON literal null.", b"null"),
        ("unparsable-json-false", "The JSON literal false.", b"false"),
        (
            "unparsable-double-encoded",
            "The record JSON-encoded twice (a JSON string holding the object).",
            json.dumps(fresh.decode()).encode(),
        ),
        ("unparsable-truncated", "The record cut short.", fresh[:-10]),
        (
            "unparsable-trailing-data",
            "A valid INACTIVE object followed by more data: not one JSON value.",
            fresh + b'{"active":true}',
        ),
        (
            "unparsable-invalid-utf8",
            "A byte that is not UTF-8 inside a string member (0xff).",
            patched(detail="x").replace(b'"x"', b'"\xff"'),
        ),
        (
            "unparsable-nan",
            "NaN is not JSON.",
            fresh.replace(b'"seq":4', b'"seq":NaN'),
        ),
    ]
    for name, why, raw in unparsable:
        assert raw != fresh
        yield case(name, f"{why} Closed.", value(0, raw, "unparsable"))

    # ------------------------------------------------------------------ invalid members
    invalid: list[tuple[str, str, bytes]] = [
        (
            "invalid-active-string",
            'active is the string "false", not a boolean.',
            patched(active="false"),
        ),
        ("invalid-active-number", "active is the number 0, not a boolean.", patched(active=0)),
        ("invalid-active-null", "active is null.", patched(active=None)),
        ("invalid-active-missing", "No active member.", patched(active=DROP)),
        (
            "invalid-reason-missing",
            "No reason member (it is required, null when inactive).",
            patched(reason=DROP),
        ),
        (
            "invalid-reason-unknown",
            "reason is not one of the contract's codes.",
            patched(reason="meteor_strike"),
        ),
        ("invalid-reason-wrong-case", "Reason codes are lower case.", patched(reason="MANUAL")),
        ("invalid-timestamp-missing", "No timestamp member.", patched(timestamp=DROP)),
        (
            "invalid-timestamp-number",
            "timestamp is an epoch number, not a string.",
            patched(timestamp=1795334400),
        ),
        (
            "invalid-refreshed-epoch-number",
            "refreshed_at is an epoch number (a fresh one).",
            patched(refreshed_at=1795341598),
        ),
        (
            "invalid-refreshed-no-offset",
            "refreshed_at has no time zone offset.",
            patched(refreshed_at="2026-11-22T09:59:58"),
        ),
        (
            "invalid-refreshed-impossible-date",
            "refreshed_at on 30 February.",
            patched(refreshed_at="2026-02-30T09:59:58Z"),
        ),
        (
            "invalid-refreshed-garbage",
            "refreshed_at is not a timestamp.",
            patched(refreshed_at="just now"),
        ),
        ("invalid-seq-string", 'seq is the string "4".', patched(seq="4")),
        ("invalid-seq-negative", "seq is -1.", patched(seq=-1)),
        ("invalid-seq-fraction", "seq is 4.5.", patched(seq=4.5)),
        (
            "invalid-auto-recover-true",
            "auto_recover is true (ESS never recovers on its own).",
            patched(auto_recover=True),
        ),
        (
            "invalid-auto-recover-null",
            "auto_recover is null (absent or false only).",
            patched(auto_recover=None),
        ),
        ("invalid-detail-not-string", "detail is a number.", patched(detail=5)),
        ("invalid-detail-null", "detail is null (absent or a string only).", patched(detail=None)),
        (
            "invalid-detail-too-long",
            "detail is 4,097 characters (limit 4,096).",
            patched(detail="x" * 4097),
        ),
        (
            "invalid-active-with-bad-reason",
            "active is true but the reason is unknown: invalid (validation comes before "
            "'active'; closed either way).",
            patched(writer_fields(active=True, seq=7), reason="meteor_strike"),
        ),
    ]
    for name, why, raw in invalid:
        yield case(name, f"{why} Closed.", value(0, raw, "invalid"))


def render(item: Case) -> str:
    """A case's file text: stable key order, two-space indent, trailing newline."""
    return json.dumps(item.as_json(), indent=2, ensure_ascii=False) + "\n"


def build() -> dict[str, str]:
    """File name -> file text of every fixture."""
    files: dict[str, str] = {}
    for item in cases():
        name = f"{item.name}.json"
        if name in files:
            raise ValueError(f"duplicate case {item.name}")
        files[name] = render(item)
    return files


def main(argv: list[str]) -> int:
    files = build()
    on_disk = {path.name for path in HERE.glob("*.json")}
    if "--check" in argv:
        stale = sorted(
            name
            for name in files.keys() | on_disk
            if name not in on_disk
            or name not in files
            or (HERE / name).read_text(encoding="utf-8") != files[name]
        )
        for name in stale:
            print(f"out of date: {name}", file=sys.stderr)
        return 1 if stale else 0
    for name in on_disk - files.keys():
        (HERE / name).unlink()
    for name, text in files.items():
        (HERE / name).write_text(text, encoding="utf-8")
    print(f"wrote {len(files)} cases to {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
