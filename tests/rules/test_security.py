"""api_key_invalid, api_key_changed, unauthorized_access, environment_modified."""

from __future__ import annotations

import pytest

from ess.rules.config import DetectionConfig
from ess.rules.security import SecurityEventRule, security_rules
from schemas import ReasonCode, SecurityEventKind
from tests.rules.support import Driver, security


@pytest.mark.parametrize("kind", list(SecurityEventKind))
def test_each_kind_trips_at_once_with_its_own_reason(kind: SecurityEventKind) -> None:
    drv = Driver(SecurityEventRule(kind), topic="ess.security")
    others = [security(k.value, 0) for k in SecurityEventKind if k is not kind]
    assert drv.feed(others) == []
    hit = drv.step(security(kind.value, 1))
    assert hit is not None
    assert hit.reason is ReasonCode(kind.value)
    assert hit.rule == kind.value
    assert hit.key == "gateway"
    assert "seen by test" in hit.detail


def test_kinds_latch_independently_and_duplicates_report_once() -> None:
    drivers = {rule.name: Driver(rule) for rule in security_rules(DetectionConfig())}
    event = security("api_key_invalid", 1, event_id="s1")
    for _ in range(3):
        for drv in drivers.values():
            drv.step(event)
    drivers["unauthorized_access"].step(security("unauthorized_access", 2))
    assert {name: len(drv.detections) for name, drv in drivers.items()} == {
        "api_key_invalid": 1,
        "api_key_changed": 0,
        "unauthorized_access": 1,
        "environment_modified": 0,
    }


def test_security_re_arms_after_reset_but_ignores_redelivery() -> None:
    drv = Driver(SecurityEventRule(SecurityEventKind.API_KEY_CHANGED))
    event = security("api_key_changed", 1, event_id="s1")
    assert drv.step(event) is not None
    assert drv.step(security("api_key_changed", 2)) is None
    drv.reset()
    assert drv.step(event) is None
    assert drv.step(security("api_key_changed", 3, source="other")) is not None
    assert drv.step(security("api_key_changed", 3)) is not None
