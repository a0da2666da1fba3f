"""The command processor's errors: why it refused to start, stopped, or was fenced."""

from __future__ import annotations

from typing import TypeVar

from loguru import logger

from ess.errors import EssError

__all__ = ["FencedError", "ProcessorError", "StartupRefused", "critical"]


class ProcessorError(EssError, RuntimeError):
    """The processor cannot run, or must not go on. Never raised for bad input: bad commands
    are dead-lettered. Raised for infrastructure failures too (an append or a send that
    failed): the processor then stops without committing, and a restart redoes the command."""


class StartupRefused(ProcessorError):
    """Refused to (re)start processing: the topic layout is wrong, the key is missing, or
    ``ess.state`` cannot be folded (a ``seq`` gap, an unverifiable reset). Fail closed: a log
    nobody can trust must not grow."""


class FencedError(ProcessorError):
    """An authentic entry this processor did not write appeared in ``ess.state``: a second
    writer exists. The processor stops rather than write a diverging history."""


_E = TypeVar("_E", bound=ProcessorError)


def critical(kind: type[_E], message: str, **fields: object) -> _E:
    """Log ``message`` as critical and return the error to raise (one place for both, so no
    stop of the processor goes unlogged)."""
    logger.bind(error=kind.__name__, **fields).critical(message)
    return kind(message)
