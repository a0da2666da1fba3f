"""``ess worker``: run ESS roles in one process (all by default, or any subset).

Roles: ``detect`` (stream detection), ``command`` (the command processor, single writer of
``ess.state``), ``execute`` (cancel and flatten every configured venue while ACTIVE, keep the
venues' dead-man's switches armed), ``project`` (PolicyStore record, events, health beat,
metrics, /status).
Each role can also run alone, in its own process, and scale out where the role allows
(``detect``). With no ``KAFKA_BOOTSTRAP_SERVERS`` the worker starts the embedded broker, which
only makes sense with all roles in this one process (nobody else can reach its log).

If one role fails, the worker stops every role and exits non-zero: a half-running ESS (say,
detection without the processor) is worse than a loudly dead one that a supervisor restarts.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from loguru import logger

from ess.config import EssSettings
from ess.core.attestation import SigningKey
from ess.core.reader import Trust
from ess.core.signing import generate_private_key
from ess.errors import EssError
from ess.kafka.broker import external_bootstrap, kafka_target
from ess.policystore import policy_store_from_url, redact_url
from ess.roles.command.processor import run_processor
from ess.roles.execute.service import run_executor
from ess.roles.project.projector import run_projector
from ess.venues.config import (
    ExecutorSettings,
    VenueConfig,
    VenueConfigError,
    VenueCredentials,
    load_venues,
)

ROLES: tuple[str, ...] = ("detect", "command", "execute", "project")


class WorkerError(EssError, RuntimeError):
    """A role failed; the message names it."""


async def run_worker(
    settings: EssSettings,
    roles: Sequence[str] = ROLES,
    stop: asyncio.Event | None = None,
    *,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run ``roles`` until ``stop`` is set (or SIGINT/SIGTERM when ``stop`` is None)."""
    unknown = sorted(set(roles) - set(ROLES))
    if unknown or not roles:
        raise ValueError(f"unknown roles {unknown}; choose from {', '.join(ROLES)}")
    own_stop = stop is None
    stop = stop or asyncio.Event()
    if own_stop:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    # Configuration errors surface before anything starts (no broker started for nothing).
    venues = _executor_venues() if "execute" in roles else ()
    signing_key = _signing_key(settings) if "command" in roles else None
    trust = settings.state_trust(also_trust=signing_key)
    registry = settings.registry()
    async with kafka_target(registry, security=settings.kafka_security()) as bootstrap:
        bound = settings.model_copy(update={"kafka_bootstrap_servers": bootstrap})
        jobs = _jobs(bound, roles, stop, venues=venues, signing_key=signing_key, trust=trust)
        logger.bind(roles=list(roles), bootstrap=bootstrap, prefix=registry.prefix).info(
            "ESS worker started"
        )
        if on_ready is not None:
            on_ready(bootstrap)
        await _supervise(jobs, stop)


def _signing_key(settings: EssSettings) -> SigningKey:
    """The command processor's key: from ``ESS_PROCESSOR_KEY_FILE``; with the embedded broker
    and no key file, a key made for this run (the embedded log lives no longer than this
    process, and every reader of it is in this process too)."""
    if settings.processor_key_file.is_file() or external_bootstrap() is not None:
        return settings.processor_signing_key()  # raises with what to do when missing
    logger.bind(key_file=str(settings.processor_key_file)).warning(
        "embedded broker and no processor key file: signing ess.state with a key made for "
        "this run (use `ess keygen --processor` for anything that outlives it)"
    )
    return SigningKey(generate_private_key())


def _jobs(
    settings: EssSettings,
    roles: Sequence[str],
    stop: asyncio.Event,
    *,
    venues: Sequence[tuple[VenueConfig, VenueCredentials]],
    signing_key: SigningKey | None,
    trust: Trust,
) -> dict[str, Coroutine[Any, Any, None]]:
    jobs: dict[str, Coroutine[Any, Any, None]] = {}
    if "execute" in roles:
        jobs["execute"] = run_executor(
            settings.registry(),
            settings.kafka_bootstrap_servers,
            venues,
            ExecutorSettings(),
            stop,
            trust=trust,
            status_host=settings.status_host,
            security=settings.kafka_security(),
        )
    if "command" in roles:
        jobs["command"] = run_processor(settings, stop, signing_key=signing_key)
    if "project" in roles:
        url = settings.resolved_policy_store_url()
        logger.bind(policy_store=redact_url(url)).info("projector PolicyStore")
        jobs["project"] = run_projector(
            settings,
            policy_store_from_url(url),
            stop,
            trust=trust,
            bootstrap=settings.kafka_bootstrap_servers,
            refresh_interval=settings.refresh_interval_sec,
            health_interval=settings.refresh_interval_sec,
            component=settings.health_component,
            status_host=settings.status_host,
            status_port=None if settings.status_port < 0 else settings.status_port,
        )
    if "detect" in roles:
        # Imported here: Faust is heavy, and the other roles never need it.
        from ess.roles.detect.settings import DetectorSettings  # noqa: PLC0415
        from streams.runner import run_detector  # noqa: PLC0415

        detector = DetectorSettings.from_env(
            settings.kafka_bootstrap_servers,
            settings.registry(),
            security=settings.kafka_security(),
            status_host=settings.status_host,
        )
        jobs["detect"] = run_detector(detector, stop, trust=trust)
    return jobs


async def _supervise(jobs: dict[str, Coroutine[Any, Any, None]], stop: asyncio.Event) -> None:
    tasks = {asyncio.create_task(job, name=f"ess-{role}"): role for role, job in jobs.items()}
    failure: tuple[str, BaseException] | None = None
    pending = set(tasks)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.cancelled() or task.exception() is None:
                if not stop.is_set():
                    logger.bind(role=tasks[task]).critical("role ended unexpectedly")
                    failure = failure or (tasks[task], RuntimeError("ended unexpectedly"))
                    stop.set()
                continue
            error = task.exception()
            assert error is not None
            logger.bind(role=tasks[task], error=f"{type(error).__name__}: {error}").critical(
                "role failed; stopping the worker"
            )
            failure = failure or (tasks[task], error)
            stop.set()
    if failure is not None:
        role, error = failure
        raise WorkerError(f"role {role} failed: {type(error).__name__}: {error}") from error


def _executor_venues() -> tuple[tuple[VenueConfig, VenueCredentials], ...]:
    """The execute role's venues from ``ESS_VENUES_FILE``/``ESS_VENUES``, read before anything
    starts. Running it without any venue setting is refused: a kill switch that silently
    flattens nothing is worse than one that does not start. ``ESS_VENUES='[]'`` states "no
    venues" explicitly (gates only)."""
    if not (os.environ.get("ESS_VENUES_FILE") or os.environ.get("ESS_VENUES")):
        raise VenueConfigError(
            "the execute role needs venues: set ESS_VENUES_FILE (TOML/JSON) or ESS_VENUES "
            "(JSON); ESS_VENUES='[]' runs it with none on purpose"
        )
    return load_venues(os.environ)
