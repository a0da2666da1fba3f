"""GrowSet behaves as an immutable set: every add leaves the old value untouched, and the
result always holds exactly what a frozenset built the same way holds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ess.core.growset import GrowSet


def test_add_returns_a_new_set_and_keeps_the_old_one() -> None:
    empty: GrowSet[str] = GrowSet()
    one = empty.add("a")
    two = one.add("b")
    assert "a" not in empty
    assert len(empty) == 0
    assert not empty
    assert set(one) == {"a"}
    assert set(two) == {"a", "b"}
    assert two.add("a") is two  # already there: nothing to copy


def test_equal_to_sets_and_to_other_growsets_with_the_same_items() -> None:
    built = GrowSet[int]().add(1).add(2).add(3)
    assert built == GrowSet([3, 2, 1])
    assert built == frozenset({1, 2, 3})
    assert built == {1, 2, 3}
    assert built != GrowSet([1, 2])
    assert built != [1, 2, 3]
    assert hash(built) == hash(GrowSet([1, 2, 3]))
    assert "GrowSet(" in repr(built)


@given(st.lists(st.integers(min_value=0, max_value=50), max_size=200))
def test_always_holds_what_a_frozenset_holds(items: list[int]) -> None:
    grown: GrowSet[int] = GrowSet()
    expected: frozenset[int] = frozenset()
    history = []
    for item in items:
        grown = grown.add(item)
        expected = expected | {item}
        history.append((grown, expected))
    for value, wanted in history:  # every intermediate value is still what it was
        assert value == wanted
        assert len(value) == len(wanted)
        assert all(item in value for item in wanted)
        assert sorted(value) == sorted(wanted)
    assert all((item in grown) == (item in expected) for item in range(60))
