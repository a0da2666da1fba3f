"""Property tests of the state-log reader (``ess.core.reader.fold_records``).

A log of authentic entries (trips and resets decided by the core, sealed by the test
processor key) is interleaved at random with foreign junk (garbage, empty records,
tombstones, unsigned entries, entries sealed by an intruder's key or edited after sealing,
each aimed at the head where it lands) and byte-identical copies of earlier entries; some
logs end with the processor's acknowledging trip. Whatever the interleaving and however the
records are split into batches, the reader applies exactly the authentic entries, in order.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import timedelta

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ess.core import fold
from ess.core.attestation import SigningKey
from ess.core.reader import Folded, RawRecord, digest, fold_records, seal_entry
from ess.core.signing import generate_private_key
from schemas import ReasonCode, TriggerRef
from tests.statelog_support import T0, LogBuilder, operator_reset, trust

SCOPE = "ess.state"
INTRUDER = SigningKey(generate_private_key())
JUNK_KINDS = ("garbage", "empty", "tombstone", "unsigned", "intruder", "edited", "copy")

PROFILE = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@dataclass(frozen=True)
class Junk:
    before: int  # inserted before the authentic entry with this index (== n: at the end)
    kind: str
    pick: int  # which earlier entry a copy repeats, or which entry a forgery imitates


@dataclass
class Interleaved:
    log: LogBuilder
    records: list[RawRecord]
    authentic: list[int]  # offsets of the authentic entries, in order
    foreign: list[int]  # offsets of the junk that must be foreign
    copies: list[int]  # offsets of the byte-identical copies
    acknowledged: bool


def build_log(kinds: list[str]) -> LogBuilder:
    log = LogBuilder()
    for index, kind in enumerate(kinds):
        ts = T0 + timedelta(seconds=index)
        if kind == "reset" and log.state.active:
            command = operator_reset(log.state, ts=ts, command_id=f"r-{index}", nonce=f"n-{index}")
            log.command(command, now=ts)
        else:
            log.trip(f"t-{index}", ts=ts)
    return log


def junk_value(log: LogBuilder, junk: Junk, placed: int) -> bytes | None:
    """The junk record's bytes; ``placed`` authentic entries precede it."""
    entries, values = log.entries, log.values
    head = digest(values[placed - 1]) if placed else None
    imitated = entries[min(junk.pick % len(entries), len(entries) - 1)]
    match junk.kind:
        case "garbage":
            return b"\x00{not json" + bytes([junk.pick % 256])
        case "empty":
            return b""
        case "tombstone":
            return None
        case "unsigned":
            forged = imitated.model_copy(
                update={"prev": head, "signer": None, "signature": None, "seq": placed}
            )
            return orjson.dumps(forged.model_dump(mode="json"))
        case "intruder":
            forged = imitated.model_copy(update={"seq": placed})
            return seal_entry(forged, INTRUDER, scope=SCOPE, prev=head)[1]
        case "edited":
            document = orjson.loads(values[junk.pick % len(values)])
            document["detail"] = f"edited {junk.pick}"
            return orjson.dumps(document)
    raise AssertionError(junk.kind)  # pragma: no cover


def interleave(kinds: list[str], junks: list[Junk], acknowledge: bool) -> Interleaved:
    log = build_log(kinds)
    count = len(log.values)
    by_position: dict[int, list[Junk]] = {}
    for junk in junks:
        by_position.setdefault(junk.before % (count + 1), []).append(junk)
    values: list[bytes | None] = []
    authentic: list[int] = []
    foreign: list[int] = []
    copies: list[int] = []
    for position in range(count + 1):
        for junk in by_position.get(position, []):
            if junk.kind == "copy":
                if position == 0:
                    continue  # nothing to copy yet
                copies.append(len(values))
                values.append(log.values[junk.pick % position])
            else:
                foreign.append(len(values))
                values.append(junk_value(log, junk, position))
        if position < count:
            authentic.append(len(values))
            values.append(log.values[position])
    acknowledged = acknowledge and bool(foreign)
    if acknowledged:
        trigger = TriggerRef(topic=SCOPE, partition=0, offset=foreign[-1], event_ts=T0)
        log.trip("ack", reason=ReasonCode.UNAUTHORIZED_ACCESS, trigger=trigger)
        authentic.append(len(values))
        values.append(log.values[-1])
    raw = [RawRecord(offset, value) for offset, value in enumerate(values)]
    return Interleaved(log, raw, authentic, foreign, copies, acknowledged)


entry_kinds = st.lists(st.sampled_from(["trip", "trip", "reset"]), min_size=1, max_size=10)
junk_lists = st.lists(
    st.builds(
        Junk,
        before=st.integers(0, 50),
        kind=st.sampled_from(JUNK_KINDS),
        pick=st.integers(0, 50),
    ),
    max_size=10,
)


def fed_in_batches(records: list[RawRecord], cuts: list[int]) -> Folded:
    folded = Folded()
    bounds = sorted({cut % (len(records) + 1) for cut in cuts} | {0, len(records)})
    for low, high in itertools.pairwise(bounds):
        folded, _ = fold_records(records[low:high], trust(), folded)
    return folded


@PROFILE
@given(kinds=entry_kinds, junks=junk_lists, acknowledge=st.booleans())
def test_fold_records_applies_exactly_the_authentic_entries_in_order(
    kinds: list[str], junks: list[Junk], acknowledge: bool
) -> None:
    case = interleave(kinds, junks, acknowledge)

    folded, report = fold_records(case.records, trust())

    assert [item.offset for item in report.applied] == case.authentic
    assert [item.entry for item in report.applied] == case.log.entries
    assert folded.state == fold(case.log.entries) == case.log.state
    assert [item.offset for item in report.foreign] == case.foreign
    assert [item.offset for item in report.skipped] == case.copies
    assert folded.trusted is (not case.foreign or case.acknowledged)
    if case.acknowledged:
        assert folded.state.active
    assert folded.head == digest(case.log.values[-1])
    assert folded.next_offset == len(case.records)


@PROFILE
@given(
    kinds=entry_kinds,
    junks=junk_lists,
    acknowledge=st.booleans(),
    cuts=st.lists(st.integers(0, 200), max_size=8),
)
def test_fold_records_gives_the_same_folded_for_any_split_into_batches(
    kinds: list[str], junks: list[Junk], acknowledge: bool, cuts: list[int]
) -> None:
    case = interleave(kinds, junks, acknowledge)
    whole, _ = fold_records(case.records, trust())

    assert fed_in_batches(case.records, cuts) == whole
    assert fed_in_batches(case.records, list(range(len(case.records)))) == whole
