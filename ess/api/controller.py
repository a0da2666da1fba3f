"""``EmergencyStopController``: the in-process ESS, driven by the same pure core as the
stream workers (``ess.core.decide`` / ``evolve``). It keeps its own state log in memory.

What ``activate`` does, in this order, and why:

1. decide + evolve: the state becomes ACTIVE (latched) before any I/O can fail;
2. write the PolicyStore record ``emergency_stop``: gates refuse new trades *before* we start
   cancelling, so a strategy cannot place orders into the flatten (a classic kill-switch race);
3. publish ``emergency.stop``;
4. cancel every order, then close every position.

Each step is retried a few times; whatever still failed is kept as "pending" and retried by
:meth:`EmergencyStopController.reconcile` (the system calls it every interval), and
:class:`ActivationIncomplete` tells the caller. A step that succeeded is never re-run
needlessly.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from loguru import logger

from ess.api.protocols import (
    EMERGENCY_STOP_KEY,
    EmergencyState,
    EventBus,
    ExchangeClient,
    PolicyStore,
)
from ess.api.reasons import parse_reason
from ess.clock import Clock, SystemClock
from ess.core import INITIAL_STATE, EssState, ResetPolicy, decide, derive_id, evolve
from ess.core.projection import event_for, policy_record
from ess.core.signing import generate_private_key, public_bytes, sign_reset
from ess.errors import EssError
from schemas import (
    IDENT_MAX,
    TEXT_MAX,
    ActivatedEntry,
    ReasonCode,
    ResetCommand,
    ResetEntry,
    ResetRejectedEntry,
    StateEntry,
    TriggerRef,
    TripCommand,
    clip,
)

#: Steps of an activation, in execution order.
STEPS = ("policy_store", "event_bus", "cancel_orders", "close_positions")


def _fit(text: str, limit: int) -> str:
    """``text`` as valid UTF-8 (a lone surrogate, which no store, log or id hash can encode,
    becomes ``?``), cut to ``limit`` characters."""
    return clip(text.encode("utf-8", "replace").decode("utf-8"), limit)


class ResetRejected(EssError, PermissionError):
    """A reset that the state machine refused; ``why`` is the contract's reject reason."""

    def __init__(self, entry: ResetRejectedEntry) -> None:
        self.entry = entry
        self.why = entry.why
        super().__init__(f"reset rejected ({entry.why}): {entry.detail}")


class ActivationIncomplete(EssError, RuntimeError):
    """ESS is ACTIVE (latched) but some activation steps failed and will be retried.

    ``failures`` maps step name to the last error text."""

    def __init__(self, state: EmergencyState, failures: dict[str, str]) -> None:
        self.state = state
        self.failures = failures
        listed = ", ".join(f"{step}: {error}" for step, error in failures.items())
        super().__init__(f"emergency stop is ACTIVE but incomplete: {listed}")


class EmergencyStopController:
    """Stop trading now; re-enable only on an authorized reset.

    ``reset_policy`` names the operators allowed to reset (public keys) and the quorum. If it
    is omitted, one local operator (``operator``) is registered with a key generated for this
    process, and :meth:`reset` signs with it: the in-process API then keeps the signed-reset
    path without key files. Remote or multi-operator resets go through :meth:`apply_reset`.
    """

    def __init__(
        self,
        policy_store: PolicyStore,
        exchange: ExchangeClient,
        event_bus: EventBus,
        *,
        clock: Clock | None = None,
        reset_policy: ResetPolicy | None = None,
        operator: str = "local",
        operator_key: Ed25519PrivateKey | None = None,
        attempts: int = 3,
        retry_delay_sec: float = 0.2,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._policy_store = policy_store
        self._exchange = exchange
        self._event_bus = event_bus
        self._clock: Clock = clock or SystemClock()
        if reset_policy is None:
            operator_key = operator_key or generate_private_key()
            reset_policy = ResetPolicy(operators={operator: public_bytes(operator_key)})
        self._reset_policy = reset_policy
        self._operator = operator
        self._operator_key = operator_key
        self._attempts = attempts
        self._retry_delay = retry_delay_sec
        self._state: EssState = INITIAL_STATE
        self._log: list[StateEntry] = []
        self._pending: list[str] = []
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ views

    @property
    def state(self) -> EmergencyState:
        """Current state as the original API shaped it."""
        activation = self._state.activation
        if activation is None:
            return EmergencyState(active=False, reason=None, timestamp=self._state.last_change)
        return EmergencyState(active=True, reason=activation.reason.value, timestamp=activation.ts)

    @property
    def core_state(self) -> EssState:
        """The folded core state (status, epoch, applied commands, ...)."""
        return self._state

    @property
    def log(self) -> tuple[StateEntry, ...]:
        """Every state-log entry this controller appended, in order."""
        return tuple(self._log)

    @property
    def pending_steps(self) -> tuple[str, ...]:
        """Activation steps that failed and are waiting for :meth:`reconcile`."""
        return tuple(self._pending)

    # ------------------------------------------------------------------ commands

    async def activate(
        self,
        reason: str = ReasonCode.MANUAL.value,
        *,
        detail: str = "",
        source: str = "operator:local",
        trigger: TriggerRef | None = None,
        default_code: ReasonCode = ReasonCode.MANUAL,
    ) -> EmergencyState:
        """Stop trading. ``reason`` is a reason code or free text (``"code: detail"`` works).

        Idempotent in effect: while ACTIVE, a further call is recorded as ``trip_recorded`` and
        re-runs only steps that have not succeeded yet. Raises :class:`ActivationIncomplete`
        when a step still fails after its retries (the state stays ACTIVE regardless).
        """
        code, parsed_detail = parse_reason(str(reason), default_code)
        # Whatever the caller passed, the trip must fit the record: a stop is never refused
        # for the length of its explanation, nor for text no store can encode.
        text = _fit("; ".join(part for part in (parsed_detail, str(detail)) if part), TEXT_MAX)
        source = _fit(str(source).strip() or "operator:local", IDENT_MAX)
        async with self._lock:
            now = self._clock.now()
            command = TripCommand(
                command_id=derive_id(
                    "api-trip", source, code.value, text, now.isoformat(), self._state.next_seq
                ),
                reason=code,
                detail=text,
                source=source,
                trigger=trigger,
                ts=now,
            )
            for entry in self._apply(command, now):
                if isinstance(entry, ActivatedEntry):
                    logger.bind(
                        reason=code.value, detail=text, source=source, seq=entry.seq
                    ).critical("emergency stop ACTIVATED")
                    self._pending = list(STEPS)
                else:
                    logger.bind(
                        reason=code.value, detail=text, source=source, seq=entry.seq
                    ).warning("trip recorded while already active")
            await self._run_pending()
            return self.state

    async def reset(
        self, operator: str | None = None, detail: str = "manual reset"
    ) -> EmergencyState:
        """Manual reset signed with this controller's operator key.

        Raises :class:`ResetRejected` when refused (for example when ESS is not active) and
        ``PermissionError`` when this controller holds no operator key.
        """
        if self._operator_key is None:
            raise PermissionError(
                "this controller has no operator key; submit a signed ResetCommand "
                "with apply_reset()"
            )
        now = self._clock.now()
        nonce = secrets.token_urlsafe(16)
        activation = self._state.activation
        command = sign_reset(
            self._operator_key,
            command_id=derive_id("api-reset", operator or self._operator, nonce),
            operator=operator or self._operator,
            ts=now,
            nonce=nonce,
            detail=detail,
            activation_seq=activation.seq if activation else None,
            activation_command_id=activation.command_id if activation else None,
        )
        return await self.apply_reset(command)

    async def apply_reset(self, command: ResetCommand) -> EmergencyState:
        """Apply a signed reset. Returns the new state (still ACTIVE while a quorum is
        pending); raises :class:`ResetRejected` when refused. Never flattens or trades."""
        async with self._lock:
            now = self._clock.now()
            for entry in self._apply(command, now):
                if isinstance(entry, ResetRejectedEntry):
                    logger.bind(
                        operator=entry.operator, why=entry.why.value, seq=entry.seq
                    ).warning("reset rejected")
                    raise ResetRejected(entry)
                if isinstance(entry, ResetEntry):
                    logger.bind(operators=list(entry.operators), seq=entry.seq).warning(
                        "emergency stop RESET"
                    )
                    self._pending = []
                    await self._write_policy()
                    reset_event = event_for(entry)
                    if reset_event is not None:
                        await self._event_bus.publish(reset_event)
                else:
                    logger.bind(operator=command.operator, seq=entry.seq).info(
                        "reset approval recorded; quorum not yet met"
                    )
            return self.state

    async def reconcile(self) -> EmergencyState:
        """Re-assert the PolicyStore record (fresh ``refreshed_at``) and retry any activation
        step that failed. Called every interval by :class:`EmergencyStopSystem`."""
        async with self._lock:
            if self._pending:
                await self._run_pending()
            else:
                await self._write_policy()
            return self.state

    # ------------------------------------------------------------------ internals

    def _apply(self, command: TripCommand | ResetCommand, now: datetime) -> list[StateEntry]:
        entries = decide(self._state, command, now=now, policy=self._reset_policy)
        for entry in entries:
            self._state = evolve(self._state, entry)
            self._log.append(entry)
        return entries

    async def _write_policy(self) -> None:
        record = policy_record(self._state, refreshed_at=self._clock.now())
        await self._policy_store.set(EMERGENCY_STOP_KEY, record.model_dump(mode="json"))

    async def _publish_stop(self) -> None:
        activation = self._state.activation
        if activation is None:  # pragma: no cover - only called while ACTIVE
            return
        # This controller's log starts at seq 0, so an entry's seq is its index.
        event = event_for(self._log[activation.seq])
        if event is not None:
            await self._event_bus.publish(event)

    def _step(self, name: str) -> Callable[[], Awaitable[None]]:
        return {
            "policy_store": self._write_policy,
            "event_bus": self._publish_stop,
            "cancel_orders": self._exchange.cancel_all_orders,
            "close_positions": self._exchange.close_all_positions,
        }[name]

    async def _run_pending(self) -> None:
        failures: dict[str, str] = {}
        for name in list(self._pending):
            error = await self._with_retries(name, self._step(name))
            if error is None:
                self._pending.remove(name)
            else:
                failures[name] = error
        if failures:
            raise ActivationIncomplete(self.state, failures)

    async def _with_retries(self, name: str, action: Callable[[], Awaitable[None]]) -> str | None:
        error = "not attempted"
        for attempt in range(1, self._attempts + 1):
            try:
                await action()
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                logger.bind(step=name, attempt=attempt, error=error).error("emergency step failed")
                if attempt < self._attempts:
                    await asyncio.sleep(self._retry_delay * attempt)
            else:
                logger.bind(step=name, attempt=attempt).info("emergency step done")
                return None
        return error
