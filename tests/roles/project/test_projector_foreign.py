"""Issue 12, finding 1 (reader side): a reset nobody but the processor may write.

Anyone who can produce to ``ess.state`` can append a record shaped like a ``reset`` entry.
The projector must never apply it: the record is *foreign* (it does not verify under the
processor's key), the log is untrusted until the processor acknowledges it with a verified
``unauthorized_access`` trip, and while untrusted nothing INACTIVE is vouched for. The
command processor stays alive throughout (its beats flow), so the only thing keeping the
record ACTIVE is the projector's reading of the log.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from ess.api.fakes import FakePolicyStore
from ess.api.protocols import EMERGENCY_STOP_KEY
from ess.clock import SystemClock
from ess.core.attestation import SigningKey
from ess.core.ids import derive_id
from ess.core.reader import digest, seal_entry
from ess.core.signing import generate_private_key
from ess.kafka.clients import producer, read_to_end
from ess.roles.command.processor import CommandProcessor
from schemas import (
    ReasonCode,
    ResetEntry,
    TopicRegistry,
    TriggerRef,
    TripCommand,
    encode,
)
from tests.helpers import eventually
from tests.roles.project.test_projector_broker import (
    WAIT,
    Rig,
    keeps_refreshing,
    metric,
    open_rig,
    running,
)
from tests.statelog_support import PROCESSOR, operator_reset, policy, trust

pytestmark = pytest.mark.integration

FOREIGN_KEY = SigningKey(generate_private_key())


@dataclass
class RecordingStore(FakePolicyStore):
    """A fake PolicyStore that remembers every value written, to prove what never was."""

    history: list[dict[str, Any]] = field(default_factory=list)

    async def set(self, key: str, value: Mapping[str, Any]) -> None:
        await super().set(key, value)
        self.history.append(dict(value))


@pytest.fixture
async def rig(kafka_bootstrap: str, registry: TopicRegistry) -> AsyncIterator[Rig]:
    async with open_rig(kafka_bootstrap, registry, store=RecordingStore()) as opened:
        yield opened


def forged_reset(rig: Rig, how: str) -> bytes:
    """A reset entry for the current activation, chained to the log's head and carrying
    alice's real signed reset command (say, intercepted): only the processor's seal is
    missing or wrong."""
    command = operator_reset(rig.log.state, "alice", ts=rig.at())
    entry = ResetEntry(
        seq=rig.log.state.next_seq,
        command_id=command.command_id,
        ts=rig.at(),
        operators=("alice",),
        nonce=command.nonce,
        authorizations=(command,),
        prev=rig.log.head,
    )
    scope = rig.topics.state.name
    if how == "unsigned":
        return orjson.dumps(entry.model_dump(mode="json"))
    if how == "foreign key":
        return seal_entry(entry, FOREIGN_KEY, scope=scope, prev=rig.log.head)[1]
    assert how == "processor key, another log"  # a reset copied from another deployment
    return seal_entry(entry, PROCESSOR, scope="other.ess.state", prev=rig.log.head)[1]


def inactive_writes(store: FakePolicyStore) -> list[dict[str, Any]]:
    assert isinstance(store, RecordingStore)
    return [value for value in store.history if value["active"] is False]


@pytest.mark.parametrize("how", ["unsigned", "foreign key", "processor key, another log"])
async def test_a_hand_produced_reset_never_resets_until_acknowledged_then_stays_active(
    rig: Rig, how: str
) -> None:
    tripped = await rig.trip()

    async with rig.beating(), running(rig.projector()) as projector:
        await eventually(lambda: rig.record().active and rig.record().seq == 0, timeout=WAIT)
        await eventually(lambda: projector.writer_problem() is None, timeout=WAIT)

        foreign = await rig.append_raw(forged_reset(rig, how))

        await eventually(lambda: metric(projector, "ess_state_log_trusted") == 0, timeout=WAIT)
        status = projector.status()
        assert (status.status, status.seq, status.health) == ("ACTIVE", 0, "CRITICAL")
        assert status.checks["state_log"] == "untrusted"
        assert status.checks["command_processor"] == "ok"  # the processor is alive
        assert status.fault is not None
        assert status.fault.startswith(f"foreign record at offset {foreign}:")
        assert metric(projector, "ess_state_log_foreign_records_total") == 1
        await eventually(
            lambda: (
                rig.last_beat().status == "CRITICAL"
                and rig.last_beat().checks["state_log"] == "untrusted"
            ),
            timeout=WAIT,
        )
        # ACTIVE is still re-asserted (stopping is always safe); INACTIVE never written.
        await keeps_refreshing(rig)
        assert rig.record().active
        assert rig.record().seq == 0
        assert inactive_writes(rig.store) == []
        assert [(e.type, e.seq) for e in await rig.events()] == [("emergency.stop", 0)]

        # The processor acknowledges the foreign record with a verified trip.
        acknowledgement = await rig.trip(
            command_id=derive_id("state-log-foreign", rig.topics.state.name, foreign),
            reason=ReasonCode.UNAUTHORIZED_ACCESS,
            source="ess-command-processor",
            trigger=TriggerRef(
                topic=rig.topics.state.name,
                partition=0,
                offset=foreign,
                event_ts=datetime.now(UTC),
            ),
        )
        assert acknowledgement.kind == "trip_recorded"

        await eventually(lambda: metric(projector, "ess_state_log_trusted") == 1, timeout=WAIT)
        await eventually(lambda: rig.record().seq == 1, timeout=WAIT)
        status = projector.status()
        assert (status.status, status.seq, status.trips_recorded) == ("ACTIVE", 1, 1)
        assert status.checks["state_log"] == "ok"
        assert status.fault is None
        assert status.since == tripped.ts  # still the original activation
        assert rig.record().active
        assert inactive_writes(rig.store) == []

        # Only a signed operator reset, written by the processor, ends it.
        reset = await rig.reset()
        await eventually(lambda: not rig.record().active, timeout=WAIT)
        assert rig.record().seq == reset.seq == 2
        assert {value["seq"] for value in inactive_writes(rig.store)} == {2}

        async def stop_and_real_reset() -> bool:
            assert [(e.type, e.seq) for e in await rig.events()] == [
                ("emergency.stop", 0),
                ("emergency.reset", 2),
            ]
            return True

        await eventually(stop_and_real_reset, timeout=WAIT)


@pytest.mark.parametrize("miss", ["an earlier offset", "another topic"])
async def test_a_trip_that_does_not_cover_the_foreign_record_does_not_acknowledge_it(
    rig: Rig, miss: str
) -> None:
    await rig.trip()
    await rig.reset()
    await rig.trip()  # ACTIVE again, seq 2

    async with rig.beating(), running(rig.projector()) as projector:
        await eventually(lambda: rig.record().active and rig.record().seq == 2, timeout=WAIT)
        foreign = await rig.append_raw(forged_reset(rig, "unsigned"))
        await eventually(lambda: metric(projector, "ess_state_log_trusted") == 0, timeout=WAIT)

        topic = rig.topics.state.name if miss == "an earlier offset" else rig.topics.commands.name
        offset = foreign - 1 if miss == "an earlier offset" else foreign
        await rig.trip(
            trigger=TriggerRef(topic=topic, partition=0, offset=offset, event_ts=datetime.now(UTC))
        )

        await eventually(lambda: rig.record().seq == 3, timeout=WAIT)  # applied...
        status = projector.status()
        assert status.checks["state_log"] == "untrusted"  # ...but acknowledges nothing
        assert metric(projector, "ess_state_log_trusted") == 0
        assert rig.record().active


async def test_the_real_processor_acknowledges_a_forged_reset_and_esss_stays_active(
    rig: Rig, unique_group: str
) -> None:
    processor = CommandProcessor(
        rig.bootstrap,
        rig.topics,
        reset_policy=policy(),
        clock=SystemClock(),
        signing_key=PROCESSOR,
        trust=trust(rig.topics.state.name),
        group_id=unique_group,
        join_group=False,
        beat_interval=0.2,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    try:
        async with running(rig.projector()) as projector:
            await eventually(lambda: processor.owns_commands or task.done(), timeout=WAIT)
            await eventually(lambda: rig.record().seq is None, timeout=WAIT)  # INACTIVE, vouched

            out = producer(rig.bootstrap)
            await out.start()
            try:
                trip = TripCommand(
                    command_id=f"trip-{uuid.uuid4().hex[:8]}",
                    reason=ReasonCode.MANUAL,
                    detail="operator stop",
                    source="operator:test",
                    ts=datetime.now(UTC),
                )
                await out.send_and_wait(rig.topics.commands.name, encode(trip), key=b"ess")
            finally:
                await out.stop()
            await eventually(lambda: rig.record().active, timeout=WAIT)

            # Forge a reset chained to the processor's last entry, as convincingly as can be.
            [record] = await read_to_end(rig.bootstrap, rig.topics.state.name)
            assert record.value is not None
            rig.log.state = processor.state
            rig.log.head = digest(record.value)
            foreign = await rig.append_raw(forged_reset(rig, "foreign key"))

            async def acknowledged() -> bool:
                assert processor.stats.acknowledgements == 1
                assert processor.state.trips_recorded == 1
                return True

            await eventually(acknowledged, timeout=WAIT)
            await eventually(lambda: projector.status().seq == 1, timeout=WAIT)
            status = projector.status()
            assert (status.status, status.trips_recorded) == ("ACTIVE", 1)
            assert status.checks["state_log"] == "ok"
            assert metric(projector, "ess_state_log_trusted") == 1
            await eventually(lambda: rig.record().seq == 1, timeout=WAIT)
            assert rig.record().active
            # The only INACTIVE ever written is the empty log's, before the trip.
            assert {value["seq"] for value in inactive_writes(rig.store)} == {None}
            assert foreign == 1
            assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)
    assert rig.store.data[EMERGENCY_STOP_KEY]["active"] is True
