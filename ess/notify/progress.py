"""Which records are done, per source: what the notifier may commit. Pure.

Delivery is at least once: a record's position is committed only after every alert it made
was *settled* by every receiver (delivered, or given up on loudly after the retries). A
record that made no alert is settled when it is read. The committable position of a source is
the lowest offset still in flight, or one past the last record read when nothing is: a
restart resumes there and redelivers whatever was not settled, never skips it.
"""

from __future__ import annotations

__all__ = ["Progress"]


class Progress:
    """One source (a topic partition): records read, alerts in flight, the committable
    position. ``start`` is where reading began (the committed position, or the end of the
    topic on the very first start)."""

    def __init__(self, start: int) -> None:
        if start < 0:
            raise ValueError("offsets start at 0")
        self._next = start
        self._pending: dict[int, int] = {}

    def read(self, offset: int, alerts: int = 0) -> None:
        """The record at ``offset`` was read and made ``alerts`` deliveries to wait for."""
        if alerts < 0:
            raise ValueError("alerts cannot be negative")
        self._next = max(self._next, offset + 1)
        if alerts:
            self._pending[offset] = self._pending.get(offset, 0) + alerts

    def settled(self, offset: int) -> None:
        """One of the record's deliveries is done (delivered or given up)."""
        left = self._pending.get(offset)
        if left is None:
            raise ValueError(f"nothing in flight at offset {offset}")
        if left <= 1:
            del self._pending[offset]
        else:
            self._pending[offset] = left - 1

    @property
    def in_flight(self) -> int:
        """Records with deliveries not yet settled."""
        return len(self._pending)

    def position(self) -> int:
        """The offset to resume at: nothing before it is waiting for a delivery."""
        return min(self._pending) if self._pending else self._next
