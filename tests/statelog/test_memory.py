"""The state-log contract on :class:`~ess.statelog.InMemoryStateLog`, plus what only the
list can show."""

from __future__ import annotations

import pytest

from ess.statelog import InMemoryStateLog, RawRecord, StateLog
from tests.statelog.contract import Opener, StateLogContract, _Follower


class TestInMemoryStateLog(StateLogContract):
    @pytest.fixture
    def opener(self) -> Opener:
        # Idle answers only every minute: a follower that sees an append in time was woken
        # by the append, not by the idle report.
        log = InMemoryStateLog(idle_report_sec=60.0)

        def open_handle() -> StateLog:
            return log.handle()

        return open_handle

    @pytest.fixture
    def scope(self) -> str:
        return "ess.state"

    async def test_follow_reports_answers_while_the_log_is_idle(self, opener: Opener) -> None:
        # As the contract's, with idle reports frequent enough to be seen.
        log = InMemoryStateLog(idle_report_sec=0.01)
        follower = _Follower(log)
        try:
            await follower.until(lambda: follower.fetches >= 2)
        finally:
            await follower.close()
        assert follower.records == []
        assert follower.ends
        assert set(follower.ends) == {0}


async def test_initial_values_are_the_first_records() -> None:
    log = InMemoryStateLog([b"a", b"b"])
    assert await log.read() == [RawRecord(0, b"a"), RawRecord(1, b"b")]
    assert await log.append(b"c") == 2
    assert await log.handle().end_offset() == 3
