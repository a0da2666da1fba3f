from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ess import (
    EMERGENCY_STOP_KEY,
    ActivationIncomplete,
    EmergencyStopController,
    FakeEventBus,
    FakeExchangeClient,
    FakePolicyStore,
    ResetRejected,
)
from ess.clock import ManualClock
from ess.core import Activation, ResetPolicy
from ess.core.signing import generate_private_key, public_bytes, sign_reset
from schemas import PolicyRecord, RejectReason, ResetCommand, ResetEntry, validate

START = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


class Rig:
    def __init__(self, **controller_kwargs: object) -> None:
        self.clock = ManualClock(START)
        self.exchange = FakeExchangeClient(positions={"BTC/USDT": 1.0}, open_orders=["a", "b"])
        self.store = FakePolicyStore()
        self.bus = FakeEventBus()
        self.controller = EmergencyStopController(
            self.store,
            self.exchange,
            self.bus,
            clock=self.clock,
            retry_delay_sec=0,
            **controller_kwargs,  # type: ignore[arg-type]
        )

    @property
    def record(self) -> PolicyRecord:
        return validate(PolicyRecord, self.store.data[EMERGENCY_STOP_KEY])


@pytest.fixture
def rig() -> Rig:
    return Rig()


def signed(
    key: Ed25519PrivateKey,
    rig: Rig,
    operator: str,
    command_id: str,
    nonce: str,
    *,
    activation: Activation | None = None,
) -> ResetCommand:
    """A reset by ``operator`` for ``activation`` (default: the controller's current one)."""
    activation = activation or rig.controller.core_state.activation
    return sign_reset(
        key,
        command_id=command_id,
        operator=operator,
        ts=START,
        nonce=nonce,
        activation_seq=activation.seq if activation else None,
        activation_command_id=activation.command_id if activation else None,
    )


async def test_activate_when_inactive_then_stops_flattens_writes_and_publishes(rig: Rig) -> None:
    state = await rig.controller.activate("system_critical", detail="health CRITICAL")

    assert state.active is True
    assert state.reason == "system_critical"
    assert state.timestamp == START
    assert rig.exchange.flat
    raw = rig.store.data[EMERGENCY_STOP_KEY]
    assert {k: raw[k] for k in ("active", "reason", "auto_recover")} == {
        "active": True,
        "reason": "system_critical",
        "auto_recover": False,
    }
    assert datetime.fromisoformat(raw["timestamp"]) == START
    assert [(e.type, e.seq) for e in rig.bus.events] == [("emergency.stop", 0)]
    assert [entry.kind for entry in rig.controller.log] == ["activated"]


async def test_activate_writes_policy_before_touching_the_exchange() -> None:
    store = FakePolicyStore()

    class OrderCheckingExchange(FakeExchangeClient):
        seen_record_active: bool | None = None

        async def cancel_all_orders(self) -> None:
            self.seen_record_active = store.data[EMERGENCY_STOP_KEY]["active"]
            await super().cancel_all_orders()

    exchange = OrderCheckingExchange(open_orders=["x"])
    controller = EmergencyStopController(store, exchange, FakeEventBus())

    await controller.activate()

    assert exchange.seen_record_active is True


async def test_activate_when_active_then_recorded_without_reflattening(rig: Rig) -> None:
    await rig.controller.activate("flash_crash")
    rig.clock.advance(1)

    state = await rig.controller.activate("daily_loss")

    assert state.reason == "flash_crash"
    assert [entry.kind for entry in rig.controller.log] == ["activated", "trip_recorded"]
    assert rig.exchange.cancel_calls == 1
    assert rig.exchange.close_calls == 1
    assert len(rig.bus.events) == 1


@pytest.mark.parametrize(
    ("reason", "code", "detail"),
    [
        ("manual", "manual", ""),
        ("fat finger on desk 3", "manual", "fat finger on desk 3"),
        ("equity_drawdown: 30% from peak", "equity_drawdown", "30% from peak"),
    ],
)
async def test_activate_reason_text_maps_to_code_and_detail(
    rig: Rig, reason: str, code: str, detail: str
) -> None:
    await rig.controller.activate(reason)

    assert rig.record.reason == code
    assert rig.record.detail == detail


async def test_activate_when_exchange_keeps_failing_then_active_and_incomplete() -> None:
    rig = Rig(attempts=2)
    rig.exchange.fail_cancels = 3

    with pytest.raises(ActivationIncomplete) as raised:
        await rig.controller.activate("manual")

    assert rig.controller.state.active
    assert set(raised.value.failures) == {"cancel_orders"}
    assert "exchange unavailable" in raised.value.failures["cancel_orders"]
    assert rig.controller.pending_steps == ("cancel_orders",)
    assert rig.exchange.positions == {}, "closing positions must not wait for cancels"
    assert rig.record.active


async def test_reconcile_retries_only_failed_steps(rig: Rig) -> None:
    rig.exchange.fail_cancels = 99
    with pytest.raises(ActivationIncomplete):
        await rig.controller.activate("manual")
    closes_before = rig.exchange.close_calls
    rig.exchange.fail_cancels = 0

    await rig.controller.reconcile()

    assert rig.exchange.flat
    assert rig.controller.pending_steps == ()
    assert rig.exchange.close_calls == closes_before
    assert len(rig.bus.events) == 1


async def test_reconcile_when_nothing_pending_refreshes_the_record(rig: Rig) -> None:
    await rig.controller.activate("manual")
    rig.clock.advance(30)

    await rig.controller.reconcile()

    assert rig.record.refreshed_at == START + timedelta(seconds=30)
    assert rig.record.timestamp == START
    assert rig.exchange.cancel_calls == 1


async def test_reset_when_active_then_inactive_and_reset_event(rig: Rig) -> None:
    await rig.controller.activate("manual")
    rig.clock.advance(60)

    state = await rig.controller.reset(detail="reviewed")

    assert state.active is False
    assert rig.record.active is False
    assert rig.record.reason is None
    assert [e.type for e in rig.bus.events] == ["emergency.stop", "emergency.reset"]
    assert rig.bus.events[-1].seq == 1
    assert rig.controller.core_state.epoch == 1


async def test_reset_when_inactive_then_rejected(rig: Rig) -> None:
    with pytest.raises(ResetRejected) as raised:
        await rig.controller.reset()

    assert raised.value.why is RejectReason.NOT_ACTIVE
    assert [entry.kind for entry in rig.controller.log] == ["reset_rejected"]


async def test_reset_without_operator_key_is_refused() -> None:
    key = generate_private_key()
    rig = Rig(reset_policy=ResetPolicy(operators={"alice": public_bytes(key)}))
    await rig.controller.activate("manual")

    with pytest.raises(PermissionError, match="no operator key"):
        await rig.controller.reset()
    assert rig.controller.state.active


async def test_apply_reset_with_quorum_of_two_needs_two_operators() -> None:
    alice, bob = generate_private_key(), generate_private_key()
    policy = ResetPolicy(
        operators={"alice": public_bytes(alice), "bob": public_bytes(bob)}, quorum=2
    )
    rig = Rig(reset_policy=policy)
    await rig.controller.activate("manual")

    first = await rig.controller.apply_reset(signed(alice, rig, "alice", "r1", "n1"))
    second = await rig.controller.apply_reset(signed(bob, rig, "bob", "r2", "n2"))

    assert first.active is True
    assert second.active is False
    assert rig.bus.events[-1].reset_by == "alice,bob"


async def test_apply_reset_with_forged_signature_is_rejected() -> None:
    alice, mallory = generate_private_key(), generate_private_key()
    rig = Rig(reset_policy=ResetPolicy(operators={"alice": public_bytes(alice)}))
    await rig.controller.activate("manual")

    with pytest.raises(ResetRejected) as raised:
        await rig.controller.apply_reset(signed(mallory, rig, "alice", "r1", "n1"))

    assert raised.value.why is RejectReason.BAD_SIGNATURE
    assert rig.controller.state.active


def test_controller_needs_at_least_one_attempt() -> None:
    with pytest.raises(ValueError, match="attempts"):
        EmergencyStopController(FakePolicyStore(), FakeExchangeClient(), FakeEventBus(), attempts=0)


async def test_reset_when_active_then_signed_for_the_current_activation(rig: Rig) -> None:
    await rig.controller.activate("manual")
    activation = rig.controller.core_state.activation
    assert activation is not None

    await rig.controller.reset(detail="reviewed")

    entry = rig.controller.log[-1]
    assert isinstance(entry, ResetEntry)
    [command] = entry.authorizations
    assert (command.activation_seq, command.activation_command_id) == (
        activation.seq,
        activation.command_id,
    )


async def test_reset_when_active_again_after_a_reset_then_binds_to_the_new_activation(
    rig: Rig,
) -> None:
    await rig.controller.activate("manual")
    await rig.controller.reset()
    rig.clock.advance(5)
    await rig.controller.activate("flash_crash")
    second = rig.controller.core_state.activation
    assert second is not None
    assert second.seq == 2

    state = await rig.controller.reset()

    assert state.active is False
    entry = rig.controller.log[-1]
    assert isinstance(entry, ResetEntry)
    assert entry.authorizations[0].activation_seq == 2
    assert rig.controller.core_state.epoch == 2


async def test_apply_reset_signed_for_a_previous_activation_is_rejected() -> None:
    alice, bob = generate_private_key(), generate_private_key()
    policy = ResetPolicy(operators={"alice": public_bytes(alice), "bob": public_bytes(bob)})
    rig = Rig(reset_policy=policy)
    await rig.controller.activate("manual")
    first = rig.controller.core_state.activation
    held_back = signed(alice, rig, "alice", "r-held", "n-held")
    await rig.controller.apply_reset(signed(bob, rig, "bob", "r-bob", "n-bob"))
    await rig.controller.activate("manual")

    with pytest.raises(ResetRejected) as raised:
        await rig.controller.apply_reset(held_back)

    assert raised.value.why is RejectReason.ACTIVATION_MISMATCH
    assert rig.controller.state.active
    assert held_back.activation_command_id == (first.command_id if first else None)


async def test_apply_reset_without_activation_is_rejected() -> None:
    alice = generate_private_key()
    rig = Rig(reset_policy=ResetPolicy(operators={"alice": public_bytes(alice)}))
    await rig.controller.activate("manual")
    unbound = sign_reset(
        alice,
        command_id="r-unbound",
        operator="alice",
        ts=START,
        nonce="n",
        activation_seq=None,
        activation_command_id=None,
    )

    with pytest.raises(ResetRejected) as raised:
        await rig.controller.apply_reset(unbound)

    assert raised.value.why is RejectReason.ACTIVATION_MISMATCH
    assert rig.controller.state.active
    assert rig.record.active
