"""Deterministic ids: same inputs, same id, on any machine and on replay."""

from __future__ import annotations

import uuid

import pytest

from ess.core import derive_id
from ess.core.ids import ESS_NAMESPACE


def test_derive_id_when_same_parts_then_same_id() -> None:
    assert derive_id("detector:daily_loss", "ess.pnl", 3, 1234) == derive_id(
        "detector:daily_loss", "ess.pnl", 3, 1234
    )


def test_derive_id_when_called_then_uuid5_in_the_ess_namespace() -> None:
    value = derive_id("detector:daily_loss", "ess.pnl", 3, 1234)

    parsed = uuid.UUID(value)
    assert parsed.version == 5
    assert str(parsed) == value


def test_derive_id_when_called_then_pinned_value_never_changes() -> None:
    # Ids already in logs depend on the namespace and the join: pin both.
    assert uuid.UUID("5d0c8a8e-6f1d-4f0e-9a51-1f0c2b7e0e55") == ESS_NAMESPACE
    expected = str(uuid.uuid5(ESS_NAMESPACE, '["detector:daily_loss","ess.pnl","3","1234"]'))

    assert derive_id("detector:daily_loss", "ess.pnl", 3, 1234) == expected


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("x", 1), ("x", 2)),
        (("x", 1), (1, "x")),
        (("x",), ("x", "")),
        (("detector:a", "ess.pnl", 0, 1), ("detector:b", "ess.pnl", 0, 1)),
        (("a",), ("b",)),
    ],
)
def test_derive_id_when_parts_differ_then_ids_differ(
    a: tuple[object, ...], b: tuple[object, ...]
) -> None:
    assert derive_id(*a) != derive_id(*b)


def test_derive_id_when_many_offsets_then_all_distinct() -> None:
    ids = {derive_id("detector:x", "ess.fills", p, o) for p in range(4) for o in range(250)}

    assert len(ids) == 1000


def test_derive_id_when_part_contains_separator_then_no_collision() -> None:
    assert derive_id("a|b", "c") != derive_id("a", "b|c")
