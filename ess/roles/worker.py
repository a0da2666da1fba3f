"""``ess worker``: run ESS roles in one process (all by default, or any subset).

Roles: ``detect`` (stream detection), ``command`` (the command processor, single writer of
``ess.state``), ``execute`` (cancel and flatten every configured venue while ACTIVE, keep the
venues' dead-man's switches armed), ``project`` (PolicyStore record, events, health beat,
metrics, /status); and, only when named, ``notify`` (alerts to Slack, Telegram, PagerDuty or a
webhook: :data:`OPT_IN_ROLES`).
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
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Final

from loguru import logger

from ess.core.attestation import SigningKey
from ess.core.signing import generate_private_key
from ess.errors import EssError
from ess.kafka.broker import kafka_target
from ess.roles import command, detect, execute, notify, project
from ess.roles.context import Role, RoleContext
from ess.settings import EssSettings, warn_environment
from ess.venues.config import VenueConfig, VenueConfigError, VenueCredentials, load_venues

#: Every role by its command-line name, in start order.
ROLES: Final[Mapping[str, Role]] = {
    "detect": detect.run,
    "command": command.run,
    "execute": execute.run,
    "project": project.run,
}

#: Roles that run only when named (``ess worker --role notify``), never as part of "every
#: role": the notifier needs receivers configured and refuses to start without one, so
#: starting it by default would break every existing setup (see ``docs/notifications.md``).
OPT_IN_ROLES: Final[Mapping[str, Role]] = {
    "notify": notify.run,
}


class WorkerError(EssError, RuntimeError):
    """A role failed; the message names it."""


async def run_worker(
    settings: EssSettings,
    roles: Sequence[str] = tuple(ROLES),
    stop: asyncio.Event | None = None,
    *,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run ``roles`` until ``stop`` is set (or SIGINT/SIGTERM when ``stop`` is None)."""
    known = {**ROLES, **OPT_IN_ROLES}
    unknown = sorted(set(roles) - set(known))
    if unknown or not roles:
        raise ValueError(f"unknown roles {unknown}; choose from {', '.join(known)}")
    warn_environment()
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
    # ESS_DATA_DIR holds the default SQLite PolicyStore and the detect workers' Faust data.
    settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    async with kafka_target(
        registry, security=settings.kafka_security(), bootstrap=settings.kafka.bootstrap_servers
    ) as bootstrap:
        context = RoleContext(
            bootstrap=bootstrap, trust=trust, signing_key=signing_key, venues=venues
        )
        jobs = _jobs(settings, roles, stop, context)
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
    key_file = settings.keys.processor_key_file
    if key_file.is_file() or settings.kafka.bootstrap_servers.strip():
        return settings.processor_signing_key()  # raises with what to do when missing
    logger.bind(key_file=str(key_file)).warning(
        "embedded broker and no processor key file: signing ess.state with a key made for "
        "this run (use `ess keygen --processor` for anything that outlives it)"
    )
    return SigningKey(generate_private_key())


def _jobs(
    settings: EssSettings, roles: Sequence[str], stop: asyncio.Event, context: RoleContext
) -> dict[str, Coroutine[Any, Any, None]]:
    """One coroutine per role, in :data:`ROLES` order (then :data:`OPT_IN_ROLES`)."""
    known = {**ROLES, **OPT_IN_ROLES}
    return {role: run(settings, stop, context) for role, run in known.items() if role in roles}


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
