"""Sends dead letters to ``ess.deadletter`` (built by
:func:`ess.core.deadletter.build_dead_letter`)."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from ess.clock import Clock
from ess.core.deadletter import build_dead_letter
from schemas import DeadLetter, encode

__all__ = ["DeadLetterWriter"]


class DeadLetterWriter:
    """Builds dead letters stamped by ``clock`` and sends them to ``topic``.

    The producer is the caller's (started and stopped by it): a consumer that dead-letters
    usually produces elsewhere too, and one producer per process is enough. Records are keyed
    by their source topic, as the contract says.
    """

    def __init__(self, producer: AIOKafkaProducer, topic: str, clock: Clock) -> None:
        self._producer = producer
        self._topic = topic
        self._clock = clock

    async def send(
        self, *, source_topic: str, partition: int, offset: int, raw: bytes | None, error: str
    ) -> DeadLetter:
        """Build the dead letter, send it and wait for the broker's ack; returns it."""
        letter = build_dead_letter(
            source_topic=source_topic,
            partition=partition,
            offset=offset,
            raw=raw,
            error=error,
            ts=self._clock.now(),
        )
        await self._producer.send_and_wait(self._topic, encode(letter), key=source_topic.encode())
        return letter
