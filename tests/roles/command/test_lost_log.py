"""The command processor's lost-log check, against a real broker and a real (in-memory)
PolicyStore adapter: before it serves, the processor reads ``emergency_stop`` and
re-establishes a stop that the record proves beyond the log's end (reason
``state_log_lost``), verified or not; it leaves every other record alone, checks again until
an unreadable store answers, and never re-establishes the same record twice.

The record in the store is the projector's projection of a log built as the processor writes
it (:class:`tests.statelog_support.LogBuilder`), including its proof: the activation exactly
as sealed in that log.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from ess.api.protocols import EMERGENCY_STOP_KEY
from ess.clock import ManualClock
from ess.core.attestation import SigningKey
from ess.core.ids import derive_id
from ess.core.projection import policy_record
from ess.core.reader import LoggedEntry, fold_records
from ess.core.signing import generate_private_key
from ess.kafka.clients import read_to_end
from ess.policystore import CorruptPolicyValue, InMemoryPolicyStore, PolicyStoreUnavailable
from ess.roles.command.metrics import ProcessorMetrics
from ess.roles.command.processor import SOURCE, CommandProcessor
from ess.statelog import KafkaStateLog
from schemas import (
    ActivatedEntry,
    ReasonCode,
    SecurityEvent,
    SecurityEventKind,
    TopicRegistry,
    decode,
)
from tests.helpers import eventually
from tests.statelog_support import PROCESSOR, LogBuilder, policy, trust

pytestmark = pytest.mark.integration

WAIT = 20.0
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def projected(log: LogBuilder) -> dict[str, Any]:
    """The record the projector of ``log`` leaves in the PolicyStore, proof included."""
    activation = log.state.activation
    proof = orjson.loads(log.values[activation.seq]) if activation is not None else None
    return policy_record(log.state, refreshed_at=NOW, activation_entry=proof).model_dump(
        mode="json"
    )


def lost_log(scope: str, trips: int, *, key: SigningKey = PROCESSOR) -> LogBuilder:
    """The log that was lost: ``trips`` manual trips (ACTIVE at seq ``trips - 1``)."""
    log = LogBuilder(scope, key=key)
    for number in range(trips):
        log.trip(f"lost-{number}", reason=ReasonCode.MANUAL, detail=f"desk stop {number}")
    return log


class FlakyStore(InMemoryPolicyStore):
    """The in-memory adapter, unreachable while ``down`` (reads counted); ``corrupt`` makes
    it answer like a store holding a value that is not a JSON object."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.corrupt = False
        self.reads = 0

    async def get(self, key: str) -> Mapping[str, Any] | None:
        self.reads += 1
        if self.down:
            raise PolicyStoreUnavailable("redis://127.0.0.1:1: connection refused")
        if self.corrupt:
            raise CorruptPolicyValue(f"value of {key!r} is a JSON list, not an object")
        return await super().get(key)


@asynccontextmanager
async def serving(
    bootstrap: str,
    registry: TopicRegistry,
    group: str,
    store: InMemoryPolicyStore | None,
    **options: Any,
) -> AsyncIterator[CommandProcessor]:
    """A processor signing with :data:`PROCESSOR`, reading ``store``, until the block ends;
    the block starts once it owns the command partition."""
    processor = CommandProcessor(
        bootstrap,
        registry,
        reset_policy=policy(),
        clock=ManualClock(NOW),
        signing_key=PROCESSOR,
        trust=trust(registry.state.name),
        group_id=group,
        join_group=False,
        beat_interval=0.05,
        policy_store=store,
        **options,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    try:
        await eventually(lambda: processor.owns_commands or task.done(), timeout=WAIT)
        if task.done():
            task.result()
        yield processor
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)


async def log_of(bootstrap: str, registry: TopicRegistry) -> list[LoggedEntry]:
    records = await KafkaStateLog(bootstrap, registry.state.name).read()
    folded, report = fold_records(records, trust(registry.state.name))
    assert folded.trusted
    return list(report.applied)


async def security_events(bootstrap: str, registry: TopicRegistry) -> list[SecurityEvent]:
    return [
        decode(SecurityEvent, r.value)
        for r in await read_to_end(bootstrap, registry.security.name, timeout=WAIT)
    ]


def reestablished(metrics: ProcessorMetrics, verified: str) -> float:
    sample = metrics.registry.get_sample_value(
        "ess_command_processor_lost_log_reestablished_total", {"verified": verified}
    )
    return sample or 0.0


async def test_a_verified_stop_beyond_an_empty_log_is_re_established_before_serving(
    kafka_bootstrap: str, registry: TopicRegistry, unique_group: str
) -> None:
    store = InMemoryPolicyStore()
    await store.set(EMERGENCY_STOP_KEY, projected(lost_log(registry.state.name, trips=4)))
    metrics = ProcessorMetrics()

    async with serving(kafka_bootstrap, registry, unique_group, store, metrics=metrics) as proc:
        # Owning the partition means it has checked: the stop is in the log already.
        [logged] = await log_of(kafka_bootstrap, registry)
        assert proc.state.active
        assert proc.status().checks["lost_log_check"] == "done"

    entry = logged.entry
    assert isinstance(entry, ActivatedEntry)
    assert (entry.seq, entry.reason, entry.source, entry.ts) == (
        4,
        ReasonCode.STATE_LOG_LOST,
        SOURCE,
        NOW,
    )
    assert entry.command_offset is None  # no command asked for it
    assert entry.detail.startswith("the state log was lost: it ends before seq 3")
    assert "lost-0" in entry.detail
    assert "desk stop 0" in entry.detail
    assert entry.signer == PROCESSOR.key_id
    assert reestablished(metrics, "true") == 1
    assert proc.stats.lost_log_reestablished == 1
    # Verified: ESS itself stopped there. Nothing to report as an intrusion.
    assert await security_events(kafka_bootstrap, registry) == []


async def test_an_unverified_stop_is_adopted_and_reported_as_unauthorized_access(
    kafka_bootstrap: str, registry: TopicRegistry, unique_group: str
) -> None:
    mallory = SigningKey(generate_private_key())
    store = InMemoryPolicyStore()
    forged = projected(lost_log(registry.state.name, trips=3, key=mallory))
    await store.set(EMERGENCY_STOP_KEY, forged)
    metrics = ProcessorMetrics()

    async with serving(kafka_bootstrap, registry, unique_group, store, metrics=metrics):
        [logged] = await log_of(kafka_bootstrap, registry)

    entry = logged.entry
    assert isinstance(entry, ActivatedEntry)
    assert (entry.seq, entry.reason) == (3, ReasonCode.STATE_LOG_LOST)
    assert entry.detail.startswith("UNVERIFIED: ")
    assert f"signed by unknown key {mallory.key_id!r}" in entry.detail
    assert reestablished(metrics, "false") == 1
    [event] = await eventually(lambda: security_events(kafka_bootstrap, registry), timeout=WAIT)
    assert event.kind is SecurityEventKind.UNAUTHORIZED_ACCESS
    assert event.source == SOURCE
    assert event.event_id == derive_id(SOURCE, "unauthorized_access", entry.command_id)
    assert "seq 2" in event.detail


@pytest.mark.parametrize(
    "case", ["no record", "inactive record", "the log reaches it", "odd record", "not a record"]
)
async def test_records_that_prove_no_lost_stop_append_nothing(
    kafka_bootstrap: str, registry: TopicRegistry, unique_group: str, case: str
) -> None:
    scope = registry.state.name
    store = FlakyStore()
    log = LogBuilder(scope)
    if case == "inactive record":
        old = lost_log(scope, trips=3)
        old.reset()
        await store.set(EMERGENCY_STOP_KEY, projected(old))
    elif case == "the log reaches it":
        # The log is intact: ACTIVE at seq 1 then reset at seq 2. A stale ACTIVE record at
        # seq 1 (a projector that has not caught up) is behind the log, not beyond it.
        log.trip("a", reason=ReasonCode.MANUAL)
        log.trip("b", reason=ReasonCode.MANUAL)
        await store.set(EMERGENCY_STOP_KEY, projected(log))
        log.reset()
        await log.write(kafka_bootstrap, scope)
    elif case == "odd record":
        await store.set(EMERGENCY_STOP_KEY, {"active": True, "seq": "many"})
    elif case == "not a record":
        store.corrupt = True  # the projector overwrites it; it holds no stop

    async with serving(kafka_bootstrap, registry, unique_group, store) as proc:
        assert proc.status().checks["lost_log_check"] == "done"
        before = len(log.values)
        assert len(await log_of(kafka_bootstrap, registry)) == before
        assert proc.state.active is False
        assert proc.stats.lost_log_reestablished == 0


async def test_an_unreadable_store_is_checked_again_until_it_answers(
    kafka_bootstrap: str, registry: TopicRegistry, unique_group: str
) -> None:
    store = FlakyStore()
    await store.set(EMERGENCY_STOP_KEY, projected(lost_log(registry.state.name, trips=2)))
    store.down = True
    metrics = ProcessorMetrics()

    async with serving(
        kafka_bootstrap, registry, unique_group, store, metrics=metrics, lost_log_retry=0.1
    ) as proc:
        # It serves meanwhile (an empty log is INACTIVE; the projector keeps the ACTIVE record
        # and gates stay closed), and keeps asking.
        await eventually(lambda: store.reads >= 3, timeout=WAIT)
        assert proc.status().checks["lost_log_check"] == "pending"
        assert await log_of(kafka_bootstrap, registry) == []

        store.down = False

        [logged] = await eventually(lambda: log_of(kafka_bootstrap, registry), timeout=WAIT)
        assert logged.entry.reason is ReasonCode.STATE_LOG_LOST  # type: ignore[union-attr]
        assert logged.entry.seq == 2
        await eventually(lambda: proc.status().checks["lost_log_check"] == "done", timeout=WAIT)
    errors = metrics.registry.get_sample_value(
        "ess_command_processor_lost_log_check_errors_total", {}
    )
    assert errors is not None
    assert errors >= 3


async def test_a_restarted_processor_does_not_re_establish_the_same_stop_twice(
    kafka_bootstrap: str, registry: TopicRegistry, unique_group: str
) -> None:
    store = InMemoryPolicyStore()
    await store.set(EMERGENCY_STOP_KEY, projected(lost_log(registry.state.name, trips=1)))

    async with serving(kafka_bootstrap, registry, unique_group, store):
        first = await log_of(kafka_bootstrap, registry)
    # The projector has not written yet: the store still holds the old record (seq 0), but
    # the log now reaches past it (seq 1).
    async with serving(kafka_bootstrap, registry, unique_group, store) as proc:
        assert proc.status().checks["lost_log_check"] == "done"
        assert proc.stats.lost_log_reestablished == 0
        assert await log_of(kafka_bootstrap, registry) == first
    assert [item.entry.seq for item in first] == [1]


async def test_without_a_store_the_check_is_off(
    kafka_bootstrap: str, registry: TopicRegistry, unique_group: str
) -> None:
    async with serving(kafka_bootstrap, registry, unique_group, None) as proc:
        assert proc.status().checks["lost_log_check"] == "off"
        assert proc.status().as_json()["checks"]["lost_log_check"] == "off"
