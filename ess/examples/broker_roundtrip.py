"""A contract record through a real Kafka-compatible broker and back.

Starts the embedded broker (or uses ``KAFKA_BOOTSTRAP_SERVERS``), creates every ESS topic,
sends a manual ``TripCommand`` to ``ess.commands``, reads the topic back to its end and checks
the record survived byte-for-byte. Exit code 0 when it did.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from datetime import UTC, datetime

from loguru import logger
from rich.console import Console

from ess.kafka.broker import kafka_target
from ess.kafka.clients import producer, read_to_end
from ess.observability.logging import configure_logging
from schemas import Command, ResetCommand, TripCommand, decode, encode, topic_registry


async def round_trip(console: Console | None = None) -> bool:
    """Send one trip command and read it back; True when it came back equal."""
    out = console or Console()
    registry = topic_registry(prefix=f"demo-{uuid.uuid4().hex[:8]}")
    out.rule("[bold]broker round trip")
    async with kafka_target(registry) as bootstrap:
        out.print(f"broker {bootstrap}, topics created under prefix {registry.prefix!r}")
        sent = TripCommand(
            command_id=str(uuid.uuid4()),
            reason="manual",
            detail="broker round trip demo",
            source="operator:demo",
            ts=datetime.now(UTC),
        )
        send = producer(bootstrap, read_to_end_safe=True)
        await send.start()
        try:
            await send.send_and_wait(registry.commands.name, encode(sent), key=b"ess")
        finally:
            await send.stop()
        records = await read_to_end(bootstrap, registry.commands.name)
        received: list[TripCommand | ResetCommand] = [
            decode(Command, record.value) for record in records if record.value
        ]
        out.print(f"sent     {sent.model_dump(mode='json')}")
        out.print(f"received {[r.model_dump(mode='json') for r in received]}")
        ok = received == [sent]
        out.print("[green]round trip OK" if ok else "[red]round trip FAILED")
        return ok


def main() -> int:
    """Entry point: exit 0 when the record came back intact."""
    logger.enable("ess")  # a program, not a library: ESS's logs on
    configure_logging("WARNING", json=False)
    return 0 if asyncio.run(round_trip()) else 1


if __name__ == "__main__":
    sys.exit(main())
