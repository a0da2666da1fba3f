"""What the notifier may commit: the first record whose deliveries are not all settled."""

from __future__ import annotations

import pytest

from ess.notify.progress import Progress


def test_nothing_read_resumes_where_it_started() -> None:
    assert Progress(7).position() == 7


def test_records_without_alerts_are_settled_when_read() -> None:
    progress = Progress(0)
    for offset in range(3):
        progress.read(offset)

    assert progress.position() == 3
    assert progress.in_flight == 0


def test_the_position_waits_for_the_first_unsettled_record() -> None:
    progress = Progress(10)
    progress.read(10, alerts=2)  # two receivers
    progress.read(11)
    progress.read(12, alerts=1)

    assert progress.position() == 10
    progress.settled(12)  # a later record done first changes nothing yet
    assert progress.position() == 10
    progress.settled(10)
    assert progress.position() == 10  # one receiver still busy
    progress.settled(10)
    assert progress.position() == 13
    assert progress.in_flight == 0


def test_settling_what_was_never_in_flight_is_a_defect() -> None:
    progress = Progress(0)
    progress.read(0)

    with pytest.raises(ValueError, match="nothing in flight"):
        progress.settled(0)


def test_negative_starts_and_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="start at 0"):
        Progress(-1)
    with pytest.raises(ValueError, match="negative"):
        Progress(0).read(0, alerts=-1)
