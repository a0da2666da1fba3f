"""Run a detection worker in-process: :func:`run_detector` (for tests, the benchmark and a
future ``ess worker --role detect``) and :func:`main` (``python -m streams``).

Start-up order matters:

1. every registry topic exists with its partition count (:func:`ess.kafka.broker.ensure_topics`),
   before any client names a topic (the embedded broker would auto-create it with 4);
2. the epoch follower has read ``ess.state`` to its end, so the first batch already sees the
   current epoch;
3. ESS's producers (trips, dead letters) are up;
4. the Faust app starts: it joins its group, recovers its tables from their changelogs and
   only then starts its agents and timers; ``ready`` is set at that point.

The status server (``/status``, ``/metrics``, ``/healthz``; :mod:`ess.roles.detect.observe`) starts
before all of that, so an orchestrator sees "starting" (503) rather than nothing during the
group join and table recovery, and it stops last.

Faust's ``Worker`` class is not used: it installs signal handlers, reconfigures the root
logger (at ``-l warn`` it even sets it to DEBUG, which costs throughput; figures:
BENCHMARKS.md) and owns the event loop, none of which an embedding process wants. The app
is a ``mode`` service, started and stopped directly.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any, Final

from loguru import logger

from ess.clock import Clock
from ess.core.reader import Trust
from ess.detection.detector import TopicDetector
from ess.kafka.broker import kafka_target
from ess.observability.logging import configure_logging
from ess.observability.status import StatusServer, serve_status
from ess.roles.detect.epoch import EpochFollower
from ess.roles.detect.observe import DetectObserver, sampling
from ess.roles.detect.outputs import KafkaOutputs
from ess.roles.detect.settings import DetectorSettings
from ess.settings import EssSettings, warn_environment
from streams.app import create_app

__all__ = ["main", "run_detector"]

#: How often the observer samples the consumer between scrapes: the resolution of the lag
#: age and of the wedged bound.
_SAMPLE_INTERVAL_SEC: Final = 0.5


async def run_detector(
    settings: DetectorSettings,
    stop: asyncio.Event,
    *,
    trust: Trust,
    ready: asyncio.Event | None = None,
    clock: Clock | None = None,
    detectors: Sequence[TopicDetector] | None = None,
    observer: DetectObserver | None = None,
) -> None:
    """Run one detection worker until ``stop`` is set (or the Faust app crashes, which is
    re-raised as ``RuntimeError``). ``ready`` is set once the worker has joined its group,
    recovered its tables and started its agents. ``trust`` is what the epoch follower trusts
    in ``ess.state``. ``detectors`` replaces the catalog's (the benchmark passes instrumented
    ones). ``observer`` (a fresh one when omitted) is what the status server on
    ``settings.status_port`` serves."""
    observer = observer or DetectObserver(settings.app_id, wedged_after=settings.wedged_after_sec)
    server: StatusServer | None = None
    if settings.status_port >= 0:
        server = await serve_status(
            observer, observer.metrics.registry, settings.status_host, settings.status_port
        )
        observer.status_url = server.url
    try:
        await _run(settings, stop, trust, ready, clock, detectors, observer)
    finally:
        if server is not None:
            await server.stop()


async def _run(  # noqa: PLR0917 - private; run_detector passes its arguments on
    settings: DetectorSettings,
    stop: asyncio.Event,
    trust: Trust,
    ready: asyncio.Event | None,
    clock: Clock | None,
    detectors: Sequence[TopicDetector] | None,
    observer: DetectObserver,
) -> None:
    from ess.kafka.broker import ensure_topics  # noqa: PLC0415 - keeps `import streams` light

    await ensure_topics(settings.bootstrap, settings.registry, security=settings.security)
    epoch = EpochFollower(
        settings.bootstrap,
        trust,
        fetch_max_wait_ms=50,
        security=settings.security,
    )
    await epoch.start()
    outputs = KafkaOutputs(settings.bootstrap, settings.registry, security=settings.security)
    app: Any = None
    try:
        await outputs.start()
        app = create_app(
            settings,
            outputs=outputs,
            epoch=epoch,
            clock=clock,
            detectors=detectors,
            observer=observer,
        )

        async def started() -> None:
            observer.ready = True
            logger.bind(app_id=settings.app_id, prefix=settings.registry.prefix).info(
                "detection worker ready"
            )
            if ready is not None:
                ready.set()

        app.on_startup_finished = started
        await app.start()
        async with sampling(observer, _SAMPLE_INTERVAL_SEC):
            stopping = asyncio.ensure_future(stop.wait())
            crashed = asyncio.ensure_future(app._crashed.wait())
            try:
                await asyncio.wait({stopping, crashed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                crashed.cancel()
        if app._crashed.is_set():
            raise RuntimeError(f"detection app {settings.app_id} crashed: {app._crash_reason!r}")
    finally:
        observer.ready = False
        if app is not None:
            await app.stop()
        await outputs.stop()
        await epoch.stop()
        logger.bind(app_id=settings.app_id).info("detection worker stopped")


class _InterceptHandler(logging.Handler):
    """stdlib logging (Faust, aiokafka, mode) into loguru's JSON sink."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).bind(logger_name=record.name).log(
            level, record.getMessage()
        )


async def _amain() -> None:
    ess = EssSettings()
    configure_logging(ess.observability.log_level, json=ess.observability.log_json)
    warn_environment()
    # Faust and aiokafka are chatty at INFO; WARNING keeps the JSON log readable. Not DEBUG:
    # every debug() call would then build a LogRecord per event.
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.WARNING, force=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    registry = ess.registry()
    async with kafka_target(
        registry, security=ess.kafka_security(), bootstrap=ess.kafka.bootstrap_servers
    ) as bootstrap:
        settings = DetectorSettings.from_settings(ess, bootstrap=bootstrap)
        logger.bind(bootstrap=bootstrap, app_id=settings.app_id, prefix=registry.prefix).info(
            "starting detection worker"
        )
        await run_detector(settings, stop, trust=ess.state_trust())


def main() -> None:
    """``python -m streams``: one detection worker until SIGINT/SIGTERM (the environment it
    reads: :class:`ess.settings.DetectSettings` and the shared sections)."""
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up (a ccxt dependency here)
    except ImportError:  # pragma: no cover
        asyncio.run(_amain())
    else:
        uvloop.run(_amain())
    sys.exit(0)
