"""Dead letters: every record ESS could not accept goes to ``ess.deadletter`` with the reason.

A worker never dies on input. Whatever a consumer cannot decode or validate is wrapped in a
:class:`~schemas.DeadLetter` (the raw bytes, why they were refused, and where they came from)
and the consumer moves on. :func:`build_dead_letter` builds one (pure);
:class:`ess.kafka.deadletter.DeadLetterWriter` stamps the time from an injected clock and sends it.

Bounds: a dead letter must itself be a readable record, and the codec refuses records over
256 KiB (:data:`schemas.codec.MAX_RECORD_BYTES`). The raw bytes are therefore cut at
:data:`MAX_RAW_BYTES` (base64 grows them by a third) and the error text at the contract's 4,096
characters, and a cut says so in the error.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Final, Literal

from schemas import DeadLetter

__all__ = ["MAX_ERROR_CHARS", "MAX_RAW_BYTES", "build_dead_letter"]

#: Raw bytes kept per dead letter: 64 KiB, 86 KiB as base64, well under the 256 KiB a reader
#: accepts. Enough to see what a producer sent; a larger record is cut and says so.
MAX_RAW_BYTES: Final = 64 * 1024
#: ``DeadLetter.error`` is contract ``Text`` (at most 4,096 characters).
MAX_ERROR_CHARS: Final = 4096


def build_dead_letter(
    *,
    source_topic: str,
    partition: int,
    offset: int,
    raw: bytes | None,
    error: str,
    ts: datetime,
) -> DeadLetter:
    """A dead letter for the record at ``source_topic[partition]@offset``.

    ``raw`` becomes UTF-8 text when it decodes strictly, otherwise base64 (``raw_encoding``
    says which); ``None`` (a tombstone) becomes empty text. Bytes beyond :data:`MAX_RAW_BYTES`
    are dropped and the error notes the original size.
    """
    data = raw or b""
    note = ""
    if len(data) > MAX_RAW_BYTES:
        note = f" [raw cut to the first {MAX_RAW_BYTES} of {len(data)} bytes]"
        data = data[:MAX_RAW_BYTES]
    room = MAX_ERROR_CHARS - len(note)  # the note survives a cut of the error itself
    if len(error) > room:
        error = error[: room - 3] + "..."
    encoding: Literal["utf-8", "base64"] = "utf-8"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(data).decode("ascii"), "base64"
    return DeadLetter(
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        raw=text,
        raw_encoding=encoding,
        error=error + note,
        ts=ts,
    )
