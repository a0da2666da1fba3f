"""Container entry point of the ``command`` role: ``ess worker --role command`` plus a
supervisor contract that a restart policy alone cannot express.

A command processor that finds an entry it did not write in ``ess.state`` is *fenced*: a
second writer exists, and the processor stops rather than write a diverging history
(:class:`ess.roles.command.processor.FencedError`, ``python -m ess.roles.command.processor`` exits
3). Restarting it blindly would put the two writers back in a race, so the container must not be
restarted for that, while any other failure (broker gone, crash) should be. Docker's restart
policies cannot single out one exit status, hence this wrapper:

* graceful stop: exit 0; any other failure: exit 1 (``restart: unless-stopped`` restarts it);
* fenced: log CRITICAL, create :data:`FENCED_MARKER` (the compose healthcheck turns the
  container *unhealthy*, which ``docker compose ps`` shows), then stay up doing nothing until
  stopped, and exit 3 then. An operator finds the other writer, stops it, and recreates this
  container (``docker compose up -d --force-recreate ess-command``).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Final

from loguru import logger

from ess.observability.logging import configure_logging
from ess.roles.command.processor import EXIT_FENCED, FencedError
from ess.roles.worker import WorkerError, run_worker
from ess.settings import EssSettings

#: Present while this container holds a fenced processor; the healthcheck looks for it.
FENCED_MARKER: Final = Path("/tmp/ess-command-fenced")  # noqa: S108 - container-private /tmp


async def _hold_until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main() -> int:
    # A fresh start (recreate, or a restart after the operator stopped the container) is a
    # decision to try again: forget an earlier fencing.
    FENCED_MARKER.unlink(missing_ok=True)
    settings = EssSettings()
    configure_logging(settings.observability.log_level, json=settings.observability.log_json)
    try:
        asyncio.run(run_worker(settings, ("command",)))
    except WorkerError as exc:
        if not isinstance(exc.__cause__, FencedError):
            logger.bind(error=str(exc)).critical("command processor failed; exiting 1")
            return 1
        FENCED_MARKER.write_text(f"{exc.__cause__}\n")
        logger.bind(error=str(exc.__cause__), marker=str(FENCED_MARKER)).critical(
            "command processor FENCED: another writer appends to ess.state. Not restarting. "
            "Find and stop the other command processor, then recreate this container"
        )
        asyncio.run(_hold_until_stopped())
        return EXIT_FENCED
    return 0


if __name__ == "__main__":
    sys.exit(main())
