"""An immutable set that grows in amortized O(log n): the memory of the state fold.

:class:`~ess.core.state.EssState` remembers every command id ever applied and every nonce
ever used. Rebuilding it with ``frozenset | {item}`` on every entry copies the whole set
each time, so folding a log of n entries cost O(n²): 40,000 entries took 15 s, and anyone
allowed to trip could grow the log while ESS is ACTIVE, stretching every restart.

:class:`GrowSet` keeps its items in frozensets ("levels") whose sizes follow a binary
counter: adding an item creates a level of one and merges it with the last level while that
is no larger, so each item is copied O(log n) times over its life and an ``add`` never
copies the whole set. The old value stays intact (the fold stays pure); membership asks at
most O(log n) frozensets.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Set
from itertools import chain
from typing import TypeVar

__all__ = ["GrowSet"]

T = TypeVar("T", bound=Hashable)


class GrowSet(Set[T]):
    """An immutable set with a cheap :meth:`add`. A :class:`collections.abc.Set`: compares
    (``==``, ``<=``...) with any set by its items."""

    __slots__ = ("_levels",)

    def __init__(self, items: Iterable[T] = ()) -> None:
        collected = frozenset(items)
        self._levels: tuple[frozenset[T], ...] = (collected,) if collected else ()

    @classmethod
    def _of(cls, levels: tuple[frozenset[T], ...]) -> GrowSet[T]:
        grown = cls.__new__(cls)
        grown._levels = levels
        return grown

    def add(self, item: T) -> GrowSet[T]:
        """This set with ``item`` (``self`` when it is already there)."""
        if item in self:
            return self
        merged: frozenset[T] = frozenset((item,))
        levels = self._levels
        while levels and len(levels[-1]) <= len(merged):
            merged = levels[-1] | merged
            levels = levels[:-1]
        return GrowSet._of((*levels, merged))

    def __contains__(self, item: object) -> bool:
        for level in self._levels:  # noqa: SIM110 - a loop is twice as fast as any(genexpr)
            if item in level:
                return True
        return False

    def __iter__(self) -> Iterator[T]:
        return chain.from_iterable(self._levels)

    def __len__(self) -> int:
        return sum(len(level) for level in self._levels)

    def __bool__(self) -> bool:
        return bool(self._levels)

    def __hash__(self) -> int:
        return self._hash()

    def __repr__(self) -> str:
        return f"GrowSet({set(self)!r})"
