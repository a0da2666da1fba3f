"""``python -m ess.roles.notify``: the notify role alone, as ``ess worker --role notify``.

Exit code 0 after SIGINT/SIGTERM, 1 when the role cannot start (no receiver configured: the
message names the variables; keys or Kafka unusable) or fails.
"""

from __future__ import annotations

import asyncio
import sys

from loguru import logger

from ess.errors import EssError
from ess.observability.logging import configure_logging
from ess.roles.worker import run_worker
from ess.settings import EssSettings


def main() -> int:
    logger.enable("ess")  # a program, not a library: ESS's logs on
    settings = EssSettings()
    configure_logging(settings.observability.log_level, json=settings.observability.log_json)
    try:
        asyncio.run(run_worker(settings, ("notify",)))
    except EssError as exc:  # WorkerError (the role failed), keys, broker: said, not traced
        logger.bind(error=str(exc)).critical("notify role failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
