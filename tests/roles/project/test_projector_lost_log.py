"""The projector across a lost state log: the ACTIVE record in the PolicyStore is never
replaced with INACTIVE while the log lacks it; once the command processor re-establishes the
stop (reason ``state_log_lost``, numbered past the record), the projector writes that
activation with its proof, and a signed reset opens a gate that saw the old record.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from ess.api.fakes import FakePolicyStore
from ess.api.protocols import EMERGENCY_STOP_KEY
from ess.core.attestation import seal_problem
from ess.core.projection import policy_record
from ess.core.recovery import lost_stop, reestablish
from ess.gate import TradingGate, gate_feed
from schemas import EmergencyResetEvent, EmergencyStopEvent, ReasonCode, TopicRegistry
from tests.helpers import eventually
from tests.roles.project.test_projector_broker import T0, WAIT, Rig, metric, open_rig, running
from tests.statelog_support import LogBuilder

pytestmark = pytest.mark.integration


@dataclass
class RecordingStore(FakePolicyStore):
    """The fake store, remembering every value written."""

    history: list[dict[str, Any]] = field(default_factory=list)

    async def set(self, key: str, value: Mapping[str, Any]) -> None:
        await super().set(key, value)
        self.history.append(dict(value))


@pytest.fixture
async def rig(kafka_bootstrap: str, registry: TopicRegistry) -> AsyncIterator[Rig]:
    async with open_rig(kafka_bootstrap, registry, store=RecordingStore()) as opened:
        yield opened


def lost_record(scope: str) -> dict[str, Any]:
    """What the projector of the lost log left: ACTIVE at seq 3 (a trip and three more),
    with the activation as sealed there."""
    lost = LogBuilder(scope)
    for number in range(4):
        lost.trip(f"lost-{number}", ts=T0, reason=ReasonCode.MANUAL, detail="desk stop")
    proof = orjson.loads(lost.values[0])
    record = policy_record(lost.state, refreshed_at=T0, activation_entry=proof)
    return record.model_dump(mode="json")


async def test_the_record_survives_the_lost_log_and_the_re_established_stop_resets(
    rig: Rig,
) -> None:
    assert isinstance(rig.store, RecordingStore)
    old = lost_record(rig.topics.state.name)
    rig.store.data[EMERGENCY_STOP_KEY] = dict(old)
    gate = TradingGate(max_record_age=5.0)

    async with (
        gate_feed(rig.store, gate, poll_interval=0.05),
        rig.beating(),
        running(rig.projector()) as projector,
    ):
        # A gate that read the old record: closed, and it remembers seq 3.
        await eventually(lambda: "ACTIVE" in gate.why(), timeout=WAIT)
        # The log is empty and the processor alive: the projector would vouch for INACTIVE,
        # but not over the ACTIVE record beyond the log. It says what re-establishes it.
        await eventually(
            lambda: metric(projector, "ess_policy_store_write_errors_total") >= 2, timeout=WAIT
        )
        assert rig.store.data[EMERGENCY_STOP_KEY] == old
        fault = projector.status().fault
        assert fault is not None
        assert "state_log_lost" in fault

        # The command processor re-establishes the stop from the record (as it does before
        # serving), numbered past it.
        lost = lost_stop(old, rig.log.state, rig.trust())
        assert lost is not None
        assert lost.verified
        entry = reestablish(
            lost, rig.log.state, now=rig.at(), scope=rig.topics.state.name, source="ess-cp"
        )
        assert entry is not None
        rig.log.add(entry)
        await rig.flush()

        def re_established() -> dict[str, Any]:
            record = rig.store.data[EMERGENCY_STOP_KEY]
            assert record["seq"] == 4, record
            return record

        record = await eventually(re_established, timeout=WAIT)
        assert record["active"] is True
        assert record["reason"] == ReasonCode.STATE_LOG_LOST.value
        # Its proof is the new activation, as sealed: a second loss verifies again.
        assert record["activation_entry"] == orjson.loads(rig.log.values[0])
        problem = seal_problem(
            record["activation_entry"], rig.trust().processor_keys, scope=rig.topics.state.name
        )
        assert problem is None
        await eventually(lambda: projector.status().fault is None, timeout=WAIT)
        assert not gate.allowed()

        # A signed reset of the re-established activation: seq 5, newer than anything the
        # gate saw, so it opens.
        await rig.reset()
        await eventually(lambda: not rig.record().active and rig.record().seq == 5, timeout=WAIT)
        await eventually(gate.allowed, timeout=WAIT, message=f"gate: {gate.why()}")

        async def announced() -> list[EmergencyStopEvent | EmergencyResetEvent]:
            events = await rig.events()
            assert [(e.type, e.seq) for e in events] == [
                ("emergency.stop", 4),
                ("emergency.reset", 5),
            ], events
            return events

        events = await eventually(announced, timeout=WAIT)
        assert events[0].reason is ReasonCode.STATE_LOG_LOST  # type: ignore[union-attr]

    # Never INACTIVE in between: the only INACTIVE record written is the reset's.
    written = rig.store.history
    inactive = [value for value in written if value["active"] is False]
    assert inactive
    assert all(value["seq"] == 5 for value in inactive)
    first_inactive = written.index(inactive[0])
    assert all(value["active"] is True for value in written[:first_inactive])
