"""``python -m ess.chaos.crash_child POINT``: the command processor, killed at a named point.

Crash tests need a processor that dies at the worst moment, and production code must not be
able to do that (no setting, no environment variable). So the processor only offers named
points (:class:`~ess.roles.command.processor.ProcessorHooks`), and this entry point, outside
the production roles, runs it with hooks that SIGKILL the process at the chosen one. Settings
come from the environment exactly as for ``python -m ess.roles.command.processor``.

Points:

* ``crash_after_append``: right after the first state-log append is acknowledged, before the
  command offset is committed and before the outcome is published.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import Final

from loguru import logger

from ess.roles.command import processor
from ess.roles.command.processor import ProcessorHooks
from schemas import StateEntry

__all__ = ["CRASH_POINTS", "CrashAfterAppend", "hooks_for", "main"]

#: The log line written just before the kill (tests look for it).
CRASH_MESSAGE: Final = "fault injection: SIGKILL after append, before commit"


class CrashAfterAppend(ProcessorHooks):
    """SIGKILL the process once an entry's append is acknowledged (nothing committed yet)."""

    def after_append(self, entry: StateEntry, offset: int) -> None:
        logger.bind(seq=entry.seq, offset=offset).critical(CRASH_MESSAGE)
        os.kill(os.getpid(), signal.SIGKILL)


#: Crash points by name.
CRASH_POINTS: Final[dict[str, type[ProcessorHooks]]] = {
    "crash_after_append": CrashAfterAppend,
}


def hooks_for(point: str) -> ProcessorHooks:
    """The hooks that crash at ``point``. An unknown name raises ``ValueError``: a misspelt
    point would otherwise make a crash test pass without crashing anything."""
    try:
        return CRASH_POINTS[point.strip()]()
    except KeyError:
        known = ", ".join(sorted(CRASH_POINTS))
        raise ValueError(f"{point!r} is not a known crash point ({known})") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the processor with the crash point named by the one argument; exit as
    :func:`ess.roles.command.processor.main` does (when it is not killed), 2 for a missing or
    unknown point."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if len(args) != 1:
            raise ValueError(f"exactly one crash point expected, got {args!r}")
        hooks = hooks_for(args[0])
    except ValueError as exc:
        sys.stderr.write(f"python -m ess.chaos.crash_child: {exc}\n")
        return 2
    return processor.main(hooks=hooks)


if __name__ == "__main__":
    sys.exit(main())
