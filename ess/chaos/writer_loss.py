"""Writer loss campaign: the single writer of ``ess.state`` disappears; do the gates close?

One *run* sets up, in this process unless said otherwise:

* an embedded Tansu broker (:class:`~ess.kafka.broker.EmbeddedBroker`) with a fresh topic prefix;
* operator and processor keys in a temporary directory, laid out as ``ess keygen`` writes
  them (``processor.key``, ``processors/<key id>.pub``, ``operators/chaos.pub``);
* the command processor as a **separate process** (``python -m ess.roles.command.processor``,
environment
  from :func:`_env` only, beats every :data:`BEAT_INTERVAL_S`), so that it can be stopped and
  killed; it logs to ``processor.log`` in the temporary directory;
* the projector exactly as ``ess worker --role project`` runs it
  (:func:`~ess.roles.project.projector.run_projector`), trusting the keys in those directories,
  writing the ``emergency_stop`` record to an :class:`~ess.policystore.InMemoryPolicyStore` every
  :data:`REFRESH_S`; it vouches for an INACTIVE record only while the processor's signed
  owner beats are younger than ``processor_timeout`` (:data:`PROCESSOR_TIMEOUT_S`);
* a :class:`~ess.gate.TradingGate` (``max_record_age`` :data:`MAX_RECORD_AGE_S`) fed by a
  :class:`~ess.gate.PolicyStoreGateFeed` polling every :data:`POLL_S`. The run waits for it
  to open (the processor owns the command partition and beats), pauses for a seeded random
  moment (:data:`SETTLE_S`, so that runs sample the phase of the beat and refresh cycles),
  then injects one fault.

This process's own log lines during a run (projector, gate) go to ``campaign.log`` next to
``processor.log``; the directory is removed after a clean run and kept (its path in the
figures, ``kept_logs``) when the run failed.

Faults (``t0`` is taken right before the fault is injected):

``sigstop``
    The processor is SIGSTOPped: alive to the kernel and to the broker's TCP connections,
    but it does nothing. (SIGCONT and SIGKILL at teardown.)
``sigkill``
    The processor is SIGKILLed and not restarted.
``fenced``
    Another writer appears: an *authentic* entry the processor did not write is appended to
    ``ess.state``, sealed with the processor's own key and chained to the log's head (what a
    second processor holding the same key would write). So that only the writer-loss path
    is measured, the entry changes nothing: it is the ``reset_rejected`` entry
    (``why=unknown_operator``) that :func:`ess.core.decide` yields for a reset from an
    operator nobody registered, so the state stays INACTIVE and the projector keeps the log
    trusted. The processor must notice it within its beat interval and exit with
    :data:`~ess.roles.command.processor.EXIT_FENCED` (3); ``fenced_exit_codes`` lists what it
    exited with.

Not measured: a *wedged* processor (it beats, but a command waits longer than
``command_backlog_timeout``). No fault available from outside makes the command loop stall
while the beat task runs: SIGSTOP stops both (that is ``sigstop``), and the fault proxy's
lost answer (:meth:`~ess.chaos.proxy.KafkaFaultProxy.drop_produce_responses`) cuts the
connection, so the producer retries at once and the command completes. The backlog path is
covered with simulated beats in ``tests/roles/project/test_projector.py`` and
``tests/roles/project/test_projector_liveness.py`` (a command the processor never reaches).

Figures
-------
In every case the gate cannot see the processor: it closes because the projector stops
re-asserting the record once the last owner beat is older than ``processor_timeout``, and
the gate closes once the last refresh is older than ``max_record_age - max_clock_skew``. The
bound ESS promises is therefore ``gate_bound_s = processor_timeout + max_record_age``.

* ``faults``: per fault kind, ``runs``, ``gate_closed_after_s`` (each run, from ``t0`` until
  ``TradingGate.allowed()`` first answers ``False``, polled every 10 ms; ``None``: never
  within twice the bound plus 5 s), ``min_s``/``p50_s``/``max_s``, ``bound_s``, ``late``
  (runs closing later than the bound plus :data:`TOLERANCE_S`, or never), ``gate_reasons``
  (the gate's ``why()`` once closed: ``stale...`` for the writer-loss path), ``exit_codes``
  (the processor's, when it exited: -9 after SIGKILL, 3 when fenced) and
  ``exited_after_s`` (from ``t0``).
* ``gate_late`` (failure): ``late`` summed over the fault kinds.
* ``fenced_not_exit_3`` (failure): ``fenced`` runs whose processor did not exit with 3
  within :data:`EXIT_TIMEOUT_S` (``fenced_exit_codes`` has the codes, ``None``: still
  running).
* ``gate_closed_after_s``: ``min``/``p50``/``max`` over every run; ``gate_bound_s``,
  ``processor_timeout_s``, ``gate_record_age_bound_s``, ``gate_clock_skew_s``,
  ``beat_interval_s``, ``refresh_s``, ``tolerance_s``: the settings behind the bound.
* ``kept_logs``: directories of failed runs; ``not_measured``; ``duration_s``; ``runs``
  (quick: 1 per fault kind; full: 3 per fault kind).
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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from loguru import logger

from ess.chaos.support import CampaignError, bounded, first_true, percentile, rounded, until
from ess.core import decide
from ess.core.attestation import SigningKey
from ess.core.reader import fold_records, seal_entry
from ess.core.signing import generate_private_key, write_key_pair
from ess.gate import PolicyStoreGateFeed, TradingGate
from ess.kafka.broker import EmbeddedBroker, ensure_topics
from ess.policystore import InMemoryPolicyStore
from ess.roles.command.processor import EXIT_FENCED
from ess.roles.project.projector import run_projector
from ess.settings import EssSettings
from ess.statelog import KafkaStateLog
from schemas import RejectReason, ResetCommand, ResetRejectedEntry, TopicRegistry

__all__ = ["FAILURES", "FAULTS", "run_campaign"]

#: Figures that must be 0.
FAILURES: Final = ("gate_late", "fenced_not_exit_3")

#: The ways the writer disappears, in the order each round plays them.
FAULTS: Final = ("sigstop", "sigkill", "fenced")

#: ``ESS_PROCESSOR_TIMEOUT_SEC`` of the projector (and its ``ESS_COMMAND_BACKLOG_TIMEOUT_SEC``)
#: and ``ESS_PROCESSOR_BEAT_INTERVAL_SEC`` of the processor.
PROCESSOR_TIMEOUT_S: Final = 1.5
BEAT_INTERVAL_S: Final = 0.25
#: The gate's staleness bound and the wall-clock skew it reserves out of it.
MAX_RECORD_AGE_S: Final = 2.0
MAX_CLOCK_SKEW_S: Final = 0.5
#: Gate feed poll interval and projector refresh interval.
POLL_S: Final = 0.01
REFRESH_S: Final = 0.2
#: ``ESS_LOG_TIMEOUT_SEC`` of the projector: the broker stays up, so it never applies.
LOG_TIMEOUT_S: Final = 3.0
#: Slack on the bound: the beat interval, the projector's refresh, the 10 ms polling here.
TOLERANCE_S: Final = 0.5
#: Pause (uniform, from the seed) between the gate opening and the fault: the gate opens
#: right after a beat and a refresh, so without it every run would hit the same phase of the
#: beat and refresh cycles (and the same, not the worst, closing time).
SETTLE_S: Final = (0.0, 1.0)
#: How long after ``t0`` a fenced processor may take to exit.
EXIT_TIMEOUT_S: Final = 15.0
#: Bounded waits of the set-up (broker start, processor start and group join, gate opening).
SETUP_TIMEOUT_S: Final = 45.0
#: Longest any teardown step may take.
TEARDOWN_TIMEOUT_S: Final = 10.0
#: The operator whose key is installed, and the one nobody registered (``fenced``).
OPERATOR: Final = "chaos"
INTRUDER: Final = "chaos-intruder"

_NOT_MEASURED: Final = {
    "wedged": (
        "no external fault stalls the processor's command loop while its beat task runs "
        "(SIGSTOP stops both; a lost produce answer is retried at once): see the module notes"
    )
}


@dataclass(frozen=True)
class RunResult:
    """One run's measurements; ``None``: did not happen within the wait."""

    fault: str
    gate_closed_after_s: float | None
    gate_reason: str
    exit_code: int | None
    exited_after_s: float | None
    #: The run's log directory when kept (a failed run), else ``None``.
    kept_logs: str | None

    @property
    def late(self) -> bool:
        closed = self.gate_closed_after_s
        return closed is None or closed > gate_bound() + TOLERANCE_S

    @property
    def failed(self) -> bool:
        return self.late or (self.fault == "fenced" and self.exit_code != EXIT_FENCED)


def gate_bound() -> float:
    """The bound ESS promises from a writer loss to every gate closed."""
    return PROCESSOR_TIMEOUT_S + MAX_RECORD_AGE_S


# --------------------------------------------------------------------------- set-up


def _keys(work: Path) -> SigningKey:
    """The processor key and an operator key in ``work``, as ``ess keygen`` lays them out;
    returns the processor's key (the ``fenced`` fault seals with it)."""
    key = SigningKey(generate_private_key())
    paths = write_key_pair(key.private, work, "processor")
    (work / "processors").mkdir()
    paths.public.replace(work / "processors" / f"{key.key_id}.pub")
    write_key_pair(generate_private_key(), work / "operators", OPERATOR)
    return key


def _env(bootstrap: str, registry: TopicRegistry, work: Path) -> dict[str, str]:
    """The processor's environment: the run's broker, topics and keys, nothing of the
    caller's ESS/Kafka settings (a bootstrap would point it at another cluster)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ESS_", "KAFKA_", "CALF_"))}
    return {
        **base,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "ESS_TOPIC_PREFIX": registry.prefix,
        "ESS_PROCESSOR_KEY_FILE": str(work / "processor.key"),
        "ESS_PROCESSOR_KEYS_DIR": str(work / "processors"),
        "ESS_OPERATOR_KEYS_DIR": str(work / "operators"),
        "ESS_COMMAND_STATUS_PORT": "-1",
        "ESS_PROCESSOR_BEAT_INTERVAL_SEC": str(BEAT_INTERVAL_S),
        "ESS_LOG_JSON": "true",
        "ESS_LOG_LEVEL": "INFO",
    }


def _start_processor(env: dict[str, str], work: Path) -> subprocess.Popen[bytes]:
    with (work / "processor.log").open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ess.roles.command.processor"],
            env=env,
            cwd=work,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _stop_processor(proc: subprocess.Popen[bytes]) -> None:
    """SIGCONT (a stopped process cannot die of anything else but SIGKILL, and must not be
    left stopped), SIGKILL, reap."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=TEARDOWN_TIMEOUT_S)


async def _intruder_entry(log: KafkaStateLog, settings: EssSettings, key: SigningKey) -> bytes:
    """An authentic entry the processor did not write: ``reset_rejected`` for a reset from an
    operator nobody registered, decided on the log's current state, chained to its head and
    sealed with the processor's own key. It changes neither ACTIVE/INACTIVE nor trust."""
    folded, _ = fold_records(await log.read(), settings.state_trust())
    now = datetime.now(UTC)
    command = ResetCommand(
        command_id=f"chaos-intruder-{uuid.uuid4().hex}",
        kind="reset",
        operator=INTRUDER,
        detail="writer loss campaign: an authentic entry the processor did not write",
        nonce=uuid.uuid4().hex,
        signature=base64.b64encode(bytes(64)).decode(),
        ts=now,
    )
    entries = decide(folded.state, command, now=now, policy=settings.reset_policy())
    if len(entries) != 1 or not isinstance(entries[0], ResetRejectedEntry):
        raise CampaignError(f"writer loss campaign: expected one reset_rejected, got {entries}")
    if entries[0].why is not RejectReason.UNKNOWN_OPERATOR or folded.state.active:
        raise CampaignError(f"writer loss campaign: unexpected intruder entry {entries[0]}")
    _, value = seal_entry(entries[0], key, scope=log.topic, prev=folded.head)
    return value


# --------------------------------------------------------------------------- one run


def _settings(bootstrap: str, work: Path) -> EssSettings:
    """The in-process roles' settings: the run's broker, a fresh topic prefix, the keys in
    ``work`` and the campaign's timeouts (explicit, so the caller's environment cannot
    change the bound being measured)."""
    return EssSettings(
        kafka={
            "bootstrap_servers": bootstrap,
            "topic_prefix": f"chaos{uuid.uuid4().hex[:10]}",
        },
        keys={
            "processor_key_file": work / "processor.key",
            "processor_keys_dir": work / "processors",
            "operator_keys_dir": work / "operators",
            "state_log_unsigned_before": 0,
        },
        project={
            "log_timeout_sec": LOG_TIMEOUT_S,
            "processor_timeout_sec": PROCESSOR_TIMEOUT_S,
            "command_backlog_timeout_sec": PROCESSOR_TIMEOUT_S,
        },
        _env_file=None,
    )


async def _wait_open(proc: subprocess.Popen[bytes], gate: TradingGate, work: Path) -> None:
    """Until the gate opens (the processor owns the partition and beats); fails at once
    when the processor exits first."""

    def opened() -> bool:
        if proc.poll() is not None:
            raise CampaignError(
                f"writer loss campaign: the processor exited with {proc.returncode} before "
                f"the gate opened (see {work / 'processor.log'})"
            )
        return gate.allowed()

    await until(opened, SETUP_TIMEOUT_S, f"the gate opening (logs in {work})")


async def _fence(
    log: KafkaStateLog, settings: EssSettings, key: SigningKey
) -> Callable[[], Awaitable[None]]:
    """The ``fenced`` fault, ready to fire: the intruder entry is built and ``log``'s
    producer connected beforehand, so that ``t0`` is the append itself."""
    value = await _intruder_entry(log, settings, key)
    await log.start()

    async def append() -> None:
        offset = await log.append(value)
        logger.bind(offset=offset).warning(
            "writer loss campaign: appended an authentic entry the processor did not write"
        )

    return append


def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> Callable[[], Awaitable[None]]:
    """The ``sigstop`` / ``sigkill`` fault, ready to fire."""

    async def send() -> None:
        os.kill(proc.pid, sig)

    return send


async def _measure(
    fault: str,
    proc: subprocess.Popen[bytes],
    gate: TradingGate,
    inject: Callable[[], Awaitable[None]],
) -> RunResult:
    """Inject ``fault`` at ``t0``; time the gate closing and the processor exiting."""
    bound = gate_bound()
    exit_wait = EXIT_TIMEOUT_S if fault == "fenced" else 2.0

    async def watch_exit() -> float | None:
        exited = await first_true(lambda: proc.poll() is not None, exit_wait)
        return None if exited is None else exited - t0

    t0 = time.monotonic()
    await inject()
    exit_watch = asyncio.create_task(watch_exit())
    try:
        # Twice the bound: a gate that closes late is still measured; one that never closes
        # is reported as None.
        closed = await first_true(lambda: not gate.allowed(), 2 * bound + 5.0)
        reason = gate.why()
        exited_after = await exit_watch if fault != "sigstop" else None
    finally:
        exit_watch.cancel()
    return RunResult(
        fault=fault,
        gate_closed_after_s=None if closed is None else closed - t0,
        gate_reason=reason,
        exit_code=proc.poll(),
        exited_after_s=exited_after,
        kept_logs=None,
    )


def _close_logs(work: Path, sink: int, *, keep: bool) -> None:
    """Stop logging this process's lines to ``work``; keep the run's logs only if asked."""
    with contextlib.suppress(ValueError):  # someone reconfigured logging meanwhile
        logger.remove(sink)
    if keep:
        logger.bind(logs=str(work)).warning("writer loss campaign: run failed, logs kept")
    else:
        shutil.rmtree(work, ignore_errors=True)


async def run_once(fault: str, index: int) -> RunResult:
    """One run of ``fault`` (see the module docstring), cleaned up whatever happens;
    ``index`` seeds the pause before the fault (:data:`SETTLE_S`)."""
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; choose from {', '.join(FAULTS)}")
    settle = random.Random(f"{fault}-{index}").uniform(*SETTLE_S)  # noqa: S311 - not crypto
    work = Path(tempfile.mkdtemp(prefix=f"ess-writer-loss-{fault}-{index}-"))
    sink = logger.add(str(work / "campaign.log"), level="INFO", serialize=True)
    broker = EmbeddedBroker(stop_timeout=1.0)
    store = InMemoryPolicyStore()
    gate = TradingGate(
        max_record_age=MAX_RECORD_AGE_S, max_clock_skew=MAX_CLOCK_SKEW_S, name="chaos-gate"
    )
    feed = PolicyStoreGateFeed(store, gate, poll_interval=POLL_S, read_timeout=1.0)
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    proc: subprocess.Popen[bytes] | None = None
    intruder_log: KafkaStateLog | None = None
    keep = True
    try:
        key = _keys(work)
        async with asyncio.timeout(SETUP_TIMEOUT_S):
            await broker.astart()
            bootstrap = broker.bootstrap_servers
            settings = _settings(bootstrap, work)
            registry = settings.registry()
            await ensure_topics(bootstrap, registry)
        proc = _start_processor(_env(bootstrap, registry, work), work)
        tasks.append(
            asyncio.create_task(
                run_projector(
                    settings,
                    store,
                    stop,
                    trust=settings.state_trust(),
                    refresh_interval=REFRESH_S,
                    health_interval=REFRESH_S,
                    component="chaos",
                ),
                name="chaos-projector",
            )
        )
        await feed.start()
        await _wait_open(proc, gate, work)
        await asyncio.sleep(settle)
        if fault == "fenced":
            intruder_log = KafkaStateLog(bootstrap, registry.state.name)
            inject = await _fence(intruder_log, settings, key)
        else:
            inject = _signal(proc, signal.SIGSTOP if fault == "sigstop" else signal.SIGKILL)
        result = await _measure(fault, proc, gate, inject)
        keep = result.failed
        return replace(result, kept_logs=str(work)) if keep else result
    finally:
        stop.set()
        await bounded("gate feed", feed.stop())
        if proc is not None:
            await bounded("processor", asyncio.to_thread(_stop_processor, proc))
        await bounded("projector", asyncio.gather(*tasks, return_exceptions=True))
        for task in tasks:
            task.cancel()
        await bounded("projector cancelled", asyncio.gather(*tasks, return_exceptions=True))
        if intruder_log is not None:
            await bounded("intruder producer", intruder_log.stop())
        await bounded("broker", asyncio.to_thread(broker.stop))
        _close_logs(work, sink, keep=keep)


# --------------------------------------------------------------------------- figures


def _summary(values: Sequence[float]) -> dict[str, float | None]:
    return {
        "min": rounded(min(values, default=None)),
        "p50": rounded(percentile(values, 0.5)),
        "max": rounded(max(values, default=None)),
    }


def _fault_figures(results: Sequence[RunResult]) -> dict[str, Any]:
    times = [r.gate_closed_after_s for r in results if r.gate_closed_after_s is not None]
    summary = _summary(times)
    return {
        "runs": len(results),
        "gate_closed_after_s": [rounded(r.gate_closed_after_s) for r in results],
        "min_s": summary["min"],
        "p50_s": summary["p50"],
        "max_s": summary["max"],
        "bound_s": gate_bound(),
        "late": sum(1 for r in results if r.late),
        "gate_reasons": sorted({r.gate_reason for r in results}),
        "exit_codes": [r.exit_code for r in results],
        "exited_after_s": [rounded(r.exited_after_s) for r in results],
    }


async def run_campaign(*, quick: bool, seed: int = 0) -> dict[str, Any]:
    """Run the campaign (quick: 1 run per fault kind; full: 3, one run after another, each
    with its own broker and processor) and return its figures (see the module docstring).
    ``seed`` chooses the pauses before the faults (:data:`SETTLE_S`)."""
    rounds = 1 if quick else 3
    began = time.monotonic()
    results: list[RunResult] = []
    for round_no in range(rounds):
        for fault in FAULTS:
            result = await run_once(fault, seed + round_no)
            logger.bind(run=round_no, **result.__dict__).info("writer loss campaign run done")
            results.append(result)
    by_fault = {fault: [r for r in results if r.fault == fault] for fault in FAULTS}
    fenced = by_fault["fenced"]
    return {
        "runs": len(results),
        "runs_per_fault": rounds,
        "faults": {fault: _fault_figures(runs) for fault, runs in by_fault.items()},
        "gate_closed_after_s": _summary(
            [r.gate_closed_after_s for r in results if r.gate_closed_after_s is not None]
        ),
        "gate_bound_s": gate_bound(),
        "processor_timeout_s": PROCESSOR_TIMEOUT_S,
        "gate_record_age_bound_s": MAX_RECORD_AGE_S,
        "gate_clock_skew_s": MAX_CLOCK_SKEW_S,
        "beat_interval_s": BEAT_INTERVAL_S,
        "refresh_s": REFRESH_S,
        "tolerance_s": TOLERANCE_S,
        "gate_late": sum(1 for r in results if r.late),
        "fenced_exit_codes": [r.exit_code for r in fenced],
        "fenced_not_exit_3": sum(1 for r in fenced if r.exit_code != EXIT_FENCED),
        "not_measured": dict(_NOT_MEASURED),
        "kept_logs": [r.kept_logs for r in results if r.kept_logs is not None],
        "duration_s": round(time.monotonic() - began, 1),
    }


if __name__ == "__main__":  # pragma: no cover - manual use: python -m ess.chaos.writer_loss
    import json

    with contextlib.suppress(KeyboardInterrupt):
        print(json.dumps(asyncio.run(run_campaign(quick=True)), indent=2))  # noqa: T201
