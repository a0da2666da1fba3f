"""policy_store_from_url: one URL setting picks the adapter, anything else is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from ess.policystore import (
    InMemoryPolicyStore,
    RedisPolicyStore,
    SQLitePolicyStore,
    policy_store_from_url,
)


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://cache.internal:6380/2", "REDIS://host/0"]
)
async def test_from_url_when_redis_scheme_then_redis_store_with_empty_namespace(url: str) -> None:
    store = policy_store_from_url(url)

    assert isinstance(store, RedisPolicyStore)
    assert store.namespace == ""
    assert store.redis_key("emergency_stop") == "emergency_stop"
    await store.close()


async def test_from_url_when_namespace_query_then_namespace_applied_and_not_passed_on() -> None:
    store = policy_store_from_url(
        "redis://127.0.0.1:6379/0?namespace=blue:&health_check_interval=5"
    )

    assert isinstance(store, RedisPolicyStore)
    assert store.namespace == "blue:"
    assert store.channel == "blue:ess:policy"
    assert store.url == "redis://127.0.0.1:6379/0?health_check_interval=5"
    await store.close()


def test_from_url_when_sqlite_relative_then_relative_path() -> None:
    store = policy_store_from_url("sqlite:///var/ess/policy.db")

    assert isinstance(store, SQLitePolicyStore)
    assert store.path == Path("var/ess/policy.db")


def test_from_url_when_sqlite_four_slashes_then_absolute_path(tmp_path: Path) -> None:
    store = policy_store_from_url(f"sqlite:///{tmp_path}/policy.db")

    assert isinstance(store, SQLitePolicyStore)
    assert store.path == tmp_path / "policy.db"
    assert store.path.is_absolute()


def test_from_url_when_create_is_off_then_sqlite_never_creates_the_file(tmp_path: Path) -> None:
    created = policy_store_from_url(f"sqlite:///{tmp_path}/policy.db")
    looking = policy_store_from_url(f"sqlite:///{tmp_path}/policy.db", create=False)

    assert isinstance(created, SQLitePolicyStore)
    assert isinstance(looking, SQLitePolicyStore)
    assert created.create is True
    assert looking.create is False


def test_from_url_when_memory_then_fresh_in_memory_store() -> None:
    first, second = policy_store_from_url("memory://"), policy_store_from_url("memory://")

    assert isinstance(first, InMemoryPolicyStore)
    assert first is not second


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("postgres://db/ess", "unsupported policy store URL 'postgres://db/ess'"),
        ("/var/ess/policy.db", "unsupported"),
        ("http://redis:6379", "unsupported"),
        ("sqlite://", "SQLite URLs look like"),
        ("sqlite://host/policy.db", "SQLite URLs look like"),
        ("sqlite:///policy.db?timeout=5", "no query"),
        ("sqlite:///", "names no database file"),
        ("sqlite:///:memory:", "names no database file"),
        ("memory://shared", "takes no host"),
        ("redis:///0", "names no Redis host"),
        ("redis://h:6379/0?namespace=a&namespace=b", "namespace twice"),
    ],
)
def test_from_url_when_url_not_supported_then_raises_value_error_naming_it(
    url: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        policy_store_from_url(url)


def test_from_url_when_unsupported_url_has_password_then_error_hides_it() -> None:
    with pytest.raises(ValueError, match="expected redis://") as caught:
        policy_store_from_url("amqp://ess:hunter2@mq:5672/")

    assert "hunter2" not in str(caught.value)
    assert "ess:***@mq:5672" in str(caught.value)
