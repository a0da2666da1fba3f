"""Every detection worker follows ``ess.state`` to know the ESS epoch (resets so far).

Rules re-anchor their baselines and re-arm their latches when the epoch changes, so *every*
worker needs it, not just the owner of some partition: a per-worker aiokafka consumer without a
group (no rebalances, no commits) reads the one-partition state log from its beginning and
folds it with the verifying reader every reader uses (:class:`ess.statelog.StateLogReader`):
a record that does not verify never moves the epoch.

Correct on the embedded broker: "caught up" is judged by the high watermark of fetch responses
and an empty poll, never by ``end_offsets()`` alone (Tansu 0.6.0 under-reports it after a
multi-record batch, see ``docs/embedded-broker.md``, "End offsets").

Fail-safe rather than fail-closed: a log that cannot be folded is logged as an error and the
last good epoch is kept. A detector that stops detecting because the log it only
*reads* is damaged would be the worse failure; the command processor, which *writes* the log,
is the component that fails closed on it.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from loguru import logger

from ess.core.reader import LogBroken, Trust
from ess.kafka.clients import KafkaSecurity, consumer
from ess.rules.base import Context
from ess.statelog import RawRecord, StateLogReader

__all__ = ["EpochFollower", "StaticEpoch"]

#: Poll wait of the follower once caught up. Resets are rare and a rule that sees the new
#: epoch a few hundred ms late only re-arms that much later.
_FOLLOW_POLL_MS: Final = 200
_CATCH_UP_POLL_MS: Final = 50


class StaticEpoch:
    """A fixed context: for tests and replays that drive the epoch themselves."""

    def __init__(self, epoch: int = 0, epoch_started: datetime | None = None) -> None:
        self.context = Context(epoch, epoch_started)


class EpochFollower:
    """Follows ``topic`` (``ess.state``) and exposes the current :class:`Context`."""

    def __init__(
        self,
        bootstrap: str,
        trust: Trust,
        *,
        fetch_max_wait_ms: int = 50,
        security: KafkaSecurity | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._security = security
        self._topic = trust.scope
        self._tp = TopicPartition(trust.scope, 0)
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._reader = StateLogReader(trust, name="detect-epoch")
        self._epoch_started: datetime | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._broken = False
        self.context = Context(0, None)

    @property
    def epoch(self) -> int:
        return self.context.epoch

    async def start(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109 - startup bound
        """Read the log to its current end (bounded by ``timeout``), then keep following it
        in a background task."""
        reader = consumer(
            self._bootstrap,
            group_id=None,
            client_id="ess-detect-epoch",
            fetch_max_wait_ms=self._fetch_max_wait_ms,
            security=self._security,
        )
        await reader.start()
        self._consumer = reader
        try:
            # topics() asks for all topics' metadata, which never auto-creates one.
            if self._topic not in await reader.topics():
                raise LookupError(f"state log topic {self._topic} does not exist")
            reader.assign([self._tp])
            await reader.seek_to_beginning(self._tp)
            async with asyncio.timeout(timeout):
                await self._catch_up(reader)
        except BaseException:
            await reader.stop()
            self._consumer = None
            raise
        logger.bind(
            topic=self._topic, epoch=self.epoch, next_offset=self._reader.folded.next_offset
        ).info("detector caught up with the state log")
        self._task = asyncio.create_task(self._follow(reader), name="ess-detect-epoch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def _catch_up(self, reader: AIOKafkaConsumer) -> None:
        listed_end: int = (await reader.end_offsets([self._tp]))[self._tp]
        while True:
            batch = (await reader.getmany(self._tp, timeout_ms=_CATCH_UP_POLL_MS)).get(self._tp)
            if batch:
                self._apply(batch)
                continue
            highwater: int | None = reader.highwater(self._tp)
            if highwater is not None and await reader.position(self._tp) >= max(
                highwater, listed_end
            ):
                return

    async def _follow(self, reader: AIOKafkaConsumer) -> None:
        while True:
            try:
                batch = (await reader.getmany(self._tp, timeout_ms=_FOLLOW_POLL_MS)).get(self._tp)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("state log follower: fetch failed; retrying")
                await asyncio.sleep(1.0)
                continue
            if batch:
                self._apply(batch)

    def _apply(self, batch: list[object]) -> None:
        if self._broken:
            return
        records = [
            RawRecord(record.offset, record.value)  # type: ignore[attr-defined]
            for record in batch
        ]
        before = self._reader.folded.state.epoch
        try:
            self._reader.feed(records)
        except LogBroken as exc:
            self._broken = True
            logger.bind(epoch=self.epoch).error(
                f"state log cannot be folded; detection keeps epoch {self.epoch}: {exc}"
            )
            return
        state = self._reader.folded.state
        if state.epoch != before:
            self._epoch_started = state.last_reset
            self.context = Context(state.epoch, self._epoch_started)
            logger.bind(epoch=state.epoch).info("ESS epoch changed")
