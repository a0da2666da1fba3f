"""The state log and the command topic must keep every record: verified at start, never left
to broker defaults (issue: retention of ess.state/ess.commands was never verified)."""

from __future__ import annotations

import uuid

import pytest
from aiokafka.admin import NewTopic

from ess.kafka.broker import BrokerError, ensure_topics, topic_config_problems, verify_topic_configs
from ess.kafka.clients import admin_client
from schemas import topic_registry

pytestmark = pytest.mark.integration


def test_keep_forever_rules_name_every_wrong_setting() -> None:
    spec = topic_registry("ess").state
    assert topic_config_problems(spec, {"retention.ms": "-1", "cleanup.policy": "delete"}) == []
    assert (
        topic_config_problems(
            spec, {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}
        )
        == []
    )
    problems = topic_config_problems(
        spec,
        {"retention.ms": "604800000", "retention.bytes": "1073741824", "cleanup.policy": "compact"},
    )
    assert [p.split(": ", 1)[1].split(" ")[0] for p in problems] == [
        "retention.ms",
        "retention.bytes",
        "cleanup.policy",
    ]
    assert all(p.startswith("ess.state: ") for p in problems)
    assert topic_config_problems(spec, {"cleanup.policy": "delete"}) == [
        "ess.state: retention.ms is not reported, must be -1 (unlimited)"
    ]
    assert (
        "compact"
        in topic_config_problems(spec, {"retention.ms": "-1", "cleanup.policy": "delete,compact"})[
            0
        ]
    )


async def test_ensure_topics_refuses_a_state_log_with_default_retention(
    kafka_bootstrap: str,
) -> None:
    registry = topic_registry(prefix=f"t{uuid.uuid4().hex[:12]}")
    admin = admin_client(kafka_bootstrap)
    await admin.start()
    try:
        # Someone created ess.state by hand with a 7-day retention (a broker default).
        await admin.create_topics(
            [
                NewTopic(
                    registry.state.name,
                    1,
                    1,
                    topic_configs={"retention.ms": "604800000", "cleanup.policy": "delete"},
                )
            ]
        )
    finally:
        await admin.close()

    with pytest.raises(BrokerError) as refused:
        await ensure_topics(kafka_bootstrap, registry)

    message = str(refused.value)
    assert f"{registry.state.name}: retention.ms is 604800000, must be -1" in message
    assert f"--entity-name {registry.state.name} --add-config retention.ms=-1" in message
    with pytest.raises(BrokerError, match=r"retention\.ms is 604800000"):
        await verify_topic_configs(kafka_bootstrap, registry)


async def test_topics_created_by_ess_pass_the_check(kafka_bootstrap: str) -> None:
    registry = topic_registry(prefix=f"t{uuid.uuid4().hex[:12]}")

    created = await ensure_topics(kafka_bootstrap, registry)

    assert registry.state.name in created
    await verify_topic_configs(kafka_bootstrap, registry)  # does not raise
    assert await ensure_topics(kafka_bootstrap, registry) == []  # verified again, unchanged
