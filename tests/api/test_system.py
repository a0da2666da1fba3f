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
from ess.api.controller import ResetRejected
from ess.api.protocols import EmergencyState
from ess.clock import ManualClock
from ess.core import ResetPolicy
from ess.core.signing import generate_private_key, public_bytes, sign_reset
from schemas import IDENT_MAX, TEXT_MAX, RejectReason

START = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


class Rig:
    def __init__(
        self, *evaluators: object, timeout: float | None = None, first_start: bool = False
    ) -> None:
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
            first_start=first_start,
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


async def test_restore_when_record_missing_on_a_first_start_then_writes_inactive() -> None:
    rig = Rig(first_start=True)

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


# --------------------------------------------------------------------------- issue 13, item 3


async def test_restore_when_record_missing_after_a_first_start_then_fails_closed() -> None:
    """Redis restarted without persistence, a flush, a wrong namespace: no record is not
    "INACTIVE", it is a PolicyStore that lost what it knew."""
    rig = Rig()

    await rig.system.restore()

    assert rig.controller.state.active
    assert rig.controller.state.reason == "policy_store_stale"
    assert rig.store.data[EMERGENCY_STOP_KEY]["active"] is True


async def test_a_reset_signed_before_a_restart_cannot_clear_the_restored_activation() -> None:
    """The controller's memory of applied resets is not durable; the reset binding is: the
    restored activation is a new one, so a reset captured before the restart is refused."""
    first = Rig(first_start=True)
    await first.system.restore()
    await first.controller.activate("manual: before the restart")
    activation = first.controller.core_state.activation
    assert activation is not None
    key = generate_private_key()
    policy = ResetPolicy(operators={"alice": public_bytes(key)})
    captured = sign_reset(
        key,
        command_id="reset-1",
        operator="alice",
        ts=START,
        nonce="n-1",
        activation_seq=activation.seq,
        activation_command_id=activation.command_id,
    )

    restarted = EmergencyStopController(
        first.store, first.exchange, first.bus, clock=first.clock, reset_policy=policy
    )
    system = EmergencyStopSystem([], restarted, first.store)
    await system.restore()
    assert restarted.state.active

    with pytest.raises(ResetRejected) as refused:
        await restarted.apply_reset(captured)
    assert refused.value.why is RejectReason.ACTIVATION_MISMATCH
    assert restarted.state.active


class HugeError:
    reason_code = "latency_spike"

    def check(self) -> tuple[bool, str | None]:
        raise RuntimeError("\U0001f4a5" * 10_000)


class NonTextReason:
    def check(self) -> object:
        return True, 42


class WrongShape:
    def check(self) -> object:
        return (True, "a", "b")


class LongName:
    name = "x" * 5_000
    reason_code = "not a reason code"

    def check(self) -> tuple[bool, str | None]:
        return True, "daily_loss: " + "y" * 10_000


class NameRaises:
    @property
    def name(self) -> str:
        raise AttributeError("no name today")

    def check(self) -> tuple[bool, str | None]:
        return True, None


@pytest.mark.parametrize(
    ("evaluator", "reason"),
    [
        (HugeError(), "latency_spike"),
        (NonTextReason(), "system_critical"),
        (WrongShape(), "system_critical"),
        (LongName(), "daily_loss"),
        (NameRaises(), "system_critical"),
    ],
    ids=["huge-exception", "non-text-reason", "wrong-shape", "long-name", "name-raises"],
)
async def test_any_evaluator_failure_is_a_trip_that_fits_the_record(
    evaluator: object, reason: str
) -> None:
    rig = Rig(evaluator, first_start=True)
    task = asyncio.create_task(rig.system.run_forever())
    for _ in range(200):
        if rig.controller.state.active:
            break
        await asyncio.sleep(0.01)
    rig.system.stop()
    await asyncio.wait_for(task, 2)

    assert rig.controller.state.active
    assert rig.controller.state.reason == reason
    [entry] = rig.controller.log
    assert len(entry.detail) <= TEXT_MAX
    assert len(entry.source) <= IDENT_MAX


class BrokenController(EmergencyStopController):
    """A controller whose activate has a bug (raises something unexpected) once."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.broken = True

    async def activate(self, reason: str = "manual", **kwargs: object) -> EmergencyState:
        if self.broken:
            self.broken = False
            raise KeyError("a bug in a side effect")
        return await super().activate(reason, **kwargs)  # type: ignore[arg-type]


async def test_run_forever_survives_an_exception_in_its_loop_and_trips() -> None:
    rig = Rig(first_start=True)
    controller = BrokenController(rig.store, rig.exchange, rig.bus, clock=rig.clock)
    system = EmergencyStopSystem(
        [FakeHealthEvaluator(fail=True)],
        controller,
        rig.store,
        check_interval_sec=0.01,
        first_start=True,
    )
    task = asyncio.create_task(system.run_forever())
    for _ in range(200):
        if controller.state.active and system.checks >= 2:
            break
        await asyncio.sleep(0.01)
    system.stop()
    await asyncio.wait_for(task, 2)

    assert not controller.broken  # the bug did strike
    assert controller.state.active
    assert controller.state.reason == "system_critical"
    assert controller.log[0].source == "evaluator:ess"  # the loop's own trip
    assert system.checks >= 2  # it went on checking
