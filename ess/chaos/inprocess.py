"""In-process API campaign: hostile evaluators, store loss, restarts and replayed resets against
the library form of ESS (:class:`~ess.api.controller.EmergencyStopController` driven by
:class:`~ess.api.system.EmergencyStopSystem`).

What runs
---------
Every *round* builds one or more ESS instances (controller + system + fake exchange and event
bus, checking every :data:`INTERVAL_S` with a :data:`TIMEOUT_S` evaluation timeout) over a
real PolicyStore adapter, the *backend*: ``memory`` (:class:`~ess.policystore.InMemoryPolicyStore`),
``sqlite`` (a temporary :class:`~ess.policystore.SQLitePolicyStore` file) or ``redis``
(:class:`~ess.policystore.RedisPolicyStore` under a namespace of its own, deleted afterwards;
``$ESS_TEST_REDIS_URL`` or ``redis://127.0.0.1:6379/0``; skipped when unreachable). The store
sits behind a switchboard that can make reads or writes fail, or acknowledge writes it drops.
Rounds are of these kinds (every variant is listed in :data:`VARIANTS`):

* ``raise``: an evaluator (sync and async) raising huge, astral, lone-surrogate and control
  texts, an exception whose ``str`` raises, ``CancelledError``, ``SystemExit``,
  ``KeyboardInterrupt``, ``GeneratorExit``, a bare ``BaseException`` subclass, a ``check``
  attribute that starts raising after construction.
* ``hang``: a sync check sleeping far past the timeout (also over SQLite, whose writes need
  the event loop's default executor), an async one, and an async one that swallows its
  cancellation for :data:`STUBBORN_S`.
* ``garbage``: wrong shapes, non-bool flags, non-text reasons (``(False, 42)`` included),
  huge and lone-surrogate reasons, a reason whose ``str`` raises, unprintable results.
* ``name``: huge, astral, lone-surrogate, blank, non-text and raising names and reason codes,
  a 100,000-character class name, and two evaluators of one class (one tripping, one not).
* ``store``: writes failing during the activation then recovering; the record lost while
  ACTIVE; the record lost (or never kept, or corrupted, or unreadable) before a restart.
* ``restart``: a new controller + system over the same store after an activation, with and
  without ``first_start``, chained three deep, and after a reset.
* ``replay``: a signed reset captured before a restart (or a store loss) and replayed after
  it; an applied reset replayed after a new trip; resets replayed across restarts at one
  frozen instant; a reset signed while INACTIVE replayed once ACTIVE.
* ``control``: healthy evaluators only (nothing may trip).

In every hostile evaluator round the hostile evaluator sits between a healthy
:class:`~ess.api.fakes.FakeHealthEvaluator` and an untriggered manual button, ESS runs
``run_forever`` with ``first_start=True``, and must be ACTIVE within :data:`DEADLINE_S` and
then go on checking. Each round runs in an event loop of its own in a worker thread, so that
a defect that kills or wedges a loop (or raises ``SystemExit`` in it) costs one round, not
the campaign.

Figures (``run_campaign``); the failures, which must all be 0 (:data:`FAILURES`):

* ``missed_trips``: hostile evaluator rounds not ACTIVE within :data:`DEADLINE_S`.
* ``loop_deaths``: rounds where ``run_forever`` ended (returned or raised) before it was
  stopped, or raised when stopped.
* ``loop_stalls``: rounds where the loop did not complete :data:`MIN_CHECKS` further checks
  within :data:`WATCH_S` after tripping, or did not end within :data:`STOP_S` of ``stop()``.
* ``records_over_limit``: state-log entries, PolicyStore records or events that do not
  re-validate against the schemas (``TEXT_MAX``, ``IDENT_MAX``) or cannot be encoded.
* ``inactive_after_store_loss``: restarts after the record was lost, dropped, corrupted or
  unreadable (``first_start=False``) that came back INACTIVE.
* ``inactive_after_restart``: restarts over an ACTIVE record that came back INACTIVE (with
  or without ``first_start``).
* ``records_not_reasserted``: an ACTIVE ESS whose store came back (writes recovered, record
  lost) without the record saying ``active`` again within :data:`RECOVER_S`.
* ``replayed_resets_accepted``: captured or already-applied resets accepted on replay.
* ``duplicate_trip_entries``: trip entries beyond the one a round's hostile evaluator (or
  pair of same-named evaluators) should record: edge detection per evaluator.
* ``false_trips``: control rounds (healthy evaluators only) that tripped.
* ``not_flat``: ACTIVE rounds whose fake exchange still held positions or orders.
* ``round_errors``: rounds the campaign itself could not complete (no figure taken).

Informational: ``rounds``, ``rounds_by_kind``, ``rounds_by_backend``, ``variants``,
``redis_available``; ``time_to_active_s`` ``{p50, p99, max}`` over hostile evaluator rounds,
and ``slow_trips``: those slower than :data:`SLOW_S` (with ``slow_trip_examples``). Under the
JSON logging of ``make chaos``, a trip whose detail is one long word (a 1 MB exception text,
a 10 KB unknown reason) spends up to ~1 s in the log redaction of ``emergency stop
ACTIVATED`` (``ess.observability.logging.redact_text`` is quadratic in the length of a word run)
before the PolicyStore write and the flatten, with the host's event loop blocked meanwhile;
``trips_by_reason``; ``guard_trips`` (trips recorded by the loop's own guard,
``evaluator:ess``, rather than the evaluator); ``replays`` and ``resets_refused_by_why``
(``ignored``: a command id already applied, dropped without an entry);
``first_start_after_loss_inactive`` (a restart told ``first_start=True`` after the record was
lost comes back INACTIVE: the contract, the caller vouches for it); ``inactive_restarts``
(restarts over an INACTIVE record that stayed INACTIVE, as they should); ``examples``: the
first failures, named by variant and backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import sqlite3
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, cast

import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from loguru import logger

from ess.api.controller import EmergencyStopController, ResetRejected
from ess.api.evaluators import EvaluationError, ManualTriggerEmergencyEvaluator
from ess.api.fakes import FakeEventBus, FakeExchangeClient, FakeHealthEvaluator
from ess.api.protocols import EMERGENCY_STOP_KEY, EmergencyConditionEvaluator, PolicyStore
from ess.api.system import EmergencyStopSystem
from ess.chaos.support import first_true, percentile, rounded
from ess.clock import Clock, ManualClock, SystemClock
from ess.core import ResetPolicy
from ess.core.signing import generate_private_key, public_bytes, sign_reset
from ess.policystore import (
    DEFAULT_REDIS_URL,
    InMemoryPolicyStore,
    PolicyStoreUnavailable,
    RedisPolicyStore,
    SQLitePolicyStore,
)
from ess.policystore.sqlite_store import TABLE
from schemas import (
    ActivatedEntry,
    PolicyRecord,
    ReasonCode,
    ResetCommand,
    ResetEntry,
    StateEntry,
    TripRecordedEntry,
    decode,
    encode,
    validate,
)

__all__ = ["FAILURES", "VARIANTS", "run_campaign"]

#: Figures that must be 0.
FAILURES: Final = (
    "missed_trips",
    "loop_deaths",
    "loop_stalls",
    "records_over_limit",
    "inactive_after_store_loss",
    "inactive_after_restart",
    "records_not_reasserted",
    "replayed_resets_accepted",
    "duplicate_trip_entries",
    "false_trips",
    "not_flat",
    "round_errors",
)

#: The systems' check interval and evaluation timeout: short, so that a round takes a
#: fraction of a second, and far apart from the hangs below.
INTERVAL_S: Final = 0.01
TIMEOUT_S: Final = 0.05
#: A hostile evaluator round must be ACTIVE within this. A timeout plus a few intervals is
#: enough; the rest is room for a loaded machine and for the log redaction of a 4 KB trip
#: detail made of one long word (up to ~1 s: see ``slow_trips``).
DEADLINE_S: Final = 3.0
#: Hostile rounds slower than this to ACTIVE are counted in ``slow_trips`` (informational).
SLOW_S: Final = 0.25
#: After tripping, the loop must complete ``MIN_CHECKS`` more checks within ``WATCH_S``
#: (ten checks take about 0.15 s; a loop whose store writes wait for a free thread of the
#: default executor, six on two cores, does not get there).
WATCH_S: Final = 2.0
MIN_CHECKS: Final = 10
#: ``run_forever`` must end within this of ``stop()``.
STOP_S: Final = 2.0
#: A store that came back must hold an ACTIVE record again within this.
RECOVER_S: Final = 2.0
#: How long a hanging sync check sleeps (a daemon thread: never waited for) and how long a
#: stubborn async check swallows its cancellation: both far past the timeout and the
#: deadline, so that waiting for them would show as a missed trip or a stall.
HANG_S: Final = 5.0
STUBBORN_S: Final = 4.0
#: Bound of one round, whatever it does; and of the clean-up of its event loop (longer than
#: a stubborn check takes to give up).
ROUND_LIMIT_S: Final = 30.0
LEFTOVER_S: Final = 5.0
#: Full size: every variant this many times (the store, restart and replay ones on every
#: backend each time, the evaluator ones on a backend drawn from the seed).
FULL_REPEATS: Final = 3

REDIS_URL_ENV: Final = "ESS_TEST_REDIS_URL"
_OPERATOR: Final = "chaos-operator"
_ALIVE_REASON: Final = "manual: hostile name, still a trip"


# --------------------------------------------------------------------------- hostile evaluators


class _Boom(BaseException):
    """Not an ``Exception``: what ``class Error(BaseException)`` in a careless library gives."""


class _Unprintable(Exception):
    """An exception whose text (and ``repr``) cannot be produced."""

    def __str__(self) -> str:
        raise _Unprintable()

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


class _HugeText(Exception):
    """An exception whose text is two million astral characters."""

    def __str__(self) -> str:
        return "\U0001f4a5" * 2_000_000


class _EvilStr(str):
    """A ``str`` (it passes ``isinstance``) whose ``str()`` raises."""

    __slots__ = ()

    def __str__(self) -> str:
        raise RuntimeError("this reason cannot be read")


class _EvilTuple(tuple[object, ...]):
    """A tuple whose length cannot be taken."""

    def __len__(self) -> int:
        raise RuntimeError("no length today")


class _Unrepresentable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __str__(self) -> str:
        raise RuntimeError("no str")


class _Raises:
    """A sync check raising what ``make`` builds."""

    reason_code = ReasonCode.LATENCY_SPIKE

    def __init__(self, make: Callable[[], BaseException]) -> None:
        self._make = make

    def check(self) -> tuple[bool, str | None]:
        raise self._make()


class _RaisesAsync:
    """An async check raising what ``make`` builds (after one await)."""

    reason_code = ReasonCode.LATENCY_SPIKE

    def __init__(self, make: Callable[[], BaseException]) -> None:
        self._make = make

    async def check(self) -> tuple[bool, str | None]:
        await asyncio.sleep(0)
        raise self._make()


class _CheckVanishes:
    """``check`` is there when ESS is built (one access), then raises on every access."""

    def __init__(self) -> None:
        self._accessed = False

    @property
    def check(self) -> Callable[[], tuple[bool, str | None]]:
        if self._accessed:
            raise RuntimeError("check() is gone")
        self._accessed = True
        return self._fine

    def _fine(self) -> tuple[bool, str | None]:
        return False, None


class _Sleeps:
    """A sync check blocking far past the timeout (a socket read without a timeout)."""

    reason_code = ReasonCode.DATA_FEED_STALE

    def check(self) -> tuple[bool, str | None]:
        time.sleep(HANG_S)
        return False, None


class _SleepsAsync:
    """An async check awaiting far past the timeout (cancellable)."""

    reason_code = ReasonCode.DATA_FEED_STALE

    async def check(self) -> tuple[bool, str | None]:
        await asyncio.sleep(HANG_S)
        return False, None


class _Stubborn:
    """An async check that swallows its cancellation (a retry loop catching everything)
    until :data:`STUBBORN_S` has passed."""

    reason_code = ReasonCode.DATA_FEED_STALE

    async def check(self) -> tuple[bool, str | None]:
        until = time.monotonic() + STUBBORN_S
        while (left := until - time.monotonic()) > 0:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(left)
        return False, None


class _Returns:
    """A sync check returning what ``make`` builds."""

    def __init__(self, make: Callable[[], object]) -> None:
        self._make = make

    def check(self) -> object:
        return self._make()


class _ReturnsAsync:
    """An async check returning what ``make`` builds."""

    def __init__(self, make: Callable[[], object]) -> None:
        self._make = make

    async def check(self) -> object:
        await asyncio.sleep(0)
        return self._make()


class _Tripping:
    """Trips with a plain reason; its subclasses vary the name and reason code."""

    def check(self) -> tuple[bool, str | None]:
        return True, _ALIVE_REASON


class _Named(_Tripping):
    def __init__(self, name: object) -> None:
        self.name = name


class _NameRaises(_Tripping):
    def __init__(self, make: Callable[[], BaseException]) -> None:
        self._make = make

    @property
    def name(self) -> str:
        raise self._make()


class _ReasonCodeRaises(_Tripping):
    @property
    def reason_code(self) -> str:
        raise _Boom("no reason code")


class _Twin:
    """Two of these share a name (the class name): one trips, one does not."""

    def __init__(self, fire: bool) -> None:
        self.fire = fire

    def check(self) -> tuple[bool, str | None]:
        return (True, "system_critical: twin") if self.fire else (False, None)


def _huge_class_name() -> object:
    cls = type("C" * 100_000, (_Tripping,), {})
    return cls()


def _astral_class_name() -> object:
    cls = type("\U0001f4a5" * 1_000, (_Tripping,), {})
    return cls()


Make = Callable[[], list[object]]


@dataclass(frozen=True, slots=True)
class _Hostile:
    """An evaluator round: the evaluators to put between the healthy neighbours, how many
    trip entries they may record (one per edge), and a backend it must run on, if any."""

    make: Make
    trips: int = 1
    backend: str | None = None


def _one(factory: Callable[[], object]) -> Make:
    return lambda: [factory()]


def _raises(make: Callable[[], BaseException], *, is_async: bool) -> Make:
    if is_async:
        return lambda: [_RaisesAsync(make)]
    return lambda: [_Raises(make)]


def _returns(make: Callable[[], object], *, is_async: bool) -> Make:
    if is_async:
        return lambda: [_ReturnsAsync(make)]
    return lambda: [_Returns(make)]


def _raising() -> dict[str, _Hostile]:
    errors: dict[str, Callable[[], BaseException]] = {
        "huge_text": lambda: RuntimeError("x" * 1_000_000),
        "astral_text": lambda: RuntimeError("\U0001f4a5" * 300_000),
        "surrogate_text": lambda: RuntimeError("\ud800 lone \udfff " * 2_000),
        "control_text": lambda: ValueError("\x00\x1b[2J\r\n\u202e" * 2_000),
        "unprintable": _Unprintable,
        "huge_str": _HugeText,
        "evaluation_error": lambda: EvaluationError("peak equity is NaN"),
        "cancelled": lambda: asyncio.CancelledError("the evaluator's own"),
        "base_exception": lambda: _Boom("not an Exception"),
        "generator_exit": GeneratorExit,
        "system_exit": lambda: SystemExit(3),
        "keyboard_interrupt": KeyboardInterrupt,
        "memory_error": MemoryError,
        "recursion": lambda: RecursionError("maximum recursion depth exceeded"),
    }
    variants: dict[str, _Hostile] = {}
    for name, make in errors.items():
        variants[f"raise_{name}_sync"] = _Hostile(_raises(make, is_async=False))
        variants[f"raise_{name}_async"] = _Hostile(_raises(make, is_async=True))
    variants["raise_check_attribute"] = _Hostile(_one(_CheckVanishes))
    return variants


def _garbage() -> dict[str, _Hostile]:
    values: dict[str, Callable[[], object]] = {
        "none": lambda: None,
        "text": lambda: "True",
        "bare_bool": lambda: True,
        "one_tuple": lambda: (True,),
        "three_tuple": lambda: (True, "a", "b"),
        "list_pair": lambda: [True, "daily_loss: in a list"],
        "int_flag": lambda: (1, "daily_loss: 1 is not True"),
        "text_flag": lambda: ("True", None),
        "none_flag": lambda: (None, None),
        "nan_flag": lambda: (float("nan"), None),
        "false_int_reason": lambda: (False, 42),
        "false_bytes_reason": lambda: (False, b"fine"),
        "true_int_reason": lambda: (True, 42),
        "true_bytes_reason": lambda: (True, b"daily_loss"),
        "huge_reason": lambda: (True, "daily_loss: " + "\U0001f4a5" * 1_000_000),
        "surrogate_reason": lambda: (True, "daily_loss: \ud800" * 1_000),
        "unknown_code_reason": lambda: (True, "not_a_code: " + "x" * 10_000),
        "evil_str_reason": lambda: (True, _EvilStr("daily_loss: unreadable")),
        "unprintable_result": _Unrepresentable,
        "huge_list": lambda: list(range(1_000_000)),
        "len_raises": lambda: _EvilTuple((True, "x")),
        "generator": lambda: (flag for flag in (True, "x")),
    }
    variants: dict[str, _Hostile] = {}
    for name, make in values.items():
        variants[f"garbage_{name}_sync"] = _Hostile(_returns(make, is_async=False))
    for name in ("none", "false_int_reason", "huge_reason", "evil_str_reason", "len_raises"):
        variants[f"garbage_{name}_async"] = _Hostile(_returns(values[name], is_async=True))
    return variants


def _names() -> dict[str, _Hostile]:
    return {
        "name_huge": _Hostile(_one(lambda: _Named("n" * 1_000_000))),
        "name_astral": _Hostile(_one(lambda: _Named("\U0001f4a5" * 100_000))),
        "name_surrogate": _Hostile(_one(lambda: _Named("\ud800" * 300))),
        "name_control": _Hostile(_one(lambda: _Named("a\nb\r\n\x00c\u202e"))),
        "name_blank": _Hostile(_one(lambda: _Named("   "))),
        "name_int": _Hostile(_one(lambda: _Named(42))),
        "name_unprintable": _Hostile(_one(lambda: _Named(_Unrepresentable()))),
        "name_spoofs_ess": _Hostile(_one(lambda: _Named("ess"))),
        "name_raises": _Hostile(_one(lambda: _NameRaises(lambda: RuntimeError("no name")))),
        "name_raises_base": _Hostile(_one(lambda: _NameRaises(lambda: _Boom("no name")))),
        "reason_code_raises": _Hostile(_one(_ReasonCodeRaises)),
        "class_name_huge": _Hostile(_one(_huge_class_name)),
        "class_name_astral": _Hostile(_one(_astral_class_name)),
        "same_name_fine_first": _Hostile(lambda: [_Twin(fire=False), _Twin(fire=True)]),
        "same_name_tripping_first": _Hostile(lambda: [_Twin(fire=True), _Twin(fire=False)]),
    }


def _hangs() -> dict[str, _Hostile]:
    return {
        "hang_sync": _Hostile(_one(_Sleeps)),
        "hang_sync_sqlite": _Hostile(_one(_Sleeps), backend="sqlite"),
        "hang_sync_three": _Hostile(lambda: [_Sleeps(), _Sleeps(), _Sleeps()], trips=3),
        "hang_async": _Hostile(_one(_SleepsAsync)),
        "hang_async_stubborn": _Hostile(_one(_Stubborn)),
    }


# --------------------------------------------------------------------------- stores


class _Switchboard:
    """A PolicyStore in front of a real adapter that can be made to fail reads or writes
    (``PolicyStoreUnavailable``) or to acknowledge writes it does not keep."""

    def __init__(self, inner: PolicyStore) -> None:
        self.inner = inner
        self.fail_reads = False
        self.fail_writes = False
        self.drop_writes = False

    async def get(self, key: str) -> Mapping[str, Any] | None:
        if self.fail_reads:
            raise PolicyStoreUnavailable("chaos: store unreachable (reads)")
        return await self.inner.get(key)

    async def set(self, key: str, value: Mapping[str, Any]) -> None:
        if self.fail_writes:
            raise PolicyStoreUnavailable("chaos: store unreachable (writes)")
        if self.drop_writes:
            return  # acknowledged, not kept: a cache without persistence, a failover
        await self.inner.set(key, value)


class _Backend:
    """One backend for one round: opens adapters onto the same data (a restart opens a new
    one), loses or corrupts the record behind their back, and cleans up."""

    name = "memory"

    def __init__(self) -> None:
        self._memory = InMemoryPolicyStore()
        self._opened: list[Any] = []
        self._reader: PolicyStore | None = None
        self.closed = False

    async def open(self) -> PolicyStore:
        return self._memory

    async def raw(self) -> Mapping[str, Any] | None:
        """The record as a gate would read it now (raises what the adapter raises)."""
        if self._reader is None:
            self._reader = await self.open()
        return await self._reader.get(EMERGENCY_STOP_KEY)

    async def lose(self) -> None:
        self._memory._data.pop(EMERGENCY_STOP_KEY, None)

    async def corrupt(self) -> None:
        self._memory._data[EMERGENCY_STOP_KEY] = '{"active": "maybe"'

    async def close(self) -> None:
        self.closed = True
        for store in self._opened:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await store.close()
        self._opened.clear()


class _SQLiteBackend(_Backend):
    name = "sqlite"

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.path = directory / f"{uuid.uuid4().hex}.db"

    async def open(self) -> PolicyStore:
        store = SQLitePolicyStore(self.path)
        self._opened.append(store)
        return store

    def _execute(self, sql: str, *args: str) -> None:
        connection = sqlite3.connect(self.path, timeout=5)
        try:
            with connection:
                connection.execute(sql, args)
        finally:
            connection.close()

    async def lose(self) -> None:
        await asyncio.to_thread(
            self._execute,
            f"DELETE FROM {TABLE} WHERE key = ?",  # noqa: S608 - constant table name
            EMERGENCY_STOP_KEY,
        )

    async def corrupt(self) -> None:
        await asyncio.to_thread(
            self._execute,
            f"INSERT OR REPLACE INTO {TABLE} (key, value, updated_at) "  # noqa: S608
            "VALUES (?, ?, ?)",
            EMERGENCY_STOP_KEY,
            '{"active": "maybe"',
            datetime.now(UTC).isoformat(),
        )


class _RedisBackend(_Backend):
    name = "redis"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.namespace = f"ess-chaos-inprocess:{uuid.uuid4().hex[:12]}:"

    async def open(self) -> PolicyStore:
        store = RedisPolicyStore(self.url, namespace=self.namespace, timeout=2.0)
        self._opened.append(store)
        return store

    async def _client_do(self, action: Callable[[aioredis.Redis], Awaitable[object]]) -> None:
        client = aioredis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
        try:
            async with asyncio.timeout(5):
                await action(client)
        finally:
            await client.aclose()

    async def lose(self) -> None:
        key = self.namespace + EMERGENCY_STOP_KEY
        await self._client_do(lambda client: client.delete(key))

    async def corrupt(self) -> None:
        key = self.namespace + EMERGENCY_STOP_KEY
        await self._client_do(lambda client: client.set(key, '{"active": "maybe"'))

    async def close(self) -> None:
        await super().close()

        async def wipe(client: aioredis.Redis) -> None:
            keys = [key async for key in client.scan_iter(match=f"{self.namespace}*")]
            if keys:
                await client.delete(*keys)

        with contextlib.suppress(Exception):
            await self._client_do(wipe)


# --------------------------------------------------------------------------- one ESS


class _Rig:
    """One ESS instance over ``store``: a controller, a system running ``run_forever`` over
    ``evaluators`` and a manual button, a fake exchange holding a position and an order, and
    a fake event bus."""

    def __init__(
        self,
        store: PolicyStore,
        evaluators: Sequence[object],
        *,
        first_start: bool,
        policy: ResetPolicy | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.exchange = FakeExchangeClient(positions={"BTC/USDT": 0.5}, open_orders=["o-1"])
        self.bus = FakeEventBus()
        self.clock: Clock = clock or SystemClock()
        #: The rig's own button (last evaluator), for the rounds' trips.
        self.manual = ManualTriggerEmergencyEvaluator()
        self.controller = EmergencyStopController(
            store,
            self.exchange,
            self.bus,
            clock=self.clock,
            reset_policy=policy,
            attempts=2,
            retry_delay_sec=0.005,
        )
        self.system = EmergencyStopSystem(
            cast(list[EmergencyConditionEvaluator], [*evaluators, self.manual]),
            self.controller,
            store,
            check_interval_sec=INTERVAL_S,
            evaluation_timeout_sec=TIMEOUT_S,
            first_start=first_start,
        )
        self.task: asyncio.Task[None] | None = None
        self.stop_asked = False
        self.died = False
        self.stop_timed_out = False

    @property
    def active(self) -> bool:
        return self.controller.state.active

    def start(self) -> None:
        self.task = asyncio.create_task(self.system.run_forever())

    async def started(self) -> bool:
        """Restored and checked once (bounded)."""
        return (
            await first_true(lambda: self.system.checks >= 1 or self._ended(), DEADLINE_S)
            is not None
        )

    def _ended(self) -> bool:
        return self.task is not None and self.task.done()

    async def keeps_checking(self) -> bool:
        """Whether ``MIN_CHECKS`` more checks complete within ``WATCH_S``."""
        target = self.system.checks + MIN_CHECKS
        return await first_true(lambda: self.system.checks >= target, WATCH_S) is not None

    async def stop(self) -> None:
        """Stop the loop (bounded); notes whether it had died before and whether it ended."""
        if self.task is None or self.stop_asked:
            return
        if self.task.done():
            self.died = True
        self.stop_asked = True
        self.system.stop()
        done, _ = await asyncio.wait({self.task}, timeout=STOP_S)
        if not done:
            self.stop_timed_out = True
            self.task.cancel()
            return
        if self.task.cancelled() or self.task.exception() is not None:
            self.died = True

    def trip_entries(self) -> int:
        return sum(entry.kind in {"activated", "trip_recorded"} for entry in self.controller.log)


async def _over_limit(rigs: Sequence[_Rig], backend: _Backend) -> int:
    """State-log entries, events and the stored record that do not re-validate (limits
    included) or cannot be encoded."""
    bad = 0
    for rig in rigs:
        for entry in rig.controller.log:
            try:
                decode(StateEntry, encode(entry))
            except Exception:
                bad += 1
        for event in rig.bus.events:
            try:
                decode(type(event), encode(event))
            except Exception:
                bad += 1
    try:
        raw = await backend.raw()
    except Exception:  # a corrupt record the round put there itself is not ESS's
        return bad
    if raw is not None:
        try:
            validate(PolicyRecord, dict(raw))
        except Exception:
            bad += 1
    return bad


# --------------------------------------------------------------------------- rounds


@dataclass
class _Outcome:
    """What one round found."""

    kind: str
    variant: str
    backend: str
    missed_trip: bool = False
    loop_deaths: int = 0
    loop_stalls: int = 0
    over_limit: int = 0
    inactive_after_store_loss: bool = False
    inactive_after_restart: bool = False
    not_reasserted: bool = False
    replays: int = 0
    replays_accepted: int = 0
    refused: list[str] = field(default_factory=list)
    duplicate_entries: int = 0
    false_trip: bool = False
    not_flat: bool = False
    first_start_after_loss_inactive: bool = False
    inactive_restart: bool = False
    time_to_active_s: float | None = None
    reasons: list[str] = field(default_factory=list)
    guard_trips: int = 0
    error: str | None = None

    def failures(self) -> list[str]:
        """The names of the failure figures this round adds to."""
        found = {
            "missed_trips": self.missed_trip,
            "loop_deaths": self.loop_deaths > 0,
            "loop_stalls": self.loop_stalls > 0,
            "records_over_limit": self.over_limit > 0,
            "inactive_after_store_loss": self.inactive_after_store_loss,
            "inactive_after_restart": self.inactive_after_restart,
            "records_not_reasserted": self.not_reasserted,
            "replayed_resets_accepted": self.replays_accepted > 0,
            "duplicate_trip_entries": self.duplicate_entries > 0,
            "false_trips": self.false_trip,
            "not_flat": self.not_flat,
            "round_errors": self.error is not None,
        }
        return [name for name, hit in found.items() if hit]


class _Round:
    """The ESS instances of one round, so that every one is stopped and judged."""

    def __init__(self, outcome: _Outcome, backend: _Backend) -> None:
        self.outcome = outcome
        self.backend = backend
        self.rigs: list[_Rig] = []

    async def rig(
        self,
        evaluators: Sequence[object] = (),
        *,
        first_start: bool,
        policy: ResetPolicy | None = None,
        clock: Clock | None = None,
        store: _Switchboard | None = None,
    ) -> _Rig:
        """A started ESS over the backend (a fresh adapter: a restart reopens the store)."""
        store = store or _Switchboard(await self.backend.open())
        rig = _Rig(store, evaluators, first_start=first_start, policy=policy, clock=clock)
        self.rigs.append(rig)
        rig.start()
        if not await rig.started():
            self.outcome.loop_stalls += 1
        return rig

    async def trip(self, rig: _Rig, detail: str = "chaos trip") -> None:
        """Press ``rig``'s manual button and wait (bounded) for ACTIVE."""
        rig.manual.clear()
        checks = rig.system.checks
        await first_true(lambda: rig.system.checks > checks, DEADLINE_S)  # it saw "clear"
        rig.manual.trigger(detail)
        if await first_true(lambda: rig.active, DEADLINE_S) is None:
            raise RuntimeError("the manual button did not trip ESS")

    async def finish(self) -> None:
        """Stop every ESS and judge what they left."""
        for rig in self.rigs:
            await rig.stop()
        out = self.outcome
        for rig in self.rigs:
            out.loop_deaths += rig.died
            out.loop_stalls += rig.stop_timed_out
            if rig.active and not rig.exchange.flat:
                out.not_flat = True
            for entry in rig.controller.log:
                if isinstance(entry, ActivatedEntry | TripRecordedEntry):
                    out.reasons.append(entry.reason.value)
                    out.guard_trips += entry.source == "evaluator:ess"
        out.over_limit += await _over_limit(self.rigs, self.backend)


Play = Callable[[_Round], Awaitable[None]]


def _hostile_round(spec: _Hostile) -> Play:
    async def play(round_: _Round) -> None:
        out = round_.outcome
        hostile = spec.make()
        began = time.monotonic()
        rig = await round_.rig([FakeHealthEvaluator(), *hostile], first_start=True)
        at = await first_true(lambda: rig.active, DEADLINE_S)
        if at is None:
            out.missed_trip = True
        else:
            out.time_to_active_s = at - began
            if not await rig.keeps_checking():
                out.loop_stalls += 1
        await rig.stop()
        out.duplicate_entries = max(0, rig.trip_entries() - spec.trips)

    return play


async def _control(round_: _Round) -> None:
    rig = await round_.rig([FakeHealthEvaluator(), FakeHealthEvaluator()], first_start=True)
    if not await rig.keeps_checking():
        round_.outcome.loop_stalls += 1
    round_.outcome.false_trip = rig.active


# Store rounds -------------------------------------------------------------------------


async def _writes_fail_then_recover(round_: _Round) -> None:
    """The store refuses writes when ESS trips; ESS is ACTIVE anyway, and re-asserts the
    record once the store is back."""
    store = _Switchboard(await round_.backend.open())
    rig = await round_.rig(first_start=True, store=store)
    store.fail_writes = True
    await round_.trip(rig, "trip while the store is down")
    await asyncio.sleep(5 * INTERVAL_S)  # a few reconcile attempts against the dead store
    store.fail_writes = False
    round_.outcome.not_reasserted = not await _record_active_within(round_.backend, RECOVER_S)


async def _record_lost_while_active(round_: _Round) -> None:
    """The record disappears under a running ACTIVE ESS (a flush): it comes back, and a
    restart afterwards is ACTIVE."""
    rig = await round_.rig(first_start=True)
    await round_.trip(rig)
    await round_.backend.lose()
    round_.outcome.not_reasserted = not await _record_active_within(round_.backend, RECOVER_S)
    await rig.stop()
    again = await round_.rig(first_start=False)
    round_.outcome.inactive_after_store_loss = not again.active


async def _record_active_within(backend: _Backend, timeout_s: float) -> bool:
    async def active() -> bool:
        with contextlib.suppress(Exception):
            raw = await backend.raw()
            return raw is not None and raw.get("active") is True
        return False

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await active():
            return True
        await asyncio.sleep(0.01)
    return False


def _loss_then_restart(how: str, *, tripped: bool, first_start: bool = False) -> Play:
    """ESS (ACTIVE or not) stops; the record is lost (``lose``), corrupted (``corrupt``),
    never kept (``drop``: the store acknowledged writes it dropped) or unreadable at the
    restart (``unreadable``); the restarted ESS must be ACTIVE (``policy_store_stale``),
    unless it is told ``first_start`` (then INACTIVE is the contract, counted apart)."""

    async def play(round_: _Round) -> None:
        first = _Switchboard(await round_.backend.open())
        first.drop_writes = how == "drop"
        rig = await round_.rig(first_start=True, store=first)
        if tripped:
            await round_.trip(rig)
        await rig.stop()
        if how == "lose":
            await round_.backend.lose()
        elif how == "corrupt":
            await round_.backend.corrupt()
        second = _Switchboard(await round_.backend.open())
        second.fail_reads = how == "unreadable"
        restarted = await round_.rig(first_start=first_start, store=second)
        if first_start:
            round_.outcome.first_start_after_loss_inactive = not restarted.active
        else:
            round_.outcome.inactive_after_store_loss = not restarted.active

    return play


# Restart rounds -----------------------------------------------------------------------


def _restart(*, first_start: bool, depth: int = 1) -> Play:
    """ACTIVE, then ``depth`` restarts one after the other: every one ACTIVE, flat."""

    async def play(round_: _Round) -> None:
        rig = await round_.rig(first_start=True)
        await round_.trip(rig)
        for _ in range(depth):
            await rig.stop()
            rig = await round_.rig(first_start=first_start)
            if not rig.active:
                round_.outcome.inactive_after_restart = True

    return play


def _inactive_restart(*, after_reset: bool) -> Play:
    """INACTIVE (never tripped, or reset), then a restart: INACTIVE is right."""

    async def play(round_: _Round) -> None:
        key = generate_private_key()
        policy = _policy(key)
        rig = await round_.rig(first_start=True, policy=policy)
        if after_reset:
            await round_.trip(rig)
            await rig.controller.apply_reset(_signed_reset(key, rig, _now(rig)))
        await rig.stop()
        restarted = await round_.rig(first_start=False, policy=policy)
        round_.outcome.inactive_restart = not restarted.active

    return play


# Replay rounds ------------------------------------------------------------------------


def _policy(key: Ed25519PrivateKey) -> ResetPolicy:
    return ResetPolicy(operators={_OPERATOR: public_bytes(key)})


def _now(rig: _Rig) -> datetime:
    return rig.clock.now()


def _signed_reset(
    key: Ed25519PrivateKey, rig: _Rig | None, ts: datetime, *, unbound: bool = False
) -> ResetCommand:
    """A reset signed for ``rig``'s current activation (or for none)."""
    activation = None if rig is None or unbound else rig.controller.core_state.activation
    nonce = secrets.token_hex(8)
    return sign_reset(
        key,
        command_id=f"chaos-reset-{nonce}",
        operator=_OPERATOR,
        ts=ts,
        nonce=nonce,
        detail="chaos replay",
        activation_seq=activation.seq if activation else None,
        activation_command_id=activation.command_id if activation else None,
    )


async def _replay(round_: _Round, rig: _Rig, command: ResetCommand) -> None:
    """Replay ``command``: accepted when it appended a ``reset`` entry. A refusal is counted
    by its reason; an already-applied command id is dropped without an entry (``ignored``)."""
    out = round_.outcome
    out.replays += 1
    before = len(rig.controller.log)
    try:
        await rig.controller.apply_reset(command)
    except ResetRejected as refused:
        out.refused.append(refused.why.value)
        return
    if any(isinstance(entry, ResetEntry) for entry in rig.controller.log[before:]):
        out.replays_accepted += 1
    else:
        out.refused.append("ignored")


def _replay_after_restart(*, lose: bool) -> Play:
    """A reset signed for the activation, not applied; a restart (after a store loss, when
    ``lose``); the captured reset replayed on the restored ESS must be refused."""

    async def play(round_: _Round) -> None:
        key = generate_private_key()
        policy = _policy(key)
        rig = await round_.rig(first_start=True, policy=policy)
        await round_.trip(rig)
        captured = _signed_reset(key, rig, _now(rig))
        await rig.stop()
        if lose:
            await round_.backend.lose()
        restarted = await round_.rig(first_start=False, policy=policy)
        if not restarted.active:
            raise RuntimeError("restart did not come back ACTIVE: nothing to replay against")
        await _replay(round_, restarted, captured)

    return play


async def _replay_applied(round_: _Round) -> None:
    """A reset applied (legitimately), a new trip, the same reset replayed (nonce and
    activation burnt), then a restart and the same again."""
    key = generate_private_key()
    policy = _policy(key)
    rig = await round_.rig(first_start=True, policy=policy)
    await round_.trip(rig, "first")
    applied = _signed_reset(key, rig, _now(rig))
    await rig.controller.apply_reset(applied)  # raises (round error) if refused
    await round_.trip(rig, "second")
    await _replay(round_, rig, applied)
    await rig.stop()
    restarted = await round_.rig(first_start=False, policy=policy)
    await _replay(round_, restarted, applied)


async def _replay_frozen_clock(round_: _Round) -> None:
    """Restarts at one frozen instant (no time passes): each restored activation must still
    be a new one, so no reset captured before a restart clears the one after."""
    key = generate_private_key()
    policy = _policy(key)
    clock = ManualClock(datetime(2026, 11, 22, 10, 0, tzinfo=UTC))
    captured: list[ResetCommand] = []
    rig = await round_.rig(first_start=True, policy=policy, clock=clock)
    await round_.trip(rig)
    for _ in range(2):
        captured.append(_signed_reset(key, rig, clock.now()))
        await rig.stop()
        rig = await round_.rig(first_start=False, policy=policy, clock=clock)
        for command in captured:
            await _replay(round_, rig, command)


async def _replay_unbound(round_: _Round) -> None:
    """A reset signed while INACTIVE (bound to no activation), applied once ACTIVE."""
    key = generate_private_key()
    policy = _policy(key)
    rig = await round_.rig(first_start=True, policy=policy)
    early = _signed_reset(key, rig, _now(rig), unbound=True)
    await round_.trip(rig)
    await _replay(round_, rig, early)


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True, slots=True)
class _Variant:
    kind: str
    name: str
    play: Play
    backend: str | None = None  # the one it must run on
    every_backend: bool = False  # played on each backend


def _variants() -> tuple[_Variant, ...]:
    found: list[_Variant] = []
    for kind, group in (
        ("raise", _raising()),
        ("hang", _hangs()),
        ("garbage", _garbage()),
        ("name", _names()),
    ):
        found += [
            _Variant(kind, name, _hostile_round(spec), backend=spec.backend)
            for name, spec in group.items()
        ]
    found.append(_Variant("control", "control_healthy", _control))
    store: dict[str, Play] = {
        "writes_fail_then_recover": _writes_fail_then_recover,
        "record_lost_while_active": _record_lost_while_active,
        "lost_active_then_restart": _loss_then_restart("lose", tripped=True),
        "lost_inactive_then_restart": _loss_then_restart("lose", tripped=False),
        "dropped_writes_then_restart": _loss_then_restart("drop", tripped=True),
        "corrupt_then_restart": _loss_then_restart("corrupt", tripped=True),
        "unreadable_at_restart": _loss_then_restart("unreadable", tripped=False),
        "lost_then_first_start": _loss_then_restart("lose", tripped=True, first_start=True),
    }
    restart: dict[str, Play] = {
        "active_restart": _restart(first_start=False),
        "active_restart_first_start": _restart(first_start=True),
        "active_restart_chain": _restart(first_start=False, depth=3),
        "inactive_restart": _inactive_restart(after_reset=False),
        "reset_then_restart": _inactive_restart(after_reset=True),
    }
    replay: dict[str, Play] = {
        "replay_after_restart": _replay_after_restart(lose=False),
        "replay_after_store_loss": _replay_after_restart(lose=True),
        "replay_applied_reset": _replay_applied,
        "replay_frozen_clock": _replay_frozen_clock,
        "replay_unbound_reset": _replay_unbound,
    }
    for kind, plays in (("store", store), ("restart", restart), ("replay", replay)):
        found += [_Variant(kind, name, play, every_backend=True) for name, play in plays.items()]
    return tuple(found)


#: Every variant the campaign plays, by kind.
VARIANTS: Final = _variants()


@dataclass(frozen=True, slots=True)
class _Planned:
    variant: _Variant
    backend: str


def _plan(quick: bool, seed: int, backends: Sequence[str]) -> list[_Planned]:
    """Quick: every variant once (rotating backends; store, restart and replay variants on
    every backend). Full: that :data:`FULL_REPEATS` times, backends drawn from ``seed``, in
    a shuffled order."""
    rng = random.Random(seed)  # noqa: S311 - reproducible plan, not crypto
    plan: list[_Planned] = []
    for repeat in range(1 if quick else FULL_REPEATS):
        for index, variant in enumerate(VARIANTS):
            if variant.backend is not None:
                if variant.backend in backends:
                    plan.append(_Planned(variant, variant.backend))
            elif variant.every_backend:
                plan += [_Planned(variant, backend) for backend in backends]
            elif quick:
                plan.append(_Planned(variant, backends[(index + repeat) % len(backends)]))
            else:
                plan.append(_Planned(variant, rng.choice(backends)))
    if not quick:
        rng.shuffle(plan)
    return plan


# --------------------------------------------------------------------------- running


def _backend(name: str, directory: Path, redis_url: str) -> _Backend:
    if name == "sqlite":
        return _SQLiteBackend(directory)
    if name == "redis":
        return _RedisBackend(redis_url)
    return _Backend()


async def _play_round(planned: _Planned, backend: _Backend) -> _Outcome:
    variant = planned.variant
    outcome = _Outcome(variant.kind, variant.name, planned.backend)
    round_ = _Round(outcome, backend)
    try:
        await variant.play(round_)
    finally:
        try:
            await round_.finish()
        finally:
            await backend.close()
    return outcome


async def _bounded(planned: _Planned, backend: _Backend) -> _Outcome:
    task = asyncio.ensure_future(_play_round(planned, backend))
    done, _ = await asyncio.wait({task}, timeout=ROUND_LIMIT_S)
    if not done:
        task.cancel()
        raise TimeoutError(f"round did not finish within {ROUND_LIMIT_S:g} s")
    return task.result()


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what a round left (abandoned checks), give it a bounded moment, close."""
    try:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.wait(pending, timeout=LEFTOVER_S))
        loop.run_until_complete(asyncio.wait_for(loop.shutdown_default_executor(), LEFTOVER_S))
    except BaseException as exc:
        logger.bind(error=repr(exc)).warning("inprocess campaign: round clean-up incomplete")
    finally:
        loop.close()


def _isolated(planned: _Planned, directory: Path, redis_url: str) -> _Outcome:
    """One round in an event loop of its own (this thread): whatever it does to its loop,
    ``SystemExit`` included, stays in the round."""
    backend = _backend(planned.backend, directory, redis_url)
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_bounded(planned, backend))
    except BaseException as exc:  # the round's own failure: recorded, never propagated
        variant = planned.variant
        failed = _Outcome(variant.kind, variant.name, planned.backend)
        failed.error = f"{type(exc).__name__}: {str(exc)[:300]}"
        # SystemExit or KeyboardInterrupt out of the round's loop: ESS let them through.
        failed.loop_deaths = int(isinstance(exc, SystemExit | KeyboardInterrupt))
        return failed
    finally:
        _close_loop(loop)
        if not backend.closed:  # the round's loop died before its clean-up: a fresh one
            try:
                asyncio.run(backend.close())
            except BaseException as exc:
                logger.bind(error=repr(exc)).warning("inprocess campaign: backend clean-up failed")


def _redis_reachable(url: str) -> bool:
    async def ping() -> None:
        client = aioredis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            async with asyncio.timeout(2):
                await client.ping()
        finally:
            await client.aclose()

    try:
        asyncio.run(ping())
    except Exception:
        return False
    return True


def _play_all(quick: bool, seed: int) -> tuple[list[_Outcome], bool]:
    redis_url = os.environ.get(REDIS_URL_ENV, "").strip() or DEFAULT_REDIS_URL
    redis_ok = _redis_reachable(redis_url)
    backends = ["memory", "sqlite", *(["redis"] if redis_ok else [])]
    outcomes: list[_Outcome] = []
    with tempfile.TemporaryDirectory(prefix="ess-chaos-inprocess-") as tmp:
        for planned in _plan(quick, seed, backends):
            outcome = _isolated(planned, Path(tmp), redis_url)
            if outcome.failures():
                logger.bind(
                    variant=outcome.variant, backend=outcome.backend, failed=outcome.failures()
                ).error("inprocess campaign: round failed")
            outcomes.append(outcome)
    return outcomes, redis_ok


def _figures(outcomes: Sequence[_Outcome], redis_ok: bool) -> dict[str, Any]:
    hostile = {"raise", "hang", "garbage", "name"}
    times = [o.time_to_active_s for o in outcomes if o.time_to_active_s is not None]
    examples = [
        f"{o.variant}/{o.backend}: {', '.join(o.failures())}" + (f" ({o.error})" if o.error else "")
        for o in outcomes
        if o.failures()
    ]
    slow = [
        f"{o.variant}/{o.backend}: {o.time_to_active_s:.2f} s"
        for o in sorted(outcomes, key=lambda o: o.time_to_active_s or 0.0, reverse=True)
        if o.time_to_active_s is not None and o.time_to_active_s > SLOW_S
    ]
    refused: Counter[str] = Counter(why for o in outcomes for why in o.refused)
    reasons: Counter[str] = Counter(reason for o in outcomes for reason in o.reasons)
    return {
        "rounds": len(outcomes),
        "rounds_by_kind": dict(sorted(Counter(o.kind for o in outcomes).items())),
        "rounds_by_backend": dict(sorted(Counter(o.backend for o in outcomes).items())),
        "variants": len(VARIANTS),
        "redis_available": redis_ok,
        "missed_trips": sum(o.missed_trip for o in outcomes if o.kind in hostile),
        "loop_deaths": sum(o.loop_deaths for o in outcomes),
        "loop_stalls": sum(o.loop_stalls for o in outcomes),
        "records_over_limit": sum(o.over_limit for o in outcomes),
        "inactive_after_store_loss": sum(o.inactive_after_store_loss for o in outcomes),
        "inactive_after_restart": sum(o.inactive_after_restart for o in outcomes),
        "records_not_reasserted": sum(o.not_reasserted for o in outcomes),
        "replayed_resets_accepted": sum(o.replays_accepted for o in outcomes),
        "duplicate_trip_entries": sum(o.duplicate_entries for o in outcomes),
        "false_trips": sum(o.false_trip for o in outcomes),
        "not_flat": sum(o.not_flat for o in outcomes),
        "round_errors": sum(o.error is not None for o in outcomes),
        "time_to_active_s": {
            "p50": rounded(percentile(times, 0.5)),
            "p99": rounded(percentile(times, 0.99)),
            "max": rounded(max(times, default=None)),
        },
        "slow_trips": len(slow),
        "slow_trip_examples": slow[:5],
        "trips_by_reason": dict(sorted(reasons.items())),
        "guard_trips": sum(o.guard_trips for o in outcomes),
        "replays": sum(o.replays for o in outcomes),
        "resets_refused_by_why": dict(sorted(refused.items())),
        "first_start_after_loss_inactive": sum(o.first_start_after_loss_inactive for o in outcomes),
        "inactive_restarts": sum(o.inactive_restart for o in outcomes),
        "interval_s": INTERVAL_S,
        "timeout_s": TIMEOUT_S,
        "deadline_s": DEADLINE_S,
        "examples": examples[:10],
    }


async def run_campaign(*, quick: bool, seed: int = 0) -> dict[str, Any]:
    """Run the campaign (quick: every variant once; full: :data:`FULL_REPEATS` times with
    backends drawn from ``seed``) and return its figures (see the module docstring). The
    rounds run one after another in a worker thread, each in an event loop of its own."""
    began = time.monotonic()
    outcomes, redis_ok = await asyncio.to_thread(_play_all, quick, seed)
    figures = _figures(outcomes, redis_ok)
    figures["duration_s"] = round(time.monotonic() - began, 1)
    return figures


if __name__ == "__main__":  # pragma: no cover - manual use: python -m ess.chaos.inprocess
    import json

    with contextlib.suppress(KeyboardInterrupt):
        print(json.dumps(asyncio.run(run_campaign(quick=True)), indent=2))  # noqa: T201
