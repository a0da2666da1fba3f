"""``EmergencyStopSystem``: evaluates every condition each interval and stops on the first
trigger. It never re-enables trading: there is no code path from here to a reset.

On start it restores from the PolicyStore: an ``active`` record means ESS stays ACTIVE across
the restart; an unreadable or invalid record means "stop" (fail closed); a missing record is
a first start and gets an inactive record written.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import cast

from loguru import logger

from ess.api.controller import ActivationIncomplete, EmergencyStopController
from ess.api.protocols import EMERGENCY_STOP_KEY, EmergencyConditionEvaluator, PolicyStore
from schemas import PolicyRecord, ReasonCode, RecordError, validate


def evaluator_name(evaluator: object) -> str:
    """Name used in logs and trip sources: ``name`` attribute or the class name."""
    return str(getattr(evaluator, "name", None) or type(evaluator).__name__)


class EmergencyStopSystem:
    """Runs evaluators every ``check_interval_sec`` seconds.

    Triggers are edge-detected per evaluator: an evaluator that stays triggered is recorded
    once, not every interval; if it recovers and trips again, that is a new trip. Each check
    is bounded by ``evaluation_timeout_sec`` (default: the interval); a check that times out
    counts as triggered.
    """

    def __init__(
        self,
        evaluators: Sequence[EmergencyConditionEvaluator],
        controller: EmergencyStopController,
        policy_store: PolicyStore,
        check_interval_sec: float = 5,
        *,
        evaluation_timeout_sec: float | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if check_interval_sec <= 0:
            raise ValueError("check_interval_sec must be positive")
        for evaluator in evaluators:
            if not callable(getattr(evaluator, "check", None)):
                raise TypeError(f"{evaluator!r} has no check() method")
        self.evaluators = list(evaluators)
        self.controller = controller
        self.policy_store = policy_store
        self.check_interval_sec = check_interval_sec
        self._timeout = evaluation_timeout_sec or check_interval_sec
        self._sleep = sleep
        self._triggered: set[str] = set()
        self._stopping = asyncio.Event()
        self.checks = 0

    def stop(self) -> None:
        """Ask :meth:`run_forever` to return after the current check. Does not reset ESS."""
        self._stopping.set()

    async def run_forever(self) -> None:
        """Restore, then check every interval until :meth:`stop`. Never raises on a failing
        evaluator, store or exchange: those are logged and become trips or retries."""
        await self.restore()
        while not self._stopping.is_set():
            await self.check_once()
            if self._stopping.is_set():
                break
            await self._sleep(self.check_interval_sec)

    async def restore(self) -> None:
        """Bring the controller to the state the PolicyStore says (fail closed)."""
        try:
            raw = await self.policy_store.get(EMERGENCY_STOP_KEY)
        except Exception as exc:
            await self._trip(
                ReasonCode.POLICY_STORE_STALE,
                f"cannot read {EMERGENCY_STOP_KEY} at start: {exc}",
                "evaluator:policy_store",
            )
            return
        if raw is None:
            logger.info("no emergency_stop record yet: first start, writing INACTIVE")
            await self._reconcile()
            return
        try:
            record: PolicyRecord = validate(PolicyRecord, dict(raw))
        except RecordError as exc:
            await self._trip(
                ReasonCode.POLICY_STORE_STALE,
                f"{EMERGENCY_STOP_KEY} record unreadable at start: {exc}",
                "evaluator:policy_store",
            )
            return
        if record.active:
            reason = record.reason or ReasonCode.MANUAL
            await self._trip(
                reason,
                f"restored after restart (active since "
                f"{record.timestamp.isoformat()}): {record.detail}".rstrip(": "),
                "evaluator:restore",
            )
        else:
            await self._reconcile()

    async def check_once(self) -> list[str]:
        """Evaluate every evaluator once, trip on new triggers, reconcile side effects.
        Returns the names of evaluators that newly triggered."""
        self.checks += 1
        newly: list[str] = []
        for evaluator in self.evaluators:
            name = evaluator_name(evaluator)
            triggered, reason = await self._evaluate(evaluator, name)
            if not triggered:
                self._triggered.discard(name)
                continue
            if name in self._triggered:
                continue
            self._triggered.add(name)
            newly.append(name)
            default = cast(
                ReasonCode, getattr(evaluator, "reason_code", ReasonCode.SYSTEM_CRITICAL)
            )
            await self._trip(reason or default.value, "", f"evaluator:{name}", default)
        await self._reconcile()
        return newly

    async def _evaluate(
        self, evaluator: EmergencyConditionEvaluator, name: str
    ) -> tuple[bool, str | None]:
        default = getattr(evaluator, "reason_code", ReasonCode.SYSTEM_CRITICAL)
        try:
            if inspect.iscoroutinefunction(evaluator.check):
                result = await asyncio.wait_for(evaluator.check(), self._timeout)
            else:
                result = await asyncio.wait_for(asyncio.to_thread(evaluator.check), self._timeout)
            triggered, reason = cast(tuple[bool, str | None], result)
            if not isinstance(triggered, bool):
                raise TypeError(f"check() returned {result!r}, expected (bool, str | None)")
        except Exception as exc:
            detail = f"{name} could not evaluate: {type(exc).__name__}: {exc}"
            logger.bind(evaluator=name, error=str(exc)).error("evaluator failed; failing closed")
            return True, f"{default}: {detail}"
        return triggered, reason

    async def _trip(
        self,
        reason: str,
        detail: str,
        source: str,
        default: ReasonCode = ReasonCode.SYSTEM_CRITICAL,
    ) -> None:
        try:
            await self.controller.activate(
                reason, detail=detail, source=source, default_code=default
            )
        except ActivationIncomplete as exc:
            logger.bind(failures=exc.failures).error("activation incomplete; will retry")

    async def _reconcile(self) -> None:
        try:
            await self.controller.reconcile()
        except ActivationIncomplete as exc:
            logger.bind(failures=exc.failures).error("activation still incomplete; will retry")
        except Exception as exc:
            logger.bind(error=str(exc)).error("could not refresh the emergency_stop record")
