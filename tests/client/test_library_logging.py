"""Imported as a library, ESS keeps quiet: a bot's stderr gets none of ESS's log lines until
the bot asks for them with ``logger.enable("ess")``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Uses the gate the way a bot does: an inactive record opens it (ESS logs that at INFO, and
#: the feed logs its start), then a record is built and encoded for a topic.
SCRIPT = """
import asyncio
from datetime import UTC, datetime

from ess.client import InputTopics, build_record, connect_gate
from ess.clock import SystemClock
from ess.policystore import InMemoryPolicyStore
from schemas import PnlTick, PolicyRecord


async def main() -> None:
    store = InMemoryPolicyStore()
    now = datetime.now(UTC)
    record = PolicyRecord(active=False, reason=None, timestamp=now, seq=0, refreshed_at=now)
    await store.set("emergency_stop", record.model_dump(mode="json"))
    async with connect_gate(store) as gate:
        assert gate.allowed(), gate.why()
    tick = build_record(PnlTick, {"account_id": "a", "equity": 1.0}, SystemClock())
    InputTopics().prepare(tick)
    print("ok")


asyncio.run(main())
"""


def _run(prelude: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(prelude) + SCRIPT],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_using_the_gate_and_the_client_prints_nothing_on_stderr() -> None:
    done = _run("")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"
    assert done.stderr == ""


def test_a_bot_that_wants_esss_logs_enables_them() -> None:
    done = _run(
        """
        import ess
        from loguru import logger
        logger.enable("ess")
        """
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trading gate opened" in done.stderr
