"""Where a detection worker's output goes: ``ess.commands`` and ``ess.deadletter``.

Trips do not go through Faust's producer, for two reasons:

* ``ess.commands`` is read to its end by the command processor, and on the embedded broker a
  reader by end offset misses the tail of a multi-record batch (``docs/embedded-broker.md``, "End
  offsets"). Trips are sent one record per batch (:func:`ess.kafka.clients.producer` with
  ``read_to_end_safe``), awaited, which also gives the lowest latency for the rare record
  that matters most.
* Faust's producer then carries only changelog records, so its linger can favour throughput
  without delaying trips.

A trip that cannot be delivered is retried with backoff for as long as the worker runs: a
detector must not give up on a trip. The batch (and so the offset commit) waits meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Final

from aiokafka import AIOKafkaProducer
from loguru import logger

from ess.kafka.clients import KafkaSecurity, producer
from schemas import DeadLetter, TopicRegistry, TripCommand, encode

__all__ = ["COMMAND_KEY", "KafkaOutputs"]

#: Kafka key of every command: ``ess.commands`` has one partition; the key documents intent.
COMMAND_KEY: Final = b"ess"
_MAX_BACKOFF_S: Final = 2.0


class KafkaOutputs:
    """Trip commands and dead letters to the registry's topics, with ESS's own producers."""

    def __init__(
        self, bootstrap: str, registry: TopicRegistry, *, security: KafkaSecurity | None = None
    ) -> None:
        self._bootstrap = bootstrap
        self._security = security
        self._commands_topic = registry.commands.name
        self._deadletter_topic = registry.deadletter.name
        self._commands: AIOKafkaProducer | None = None
        self._letters: AIOKafkaProducer | None = None

    async def start(self) -> None:
        self._commands = producer(
            self._bootstrap,
            read_to_end_safe=True,
            client_id="ess-detect-commands",
            security=self._security,
        )
        self._letters = producer(
            self._bootstrap, client_id="ess-detect-deadletter", security=self._security
        )
        await self._commands.start()
        await self._letters.start()

    async def stop(self) -> None:
        for client in (self._commands, self._letters):
            if client is not None:
                await client.stop()
        self._commands = self._letters = None

    async def send_trips(self, commands: Sequence[TripCommand]) -> None:
        """Send every command and wait until the broker acknowledged each one."""
        if self._commands is None:
            raise RuntimeError("KafkaOutputs.start() was not called")
        client = self._commands
        pending = [encode(command) for command in commands]
        backoff = 0.05
        while pending:
            futures = [
                await client.send(self._commands_topic, value, key=COMMAND_KEY) for value in pending
            ]
            results = await asyncio.gather(*futures, return_exceptions=True)
            failed = [
                value
                for value, result in zip(pending, results, strict=True)
                if isinstance(result, BaseException)
            ]
            if not failed:
                return
            first = next(r for r in results if isinstance(r, BaseException))
            logger.bind(failed=len(failed), topic=self._commands_topic).error(
                f"trip delivery failed ({first!r}); retrying"
            )
            pending = failed
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)

    async def send_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Send dead letters (keyed by source topic) and wait for the broker's acks. A dead
        letter that cannot be delivered is logged with its coordinates, not retried: the
        record itself stays in its topic."""
        if self._letters is None:
            raise RuntimeError("KafkaOutputs.start() was not called")
        futures = [
            await self._letters.send(
                self._deadletter_topic, encode(letter), key=letter.source_topic.encode()
            )
            for letter in letters
        ]
        results = await asyncio.gather(*futures, return_exceptions=True)
        for letter, result in zip(letters, results, strict=True):
            where = {"topic": letter.source_topic, "partition": letter.partition}
            if isinstance(result, BaseException):
                logger.bind(**where, offset=letter.offset).error(
                    f"dead letter not delivered: {result!r}"
                )
            else:
                logger.bind(**where, offset=letter.offset, error=letter.error).info(
                    "record dead-lettered"
                )
