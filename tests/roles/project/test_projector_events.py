"""Issue 12, finding 4: what ``ess.events`` holds cannot silence the events of the log.

The projector used to read the highest ``seq`` on ``ess.events`` at start and publish nothing
at or below it, so one forged record with a huge ``seq`` silenced every later
``emergency.stop``. Now an entry's event counts as published only when the topic holds
exactly that event; anything else there (forged, or a different event under the same
``seq``) suppresses nothing, and a real event already there is not published again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from ess.kafka.clients import producer
from ess.roles.project.projector import EVENTS_KEY
from schemas import (
    EmergencyResetEvent,
    EmergencyStopEvent,
    ReasonCode,
    TopicRegistry,
    encode,
)
from tests.helpers import eventually
from tests.roles.project.test_projector_broker import WAIT, Rig, metric, open_rig, running

pytestmark = pytest.mark.integration

FORGED_SEQ = 1_000_000_000


@pytest.fixture
async def rig(kafka_bootstrap: str, registry: TopicRegistry) -> AsyncIterator[Rig]:
    async with open_rig(kafka_bootstrap, registry) as opened:
        yield opened


async def publish_events(rig: Rig, *events: EmergencyStopEvent | EmergencyResetEvent) -> None:
    out = producer(rig.bootstrap, read_to_end_safe=True)
    await out.start()
    try:
        for event in events:
            await out.send_and_wait(rig.topics.events.name, encode(event), key=EVENTS_KEY)
    finally:
        await out.stop()


def summary(events: list[EmergencyStopEvent | EmergencyResetEvent]) -> list[tuple[str, int]]:
    return [(event.type, event.seq) for event in events]


async def test_a_forged_high_seq_event_does_not_suppress_the_logs_events(rig: Rig) -> None:
    # Before any projector ran: a forged stop with a huge seq is the newest thing on the topic.
    forged = EmergencyStopEvent(
        reason=ReasonCode.MANUAL,
        detail="forged",
        timestamp=datetime.now(UTC),
        seq=FORGED_SEQ,
    )
    await publish_events(rig, forged)
    await rig.trip()

    async with rig.beating(), running(rig.projector()) as projector:

        async def stop_published() -> bool:
            assert summary(await rig.events()) == [
                ("emergency.stop", FORGED_SEQ),
                ("emergency.stop", 0),
            ]
            return True

        await eventually(stop_published, timeout=WAIT)
        assert metric(projector, "ess_events_published_total", {"type": "emergency.stop"}) == 1


async def test_after_a_restart_new_entries_are_announced_and_old_ones_not_again(
    rig: Rig,
) -> None:
    tripped = await rig.trip()
    async with rig.beating():
        async with running(rig.projector()) as first:
            await eventually(lambda: first.status().events_published_seq == 0, timeout=WAIT)

        # While no projector runs, someone writes to ess.events: a forged stop with a huge
        # seq, and a different event under the seq the next (real) entry will have.
        now = datetime.now(UTC)
        forged_high = EmergencyStopEvent(
            reason=ReasonCode.MANUAL, detail="forged", timestamp=now, seq=FORGED_SEQ
        )
        forged_same_seq = EmergencyResetEvent(reset_by="mallory", timestamp=now, seq=1)
        await publish_events(rig, forged_high, forged_same_seq)
        # Meanwhile the log moves on: a real reset (seq 1) and a new activation (seq 2).
        reset = await rig.reset()
        again = await rig.trip()

        async with running(rig.projector()) as second:
            await eventually(lambda: second.status().events_published_seq == 2, timeout=WAIT)
            events = await rig.events()
            assert summary(events) == [
                ("emergency.stop", 0),  # by the first run; not published again
                ("emergency.stop", FORGED_SEQ),
                ("emergency.reset", 1),  # forged
                ("emergency.reset", 1),  # the real one
                ("emergency.stop", 2),
            ]
            real_reset = events[3]
            assert isinstance(real_reset, EmergencyResetEvent)
            assert (real_reset.reset_by, real_reset.timestamp) == ("alice", reset.ts)
            assert events[4].timestamp == again.ts
            assert events[0].timestamp == tripped.ts
            reg = second.metrics.registry
            assert (
                reg.get_sample_value("ess_events_published_total", {"type": "emergency.stop"}) == 1
            )
            assert (
                reg.get_sample_value("ess_events_published_total", {"type": "emergency.reset"}) == 1
            )
            assert second.status().events_pending == 0
