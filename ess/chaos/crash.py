"""Crash campaign: scripted emergencies while a driver SIGKILLs and restarts ESS processes.

What runs
---------
One embedded broker (unique topic prefix), the exchange simulator with the demo account (a
futures and a spot venue on loopback), operator keys and a small-threshold
:class:`~ess.rules.config.DetectionConfig` in a temporary directory, and the four roles as
separate ``python -m ess.operator.cli worker --role X`` processes (``detect``, ``command``,
``execute``, ``project``; the projector writes a SQLite PolicyStore). Each process logs to
``<role>.log`` in the temporary directory.

Detection runs as several ``ess worker --role detect`` processes in one consumer group
(``QUICK_DETECT_WORKERS`` 2, ``FULL_DETECT_WORKERS`` 3, each in its own directory): they
split the input partitions, and when one is killed the survivors take its partitions over
and rebuild its windows from the changelogs.

Two things happen at once:

* **Scenarios**, one after another, each meant to trip one reason code with fresh keys (rules
  latch per key until the next reset): losses (``daily_loss``, ``equity_drawdown``,
  ``flash_crash``), silence (``heartbeat_lost`` or ``data_feed_stale``, first scenario of a
  run only: see :func:`scenario_cycle`), rogue trading (``trade_rate``), corrupt data
  (``data_feed_corrupt``), security events (a random :class:`~schemas.SecurityEventKind`)
  and manual trips. A scenario seeds the demo book (and sees it stay untouched for a
  moment), fires, waits (bounded) for an ``activated`` or ``trip_recorded`` entry with its
  reason in ``ess.state``, then for both venues to be flat; the driver then sends a signed
  reset and waits for its ``reset`` entry. The last scenario is left ACTIVE.
* **Kills**: every 0.5-3 s (random) one role process is SIGKILLed and started again (at once
  or after up to 2 s). A process is only eligible once it has been up for its role's
  ``MIN_UPTIME_S`` and, for the detector and the processor, once it logged that it works
  (``READY_LINES``): both rejoin a consumer group after a restart (seconds: the killed
  member's session must expire first), and killing them again before they consumed anything
  would only starve them, which measures the kill rate rather than ESS (seen: a processor
  killed every few seconds applied nothing for a minute). The
  broker and the simulator are never killed (broker loss is another campaign). A process
  that exits by itself is restarted too and counted in ``self_exits``, as a supervisor would.

Figures
-------
* ``scenarios``: scenarios played; ``kills`` (total) and ``kills_by_role``.
* ``missed_trips`` (failure): scenarios whose reason never reached ``ess.state`` within
  ``TRIP_TIMEOUT_S``; ``missed_trips_on_rebalance`` (failure): those of them during which a
  detection worker was killed while another ran. ``rebalances``: group membership changes
  the driver caused that way (a kill and the restart's join: 2 each);
  ``detect_kills_with_survivors``.
* The command processor is also stopped (SIGSTOP, ``STOP_S``) and fenced, and produce
  answers are lost (see the constants): ``processor_faults``, ``exit_codes``,
  ``lost_answers``. ``trips_never_applied`` (failure): trips on ``ess.commands`` whose id
  never reached the log. ``gate_open_while_active_s`` (failure): time a gate over the
  projector's PolicyStore (sampled every ``GATE_POLL_S``) allowed trading more than
  ``ACTIVE_BOUND_S`` after the log said ACTIVE or ``WRITER_BOUND_S`` after the processor
  went (killed, stopped, fenced); ``gate_open_s``/``gate_closed_s`` say how much it was
  open at all.
* ``duplicate_activations`` (failure): applied ``activated`` entries for a command id that was
  already activated, or while the folded state was already ACTIVE (no reset between). The
  state machine forbids both, so this counts what the log actually shows.
* ``auto_reactivations`` (failure): applied ``reset`` entries whose command id is not one of
  the resets this driver signed and sent: ESS must never return to INACTIVE by itself.
* ``not_flat_at_end`` (failure): activations at whose end (before the driver's reset, and for
  the last one at the end of the run) the venues were not flat within ``FLAT_TIMEOUT_S``:
  futures positions, open orders on both venues, and spot BTC/ETH balances.
* ``final_state_matches_replay`` (must be true): with every process up again, the campaign
  waits for the projector's PolicyStore record to carry the last ``seq`` of the log, then
  requires (1) the folded state log (``fold_log``) to equal that record (active, reason, seq)
  and (2) an audit recording of every topic (:func:`ess.audit.recording.record`) replayed
  through the live detection and decision code (:func:`ess.audit.replay.replay`) to agree
  with the recorded detector trips (:func:`ess.audit.compare.compare`, strict mode: same
  command ids, triggers and activated/trip_recorded kinds; operator trips and resets are fed
  to the replay's decider from the recording). ``replay_differences`` gives the number of
  disagreeing rows, ``projector_matches_log`` part (1) alone. Both parts proved stable under
  the kills, so the strict version is used: live races (a command redelivered after a
  processor restart, a detector re-reading its input) are deduplicated by command id, which
  the replay reproduces.
* Information: ``duration_s``, ``work_dir`` (role logs; removed and ``None`` after a clean
  run), ``self_exits``, ``unexpected_trips`` (detector/operator trips
  in the log with a reason no scenario asked for: not a failure, but worth a look),
  ``log_duplicates_skipped`` (entries with an already applied ``seq``, tolerated by design:
  a fenced zombie writer or a producer retry), and ``scenario_results`` (per scenario:
  ``name``, ``reason``, ``book_seeded``, ``tripped``, ``trip_s``, ``flat``, ``flat_s``,
  ``reset_s``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaProducer
from loguru import logger

from ess.audit.compare import compare
from ess.audit.recording import record
from ess.audit.replay import replay
from ess.chaos.proxy import KafkaFaultProxy, proxied_embedded_broker
from ess.clock import SystemClock
from ess.core import ResetPolicy, decide
from ess.core.attestation import SigningKey
from ess.core.reader import Trust, fold_records, seal_entry
from ess.core.signing import generate_private_key, write_key_pair
from ess.gate import PolicyStoreGateFeed, TradingGate
from ess.kafka.broker import ensure_topics
from ess.kafka.clients import producer, read_to_end
from ess.operator.commands import manual_trip, send_command, signed_reset
from ess.policystore import SQLitePolicyStore
from ess.roles.command.processor import decode_command
from ess.rules.config import AccountLimits, DetectionConfig
from ess.sim import ExchangeSimulator
from ess.sim.demo import DEMO_API_KEY, DEMO_POSITIONS, DEMO_SECRET, seed_demo, seed_demo_book
from ess.statelog import Folded, KafkaStateLog, LoggedEntry, StateLogReader, follow_state
from schemas import (
    ActivatedEntry,
    ReasonCode,
    RecordError,
    ResetCommand,
    ResetEntry,
    ResetRejectedEntry,
    SecurityEventKind,
    TopicRegistry,
    TripCommand,
    TripRecordedEntry,
    topic_registry,
)

__all__ = ["FAILURES", "run_campaign"]

#: Figures that must be 0 (``final_state_matches_replay`` must be true as well).
FAILURES: Final[tuple[str, ...]] = (
    "missed_trips",
    "duplicate_activations",
    "auto_reactivations",
    "not_flat_at_end",
    "driver_errors",
    "gate_open_while_active_s",
    "trips_never_applied",
    "missed_trips_on_rebalance",
)

ROLES: Final = ("detect", "command", "execute", "project")
#: A process is killed only after it has been up this long (see the module notes).
MIN_UPTIME_S: Final = {"detect": 12.0, "command": 1.5, "execute": 1.5, "project": 1.5}
#: Bounds of every wait; generous because a kill can land on the process a step needs.
TRIP_TIMEOUT_S: Final = 60.0
FLAT_TIMEOUT_S: Final = 60.0
RESET_TIMEOUT_S: Final = 60.0
READY_TIMEOUT_S: Final = 60.0
#: Pause between kills (uniform), and the longest delay before a killed process restarts.
KILL_PAUSE_S: Final = (0.5, 3.0)
RESTART_DELAY_S: Final = 2.0
#: Besides SIGKILL, what happens to the command processor when the kill loop picks it: a
#: SIGSTOP for a while (``STOP_S``, uniform) then SIGCONT, or *fencing*: an authentic entry it
#: did not write appears at the head of ``ess.state`` (see :meth:`Campaign.fence`), so it must
#: exit (code 3) and the supervisor starts it again. Shares of the processor's turns.
PROCESSOR_FAULTS: Final = {"sigkill": 0.55, "sigstop": 0.3, "fenced": 0.15}
STOP_S: Final = (0.5, 4.0)
#: Every kill-loop turn, this share also loses the answer to the next Produce request on
#: ``ess.state`` or ``ess.commands`` (the fault proxy: the broker applies it, the client
#: retries, the record lands twice).
LOST_ANSWER_SHARE: Final = 0.3
#: The liveness settings of the roles (``ESS_PROCESSOR_TIMEOUT_SEC`` and
#: ``ESS_COMMAND_BACKLOG_TIMEOUT_SEC`` of the projector, ``ESS_PROCESSOR_BEAT_INTERVAL_SEC`` of
#: the processor) and of the campaign's gate (over the projector's SQLite PolicyStore).
PROCESSOR_TIMEOUT_S: Final = 1.5
BEAT_INTERVAL_S: Final = 0.25
MAX_RECORD_AGE_S: Final = 2.0
MAX_CLOCK_SKEW_S: Final = 0.5
GATE_POLL_S: Final = 0.05
#: Slack on the bounds below: beat interval, projector refresh, gate and follower polling.
GATE_TOLERANCE_S: Final = 1.0
#: Once the log says ACTIVE (as the driver's follower sees it), every gate is closed within
#: ``max_record_age``: the projector either writes the ACTIVE record or stops refreshing.
ACTIVE_BOUND_S: Final = MAX_RECORD_AGE_S + GATE_TOLERANCE_S
#: Once the writer is gone (killed, stopped, fenced), every gate is closed within
#: ``processor_timeout + max_record_age`` (the documented liveness bound).
WRITER_BOUND_S: Final = PROCESSOR_TIMEOUT_S + MAX_RECORD_AGE_S + GATE_TOLERANCE_S
#: How long the end of the run waits for the processor to reach every trip on the topic.
DRAIN_TIMEOUT_S: Final = 60.0
#: Detection workers in the one consumer group: they split the input partitions, and
#: killing one makes the survivors take its partitions over and rebuild its windows from the
#: changelogs (a rebalance).
QUICK_DETECT_WORKERS: Final = 2
FULL_DETECT_WORKERS: Final = 3
#: Full run: play scenarios until both targets are reached (or the time budget is spent).
FULL_MIN_KILLS: Final = 60
FULL_MIN_SCENARIOS: Final = 12
FULL_BUDGET_S: Final = 480.0
QUICK_SCENARIOS: Final = 3
QUICK_MIN_KILLS: Final = 6
QUICK_BUDGET_S: Final = 40.0
TICK_INTERVAL_S: Final = 0.5
BOOK_STABLE_S: Final = 1.0
#: Log lines of a start that joined its group and works: the detector's "ready", and the
#: processor owning the command partition (a restarted one first waits out the killed
#: member's session, a few seconds).
READY_LINES: Final = {
    "detect": "detection worker ready",
    "command": "command processor owns the command partition",
}
BOOK_SETTLE_TIMEOUT_S: Final = 15.0
_POLL_S: Final = 0.05
OPERATOR: Final = "chaos"

#: Thresholds small enough for a handful of records per scenario. Silence limits are an hour,
#: so only the keys a scenario makes silent on purpose (records two hours old) trip on them;
#: the loss limits are chosen so that each loss scenario trips exactly its own rule.
DETECTION: Final = DetectionConfig(
    account=AccountLimits(daily_loss=0.10, drawdown=0.15, flash_crash=0.05, trade_rate_max=5),
    heartbeat_timeout_sec=3600,
    data_feed_stale_sec=3600,
    corrupt_window_ticks=5,
    corrupt_min_ticks=4,
)


# --------------------------------------------------------------------------- processes


@dataclass
class RoleProcess:
    """One ``ess worker --role <role>`` process, restartable."""

    role: str
    env: dict[str, str]
    cwd: Path
    #: Unique per process (``detect-2``); the role's name when it runs once.
    name: str = ""
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    starts: int = 0
    #: True while the driver is restarting it on purpose (the supervisor leaves it alone).
    restarting: bool = False

    def __post_init__(self) -> None:
        self.name = self.name or self.role

    @property
    def log(self) -> Path:
        return self.cwd / f"{self.name}.log"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started_at if self.alive else 0.0

    def ready(self) -> bool:
        """Running, and for the roles that join a consumer group (detector, processor): this
        start logged that it is working (``READY_LINES``, one line per start). The other
        roles are ready as soon as they run (the scenarios wait for their effects)."""
        marker = READY_LINES.get(self.role)
        if marker is None or not self.alive:
            return self.alive
        try:
            return self.log.read_text().count(marker) >= self.starts
        except OSError:
            return False

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "ess.operator.cli", "worker", "--role", self.role],
                env=self.env,
                cwd=self.cwd,  # Faust writes its data directory here
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.started_at = time.monotonic()
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL and reap (no clean shutdown: that is the point)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)


# --------------------------------------------------------------------------- the driver


@dataclass
class Figures:
    """Counters the driver fills in while it runs."""

    kills: Counter[str] = field(default_factory=Counter)
    self_exits: Counter[str] = field(default_factory=Counter)
    exit_codes: Counter[str] = field(default_factory=Counter)
    processor_faults: Counter[str] = field(default_factory=Counter)
    lost_answers_armed: int = 0
    #: When (monotonic) a detection worker was killed while another one of the group ran:
    #: the survivors must take over its partitions (a rebalance).
    detect_kills: list[float] = field(default_factory=list)
    rebalances: int = 0
    gate_open_beyond_bound_s: float = 0.0
    gate_open_s: float = 0.0
    gate_closed_s: float = 0.0
    missed_trips: int = 0
    not_flat: int = 0
    reset_failures: int = 0
    scenario_results: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Campaign:
    """The driver: broker, simulator, processes, state-log follower and the scenarios."""

    bootstrap: str
    registry: TopicRegistry
    sim: ExchangeSimulator
    account: str
    keys_private: Path
    store_path: Path
    procs: dict[str, RoleProcess]
    rng: random.Random
    out: AIOKafkaProducer
    trust: Trust
    figures: Figures = field(default_factory=Figures)
    entries: list[LoggedEntry] = field(default_factory=list)
    reader: StateLogReader | None = None
    sent_resets: set[str] = field(default_factory=set)
    expected_reasons: set[ReasonCode] = field(default_factory=set)
    serial: int = 0
    proxy: KafkaFaultProxy | None = None
    processor_key: SigningKey | None = None
    #: Since when (monotonic) the follower has seen the log ACTIVE; ``None`` while INACTIVE.
    active_since: float | None = None
    #: The writer is gone: since when, and which start of the processor brings it back.
    outage: WriterOutage | None = None
    #: The processor is SIGSTOPped (a stopped process is alive, and "ready", to the driver).
    processor_stopped: bool = False
    #: The processor's first turns play these faults, so that even a short run has each.
    first_faults: list[str] = field(default_factory=lambda: ["sigstop", "fenced"])

    # ---------------------------------------------------------------- state log

    async def follow(self) -> None:
        """Mirror the verified entries of ``ess.state`` into ``entries`` (restarts its
        consumer on errors)."""
        self.reader = StateLogReader(self.trust, name="chaos")
        while True:
            try:
                async for records in follow_state(
                    self.bootstrap, self.registry, self.reader.folded.next_offset
                ):
                    self.entries.extend(self.reader.feed(records).applied)
                    if not self.reader.folded.state.active:
                        self.active_since = None
                    elif self.active_since is None:
                        self.active_since = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the follower must outlive broker hiccups
                logger.bind(error=repr(exc)).warning("chaos: state follower restarting")
                await asyncio.sleep(0.5)

    def folded(self) -> Folded:
        return self.reader.folded if self.reader is not None else Folded()

    async def wait_entry(
        self,
        match: Callable[[LoggedEntry], bool],
        start: int,
        timeout: float,  # noqa: ASYNC109
    ) -> LoggedEntry | None:
        """The first entry at list index ``start`` or later that ``match``es, or ``None``."""
        deadline = time.monotonic() + timeout
        seen = start
        while True:
            entries = self.entries
            for logged in entries[seen:]:
                if match(logged):
                    return logged
            seen = max(seen, len(entries))
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(_POLL_S)

    # ---------------------------------------------------------------- processes

    async def kill_loop(self, stop: asyncio.Event) -> None:
        """SIGKILL a random eligible role process every 0.5-3 s and start it again."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.rng.uniform(*KILL_PAUSE_S))
            if stop.is_set():
                return
            eligible = [
                p for p in self.procs.values() if p.ready() and p.uptime >= MIN_UPTIME_S[p.role]
            ]
            if not eligible:
                continue
            self.maybe_lose_an_answer()
            victim = self.rng.choice(eligible)
            detectors = [p for p in eligible if p.role == "detect"]
            if self.first_faults and self.procs["command"] in eligible:
                victim = self.procs["command"]
            elif not self.figures.detect_kills and len(detectors) > 1:
                victim = detectors[0]  # a rebalance early, so that even a short run has one
            if victim.role == "command" and not await self.processor_fault(victim):
                continue
            victim.restarting = True
            try:
                if victim.role == "detect" and any(
                    p.alive for p in self.procs.values() if p.role == "detect" and p is not victim
                ):
                    self.figures.detect_kills.append(time.monotonic())
                    self.figures.rebalances += 2  # the member leaves, and joins again
                victim.kill()
                self.figures.kills[victim.role] += 1
                if victim.role == "command":
                    self.writer_gone(back_at_start=victim.starts + 1)
                delay = 0.0 if self.rng.random() < 0.5 else self.rng.uniform(0.1, RESTART_DELAY_S)
                logger.bind(role=victim.role, restart_in=round(delay, 2)).info("chaos: SIGKILL")
                if delay:
                    await asyncio.sleep(delay)
                victim.start()
            finally:
                victim.restarting = False

    def maybe_lose_an_answer(self) -> None:
        """Now and then, arm the proxy to lose the next produce answer on ``ess.state`` (a
        processor append) or ``ess.commands`` (a detector's or the driver's command)."""
        if self.proxy is None or self.proxy.pending_drops():
            return
        if self.figures.lost_answers_armed == 0 or self.rng.random() < LOST_ANSWER_SHARE:
            topics = (self.registry.state.name, self.registry.commands.name)
            topic = topics[0] if self.figures.lost_answers_armed == 0 else self.rng.choice(topics)
            self.proxy.drop_produce_responses(topic)
            self.figures.lost_answers_armed += 1

    async def processor_fault(self, victim: RoleProcess) -> bool:
        """Pick the processor's fault; ``True`` when it is SIGKILL (the caller's job)."""
        faults = list(PROCESSOR_FAULTS)
        if self.first_faults:
            fault = self.first_faults.pop(0)
        else:
            fault = self.rng.choices(faults, weights=[PROCESSOR_FAULTS[f] for f in faults])[0]
        if fault == "sigkill":
            return True
        self.figures.processor_faults[fault] += 1
        victim.restarting = fault == "sigstop"  # a fenced processor exits: the supervisor's job
        try:
            if fault == "sigstop":
                await self.stop_for_a_while(victim)
            else:
                await self.fence(victim)
        finally:
            victim.restarting = False
        return False

    async def stop_for_a_while(self, victim: RoleProcess) -> None:
        """SIGSTOP the processor, wait, SIGCONT: alive to the kernel and the broker, silent."""
        assert victim.proc is not None
        pause = self.rng.uniform(*STOP_S)
        logger.bind(role=victim.role, pause=round(pause, 2)).info("chaos: SIGSTOP")
        victim.proc.send_signal(signal.SIGSTOP)
        self.processor_stopped = True
        self.writer_gone(back_at_start=victim.starts)
        try:
            await asyncio.sleep(pause)
        finally:
            with contextlib.suppress(ProcessLookupError):
                victim.proc.send_signal(signal.SIGCONT)
            self.processor_stopped = False

    async def fence(self, victim: RoleProcess) -> None:
        """Another writer appears: an entry sealed with the processor's own key, chained to
        the head, that the processor did not write (a ``reset_rejected`` for an operator
        nobody registered: it changes nothing). The processor is SIGSTOPped while it is
        appended, so that the entry cannot race one of its own appends (two authentic entries
        for one ``seq`` are a fork, which every reader refuses for good: see
        ``docs/contract.md``); on SIGCONT it must notice and exit 3."""
        assert victim.proc is not None
        assert self.processor_key is not None
        victim.proc.send_signal(signal.SIGSTOP)
        self.processor_stopped = True
        self.writer_gone(back_at_start=victim.starts + 1)
        log = KafkaStateLog(self.bootstrap, self.registry.state.name)
        try:
            await asyncio.sleep(0.5)  # whatever it had in flight lands first
            folded, _ = fold_records(await log.read(), self.trust)
            now = datetime.now(UTC)
            command = ResetCommand(
                command_id=f"chaos-intruder-{uuid.uuid4().hex}",
                kind="reset",
                operator="chaos-intruder",
                detail="crash campaign: an authentic entry the processor did not write",
                nonce=uuid.uuid4().hex,
                signature=base64.b64encode(bytes(64)).decode(),
                ts=now,
            )
            entries = decide(folded.state, command, now=now, policy=self.policy)
            if len(entries) != 1 or not isinstance(entries[0], ResetRejectedEntry):
                raise RuntimeError(f"crash campaign: unexpected intruder entries {entries}")
            _, value = seal_entry(entries[0], self.processor_key, scope=log.topic, prev=folded.head)
            await log.start()
            offset = await log.append(value)
            logger.bind(offset=offset).warning(
                "chaos: appended an entry the processor did not write"
            )
        finally:
            await log.stop()
            with contextlib.suppress(ProcessLookupError):
                victim.proc.send_signal(signal.SIGCONT)
            self.processor_stopped = False

    @property
    def policy(self) -> ResetPolicy:
        return ResetPolicy(operators=dict(self.trust.operator_keys))

    def writer_gone(self, *, back_at_start: int) -> None:
        if self.outage is None:
            self.outage = WriterOutage(since=time.monotonic(), back_at_start=back_at_start)
        else:
            self.outage.back_at_start = max(self.outage.back_at_start, back_at_start)

    def writer_back(self) -> bool:
        """Ends the outage once the processor start it waits for owns the partition."""
        outage, processor = self.outage, self.procs["command"]
        if (
            outage is not None
            and not self.processor_stopped
            and processor.starts >= outage.back_at_start
            and processor.ready()
        ):
            self.outage = None
        return self.outage is None

    async def watch_gate(self) -> None:
        """A trading gate over the projector's PolicyStore, polled every ``GATE_POLL_S``:
        time it allowed trading more than ``ACTIVE_BOUND_S`` after the log said ACTIVE, or
        more than ``WRITER_BOUND_S`` after the writer went, is ``gate_open_while_active_s``."""
        store = SQLitePolicyStore(self.store_path)
        gate = TradingGate(
            max_record_age=MAX_RECORD_AGE_S, max_clock_skew=MAX_CLOCK_SKEW_S, name="chaos-gate"
        )
        feed = PolicyStoreGateFeed(store, gate, poll_interval=GATE_POLL_S, read_timeout=1.0)
        await feed.start()
        try:
            last = time.monotonic()
            while True:
                await asyncio.sleep(GATE_POLL_S)
                now = time.monotonic()
                step, last = now - last, now
                if not gate.allowed():
                    self.figures.gate_closed_s += step
                    continue
                self.figures.gate_open_s += step
                active = self.active_since is not None and now - self.active_since > ACTIVE_BOUND_S
                outage = self.outage
                gone = (
                    not self.writer_back()
                    and outage is not None
                    and now - outage.since > WRITER_BOUND_S
                )
                if active or gone:
                    self.figures.gate_open_beyond_bound_s += step
                    logger.bind(active=active, writer_gone=gone).error(
                        "chaos: a gate allows trading beyond the bound"
                    )
        finally:
            await feed.stop()
            await store.close()

    async def supervise(self) -> None:
        """Restart processes that exited by themselves (a supervisor's job)."""
        while True:
            for proc in self.procs.values():
                if not proc.restarting and proc.proc is not None and not proc.alive:
                    code = proc.proc.returncode
                    self.figures.self_exits[proc.role] += 1
                    self.figures.exit_codes[f"{proc.role}:{code}"] += 1
                    if proc.role == "command":
                        self.writer_gone(back_at_start=proc.starts + 1)
                    logger.bind(role=proc.role, code=code, log=str(proc.log)).warning(
                        "chaos: process exited by itself; restarting"
                    )
                    proc.start()
            await asyncio.sleep(0.5)

    # ---------------------------------------------------------------- venues

    def flat(self) -> bool:
        sim, account = self.sim, self.account
        return (
            not sim.positions(account)
            and not sim.open_orders(account)
            and sum(sim.spot_balance(account, "BTC")) == 0
            and sum(sim.spot_balance(account, "ETH")) == 0
        )

    def reseed(self) -> None:
        """The demo book again (the executor sold and closed everything)."""
        for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
            self.sim.seed_position(self.account, symbol, 0, "0")
        self.sim.seed_balance(self.account, "BTC", "0.2")
        self.sim.seed_balance(self.account, "ETH", "1.5")
        seed_demo_book(self.sim, self.account)

    async def settle_book(self) -> bool:
        """Seed the demo book and see it stay untouched for ``BOOK_STABLE_S``: an executor
        pass that started before it saw the last reset may still be cancelling, and a book
        flattened before the trip would make the next flatness check meaningless."""
        deadline = time.monotonic() + BOOK_SETTLE_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.flat() or len(self.sim.positions(self.account)) < len(DEMO_POSITIONS):
                self.reseed()
            stable_since = time.monotonic()
            while time.monotonic() - stable_since < BOOK_STABLE_S:
                if len(self.sim.positions(self.account)) < len(DEMO_POSITIONS):
                    break
                await asyncio.sleep(_POLL_S)
            else:
                return True
        return False

    async def wait_flat(self, timeout: float) -> float | None:  # noqa: ASYNC109
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.flat():
                return time.monotonic() - started
            await asyncio.sleep(_POLL_S)
        return None

    # ---------------------------------------------------------------- inputs

    async def send(self, logical: str, key: str, value: dict[str, Any] | bytes) -> None:
        topic = getattr(self.registry, logical).name
        body = value if isinstance(value, bytes) else orjson.dumps(value)
        await self.out.send_and_wait(topic, body, key=key.encode())

    # ---------------------------------------------------------------- one scenario

    async def play(self, scenario: Scenario) -> None:
        """Trip, wait for flat, reset (unless ``last``), and record the outcome."""
        self.serial += 1
        tag = f"{self.serial:03d}-{uuid.uuid4().hex[:6]}"
        result: dict[str, Any] = {"name": scenario.name, "reason": scenario.reason.value}
        self.figures.scenario_results.append(result)
        self.expected_reasons.add(scenario.reason)
        result["book_seeded"] = await self.settle_book()
        start = len(self.entries)
        began = time.monotonic()
        result["_window"] = (began, began + TRIP_TIMEOUT_S)
        await scenario.fire(self, tag)

        def tripped(logged: LoggedEntry) -> bool:
            entry = logged.entry
            return (
                isinstance(entry, ActivatedEntry | TripRecordedEntry)
                and entry.reason is scenario.reason
            )

        hit = await self.wait_entry(tripped, start, TRIP_TIMEOUT_S)
        result["tripped"] = hit is not None
        result["_window"] = (began, time.monotonic())
        if hit is None:
            self.figures.missed_trips += 1
            logger.bind(scenario=scenario.name).error("chaos: trip never reached ess.state")
        else:
            result["trip_s"] = round(time.monotonic() - began, 3)
        if not self.folded().state.active:
            # Nothing to flatten or reset (the trip was missed and nothing else tripped).
            result["flat"] = None
            return
        flat_s = await self.wait_flat(FLAT_TIMEOUT_S)
        result["flat"] = flat_s is not None
        if flat_s is None:
            self.figures.not_flat += 1
            logger.bind(scenario=scenario.name).error("chaos: venues not flat while ACTIVE")
        else:
            result["flat_s"] = round(flat_s, 3)

    async def reset(self, result: dict[str, Any]) -> bool:
        """A signed reset; waits for its ``reset`` entry (a rejected one is retried)."""
        began = time.monotonic()
        for _ in range(3):
            activation = self.folded().state.activation
            if activation is None:
                return True
            command = signed_reset(
                SystemClock(),
                OPERATOR,
                self.keys_private,
                "chaos: all clear",
                activation=activation,
            )
            self.sent_resets.add(command.command_id)
            start = len(self.entries)
            await send_command(self.bootstrap, self.registry, command)
            hit = await self.wait_entry(_for_command(command.command_id), start, RESET_TIMEOUT_S)
            if hit is not None and isinstance(hit.entry, ResetEntry):
                result["reset_s"] = round(time.monotonic() - began, 3)
                return True
            logger.bind(entry=None if hit is None else hit.entry.kind).warning(
                "chaos: reset not applied; retrying"
            )
        self.figures.reset_failures += 1
        return False


@dataclass
class WriterOutage:
    """The processor is gone since ``since`` (monotonic) until its start number
    ``back_at_start`` owns the command partition."""

    since: float
    back_at_start: int


def _for_command(command_id: str) -> Callable[[LoggedEntry], bool]:
    def match(logged: LoggedEntry) -> bool:
        return logged.entry.command_id == command_id

    return match


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    reason: ReasonCode
    fire: Callable[[Campaign, str], Awaitable[None]]


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _pnl(account: str, equity: float, ts: datetime) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "account_id": account, "equity": equity, "ts": _iso(ts)}


async def _equity_path(c: Campaign, account: str, path: tuple[tuple[float, float], ...]) -> None:
    """PnL ticks ``(seconds before now, equity)`` for a fresh account, oldest first."""
    now = _now()
    for ago, equity in path:
        await c.send("pnl", account, _pnl(account, equity, now - timedelta(seconds=ago)))


async def _daily_loss(c: Campaign, tag: str) -> None:
    # 11 % below the day's first equity; steps 100 s apart (no flash crash), peak = start.
    await _equity_path(c, f"dl-{tag}", ((300, 1000), (200, 950), (100, 890)))


async def _drawdown(c: Campaign, tag: str) -> None:
    # 15 % off a peak that is above the day's start: a drawdown, and no daily loss at all.
    await _equity_path(c, f"dd-{tag}", ((300, 1000), (200, 2000), (100, 1700)))


async def _flash_crash(c: Campaign, tag: str) -> None:
    # 6 % within 10 s: a flash crash, below the daily-loss and drawdown limits.
    await _equity_path(c, f"fc-{tag}", ((10, 1000), (0, 940)))


async def _trade_rate(c: Campaign, tag: str) -> None:
    account, now = f"tr-{tag}", _now()
    for i in range(6):  # more than trade_rate_max=5 fills in a minute
        ts = now - timedelta(seconds=6 - i)
        await c.send(
            "fills",
            account,
            {
                "event_id": uuid.uuid4().hex,
                "account_id": account,
                "venue": "binance",
                "symbol": "BTCUSDT",
                "side": "buy",
                "qty": 0.001,
                "price": 100.0,
                "realized_pnl": 0.0,
                "is_stop_loss": False,
                "order_id": uuid.uuid4().hex,
                "ts": _iso(ts),
            },
        )


def _tick(symbol: str, ts: datetime, bid: Any = 99.0) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "symbol": symbol,
        "bid": bid,
        "ask": 101.0,
        "last": 100.0,
        "ts": _iso(ts),
    }


async def _corrupt(c: Campaign, tag: str) -> None:
    # Two of four ticks corrupt (a negative bid, a non-number): 50 % > the 20 % limit.
    symbol, now = f"CORR{tag}", _now()
    ticks = (
        _tick(symbol, now - timedelta(seconds=3)),
        _tick(symbol, now - timedelta(seconds=2)),
        _tick(symbol, now - timedelta(seconds=1), bid=-1),
        _tick(symbol, now, bid="NaN?"),
    )
    for tick in ticks:
        await c.send("market", symbol, tick)


async def _stale(c: Campaign, tag: str) -> None:
    # A symbol whose last tick is two hours old: silent for longer than the hour allowed.
    symbol = f"STALE{tag}"
    await c.send("market", symbol, _tick(symbol, _now() - timedelta(hours=2)))


async def _heartbeat(c: Campaign, tag: str) -> None:
    component = f"svc-{tag}"
    await c.send(
        "health",
        component,
        {
            "event_id": uuid.uuid4().hex,
            "component": component,
            "status": "HEALTHY",
            "checks": {},
            "ts": _iso(_now() - timedelta(hours=2)),
        },
    )


def _security(kind: SecurityEventKind) -> Callable[[Campaign, str], Awaitable[None]]:
    async def fire(c: Campaign, tag: str) -> None:
        source = f"gw-{tag}"
        await c.send(
            "security",
            source,
            {
                "event_id": uuid.uuid4().hex,
                "kind": kind.value,
                "source": source,
                "detail": f"chaos: {kind.value}",
                "ts": _iso(_now()),
            },
        )

    return fire


async def _manual(c: Campaign, tag: str) -> None:
    trip = manual_trip(SystemClock(), f"chaos: manual trip {tag}", OPERATOR)
    await send_command(c.bootstrap, c.registry, trip)


def scenario_cycle(rng: random.Random, *, first: bool) -> list[Scenario]:
    """Every non-silence scenario once (the security kind drawn at random), shuffled; the
    ``first`` cycle of a run starts with one silence scenario (drawn at random).

    Silence only trips in epoch 0 here: after a reset the silence rules count a key's silence
    from the reset (``ctx.epoch_started``), even for a key first seen after it with an old
    last record, so a silence scenario in a later epoch would need the whole timeout (an hour
    here) of wall-clock silence. A short timeout is no way out either: every silent key of an
    earlier scenario would then re-trip one timeout after every reset.
    """
    kind = rng.choice(list(SecurityEventKind))
    cycle = [
        Scenario("losses:daily_loss", ReasonCode.DAILY_LOSS, _daily_loss),
        Scenario("losses:equity_drawdown", ReasonCode.EQUITY_DRAWDOWN, _drawdown),
        Scenario("losses:flash_crash", ReasonCode.FLASH_CRASH, _flash_crash),
        Scenario("rogue:trade_rate", ReasonCode.TRADE_RATE, _trade_rate),
        Scenario("corrupt:data_feed_corrupt", ReasonCode.DATA_FEED_CORRUPT, _corrupt),
        Scenario(f"security:{kind.value}", ReasonCode(kind.value), _security(kind)),
        Scenario("manual", ReasonCode.MANUAL, _manual),
    ]
    rng.shuffle(cycle)
    if first:
        silence = [
            Scenario("silence:heartbeat_lost", ReasonCode.HEARTBEAT_LOST, _heartbeat),
            Scenario("silence:data_feed_stale", ReasonCode.DATA_FEED_STALE, _stale),
        ]
        cycle.insert(0, rng.choice(silence))
    return cycle


# --------------------------------------------------------------------------- set-up


def _env(
    bootstrap: str, registry: TopicRegistry, work: Path, sim_url: str, group: str
) -> dict[str, str]:
    venues = work / "venues.toml"
    venues.write_text(
        "[[venues]]\n"
        'name = "futures"\nexchange = "binanceusdm"\n'
        f'base_url = "{sim_url}"\ncountdown_symbols = ["BTCUSDT"]\n\n'
        "[[venues]]\n"
        f'name = "spot"\nexchange = "binance"\nbase_url = "{sim_url}"\n'
    )
    detection = work / "detection.json"
    detection.write_bytes(orjson.dumps(DETECTION.model_dump(mode="json")))
    # Nothing of the caller's ESS/Kafka environment leaks in (a Redis URL would win over
    # the SQLite store, a bootstrap would point the roles at another cluster).
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ESS_", "KAFKA_", "CALF_"))}
    return {
        **base,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "ESS_TOPIC_PREFIX": registry.prefix,
        "ESS_POLICY_STORE_URL": f"sqlite:///{work / 'policy.sqlite3'}",
        "ESS_OPERATOR_KEYS_DIR": str(work / "operators"),
        "ESS_PROCESSOR_KEY_FILE": str(work / "processor.key"),
        "ESS_PROCESSOR_KEYS_DIR": str(work / "processors"),
        "ESS_COMMAND_STATUS_PORT": "-1",
        "ESS_DETECT_STATUS_PORT": "-1",  # several detection workers on one host
        "ESS_PROCESSOR_TIMEOUT_SEC": str(PROCESSOR_TIMEOUT_S),
        "ESS_COMMAND_BACKLOG_TIMEOUT_SEC": str(PROCESSOR_TIMEOUT_S),
        "ESS_PROCESSOR_BEAT_INTERVAL_SEC": str(BEAT_INTERVAL_S),
        "ESS_REFRESH_INTERVAL_SEC": "0.2",
        "ESS_STATUS_PORT": "-1",
        "ESS_EXECUTOR_STATUS_PORT": "-1",
        "ESS_LOG_JSON": "true",
        "ESS_DETECT_CONFIG": str(detection),
        "ESS_DETECT_GROUP": group,
        "ESS_DETECT_TICK_INTERVAL_SEC": str(TICK_INTERVAL_S),
        "ESS_DETECT_STANDBY_REPLICAS": "0",
        "ESS_VENUES_FILE": str(venues),
        "ESS_VENUE_FUTURES_API_KEY": DEMO_API_KEY,
        "ESS_VENUE_FUTURES_SECRET": DEMO_SECRET,
        "ESS_VENUE_SPOT_API_KEY": DEMO_API_KEY,
        "ESS_VENUE_SPOT_SECRET": DEMO_SECRET,
    }


async def _projected(store: SQLitePolicyStore) -> dict[str, Any] | None:
    with contextlib.suppress(Exception):
        value = await store.get("emergency_stop")
        return dict(value) if value is not None else None
    return None


# --------------------------------------------------------------------------- figures


def _log_figures(c: Campaign) -> dict[str, Any]:
    """Duplicate activations, auto-reactivations and unexpected trips, from the log itself."""
    folded = c.folded()
    activated: set[str] = set()
    active = False
    duplicates = 0
    auto = 0
    unexpected: Counter[str] = Counter()
    for logged in c.entries:
        entry = logged.entry
        if isinstance(entry, ActivatedEntry):
            if entry.command_id in activated or active:
                duplicates += 1
            activated.add(entry.command_id)
            active = True
            if entry.reason not in c.expected_reasons:
                unexpected[entry.reason.value] += 1
        elif isinstance(entry, TripRecordedEntry):
            if entry.reason not in c.expected_reasons:
                unexpected[entry.reason.value] += 1
        elif isinstance(entry, ResetEntry):
            if entry.command_id not in c.sent_resets:
                auto += 1
            active = False
    return {
        "duplicate_activations": duplicates,
        "auto_reactivations": auto,
        "unexpected_trips": dict(unexpected),
        "log_duplicates_skipped": folded.skipped,
        "foreign_state_records": folded.foreign,
        "log_entries": len(c.entries),
    }


async def _unapplied_trips(c: Campaign) -> dict[str, Any]:
    """Every trip on ``ess.commands`` must reach the log (an entry with its command id: an
    activation, a trip_recorded, or the entry of an earlier copy of it). Waits up to
    ``DRAIN_TIMEOUT_S`` for the processor to get there; what is still missing then is
    ``trips_never_applied``."""
    records = await read_to_end(c.bootstrap, c.registry.commands.name)
    sent: Counter[str] = Counter()
    undecodable = 0
    for rec in records:
        try:
            command = decode_command(rec.value)
        except RecordError:
            undecodable += 1
            continue
        if isinstance(command, TripCommand):
            sent[command.command_id] += 1
    trips = set(sent)
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        missing = trips - {logged.entry.command_id for logged in c.entries}
        if not missing or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    if missing:
        logger.bind(missing=sorted(missing)[:20]).error("chaos: trips never applied")
    return {
        "trips_on_command_topic": len(trips),
        "trips_never_applied": len(missing),
        # Sent more than once (a detector re-read its input after a kill or a rebalance, or
        # a lost produce answer): harmless, the processor applies a trip id once per epoch.
        "trip_commands_sent_again": sum(n - 1 for n in sent.values()),
        "undecodable_commands": undecodable,
    }


async def _final_check(c: Campaign, work: Path) -> dict[str, Any]:
    """Projector record versus folded log, and an audit record + replay of the run."""
    store = SQLitePolicyStore(work / "policy.sqlite3")
    figures: dict[str, Any] = {}
    try:
        folded = c.folded()
        state = folded.state
        deadline = time.monotonic() + READY_TIMEOUT_S
        projected = await _projected(store)
        while (projected is None or projected.get("seq") != state.last_seq) and (
            time.monotonic() < deadline
        ):
            await asyncio.sleep(0.2)
            projected = await _projected(store)
            state = c.folded().state
        activation = state.activation
        expected = {
            "active": state.active,
            "reason": activation.reason.value if activation else None,
            "seq": state.last_seq,
        }
        got = (
            None
            if projected is None
            else {k: projected.get(k) for k in ("active", "reason", "seq")}
        )
        figures["projector_matches_log"] = got == expected
        figures["final_state"] = expected
        if got != expected:
            figures["projected_state"] = got
    finally:
        await store.close()
    try:
        recording = work / "recording"
        await record(c.bootstrap, c.registry, recording)
        result = await asyncio.to_thread(
            replay, recording, DETECTION, trust=c.trust, tick_interval=TICK_INTERVAL_S
        )
        comparison = compare(result.recorded, result.replayed, unreplayable=result.unreplayable)
        figures["replay_differences"] = len(comparison.differences)
        figures["replayed_trips"] = len(result.replayed)
        figures["replay_ok"] = comparison.ok
        if not comparison.ok:
            figures["replay_difference_rows"] = [
                {
                    "outcome": row.outcome.value,
                    "rule": row.decision.rule,
                    "subject": row.decision.subject,
                }
                for row in comparison.differences[:20]
            ]
    except Exception as exc:  # reported as a figure, not a crash
        logger.bind(error=repr(exc)).error("chaos: audit replay failed")
        figures["replay_ok"] = False
        figures["replay_error"] = repr(exc)
    figures["final_state_matches_replay"] = bool(
        figures["projector_matches_log"] and figures["replay_ok"]
    )
    return figures


# --------------------------------------------------------------------------- entry point


async def _wait_ready(c: Campaign) -> None:
    """The projector wrote its record, the executor armed the venue's countdown and the
    detector logged that it is ready."""
    store = SQLitePolicyStore(c.store_path)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while (
            await _projected(store) is None
            or not c.sim.countdowns(c.account)
            or not all(p.ready() for p in c.procs.values() if p.role == "detect")
        ):
            if time.monotonic() > deadline:
                raise TimeoutError("ESS roles not ready (see the role logs)")
            await asyncio.sleep(0.2)
    finally:
        await store.close()


async def _play_all(c: Campaign, *, quick: bool, began: float, stop_kills: asyncio.Event) -> None:
    """Scenarios until the targets are met (or the time budget is spent); the last one is
    played with the kills stopped and left ACTIVE, so the end state settles with every
    process up."""
    budget = QUICK_BUDGET_S if quick else FULL_BUDGET_S
    queue = scenario_cycle(c.rng, first=True)
    played = 0
    while True:
        if not queue:
            queue = scenario_cycle(c.rng, first=False)
        scenario = queue.pop(0)
        kills = sum(c.figures.kills.values())
        if quick:
            enough = played >= QUICK_SCENARIOS and kills >= QUICK_MIN_KILLS
        else:
            enough = played >= FULL_MIN_SCENARIOS and kills >= FULL_MIN_KILLS
        if enough or (time.monotonic() - began > budget and played >= 2):
            stop_kills.set()
            await c.play(scenario)
            return
        await c.play(scenario)
        played += 1
        if c.folded().state.active:
            await c.reset(c.figures.scenario_results[-1])


async def _drive(
    c: Campaign,
    work: Path,
    tasks: list[asyncio.Task[None]],
    *,
    quick: bool,
    began: float,
    stop: asyncio.Event,
) -> dict[str, Any]:
    """Start the roles, play the scenarios under kills, then compute the end figures."""
    figures: dict[str, Any] = {}
    tasks.append(asyncio.create_task(c.follow()))
    for proc in c.procs.values():
        proc.start()
    await _wait_ready(c)
    tasks.append(asyncio.create_task(c.supervise()))
    tasks.append(asyncio.create_task(c.watch_gate()))
    tasks.append(asyncio.create_task(c.kill_loop(stop)))
    logger.bind(quick=quick, work=str(work)).info("chaos: crash campaign running")
    try:
        await _play_all(c, quick=quick, began=began, stop_kills=stop)
    except Exception as exc:  # a failed driver still reports
        logger.bind(error=repr(exc)).exception("chaos: driver failed")
        figures["driver_errors"] = 1
        figures["driver_error"] = repr(exc)
    stop.set()
    logger.info("chaos: scenarios done; final checks")
    figures.update(await _unapplied_trips(c))
    figures.update(_log_figures(c))
    figures.update(await _final_check(c, work))
    return figures


async def run_campaign(*, quick: bool, seed: int = 0) -> dict[str, Any]:
    """Run the crash campaign; returns JSON-ready figures (see the module docstring).

    ``quick``: a handful of scenarios and at least ``QUICK_MIN_KILLS`` kills (about a
    minute); otherwise scenarios until ``FULL_MIN_KILLS`` kills and ``FULL_MIN_SCENARIOS``
    scenarios (several minutes, bounded by ``FULL_BUDGET_S``).
    """
    began = time.monotonic()
    rng = random.Random(seed)  # noqa: S311 - reproducible chaos, not crypto
    registry = topic_registry(f"chaos{uuid.uuid4().hex[:8]}")
    work = Path(tempfile.mkdtemp(prefix="ess-chaos-crash-"))
    keys = write_key_pair(generate_private_key(), work / "operators", OPERATOR)
    processor_key, trust = processor_keys(work, registry)
    tasks: list[asyncio.Task[None]] = []
    procs: dict[str, RoleProcess] = {}
    stop_kills = asyncio.Event()
    figures: dict[str, Any] = {
        "quick": quick,
        "seed": seed,
        "work_dir": str(work),
        "driver_errors": 0,
    }
    campaign: Campaign | None = None
    try:
        async with proxied_embedded_broker() as (_, proxy), ExchangeSimulator() as sim:
            bootstrap = proxy.bootstrap
            await ensure_topics(bootstrap, registry)
            account = seed_demo(sim)
            env = _env(bootstrap, registry, work, sim.url, f"chaos-detect-{uuid.uuid4().hex[:8]}")
            workers = QUICK_DETECT_WORKERS if quick else FULL_DETECT_WORKERS
            for role in ROLES:
                names = (
                    [f"detect-{n}" for n in range(1, workers + 1)] if role == "detect" else [role]
                )
                for name in names:
                    cwd = work / name if role == "detect" else work  # Faust's data dir
                    cwd.mkdir(exist_ok=True)
                    procs[name] = RoleProcess(role, env, cwd, name=name)
            out = producer(bootstrap, read_to_end_safe=True)
            await out.start()
            try:
                campaign = Campaign(
                    bootstrap,
                    registry,
                    sim,
                    account,
                    keys.private,
                    work / "policy.sqlite3",
                    procs,
                    rng,
                    out,
                    trust,
                    proxy=proxy,
                    processor_key=processor_key,
                )
                figures.update(
                    await _drive(campaign, work, tasks, quick=quick, began=began, stop=stop_kills)
                )
            finally:
                stop_kills.set()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                for proc in procs.values():
                    proc.kill()
                await out.stop()
                figures["lost_answers"] = proxy.dropped_answers
    finally:
        for proc in procs.values():
            proc.kill()
    assert campaign is not None
    figures.update(_driver_figures(campaign.figures))
    figures["duration_s"] = round(time.monotonic() - began, 1)
    clean = figures.get("final_state_matches_replay") and not any(figures[n] for n in FAILURES)
    if clean:
        shutil.rmtree(work, ignore_errors=True)  # role logs are kept only when something failed
        figures["work_dir"] = None
    return figures


def processor_keys(work: Path, registry: TopicRegistry) -> tuple[SigningKey, Trust]:
    """A command processor key in ``work`` (``processor.key``, ``processors/<id>.pub``) as
    ``ess keygen --processor`` writes it, and what readers of the campaign's log trust."""
    from ess.core.attestation import trusted_keys  # noqa: PLC0415
    from ess.core.signing import parse_public_key  # noqa: PLC0415

    key = SigningKey(generate_private_key())
    paths = write_key_pair(key.private, work, "processor")
    (work / "processors").mkdir(exist_ok=True)
    paths.public.replace(work / "processors" / f"{key.key_id}.pub")
    operators = {
        path.stem: parse_public_key(path.read_text()) for path in (work / "operators").glob("*.pub")
    }
    return key, Trust(
        scope=registry.state.name,
        processor_keys=trusted_keys([key.public]),
        operator_keys=operators,
    )


def _rebalance_misses(f: Figures) -> int:
    """Missed trips of scenarios during which a detection worker was killed."""
    missed = 0
    for result in f.scenario_results:
        began, ended = result.get("_window", (0.0, 0.0))
        if not result.get("tripped", True) and any(began <= at <= ended for at in f.detect_kills):
            missed += 1
    return missed


def _driver_figures(f: Figures) -> dict[str, Any]:
    on_rebalance = _rebalance_misses(f)
    for result in f.scenario_results:
        result.pop("_window", None)  # internal: monotonic times mean nothing outside
    return {
        "scenarios": len(f.scenario_results),
        "kills": sum(f.kills.values()),
        "kills_by_role": dict(f.kills),
        "self_exits": dict(f.self_exits),
        "processor_faults": dict(f.processor_faults),
        "exit_codes": dict(f.exit_codes),
        "lost_answers_armed": f.lost_answers_armed,
        "gate_open_while_active_s": round(f.gate_open_beyond_bound_s, 3),
        "gate_open_s": round(f.gate_open_s, 1),
        "gate_closed_s": round(f.gate_closed_s, 1),
        "gate_bounds_s": {"active": ACTIVE_BOUND_S, "writer_gone": WRITER_BOUND_S},
        "rebalances": f.rebalances,
        "detect_kills_with_survivors": len(f.detect_kills),
        "missed_trips_on_rebalance": on_rebalance,
        "missed_trips": f.missed_trips,
        "not_flat_at_end": f.not_flat,
        "reset_failures": f.reset_failures,
        "books_not_seeded": sum(1 for r in f.scenario_results if not r.get("book_seeded")),
        "scenario_results": f.scenario_results,
    }
