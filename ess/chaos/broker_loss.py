"""Broker loss campaign: ESS loses Kafka; do the gates close, and do the venue's orders go?

One *run* sets up, in this process:

* an embedded Tansu broker (:class:`~ess.kafka.broker.EmbeddedBroker`) with a fresh topic prefix;
* the command processor (:func:`~ess.roles.command.processor.run_processor`): the projector vouches
for an
  INACTIVE record only while its signed beats arrive;
* the projector exactly as ``ess worker --role project`` runs it
  (:func:`~ess.roles.project.projector.run_projector`), writing the ``emergency_stop`` record to an
  :class:`~ess.policystore.InMemoryPolicyStore` every :data:`REFRESH_S`;
* a :class:`~ess.gate.TradingGate` (``max_record_age`` :data:`MAX_RECORD_AGE_S`) fed by a
  :class:`~ess.gate.PolicyStoreGateFeed` polling every :data:`POLL_S`; the run waits for it to
  open (an inactive, fresh record);
* the executor (:class:`~ess.roles.execute.service.Executor`) with one Binance futures venue on the
  exchange simulator, keeping ``countdownCancelAll`` armed on :data:`SYMBOLS` with
  :data:`COUNTDOWN_MS` (the minimum Binance allows); resting limit orders on those symbols.

Then the broker process is SIGKILLed (``t0``), and two clocks run side by side:

(a) **Gates.** ``gate_closed_after_s``: from ``t0`` until ``TradingGate.allowed()`` first
    answers ``False`` (polled every 10 ms). The gate cannot see the broker; it closes because
    the record stops being refreshed: the projector stops re-asserting it once no fetch of
    ``ess.state`` has been answered for ``ESS_LOG_TIMEOUT_SEC`` (:data:`LOG_TIMEOUT_S`), and
    the gate closes once the last refresh is older than ``max_record_age - max_clock_skew``.
    So the bound ESS promises is ``gate_bound_s = log_timeout + max_record_age``; ``gate_late``
    counts runs closing later than that plus :data:`TOLERANCE_S`, or never (must be 0).

(b) **The dead-man's switch.** The executor stays alive: it still reaches the venue, but it
    no longer sees ``ess.state``, so after ``ESS_EXECUTOR_LOG_TIMEOUT_S`` (the same
    :data:`LOG_TIMEOUT_S`) it stops re-arming ``countdownCancelAll`` and the venue cancels the
    orders itself. ``orders_cancelled_after_s`` runs from ``t0`` to the simulator's own
    ``countdown_cancel`` of the last symbol; its bound is ``orders_bound_s = log_timeout +
    countdown``. ``orders_left``: runs where orders were still open past that bound plus
    :data:`TOLERANCE_S` (must be 0).

``duration_s`` is the campaign's wall time; ``runs``: quick 1, full 5.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

from loguru import logger
from pydantic import SecretStr

from ess.chaos.support import bounded, first_true, percentile, rounded, until
from ess.core.attestation import SigningKey
from ess.core.signing import generate_private_key
from ess.gate import PolicyStoreGateFeed, TradingGate
from ess.kafka.broker import EmbeddedBroker, ensure_topics
from ess.policystore import InMemoryPolicyStore
from ess.roles.command.processor import run_processor
from ess.roles.execute.service import Countdown, Executor
from ess.roles.project.projector import run_projector
from ess.settings import EssSettings, ExecuteSettings
from ess.sim import ExchangeSimulator, Venue
from ess.venues.binance import BinanceVenue
from ess.venues.config import VenueConfig, VenueCredentials

__all__ = ["FAILURES", "run_campaign"]

#: Figures that must be 0.
FAILURES: Final = ("gate_late", "orders_left")

#: The gate's staleness bound and the wall-clock skew it reserves out of it.
MAX_RECORD_AGE_S: Final = 2.0
MAX_CLOCK_SKEW_S: Final = 0.5
#: Gate feed poll interval and projector refresh interval.
POLL_S: Final = 0.1
REFRESH_S: Final = 0.2
#: Binance's minimum countdown; the executor re-arms every third of it.
COUNTDOWN_MS: Final = 1000
SYMBOLS: Final = ("BTCUSDT", "ETHUSDT")
#: ``ESS_LOG_TIMEOUT_SEC`` of the projector and ``ESS_EXECUTOR_LOG_TIMEOUT_S`` of the
#: executor (both default to 3 s): how long without ``ess.state`` before they fail closed.
LOG_TIMEOUT_S: Final = 3.0
#: Slack on both bounds: the feed's poll, the projector's refresh, the 10 ms polling here.
TOLERANCE_S: Final = 0.5
#: Bounded waits of the set-up (broker start, projector catch-up, first arm).
SETUP_TIMEOUT_S: Final = 30.0


_API_KEY: Final = "chaos-broker-key"
_SECRET: Final = "chaos-broker-secret"  # noqa: S105 - a simulator-only credential
_ACCOUNT: Final = "chaos"
_VENUE: Final = "chaos-futures"

_EXECUTOR_SETTINGS: Final = ExecuteSettings(
    flatten_deadline_sec=5.0,
    stalled_report_interval_sec=1.0,
    enforce_interval_sec=0.05,
    backoff_initial_sec=0.01,
    backoff_max_sec=0.2,
    log_timeout_sec=LOG_TIMEOUT_S,
    status_port=-1,
)


@dataclass(frozen=True)
class RunResult:
    """One run's measurements; ``None``: did not happen within the wait."""

    gate_closed_after_s: float | None
    gate_reason: str
    orders_cancelled_after_s: float | None
    orders_seeded: int


def _venue(sim: ExchangeSimulator) -> BinanceVenue:
    config = VenueConfig.model_validate(
        {
            "name": _VENUE,
            "exchange": "binanceusdm",
            "account": _ACCOUNT,
            "base_url": sim.url,
            "timeout_ms": 1000,
            "countdown_symbols": list(SYMBOLS),
            "countdown_ms": COUNTDOWN_MS,
        }
    )
    credentials = VenueCredentials(api_key=SecretStr(_API_KEY), secret=SecretStr(_SECRET))
    return BinanceVenue(config, credentials)


def _resting(sim: ExchangeSimulator) -> list[int]:
    """Ids of the account's open regular futures orders (what the countdown cancels)."""
    return [
        order.order_id
        for order in sim.open_orders(_ACCOUNT, venue=Venue.FUTURES, conditional=False)
    ]


async def _measure(
    sim: ExchangeSimulator, broker: EmbeddedBroker, gate: TradingGate, seeded: int
) -> RunResult:
    """Kill the broker; time the gate closing and the venue cancelling the orders while the
    executor lives on (see the module docstring)."""
    pid = broker.pid
    assert pid is not None
    t0_wall = time.time()
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    gate_bound = LOG_TIMEOUT_S + MAX_RECORD_AGE_S
    orders_bound = LOG_TIMEOUT_S + COUNTDOWN_MS / 1000

    async def watch_gate() -> float | None:
        # Twice the bound: a gate that closes late is still measured; one that never closes
        # is reported as None.
        closed = await first_true(lambda: not gate.allowed(), 2 * gate_bound + 5.0)
        return None if closed is None else closed - t0

    gate_watch = asyncio.create_task(watch_gate())
    try:
        cleared = await first_true(lambda: not _resting(sim), 2 * orders_bound + 5.0)
        cancelled_after: float | None = None
        if cleared is not None:
            fired = [e.ts for e in sim.events if e.kind == "countdown_cancel" and e.ts > t0_wall]
            # The simulator's own timestamp of the last cancel; else when we saw it.
            cancelled_after = (max(fired) if fired else time.time()) - t0_wall
        gate_closed = await gate_watch
    finally:
        gate_watch.cancel()
    return RunResult(
        gate_closed_after_s=gate_closed,
        gate_reason=gate.why(),
        orders_cancelled_after_s=cancelled_after,
        orders_seeded=seeded,
    )


async def run_once(index: int) -> RunResult:
    """One run (see the module docstring), cleaned up whatever happens."""
    sim = ExchangeSimulator(seed=index)
    await sim.start()
    # stop_timeout: Tansu ignores SIGTERM while clients are connected; the broker is
    # SIGKILLed by the run anyway, this only bounds a teardown after a failed set-up.
    broker = EmbeddedBroker(stop_timeout=0.5)
    store = InMemoryPolicyStore()
    gate = TradingGate(
        max_record_age=MAX_RECORD_AGE_S, max_clock_skew=MAX_CLOCK_SKEW_S, name="chaos-gate"
    )
    feed = PolicyStoreGateFeed(store, gate, poll_interval=POLL_S, read_timeout=1.0)
    project_stop = asyncio.Event()
    execute_stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    venue: BinanceVenue | None = None
    try:
        sim.add_account(_API_KEY, _SECRET, name=_ACCOUNT)
        for symbol in SYMBOLS:
            below = sim.mark_price(symbol) * 8 / 10
            for _ in range(2):
                sim.seed_order(
                    _ACCOUNT, symbol, "BUY", "0.1" if symbol == "ETHUSDT" else "0.01", below
                )
        seeded = len(_resting(sim))

        async with asyncio.timeout(SETUP_TIMEOUT_S):
            await broker.astart()
            settings = EssSettings(
                kafka={
                    "bootstrap_servers": broker.bootstrap_servers,
                    "topic_prefix": f"chaos{uuid.uuid4().hex[:10]}",
                },
                project={"log_timeout_sec": LOG_TIMEOUT_S},
                _env_file=None,
            )
            registry = settings.registry()
            await ensure_topics(broker.bootstrap_servers, registry)
        key = SigningKey(generate_private_key())
        trust = settings.state_trust(also_trust=key)
        tasks.append(
            asyncio.create_task(
                run_processor(settings, project_stop, signing_key=key, status_port=-1),
                name="chaos-processor",
            )
        )
        tasks.append(
            asyncio.create_task(
                run_projector(
                    settings,
                    store,
                    project_stop,
                    trust=trust,
                    refresh_interval=REFRESH_S,
                    health_interval=REFRESH_S,
                    component="chaos",
                ),
                name="chaos-projector",
            )
        )
        venue = _venue(sim)
        executor = Executor(
            broker.bootstrap_servers,
            registry,
            [venue],
            _EXECUTOR_SETTINGS,
            trust=trust,
            countdowns={_VENUE: Countdown(SYMBOLS, COUNTDOWN_MS)},
        )
        tasks.append(asyncio.create_task(executor.run(execute_stop), name="chaos-executor"))
        await feed.start()
        await until(gate.allowed, SETUP_TIMEOUT_S, "the gate opening")
        await until(lambda: executor.status().caught_up, SETUP_TIMEOUT_S, "executor catch-up")
        await until(
            lambda: set(sim.countdowns(_ACCOUNT)) == set(SYMBOLS),
            SETUP_TIMEOUT_S,
            "countdowns armed",
        )

        return await _measure(sim, broker, gate, seeded)
    finally:
        execute_stop.set()
        project_stop.set()
        await bounded("gate feed", feed.stop())
        # The executor waits up to 2 s to drain reports and the projector up to its io_timeout
        # per Kafka client with the broker gone: stop them side by side.
        await bounded("roles", asyncio.gather(*tasks, return_exceptions=True))
        for task in tasks:
            task.cancel()
        await bounded("roles cancelled", asyncio.gather(*tasks, return_exceptions=True))
        if venue is not None:
            await bounded("venue", venue.aclose())
        await bounded("broker", asyncio.to_thread(broker.stop))
        await bounded("simulator", sim.stop())


async def run_campaign(*, quick: bool, seed: int = 0) -> dict[str, Any]:
    """Run the campaign (quick: 1 run; full: 5, one after another: each owns a broker and
    kills it) and return its figures (see the module docstring)."""
    runs = 1 if quick else 5
    began = time.monotonic()
    results: list[RunResult] = []
    for index in range(runs):
        result = await run_once(seed + index)
        logger.bind(run=index, **result.__dict__).info("broker loss campaign run done")
        results.append(result)
    gate_bound = LOG_TIMEOUT_S + MAX_RECORD_AGE_S
    orders_bound = LOG_TIMEOUT_S + COUNTDOWN_MS / 1000
    gate_times = [r.gate_closed_after_s for r in results if r.gate_closed_after_s is not None]
    cancel_times = [
        r.orders_cancelled_after_s for r in results if r.orders_cancelled_after_s is not None
    ]
    return {
        "runs": runs,
        "gate_closed_after_s": {
            "p50": rounded(percentile(gate_times, 0.5)),
            "max": rounded(max(gate_times, default=None)),
        },
        "gate_bound_s": gate_bound,
        "gate_record_age_bound_s": MAX_RECORD_AGE_S,
        "gate_clock_skew_s": MAX_CLOCK_SKEW_S,
        "log_timeout_s": LOG_TIMEOUT_S,
        "gate_late": sum(
            1
            for r in results
            if r.gate_closed_after_s is None or r.gate_closed_after_s > gate_bound + TOLERANCE_S
        ),
        "gate_reasons": sorted({r.gate_reason for r in results}),
        "orders_cancelled_after_s": {
            "p50": rounded(percentile(cancel_times, 0.5)),
            "max": rounded(max(cancel_times, default=None)),
        },
        "countdown_s": COUNTDOWN_MS / 1000,
        "orders_bound_s": orders_bound,
        "orders_left": sum(
            1
            for r in results
            if r.orders_cancelled_after_s is None
            or r.orders_cancelled_after_s > orders_bound + TOLERANCE_S
        ),
        "orders_seeded_per_run": results[0].orders_seeded if results else 0,
        "tolerance_s": TOLERANCE_S,
        "duration_s": round(time.monotonic() - began, 1),
    }


if __name__ == "__main__":  # pragma: no cover - manual use: python -m ess.chaos.broker_loss
    import json

    with contextlib.suppress(KeyboardInterrupt):
        print(json.dumps(asyncio.run(run_campaign(quick=True)), indent=2))  # noqa: T201
