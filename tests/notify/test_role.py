"""The notify role's settings (``ESS_NOTIFY_*``), its receivers, and how the worker runs it:
only when named, and never without a receiver."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger
from pydantic import SecretStr, ValidationError

from ess.core.reader import Trust
from ess.notify.receivers import PagerDutyReceiver, SlackReceiver, TelegramReceiver
from ess.observability.logging import configure_logging
from ess.roles import worker
from ess.roles.context import RoleContext
from ess.roles.notify import NotifyConfigError, build_receivers, check_settings
from ess.roles.notify.__main__ import main as notify_main
from ess.roles.worker import OPT_IN_ROLES, ROLES, WorkerError, run_worker
from ess.settings import EssSettings, NotifySettings, check_environment, env_variables
from tests.statelog_support import PROCESSOR


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No ESS_/KAFKA_ variable of the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith(("ESS_", "KAFKA_")):
            monkeypatch.delenv(name)
    return monkeypatch


# --------------------------------------------------------------------------- settings


def test_the_notify_section_reads_its_variables(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ESS_NOTIFY_SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T/B/x")
    clean_env.setenv("ESS_NOTIFY_TELEGRAM_BOT_TOKEN", "1:abc")
    clean_env.setenv("ESS_NOTIFY_TELEGRAM_CHAT_ID", "-1001")
    clean_env.setenv("ESS_NOTIFY_TELEGRAM_ALLOWED_CHAT_IDS", "-1001, 77 42")
    clean_env.setenv("ESS_NOTIFY_PAGERDUTY_ROUTING_KEY", "R")
    clean_env.setenv("ESS_NOTIFY_WEBHOOK_URL", "")  # blank: unset
    clean_env.setenv("ESS_NOTIFY_PROCESSOR_GONE_AFTER_SEC", "4.5")
    clean_env.setenv("ESS_NOTIFY_RETRY_ATTEMPTS", "3")

    notify = EssSettings(_env_file=None).notify

    assert notify.receivers() == ("slack", "telegram", "pagerduty")
    assert notify.allowed_chat_ids() == frozenset({-1001, 77, 42})
    assert notify.telegram_commands()
    assert notify.processor_gone_after_sec == 4.5
    assert notify.retry_attempts == 3
    assert notify.webhook_url is None
    assert notify.problems() == []


def test_secrets_never_print(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ESS_NOTIFY_SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T/B/xyzzy")
    clean_env.setenv("ESS_NOTIFY_TELEGRAM_BOT_TOKEN", "1:plugh")

    settings = EssSettings(_env_file=None)

    shown = f"{settings!r} {settings.notify} {settings.model_dump()}"
    assert "xyzzy" not in shown
    assert "plugh" not in shown


def test_a_bad_chat_id_is_refused_under_its_variable(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ESS_NOTIFY_TELEGRAM_ALLOWED_CHAT_IDS", "77,@desk")

    with pytest.raises(ValidationError, match="ESS_NOTIFY_TELEGRAM_ALLOWED_CHAT_IDS"):
        EssSettings(_env_file=None)


def test_every_notify_variable_is_known_and_a_typo_gets_a_suggestion() -> None:
    names = {v.name for v in env_variables() if v.section == "notify"}
    assert {
        "ESS_NOTIFY_SLACK_WEBHOOK_URL",
        "ESS_NOTIFY_TELEGRAM_BOT_TOKEN",
        "ESS_NOTIFY_TELEGRAM_ALLOWED_CHAT_IDS",
        "ESS_NOTIFY_PAGERDUTY_ROUTING_KEY",
        "ESS_NOTIFY_WEBHOOK_URL",
        "ESS_NOTIFY_PROCESSOR_GONE_AFTER_SEC",
        "ESS_NOTIFY_RETRY_ATTEMPTS",
        "ESS_NOTIFY_STATUS_PORT",
    } <= names

    report = check_environment(
        EssSettings, {"ESS_NOTIFY_SLACK_WEBHOOK_URL": "x", "ESS_NOTIFY_PROCESSOR_GONE_SEC": "5"}
    )

    assert [(u.name, u.suggestion) for u in report.unknown] == [
        ("ESS_NOTIFY_PROCESSOR_GONE_SEC", "ESS_NOTIFY_PROCESSOR_GONE_AFTER_SEC")
    ]


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({}, "no receiver"),
        (
            {"telegram_chat_id": "5", "slack_webhook_url": "http://s/"},
            "need ESS_NOTIFY_TELEGRAM_BOT",
        ),
        ({"webhook_token": "t", "slack_webhook_url": "http://s/"}, "needs ESS_NOTIFY_WEBHOOK_URL"),
        (
            {"slack_webhook_url": "http://s/", "retry_initial_sec": 10, "retry_max_sec": 5},
            "RETRY_MAX_SEC",
        ),
    ],
)
def test_what_stops_the_role_is_named(values: dict[str, Any], problem: str) -> None:
    settings = NotifySettings(**values)

    with pytest.raises(NotifyConfigError, match=problem):
        check_settings(settings)


def test_telegram_commands_alone_are_enough() -> None:
    settings = NotifySettings(telegram_bot_token=SecretStr("1:a"), telegram_allowed_chat_ids="5")

    check_settings(settings)
    assert settings.receivers() == ()  # no chat to send alerts to, but a bot to ask


def test_receivers_are_built_in_a_fixed_order_with_their_base_urls() -> None:
    settings = NotifySettings(
        webhook_url=SecretStr("http://hook/"),
        pagerduty_routing_key=SecretStr("rk"),
        pagerduty_base_url="http://127.0.0.1:1/",
        telegram_bot_token=SecretStr("1:a"),
        telegram_chat_id="-5",
        telegram_base_url="http://127.0.0.1:2",
        slack_webhook_url=SecretStr("http://slack/"),
    )

    receivers = build_receivers(settings, source="ess/test")

    assert [r.name for r in receivers] == ["slack", "telegram", "pagerduty", "webhook"]
    assert isinstance(receivers[0], SlackReceiver)
    telegram, pagerduty = receivers[1], receivers[2]
    assert isinstance(telegram, TelegramReceiver)
    assert telegram.base_url == "http://127.0.0.1:2"
    assert telegram.chat_id == -5
    assert isinstance(pagerduty, PagerDutyReceiver)
    assert pagerduty.base_url == "http://127.0.0.1:1"
    assert pagerduty.source == "ess/test"


# --------------------------------------------------------------------------- the worker


def test_notify_is_opt_in_and_not_started_by_default() -> None:
    assert "notify" not in ROLES  # `ess worker` with no --role runs ROLES
    assert set(OPT_IN_ROLES) == {"notify"}
    settings = EssSettings(_env_file=None)
    context = RoleContext(bootstrap="b:1", trust=Trust(scope="s"))
    stop = asyncio.Event()

    default = worker._jobs(settings, tuple(ROLES), stop, context)
    named = worker._jobs(settings, ("project", "notify"), stop, context)
    try:
        assert "notify" not in default
        assert list(named) == ["project", "notify"]
    finally:
        for job in (*default.values(), *named.values()):
            job.close()  # never started


class _Target:
    """Stands in for kafka_target: a cluster that is already there."""

    def __call__(self, registry: object, *, security: object, bootstrap: str | None) -> Any:
        @contextlib.asynccontextmanager
        async def target() -> AsyncIterator[str]:
            yield "resolved:9092"

        return target()


async def test_naming_notify_without_a_receiver_fails_with_the_variables(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    keys = tmp_path / "processors"
    keys.mkdir()
    (keys / "p.pub").write_text(base64.b64encode(PROCESSOR.public).decode())
    clean_env.setattr(worker, "kafka_target", _Target())
    settings = EssSettings(
        keys={"processor_keys_dir": keys}, kafka={"bootstrap_servers": "b:1"}, _env_file=None
    )

    with pytest.raises(WorkerError, match="ESS_NOTIFY_SLACK_WEBHOOK_URL") as failed:
        await run_worker(settings, ("notify",), asyncio.Event())

    assert isinstance(failed.value.__cause__, NotifyConfigError)


async def test_unknown_roles_name_the_opt_in_ones() -> None:
    with pytest.raises(ValueError, match="notify"):
        await run_worker(EssSettings(_env_file=None), ("notifier",))


def test_python_m_notify_without_a_receiver_exits_1_naming_the_variables(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "processors"
    keys.mkdir()
    (keys / "p.pub").write_text(base64.b64encode(PROCESSOR.public).decode())
    clean_env.setenv("ESS_PROCESSOR_KEYS_DIR", str(keys))
    clean_env.setenv("KAFKA_BOOTSTRAP_SERVERS", "b:1")
    clean_env.setattr(worker, "kafka_target", _Target())
    clean_env.chdir(tmp_path)  # no .env of the developer's

    try:
        code = notify_main()
    finally:
        logger.disable("ess")
        configure_logging("WARNING", json=False)

    assert code == 1
    err = capsys.readouterr().err
    assert "notify role failed" in err
    assert "ESS_NOTIFY_SLACK_WEBHOOK_URL" in err
