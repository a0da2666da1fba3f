from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from ess import (
    EMERGENCY_STOP_KEY,
    EmergencyStopController,
    EmergencyStopSystem,
    FakeEventBus,
    FakeExchangeClient,
    FakeHealthEvaluator,
    FakePolicyStore,
    ManualTriggerEmergencyEvaluator,
)
from ess.clock import ManualClock

START = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


class Rig:
    def __init__(self, *evaluators: object, timeout: float | None = None) -> None:
        self.clock = ManualClock(START)
        self.exchange = FakeExchangeClient(positions={"ETH/USDT": -2.0}, open_orders=["o"])
        self.store = FakePolicyStore()
        self.bus = FakeEventBus()
        self.controller = EmergencyStopController(
            self.store, self.exchange, self.bus, clock=self.clock, retry_delay_sec=0
        )
        self.system = EmergencyStopSystem(
            list(evaluators),
            self.controller,
            self.store,
            check_interval_sec=0.01,  # type: ignore[arg-type]
            evaluation_timeout_sec=timeout,
        )

    @property
    def kinds(self) -> list[str]:
        return [entry.kind for entry in self.controller.log]


class Raising:
    reason_code = "latency_spike"

    def check(self) -> tuple[bool, str | None]:
        raise ConnectionError("metrics DB down")


class Garbage:
    def check(self) -> object:
        return "yes"


class Slow:
    def check(self) -> tuple[bool, str | None]:
        time.sleep(0.3)
        return False, None


class AsyncEvaluator:
    def __init__(self) -> None:
        self.fire = False

    async def check(self) -> tuple[bool, str | None]:
        await asyncio.sleep(0)
        return self.fire, "order_rejects: 12 rejects in 60s" if self.fire else None


async def test_check_when_evaluator_triggers_then_activates_with_its_reason() -> None:
    health = FakeHealthEvaluator()
    rig = Rig(health)
    assert await rig.system.check_once() == []
    health.fail = True

    newly = await rig.system.check_once()

    assert newly == ["FakeHealthEvaluator"]
    assert rig.controller.state.reason == "system_critical"
    assert rig.controller.log[0].source == "evaluator:FakeHealthEvaluator"  # type: ignore[union-attr]
    assert rig.exchange.flat


async def test_check_when_condition_clears_then_stays_active() -> None:
    health = FakeHealthEvaluator(fail=True)
    rig = Rig(health)
    await rig.system.check_once()
    health.fail = False

    for _ in range(5):
        rig.clock.advance(10)
        await rig.system.check_once()

    assert rig.controller.state.active
    assert rig.store.data[EMERGENCY_STOP_KEY]["active"] is True


async def test_check_is_edge_triggered_per_evaluator() -> None:
    manual = ManualTriggerEmergencyEvaluator()
    rig = Rig(manual)
    manual.trigger("desk call")
    await rig.system.check_once()
    await rig.system.check_once()
    assert rig.kinds == ["activated"]

    manual.clear()
    await rig.system.check_once()
    manual.trigger("second call")
    await rig.system.check_once()

    assert rig.kinds == ["activated", "trip_recorded"]


async def test_check_when_evaluator_raises_then_fails_closed_naming_it() -> None:
    rig = Rig(Raising())

    await rig.system.check_once()

    activation = rig.controller.core_state.activation
    assert activation is not None
    assert activation.reason == "latency_spike"
    assert "Raising could not evaluate" in activation.detail
    assert "metrics DB down" in activation.detail


async def test_check_when_evaluator_returns_garbage_then_fails_closed() -> None:
    rig = Rig(Garbage())

    await rig.system.check_once()

    activation = rig.controller.core_state.activation
    assert activation is not None
    assert activation.reason == "system_critical"
    assert "Garbage could not evaluate" in activation.detail


async def test_check_when_evaluator_hangs_then_fails_closed() -> None:
    rig = Rig(Slow(), timeout=0.05)

    await rig.system.check_once()

    assert rig.controller.state.active
    assert "TimeoutError" in rig.controller.core_state.activation.detail  # type: ignore[union-attr]


async def test_check_supports_async_evaluators() -> None:
    evaluator = AsyncEvaluator()
    rig = Rig(evaluator)
    await rig.system.check_once()
    assert not rig.controller.state.active
    evaluator.fire = True

    await rig.system.check_once()

    assert rig.controller.state.reason == "order_rejects"


async def test_first_trigger_activates_and_later_ones_are_recorded() -> None:
    rig = Rig(FakeHealthEvaluator(fail=True), Raising())

    await rig.system.check_once()

    assert rig.kinds == ["activated", "trip_recorded"]
    assert rig.controller.state.reason == "system_critical"


async def test_restore_when_record_active_then_stays_active_and_reflattens() -> None:
    rig = Rig()
    rig.store.data[EMERGENCY_STOP_KEY] = {
        "active": True,
        "reason": "flash_crash",
        "timestamp": "2026-11-22T09:00:00+00:00",
        "auto_recover": False,
    }

    await rig.system.restore()

    assert rig.controller.state.active
    assert rig.controller.state.reason == "flash_crash"
    assert rig.exchange.flat


@pytest.mark.parametrize(
    "setup",
    [
        pytest.param(lambda store: setattr(store, "fail_reads", True), id="unreadable"),
        pytest.param(
            lambda store: store.data.update({EMERGENCY_STOP_KEY: {"active": "maybe"}}), id="invalid"
        ),
    ],
)
async def test_restore_when_record_unusable_then_fails_closed(setup: object) -> None:
    rig = Rig()
    setup(rig.store)  # type: ignore[operator]

    await rig.system.restore()

    assert rig.controller.state.active
    assert rig.controller.state.reason == "policy_store_stale"


async def test_restore_when_record_missing_then_writes_inactive() -> None:
    rig = Rig()

    await rig.system.restore()

    assert not rig.controller.state.active
    assert rig.store.data[EMERGENCY_STOP_KEY]["active"] is False
    assert rig.store.data[EMERGENCY_STOP_KEY]["auto_recover"] is False


async def test_restore_when_record_inactive_then_stays_inactive() -> None:
    rig = Rig()
    rig.store.data[EMERGENCY_STOP_KEY] = {
        "active": False,
        "reason": None,
        "timestamp": "2026-11-22T09:00:00+00:00",
        "auto_recover": False,
    }

    await rig.system.restore()

    assert not rig.controller.state.active


async def test_run_forever_checks_until_stopped() -> None:
    health = FakeHealthEvaluator()
    rig = Rig(health)
    task = asyncio.create_task(rig.system.run_forever())
    health.fail = True

    for _ in range(200):
        if rig.controller.state.active:
            break
        await asyncio.sleep(0.01)
    rig.system.stop()
    await asyncio.wait_for(task, 2)

    assert rig.controller.state.active
    assert rig.system.checks >= 1


async def test_loop_survives_a_store_outage_and_keeps_retrying() -> None:
    health = FakeHealthEvaluator(fail=True)
    rig = Rig(health)
    rig.store.fail_writes = True

    await rig.system.check_once()
    await rig.system.check_once()
    assert rig.controller.pending_steps == ("policy_store",)
    rig.store.fail_writes = False
    await rig.system.check_once()

    assert rig.controller.pending_steps == ()
    assert rig.store.data[EMERGENCY_STOP_KEY]["active"] is True


def test_system_rejects_objects_without_check() -> None:
    rig = Rig()
    with pytest.raises(TypeError, match="no check"):
        EmergencyStopSystem([object()], rig.controller, rig.store)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="positive"):
        EmergencyStopSystem([], rig.controller, rig.store, check_interval_sec=0)
