"""``EmergencyStopSystem``: evaluates every condition each interval and stops on the first
trigger. It never re-enables trading: there is no code path from here to a reset.

On start it restores from the PolicyStore: an ``active`` record means ESS stays ACTIVE across
the restart; an unreadable or invalid record means "stop" (fail closed). A missing record
means "stop" too (``policy_store_stale``: Redis restarted without persistence, a flush, a
wrong namespace all look like that), unless the caller says this is the first start
(``first_start=True``): then an INACTIVE record is written.

The loop never dies: whatever an evaluator raises or returns, whatever its name, it counts
as a trip with a reason that fits the record; an exception anywhere else in a check is a
``system_critical`` trip, and the loop goes on. Resets signed before a restart cannot clear
the restored activation: a reset is bound to the activation it clears (its ``seq`` and
command id), and the restored activation is a new one.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import cast

from loguru import logger

from ess.api.controller import ActivationIncomplete, EmergencyStopController
from ess.api.protocols import EMERGENCY_STOP_KEY, EmergencyConditionEvaluator, PolicyStore
from schemas import IDENT_MAX, PolicyRecord, ReasonCode, RecordError, clip, validate

#: Room for the ``evaluator:`` prefix of a trip source within an identifier's limit.
_NAME_MAX = IDENT_MAX - len("evaluator:")


def evaluator_name(evaluator: object) -> str:
    """Name used in logs and trip sources: ``name`` attribute or the class name, cut to fit a
    trip's ``source``. Never raises, whatever ``name`` is."""
    try:
        name = str(getattr(evaluator, "name", None) or type(evaluator).__name__)
    except Exception:  # a name property that raises is still an evaluator to run
        name = type(evaluator).__name__
    return clip(name.strip() or type(evaluator).__name__, _NAME_MAX)


def _default_code(evaluator: object) -> ReasonCode:
    """The evaluator's ``reason_code`` when it is one, else ``system_critical``."""
    try:
        return ReasonCode(getattr(evaluator, "reason_code", ReasonCode.SYSTEM_CRITICAL))
    except Exception:
        return ReasonCode.SYSTEM_CRITICAL


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
        first_start: bool = False,
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
        self._first_start = first_start
        self._sleep = sleep
        self._triggered: set[str] = set()
        self._stopping = asyncio.Event()
        self.checks = 0

    def stop(self) -> None:
        """Ask :meth:`run_forever` to return after the current check. Does not reset ESS."""
        self._stopping.set()

    async def run_forever(self) -> None:
        """Restore, then check every interval until :meth:`stop`. Never raises (but for
        cancellation): a failing evaluator, store or exchange is logged and becomes a trip
        or a retry, and an exception escaping a check is a ``system_critical`` trip."""
        await self._guarded("restore", self.restore)
        while not self._stopping.is_set():
            await self._guarded("check", self.check_once)
            if self._stopping.is_set():
                break
            await self._sleep(self.check_interval_sec)

    async def _guarded(self, what: str, step: Callable[[], Awaitable[object]]) -> None:
        try:
            await step()
        except Exception as exc:  # the loop is the last line of defence: it must not die
            logger.bind(step=what, error=repr(exc)).exception("ESS loop step failed; stopping")
            await self._trip(
                ReasonCode.SYSTEM_CRITICAL.value,
                f"ESS {what} failed: {type(exc).__name__}: {exc}",
                "evaluator:ess",
            )

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
            if self._first_start:
                logger.info("no emergency_stop record yet: first start, writing INACTIVE")
                await self._reconcile()
                return
            await self._trip(
                ReasonCode.POLICY_STORE_STALE,
                f"no {EMERGENCY_STOP_KEY} record at start and this is not a first start "
                "(first_start=False): the store lost it, so ESS cannot know it was INACTIVE",
                "evaluator:policy_store",
            )
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
            default = _default_code(evaluator)
            await self._trip(reason or default.value, "", f"evaluator:{name}", default)
        await self._reconcile()
        return newly

    async def _evaluate(
        self, evaluator: EmergencyConditionEvaluator, name: str
    ) -> tuple[bool, str | None]:
        """``(triggered, reason)``; anything but a clean ``(bool, str | None)`` answer in time
        is a trip (fail closed). The reason may be any length: the controller fits it."""
        default = _default_code(evaluator)
        try:
            if inspect.iscoroutinefunction(evaluator.check):
                result = await asyncio.wait_for(evaluator.check(), self._timeout)
            else:
                result = await asyncio.wait_for(asyncio.to_thread(evaluator.check), self._timeout)
            if not (isinstance(result, tuple) and len(result) == 2):
                raise TypeError(f"check() returned {result!r:.200}, expected (bool, str | None)")
            triggered, reason = cast(tuple[object, object], result)
            if not isinstance(triggered, bool):
                raise TypeError(f"check() returned {result!r:.200}, expected (bool, str | None)")
        except Exception as exc:
            detail = f"{name} could not evaluate: {type(exc).__name__}: {exc}"
            logger.bind(evaluator=name, error=clip(str(exc), 500)).error(
                "evaluator failed; failing closed"
            )
            return True, f"{default}: {detail}"
        if reason is not None and not isinstance(reason, str):
            reason = f"{default}: {name} gave a non-text reason {reason!r:.200}"
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
