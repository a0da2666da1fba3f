"""Issue 13, item 6: a venue that refuses the executor's credentials is reported as an
``api_key_invalid`` security event (which detection trips ESS on at once) -- found by a
periodic probe while INACTIVE, or by the flatten itself -- rate-limited per venue."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from ess.roles.execute.service import Executor
from ess.venues.ports import VenueError, VenueErrorKind
from schemas import SecurityEvent, SecurityEventKind, decode, topic_registry
from tests.helpers import eventually
from tests.roles.execute.fakes import FAST_SETTINGS, FakeVenue
from tests.statelog_support import LogBuilder, trust

REGISTRY = topic_registry("ess")
SETTINGS = FAST_SETTINGS.model_copy(update={"credential_probe_interval_sec": 60.0})
REFUSED = VenueError(VenueErrorKind.AUTH, "Invalid API-key, IP, or permissions", code=-2015)


def executor_for(venue: FakeVenue) -> Executor:
    return Executor("unused:9092", REGISTRY, [venue], SETTINGS, trust=trust("ess.state"))


def security_events(executor: Executor) -> list[SecurityEvent]:
    return [
        decode(SecurityEvent, item.value)
        for item in executor._outbox
        if item.topic == REGISTRY.security.name
    ]


def refused_count(executor: Executor, venue: str) -> float:
    value = executor.metrics.registry.get_sample_value(
        "ess_executor_credentials_refused_total", {"venue": venue}
    )
    return value or 0.0


async def test_a_probe_refused_by_the_venue_reports_api_key_invalid_once_per_interval() -> None:
    venue = FakeVenue("binance-futures")
    venue.fail("snapshot", REFUSED, times=None)
    executor = executor_for(venue)

    assert not await executor.probe_once(venue)
    assert not await executor.probe_once(venue)  # refused again, within the interval

    [event] = security_events(executor)
    assert event.kind is SecurityEventKind.API_KEY_INVALID
    assert event.source == "ess-executor:binance-futures"
    assert "-2015" in event.detail
    assert refused_count(executor, "binance-futures") == 1


async def test_a_probe_that_fails_otherwise_reports_nothing() -> None:
    venue = FakeVenue()
    venue.fail("snapshot", VenueError(VenueErrorKind.UNAVAILABLE, "503"), times=1)
    executor = executor_for(venue)

    assert await executor.probe_once(venue)
    assert await executor.probe_once(venue)  # and it works the next time

    assert security_events(executor) == []


async def test_credentials_refused_during_a_flatten_are_reported() -> None:
    venue = FakeVenue()
    venue.positions["BTCUSDT"] = Decimal("1")
    venue.fail("snapshot", REFUSED, times=None)
    executor = executor_for(venue)
    log = LogBuilder("ess.state")
    log.trip()
    executor._reader.feed(log.records())
    executor._apply()
    try:
        await eventually(lambda: len(security_events(executor)) == 1)
        [event] = security_events(executor)
        assert event.kind is SecurityEventKind.API_KEY_INVALID
        assert venue.positions == {"BTCUSDT": Decimal("1")}  # it could not flatten
    finally:
        await executor._stop_enforcement("test over")
        await asyncio.gather(*executor._background, return_exceptions=True)
