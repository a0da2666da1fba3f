from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from loguru import logger

from ess.api.reasons import parse_reason
from ess.clock import ManualClock, SystemClock
from ess.examples import seed_demo
from ess.observability.logging import configure_logging, redact_text
from schemas import ReasonCode


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, (ReasonCode.MANUAL, "")),
        ("flash_crash", (ReasonCode.FLASH_CRASH, "")),
        ("daily_loss: -12%", (ReasonCode.DAILY_LOSS, "-12%")),
        ("something odd: here", (ReasonCode.MANUAL, "something odd: here")),
    ],
)
def test_parse_reason(text: str | None, expected: tuple[ReasonCode, str]) -> None:
    assert parse_reason(text, ReasonCode.MANUAL) == expected


def test_manual_clock_moves_only_forward() -> None:
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))

    assert clock.advance(1.5, minutes=1) == datetime(2026, 1, 1, 0, 1, 1, 500000, tzinfo=UTC)
    with pytest.raises(ValueError, match="cannot go back"):
        clock.set(datetime(2025, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="aware"):
        ManualClock(datetime(2026, 1, 1))


def test_system_clock_is_utc_and_current() -> None:
    before = datetime.now(UTC)
    now = SystemClock().now()
    assert now.tzinfo is not None
    assert before - timedelta(seconds=1) <= now <= datetime.now(UTC)


def test_logging_emits_json_with_secrets_redacted() -> None:
    sink = io.StringIO()
    configure_logging("INFO", json=True, sink=sink)
    pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA\n-----END PRIVATE KEY-----"
    try:
        logger.bind(api_secret="s3cr3t", venue="binance", nested={"apiKey": "K1"}).info(
            f"connecting secret=hunter2 token: abc key {pem}"
        )
    finally:
        configure_logging("WARNING", json=False)

    line = json.loads(sink.getvalue().splitlines()[0])
    assert line["level"] == "INFO"
    assert line["msg"].startswith("connecting secret=***")
    assert {k: line[k] for k in ("api_secret", "venue", "nested")} == {
        "api_secret": "***",
        "venue": "binance",
        "nested": {"apiKey": "***"},
    }
    for secret in ("s3cr3t", "hunter2", "abc", "K1", "MC4CAQAw"):
        assert secret not in sink.getvalue()


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("connecting to redis://ess:hunter2@redis:6379/0", "hunter2"),
        ("SASL via kafka://svc:p%40ss@broker:9093", "p%40ss"),
        ("GET https://api.example/v3/order?symbol=BTC&signature=abc123ef", "abc123ef"),
        ("GET https://api.example/v1?key=AKIA12345&symbol=BTC", "AKIA12345"),
        ("callback https://hook.example/x?sig=deadbeef#frag", "deadbeef"),
        ("GET https://x.example/?access_token=tok-42", "tok-42"),
    ],
)
def test_redact_text_masks_credentials_in_urls(text: str, secret: str) -> None:
    redacted = redact_text(text)
    assert secret not in redacted
    assert "***" in redacted


def test_redact_text_keeps_harmless_text() -> None:
    assert redact_text("order BTC/USDT qty=0.5") == "order BTC/USDT qty=0.5"


def test_seed_demo_runs_the_original_scenario() -> None:
    assert seed_demo.main(["--fail-after", "0.2", "--interval", "0.05"]) == 0


def test_logging_json_redacts_exception_text() -> None:
    sink = io.StringIO()
    configure_logging("INFO", json=True, sink=sink)
    try:
        try:
            raise ValueError("bad config password=swordfish")
        except ValueError:
            logger.exception("load failed")
    finally:
        configure_logging("WARNING", json=False)

    line = json.loads(sink.getvalue().splitlines()[0])
    assert line["exception"] == "ValueError: bad config password=***"
    assert "swordfish" not in sink.getvalue()
