"""The trading gate: may this process place a new trade right now?

Trading components (orchestrator, RiskGuard, strategy runtime) embed a :class:`TradingGate` and
ask :meth:`TradingGate.allowed` before every order. The answer comes from an in-process view of
the PolicyStore record ``emergency_stop``, kept current by a feed (:class:`PolicyStoreGateFeed`,
:class:`RedisGateFeed`, or anything that calls :meth:`TradingGate.update`, such as a future
state-log follower). The gate fails closed: it answers ``False`` unless it holds a readable,
inactive, fresh record. Records are decoded strictly, as every ESS consumer decodes: a wrong
JSON type (``"active": "false"``, an epoch number for a time) is refused, never coerced. The
wire protocol, for gates in other languages, is ``docs/gate-protocol.md``.

Hot path. ``allowed()`` is one monotonic-clock read and one float comparison against a
deadline, ``open_until``. All the work (validating the record, date arithmetic, clock skew)
happens once per update, which computes that deadline; a closed view stores ``-inf``. The
deadline is a single attribute, written last when opening and first when closing, so
``allowed()`` may be called from any thread while the event loop updates the view.

Staleness. A view is fresh while *both* hold:

* the record was re-asserted recently: ``now - refreshed_at`` (``timestamp`` when the writer
  sets no ``refreshed_at``) stays below ``max_record_age`` minus ``max_clock_skew``;
* this process read it successfully recently: time since the last successful read stays below
  ``max_read_age`` (default: ``max_record_age``).

Clock skew. ``refreshed_at`` is the *writer's* wall clock and ``now`` is this host's. If the
writer's clock runs ahead, a record looks younger than it is. The gate therefore reserves
``max_clock_skew`` out of ``max_record_age``: as long as the two clocks differ by no more than
``max_clock_skew``, the gate closes no later than ``max_record_age`` after the writer's last
refresh in true time. A record that appears to be from further in the future than the allowance
proves the assumption false, and the gate closes (``clock skew: ...``) rather than trust it.
A writer behind this host's clock only makes the gate close early (the safe direction). The
wall clock is read only at update time; between updates the view ages on ``time.monotonic``,
which NTP steps cannot move.

Sequence check. The state log gives every entry a contiguous ``seq``, and only a reset (a later
entry) can end an activation. So an *inactive* record whose ``seq`` is not greater than that of
an active record this gate has already seen cannot be a genuine reset: it is an old value (a
lagging replica, a restored backup, a stray writer), and the gate stays closed until a newer
record arrives.

Feeds read one at a time (a lock), so an older read can never overwrite a newer one. A failed
read closes the gate at once rather than waiting for the view to age: "cannot tell" means
"stopped". A transient blip therefore pauses trading for one poll interval; that is the price
of failing closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Self

from loguru import logger

from ess.api.protocols import EMERGENCY_STOP_KEY, PolicyStore
from ess.clock import Clock, SystemClock
from ess.policystore.base import PolicyStoreError
from ess.policystore.redis_store import RedisPolicyStore
from schemas import PolicyRecord, RecordError, decode

_CLOSED = -math.inf


class GateState(StrEnum):
    """Why the gate answers what it answers (see :meth:`TradingGate.status`)."""

    OPEN = "open"  # fresh, readable, inactive record
    ACTIVE = "active"  # the emergency stop is on
    PENDING = "pending"  # nothing read yet
    NO_RECORD = "no_record"  # the store has no record
    INVALID = "invalid"  # unreadable record, clock skew or sequence regression
    FAILED = "failed"  # the last read failed
    STALE = "stale"  # the view is older than a bound


@dataclass(frozen=True, slots=True)
class GateStatus:
    """A snapshot of the gate's answer and why, for logs, health checks and operators."""

    allowed: bool
    state: GateState
    reason: str
    record: PolicyRecord | None
    #: Seconds since the record's ``refreshed_at`` as seen from this host, clamped at 0
    #: (``None``: no readable inactive record).
    seconds_since_refresh: float | None
    #: Seconds since this process last read the store successfully (``None``: never).
    seconds_since_read: float | None


@dataclass(frozen=True, slots=True)
class _View:
    state: GateState
    reason: str
    record: PolicyRecord | None = None
    read_mono: float | None = None  # monotonic time of the last successful read
    refreshed_mono: float | None = None  # refreshed_at translated to this monotonic clock
    record_deadline: float = _CLOSED
    read_deadline: float = _CLOSED


class TradingGate:
    """In-process answer to "may I trade?", failing closed.

    ``max_record_age``: seconds after the writer's last refresh at which the gate closes
    (clock-skew allowance included, see the module docs). Writers must re-assert the record
    well within this, and feeds must poll well within it, or every gate closes.
    ``max_read_age``: seconds without a successful read after which the gate closes (default
    ``max_record_age``). ``max_clock_skew``: tolerated writer/reader wall-clock difference.
    ``clock`` and ``monotonic`` are injectable for tests; ``name`` labels log lines.
    """

    def __init__(
        self,
        *,
        max_record_age: float = 10.0,
        max_read_age: float | None = None,
        max_clock_skew: float = 1.0,
        clock: Clock | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        name: str = "trading-gate",
    ) -> None:
        read_age = max_record_age if max_read_age is None else max_read_age
        if not 0 <= max_clock_skew < max_record_age:
            raise ValueError(
                f"need 0 <= max_clock_skew ({max_clock_skew}) < max_record_age ({max_record_age})"
            )
        if read_age <= 0:
            raise ValueError(f"max_read_age must be positive, got {read_age}")
        self.max_record_age = float(max_record_age)
        self.max_read_age = float(read_age)
        self.max_clock_skew = float(max_clock_skew)
        self.clock: Clock = clock or SystemClock()
        self.name = name
        self._monotonic = monotonic
        # The hot-path state: allowed() <=> monotonic() < _open_until.
        self._open_until = _CLOSED
        self._view = _View(GateState.PENDING, "no record seen yet")
        self._highest_active_seq: int | None = None
        self._log = logger.bind(gate=name)

    # ------------------------------------------------------------------ hot path

    def allowed(self) -> bool:
        """``True`` only while the view is a fresh, readable, inactive record."""
        return self._monotonic() < self._open_until

    # ------------------------------------------------------------------ explanations

    def why(self) -> str:
        """Human reason for the current answer, e.g. ``"ACTIVE: flash_crash"``."""
        return self.status().reason

    def status(self) -> GateStatus:
        """The current answer with its reason and the ages behind it."""
        now = self._monotonic()
        view = self._view
        allowed = now < self._open_until
        since_read = None if view.read_mono is None else max(0.0, now - view.read_mono)
        since_refresh = None if view.refreshed_mono is None else now - view.refreshed_mono
        state, reason = view.state, view.reason
        if state in {GateState.OPEN, GateState.STALE}:
            if allowed:
                state = GateState.OPEN
                reason = (
                    f"open: inactive record (seq {_seq(view.record)}), refreshed "
                    f"{since_refresh or 0.0:.1f} s ago, read {since_read or 0.0:.1f} s ago"
                )
            else:
                state, reason = GateState.STALE, self._stale_reason(view, since_refresh, since_read)
        return GateStatus(allowed, state, reason, view.record, since_refresh, since_read)

    def _stale_reason(
        self, view: _View, since_refresh: float | None, since_read: float | None
    ) -> str:
        if view.record_deadline <= view.read_deadline:
            limit = self.max_record_age - self.max_clock_skew
            return f"stale: last refresh {since_refresh or 0.0:.1f} s ago (limit {limit:.1f} s)"
        return (
            f"stale: last successful read {since_read or 0.0:.1f} s ago "
            f"(limit {self.max_read_age:.1f} s)"
        )

    # ------------------------------------------------------------------ updates

    def update(self, record: Mapping[str, Any] | None, *, read_at_wall: datetime) -> None:
        """Take a record (``None``: the store has none) read at ``read_at_wall``.

        ``read_at_wall`` is this host's wall-clock time when the read *started* (aware); the
        gate translates it to its monotonic clock once, here, using its ``clock``. Never
        raises for bad records: they close the gate with a reason.
        """
        if read_at_wall.tzinfo is None:
            raise ValueError("read_at_wall must be timezone-aware")
        mono_now = self._monotonic()
        wall_now = self.clock.now()
        read_mono = mono_now - max(0.0, (wall_now - read_at_wall).total_seconds())
        if record is None:
            self._close(GateState.NO_RECORD, "no record", read_mono=read_mono)
            return
        try:
            parsed = _strict_record(record)
        except (RecordError, TypeError, ValueError) as exc:
            self._close(GateState.INVALID, f"unreadable record: {exc}", read_mono=read_mono)
            return
        if parsed.active:
            if parsed.seq is not None:
                self._highest_active_seq = max(self._highest_active_seq or 0, parsed.seq)
            reason = f"ACTIVE: {parsed.reason or 'no reason given'}"
            self._close(
                GateState.ACTIVE,
                f"{reason} ({parsed.detail})" if parsed.detail else reason,
                read_mono=read_mono,
                record=parsed,
            )
            return
        highest = self._highest_active_seq
        if highest is not None and (parsed.seq is None or parsed.seq <= highest):
            self._close(
                GateState.INVALID,
                f"inactive record (seq {_seq(parsed)}) is not newer than the active record "
                f"(seq {highest}) already seen: refusing to reopen on an old value",
                read_mono=read_mono,
                record=parsed,
            )
            return
        refreshed_at = parsed.refreshed_at or parsed.timestamp
        apparent_age = (wall_now - refreshed_at).total_seconds()
        if apparent_age < -self.max_clock_skew:
            self._close(
                GateState.INVALID,
                f"clock skew: record refreshed {-apparent_age:.1f} s in the future (more than "
                f"the {self.max_clock_skew:g} s allowed); check NTP on the writer and this host",
                read_mono=read_mono,
                record=parsed,
            )
            return
        age = max(apparent_age, 0.0)
        record_deadline = mono_now + (self.max_record_age - self.max_clock_skew - age)
        read_deadline = read_mono + self.max_read_age
        view = _View(
            GateState.OPEN if min(record_deadline, read_deadline) > mono_now else GateState.STALE,
            "",
            record=parsed,
            read_mono=read_mono,
            refreshed_mono=mono_now - age,
            record_deadline=record_deadline,
            read_deadline=read_deadline,
        )
        self._publish(view, min(record_deadline, read_deadline))

    def mark_failed(self, error: BaseException | str) -> None:
        """The store could not be read: close now, until a fresh inactive record arrives."""
        detail = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error
        previous = self._view
        self._publish(
            _View(
                GateState.FAILED,
                f"policy store unreadable: {detail}",
                read_mono=previous.read_mono,
                refreshed_mono=previous.refreshed_mono,
            ),
            _CLOSED,
        )

    def _close(
        self,
        state: GateState,
        reason: str,
        *,
        read_mono: float,
        record: PolicyRecord | None = None,
    ) -> None:
        self._publish(_View(state, reason, record=record, read_mono=read_mono), _CLOSED)

    def _publish(self, view: _View, open_until: float) -> None:
        previous = self._view
        if open_until == _CLOSED:
            self._open_until = _CLOSED  # close first: no reader may see the new view as open
            self._view = view
        else:
            self._view = view
            self._open_until = open_until  # open last: the view is complete before it counts
        # Log changes only: an open view refreshed every poll (empty reason) is not news.
        if view.state != previous.state or view.reason != previous.reason:
            self._log_transition(previous, view)

    def _log_transition(self, previous: _View, view: _View) -> None:
        status = self.status()
        log = self._log.bind(
            state=status.state.value,
            previous=previous.state.value,
            reason=status.reason,
            seq=_seq(view.record),
        )
        if status.allowed:
            log.info("trading gate opened")
        else:
            log.warning("trading gate closed: {reason}", reason=status.reason)


def _strict_record(record: Mapping[str, Any]) -> PolicyRecord:
    """``record`` validated as its JSON text, strictly (as every ESS consumer decodes).

    Lax validation of a Python dict coerces: ``"active": "false"``, ``0`` or ``"no"`` would
    read as ``False`` and *open* the gate, and an epoch number would pass for ``refreshed_at``.
    The contract refuses wrong JSON types, so the mapping is rendered back to the JSON it came
    from and decoded strictly; anything that is not JSON (a ``datetime``, NaN) is refused too.
    """
    text = json.dumps(dict(record), allow_nan=False, ensure_ascii=False)
    return decode(PolicyRecord, text)


def _seq(record: PolicyRecord | None) -> str:
    return "?" if record is None or record.seq is None else str(record.seq)


# ====================================================================== feeds


#: How long :meth:`PolicyStoreGateFeed.stop` waits for its tasks to end.
_STOP_TIMEOUT_S = 5.0


class PolicyStoreGateFeed:
    """Keeps a gate's view current by polling any PolicyStore.

    Reads ``key`` every ``poll_interval`` seconds (and at once when :meth:`notify` is called),
    one read at a time, each bounded by ``read_timeout``. A read that raises or times out marks
    the gate failed (closed); the next good read reopens it if the record allows.
    :meth:`start` does the first read before returning, so the gate has a real answer as soon
    as the feed is up.
    """

    def __init__(
        self,
        store: PolicyStore,
        gate: TradingGate,
        poll_interval: float = 0.5,
        *,
        key: str = EMERGENCY_STOP_KEY,
        read_timeout: float = 2.0,
    ) -> None:
        if poll_interval <= 0 or read_timeout <= 0:
            raise ValueError("poll_interval and read_timeout must be positive")
        self.store = store
        self.gate = gate
        self.poll_interval = poll_interval
        self.key = key
        self.read_timeout = read_timeout
        #: Successful reads and failed reads so far (for health checks and tests).
        self.reads = 0
        self.failures = 0
        self._read_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._log = logger.bind(gate=gate.name, key=key, store=repr(store))

    @property
    def running(self) -> bool:
        """Whether the feed's tasks are running."""
        return any(not task.done() for task in self._tasks)

    async def start(self) -> None:
        """Read once, then keep reading in the background. Idempotent."""
        if self._tasks:
            return
        await self.refresh()
        self._tasks.append(asyncio.create_task(self._poll_loop(), name=f"{self.gate.name}-poll"))
        self._log.bind(poll_interval=self.poll_interval).info("gate feed started")

    async def stop(self) -> None:
        """Stop reading. The gate keeps its view, which then ages until it goes stale.

        Bounded by ``_STOP_TIMEOUT_S``: a client library that swallows a cancellation (seen
        with a Redis pub/sub connection closing) must not hang the caller's shutdown; such a
        task is left behind and logged."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_STOP_TIMEOUT_S)
            if pending:
                self._log.bind(tasks=[task.get_name() for task in pending]).error(
                    "gate feed task did not stop when cancelled; left behind"
                )
            self._log.info("gate feed stopped")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    def notify(self) -> None:
        """Read again now instead of at the next poll (e.g. on a change notification)."""
        self._wake.set()

    async def refresh(self) -> None:
        """Read the record once and hand the result to the gate."""
        async with self._read_lock:
            read_at = self.gate.clock.now()
            try:
                async with asyncio.timeout(self.read_timeout):
                    record = await self.store.get(self.key)
            except TimeoutError:
                self.failures += 1
                self.gate.mark_failed(f"read of {self.key!r} timed out after {self.read_timeout} s")
                return
            except Exception as exc:  # any failure to read is "cannot tell": fail closed
                self.failures += 1
                self.gate.mark_failed(exc)
                return
            self.reads += 1
            self.gate.update(record, read_at_wall=read_at)

    async def _poll_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.refresh()
            except Exception as exc:  # a bug must not kill the feed silently; fail closed
                self._log.exception("gate feed read crashed")
                self.gate.mark_failed(exc)


class RedisGateFeed(PolicyStoreGateFeed):
    """A :class:`PolicyStoreGateFeed` that also re-reads as soon as Redis announces a write.

    Subscribes to the store's notification channel and calls :meth:`notify` on every message
    for ``key``, so a new record reaches the gate in about one round trip. Polling continues
    as the safety net: pub/sub is at-most-once, and a lost subscription is retried every
    ``resubscribe_delay`` seconds. After each (re)subscription the feed reads once, because a
    write may have happened while it was not subscribed.
    """

    def __init__(
        self,
        store: RedisPolicyStore,
        gate: TradingGate,
        poll_interval: float = 1.0,
        *,
        key: str = EMERGENCY_STOP_KEY,
        read_timeout: float = 2.0,
        resubscribe_delay: float = 0.5,
    ) -> None:
        super().__init__(store, gate, poll_interval, key=key, read_timeout=read_timeout)
        self.redis_store = store
        self.resubscribe_delay = resubscribe_delay
        self._subscribed = False

    @property
    def subscribed(self) -> bool:
        """Whether the notification subscription is currently up."""
        return self._subscribed

    async def start(self) -> None:
        if self._tasks:
            return
        await super().start()
        self._tasks.append(
            asyncio.create_task(self._listen_loop(), name=f"{self.gate.name}-listen")
        )

    async def _listen_loop(self) -> None:
        failing = False
        while True:
            try:
                async with self.redis_store.notifications() as notifications:
                    self._subscribed, failing = True, False
                    self._log.bind(channel=notifications.channel).info("gate feed subscribed")
                    self.notify()  # catch anything written while we were not subscribed
                    async for key in notifications:
                        if key == self.key:
                            self.notify()
            except PolicyStoreError as exc:
                # Warn once per outage, not on every retry; polling carries on regardless.
                level = "DEBUG" if failing else "WARNING"
                self._log.bind(error=str(exc)).log(level, "gate feed subscription lost; polling")
                failing = True
            except Exception:  # never let the listener die
                self._log.exception("gate feed listener crashed")
            finally:
                self._subscribed = False
            await asyncio.sleep(self.resubscribe_delay)


def gate_feed(
    store: PolicyStore, gate: TradingGate, poll_interval: float = 0.5
) -> PolicyStoreGateFeed:
    """The best feed for ``store``: pub/sub-accelerated for Redis, polling otherwise."""
    if isinstance(store, RedisPolicyStore):
        return RedisGateFeed(store, gate, poll_interval)
    return PolicyStoreGateFeed(store, gate, poll_interval)
