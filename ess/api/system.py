"""``EmergencyStopSystem``: evaluates every condition each interval and stops on the first
trigger. It never re-enables trading: there is no code path from here to a reset.

On start it restores from the PolicyStore: an ``active`` record means ESS stays ACTIVE across
the restart; an unreadable or invalid record means "stop" (fail closed). A missing record
means "stop" too (``policy_store_stale``: Redis restarted without persistence, a flush, a
wrong namespace all look like that), unless the caller says this is the first start
(``first_start=True``): then an INACTIVE record is written.

The loop never dies: whatever an evaluator raises (``BaseException`` included, and
exceptions whose text cannot even be printed) or returns, whatever its name, it counts as a
trip with a reason that fits the record; an exception anywhere else in a check is a
``system_critical`` trip, and the loop goes on. Resets signed before a restart cannot clear
the restored activation: a reset is bound to the activation it clears (its ``seq`` and
command id), and the restored activation is a new one.

Nor does it stall on an evaluator. A check that does not answer within the timeout is
abandoned, not awaited: an ``async`` check is cancelled but never waited for (one that
swallows the cancellation cannot hold the loop), a synchronous one runs in its own daemon
thread (one that hangs forever cannot exhaust the event loop's default executor, which the
SQLite PolicyStore needs for its writes). While an evaluator's abandoned check is still
running, its next checks are trips without starting another one, so a hung evaluator holds
one thread or task, not one per interval. What ESS cannot bound is attribute access on the
evaluator itself (``name``, ``reason_code``, ``check``): it runs in the loop and must not
block.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import reprlib
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
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
    except BaseException:  # a name that raises (anything) is still an evaluator to run
        name = type(evaluator).__name__
    return clip(name.strip() or type(evaluator).__name__, _NAME_MAX)


def _default_code(evaluator: object) -> ReasonCode:
    """The evaluator's ``reason_code`` when it is one, else ``system_critical``."""
    try:
        return ReasonCode(getattr(evaluator, "reason_code", ReasonCode.SYSTEM_CRITICAL))
    except BaseException:
        return ReasonCode.SYSTEM_CRITICAL


def _text(value: object) -> str:
    """``str(value)``, or a placeholder when that raises: an exception whose message cannot
    be printed is still a trip, and building its detail must not fail in turn."""
    try:
        return str(value)
    except BaseException:
        return f"<unprintable {_type_name(value)}>"


def _shown(value: object) -> str:
    """A short ``repr`` of what an evaluator returned (bounded in size, never raising)."""
    try:
        return clip(reprlib.repr(value), 200)
    except BaseException:
        return f"<unprintable {_type_name(value)}>"


def _type_name(value: object) -> str:
    try:
        return str(type(value).__name__)
    except BaseException:
        return "object"


def _cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` is the cancellation of the running task (which must propagate), not a
    ``CancelledError`` an evaluator raised or ended with."""
    if not isinstance(exc, asyncio.CancelledError):
        return False
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class _Failed(Exception):
    """An evaluator's check raised (anything) or did not answer in time."""


@dataclass(frozen=True, slots=True)
class _Answer:
    """What a check ended with: its value, or what it raised (``BaseException`` included:
    an evaluator's ``SystemExit`` must not reach the event loop)."""

    value: object = None
    error: BaseException | None = None


async def _answer_of(awaitable: Awaitable[object]) -> _Answer:
    try:
        return _Answer(value=await awaitable)
    except BaseException as exc:  # this task is abandoned on a timeout; nothing re-raises
        return _Answer(error=exc)


def _in_thread(check: Callable[[], object]) -> asyncio.Future[_Answer]:
    """Run a synchronous check in a daemon thread of its own; the future is resolved when
    the check returns, however late (so "still running" is known)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_Answer] = loop.create_future()

    def deliver(answer: _Answer) -> None:
        if not future.done():
            future.set_result(answer)

    def run() -> None:
        try:
            answer = _Answer(value=check())
        except BaseException as exc:
            answer = _Answer(error=exc)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(deliver, answer)

    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(run,), name="ess-evaluator", daemon=True).start()
    return future


class EmergencyStopSystem:
    """Runs evaluators every ``check_interval_sec`` seconds.

    Triggers are edge-detected per evaluator (per object: two evaluators may share a name):
    an evaluator that stays triggered is recorded once, not every interval; if it recovers
    and trips again, that is a new trip. Each check is bounded by ``evaluation_timeout_sec``
    (default: the interval); a check that times out counts as triggered.
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
        #: Evaluators (by ``id``: two may share a name) whose trip has been recorded.
        self._triggered: set[int] = set()
        #: The latest check of each evaluator (by ``id``), possibly abandoned and still running.
        self._running: dict[int, asyncio.Future[_Answer]] = {}
        self._stopping = asyncio.Event()
        self.checks = 0

    def stop(self) -> None:
        """Ask :meth:`run_forever` to return after the current check. Does not reset ESS."""
        self._stopping.set()

    async def run_forever(self) -> None:
        """Restore, then check every interval until :meth:`stop`. Never raises (but for
        cancellation): a failing evaluator, store or exchange is logged and becomes a trip
        or a retry, and an exception escaping a check is a ``system_critical`` trip."""
        try:
            await self._guarded("restore", self.restore)
            while not self._stopping.is_set():
                await self._guarded("check", self.check_once)
                if self._stopping.is_set():
                    break
                await self._sleep(self.check_interval_sec)
        finally:
            for running in self._running.values():
                if isinstance(running, asyncio.Task):
                    running.cancel()  # abandoned async checks: asked to stop, not awaited

    async def _guarded(self, what: str, step: Callable[[], Awaitable[object]]) -> None:
        try:
            await step()
        except (KeyboardInterrupt, SystemExit):
            raise  # the process is being stopped
        except BaseException as exc:  # the loop is the last line of defence: it must not die
            if _cancelled(exc):
                raise
            logger.bind(step=what, error=_shown(exc)).exception("ESS loop step failed; stopping")
            await self._trip(
                ReasonCode.SYSTEM_CRITICAL.value,
                f"ESS {what} failed: {_type_name(exc)}: {_text(exc)}",
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
                self._triggered.discard(id(evaluator))
                continue
            if id(evaluator) in self._triggered:
                continue
            self._triggered.add(id(evaluator))
            newly.append(name)
            default = _default_code(evaluator)
            await self._trip(reason or default.value, "", f"evaluator:{name}", default)
        await self._reconcile()
        return newly

    async def _evaluate(
        self, evaluator: EmergencyConditionEvaluator, name: str
    ) -> tuple[bool, str | None]:
        """``(triggered, reason)``; anything but a clean ``(bool, str | None)`` answer in time
        is a trip (fail closed), ``(False, 42)`` included. The reason may be any length: the
        controller fits it."""
        default = _default_code(evaluator)
        try:
            result = await self._ask(evaluator)
            if not (isinstance(result, tuple) and len(result) == 2):
                raise TypeError(f"check() returned {_shown(result)}, expected (bool, str | None)")
            triggered, reason = cast(tuple[object, object], result)
            if not isinstance(triggered, bool) or not (reason is None or isinstance(reason, str)):
                raise TypeError(f"check() returned {_shown(result)}, expected (bool, str | None)")
        except BaseException as exc:  # whatever the evaluator did, it is a trip
            if _cancelled(exc):
                raise
            error = _text(exc) if isinstance(exc, _Failed) else f"{_type_name(exc)}: {_text(exc)}"
            logger.bind(evaluator=name, error=clip(error, 500)).error(
                "evaluator failed; failing closed"
            )
            return True, f"{default}: {name} could not evaluate: {error}"
        return triggered, reason

    async def _ask(self, evaluator: EmergencyConditionEvaluator) -> object:
        """The evaluator's answer within the timeout, or :class:`_Failed`. A check that does
        not answer in time is abandoned (see the module notes); while it still runs, the
        evaluator is not asked again."""
        key = id(evaluator)
        running = self._running.get(key)
        if running is not None and not running.done():
            raise _Failed(
                f"TimeoutError: its check of an earlier interval is still running "
                f"(timeout {self._timeout:g}s)"
            )
        check = evaluator.check
        future: asyncio.Future[_Answer]
        if inspect.iscoroutinefunction(check):
            future = asyncio.ensure_future(_answer_of(check()))
        else:
            future = _in_thread(check)
        self._running[key] = future
        try:
            done, _ = await asyncio.wait({future}, timeout=self._timeout)
        except asyncio.CancelledError:
            future.cancel()
            raise
        if not done:
            if isinstance(future, asyncio.Task):
                future.cancel()  # asked to stop; a check that ignores it is left behind
            raise _Failed(f"TimeoutError: no answer within {self._timeout:g}s")
        answer = future.result()
        if answer.error is not None:
            raise _Failed(f"{_type_name(answer.error)}: {_text(answer.error)}")
        return answer.value

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
