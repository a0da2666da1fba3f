"""`ess worker` as operators run it: real processes, the embedded broker and real Redis.

Trip -> PolicyStore record ACTIVE in Redis and one stop event; kill every process and start
again -> still ACTIVE, no event republished; signed reset (bound to the activation read from
the verified state log) -> INACTIVE and a reset event.

With an external broker the worker needs the command processor's key
(``ESS_PROCESSOR_KEY_FILE``); every worker's command-processor status server is off
(``ESS_COMMAND_STATUS_PORT=-1``) so that workers of parallel tests do not collide.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ess.clock import SystemClock
from ess.core.attestation import SigningKey, trusted_keys
from ess.core.reader import Trust
from ess.core.signing import generate_private_key, public_bytes, write_key_pair
from ess.kafka.clients import read_to_end
from ess.operator.commands import manual_trip, read_state, send_command, signed_reset
from ess.policystore import RedisPolicyStore
from ess.sim import ExchangeSimulator
from ess.sim.demo import DEMO_API_KEY, DEMO_SECRET, seed_demo
from schemas import EmergencyEvent, TopicRegistry, decode
from tests.fixtures.redis import redis_test_url, scratch_namespace
from tests.helpers import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def namespace() -> AsyncIterator[str]:
    async with scratch_namespace(redis_test_url()) as ns:
        yield ns


@contextmanager
def worker(
    env: dict[str, str], log: Path, roles: tuple[str, ...] = ("command", "project")
) -> Iterator[subprocess.Popen[bytes]]:
    role_args = [arg for role in roles for arg in ("--role", role)]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ess.operator.cli", "worker", *role_args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def processor_key_env(directory: Path) -> tuple[dict[str, str], SigningKey]:
    """A processor key pair as `ess keygen --processor` lays it out, and the settings that
    point a worker at it."""
    key = SigningKey(generate_private_key())
    paths = write_key_pair(key.private, directory, "processor")
    trusted = directory / "processors"
    trusted.mkdir()
    paths.public.rename(trusted / f"{key.key_id}.pub")
    env = {
        "ESS_PROCESSOR_KEY_FILE": str(paths.private),
        "ESS_PROCESSOR_KEYS_DIR": str(trusted),
        "ESS_COMMAND_STATUS_PORT": "-1",
    }
    return env, key


async def events(bootstrap: str, registry: TopicRegistry) -> list[Any]:
    records = await read_to_end(bootstrap, registry.events.name)
    return [decode(EmergencyEvent, r.value) for r in records if r.value]


async def test_worker_trip_restart_and_reset_end_to_end(
    kafka_bootstrap: str, registry: TopicRegistry, namespace: str, tmp_path: Path
) -> None:
    alice = generate_private_key()
    keys = write_key_pair(alice, tmp_path / "operators", "alice")
    key_env, processor_key = processor_key_env(tmp_path / "keys")
    trust = Trust(
        scope=registry.state.name,
        processor_keys=trusted_keys([processor_key.public]),
        operator_keys={"alice": public_bytes(alice)},
    )
    redis_url = f"{redis_test_url()}?namespace={namespace}"
    env = {
        **os.environ,
        **key_env,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ESS_TOPIC_PREFIX": registry.prefix,
        "ESS_REDIS_URL": redis_url,
        "ESS_OPERATOR_KEYS_DIR": str(tmp_path / "operators"),
        "ESS_REFRESH_INTERVAL_SEC": "0.2",
        "ESS_STATUS_PORT": "-1",
    }
    store = RedisPolicyStore(redis_test_url(), namespace=namespace)
    log = tmp_path / "worker.log"

    async def record() -> dict[str, Any] | None:
        value = await store.get("emergency_stop")
        return dict(value) if value is not None else None

    try:
        with worker(env, log):
            first = await eventually(record, timeout=30, message=f"no record; {log}")
            assert first["active"] is False

            trip = manual_trip(SystemClock(), "e2e: desk pulled the plug", "carol")
            await send_command(kafka_bootstrap, registry, trip)
            active = await eventually(
                lambda: _active(record), timeout=30, message="record never went ACTIVE"
            )
            assert (active["reason"], active["auto_recover"], active["seq"]) == ("manual", False, 0)
            stop_events = await eventually(lambda: events(kafka_bootstrap, registry), timeout=10)
            assert [e.type for e in stop_events] == ["emergency.stop"]

        # Every ESS process is gone (SIGKILL). A new one must come back ACTIVE.
        with worker(env, log) as second:
            refreshed_before = active["refreshed_at"]
            again = await eventually(
                lambda: _refreshed_after(record, refreshed_before),
                timeout=40,
                message="restarted worker never refreshed the record",
            )
            assert again["active"] is True
            assert again["timestamp"] == active["timestamp"]

            view = await read_state(kafka_bootstrap, registry, trust)
            assert view.folded.trusted
            activation = view.folded.state.activation
            assert activation is not None
            assert activation.command_id == trip.command_id
            reset = signed_reset(
                SystemClock(), "alice", keys.private, "e2e: all clear", activation=activation
            )
            await send_command(kafka_bootstrap, registry, reset)
            inactive = await eventually(
                lambda: _inactive(record), timeout=40, message="reset never applied"
            )
            assert inactive["seq"] == 1
            all_events = await eventually(
                lambda: _two(events(kafka_bootstrap, registry)), timeout=10
            )
            assert [e.type for e in all_events] == ["emergency.stop", "emergency.reset"]
            assert all_events[1].reset_by == "alice"

            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=30) == 0, log.read_text()[-2000:]
    finally:
        await store.close()


async def _active(record: Any) -> dict[str, Any] | None:
    value = await record()
    return value if value and value["active"] else None


async def _inactive(record: Any) -> dict[str, Any] | None:
    value = await record()
    return value if value and not value["active"] and value.get("seq") == 1 else None


async def _refreshed_after(record: Any, before: str) -> dict[str, Any] | None:
    value = await record()
    return value if value and value["refreshed_at"] > before else None


async def _two(pending: Any) -> list[Any] | None:
    found = await pending
    return found if len(found) >= 2 else None


async def test_worker_execute_role_flattens_every_venue_on_a_trip(
    kafka_bootstrap: str, registry: TopicRegistry, tmp_path: Path
) -> None:
    async with ExchangeSimulator() as sim:
        account = seed_demo(sim)
        venues = tmp_path / "venues.toml"
        venues.write_text(
            "[[venues]]\n"
            'name = "futures"\nexchange = "binanceusdm"\n'
            f'base_url = "{sim.url}"\ncountdown_symbols = ["BTCUSDT"]\n\n'
            "[[venues]]\n"
            f'name = "spot"\nexchange = "binance"\nbase_url = "{sim.url}"\n'
        )
        key_env, _ = processor_key_env(tmp_path / "keys")
        env = {
            **os.environ,
            **key_env,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "ESS_TOPIC_PREFIX": registry.prefix,
            "ESS_VENUES_FILE": str(venues),
            "ESS_VENUE_FUTURES_API_KEY": DEMO_API_KEY,
            "ESS_VENUE_FUTURES_SECRET": DEMO_SECRET,
            "ESS_VENUE_SPOT_API_KEY": DEMO_API_KEY,
            "ESS_VENUE_SPOT_SECRET": DEMO_SECRET,
            "ESS_EXECUTOR_STATUS_PORT": "-1",
            "ESS_STATUS_PORT": "-1",
        }
        log = tmp_path / "worker.log"
        with worker(env, log, roles=("command", "execute")) as proc:
            # While ESS is INACTIVE the venue's own dead-man's switch is kept armed.
            await eventually(lambda: sim.countdowns(account), timeout=30, message=str(log))
            assert sim.positions(account)  # and nothing is touched

            trip = manual_trip(SystemClock(), "e2e: flatten everything", "carol")
            await send_command(kafka_bootstrap, registry, trip)

            def flat() -> bool:
                assert sim.positions(account) == {}
                assert sim.open_orders(account) == []
                assert sum(sim.spot_balance(account, "BTC")) == 0
                assert sum(sim.spot_balance(account, "ETH")) == 0
                return True

            await eventually(flat, timeout=30, message=str(log))
            # The executor confirms with a fresh read after the venue went flat.
            await eventually(lambda: "verified_flat" in log.read_text(), timeout=10)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, log.read_text()[-2000:]
        assert DEMO_SECRET not in log.read_text()


def test_the_execute_role_refuses_to_start_without_venues(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESS_VENUES")}
    done = subprocess.run(
        [sys.executable, "-m", "ess.operator.cli", "worker", "--role", "execute"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "ESS_VENUES_FILE" in done.stderr


def test_a_worker_on_an_external_broker_refuses_to_start_without_a_processor_key(
    kafka_bootstrap: str, registry: TopicRegistry, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ESS_TOPIC_PREFIX": registry.prefix,
        "ESS_PROCESSOR_KEY_FILE": str(tmp_path / "missing.key"),
        "ESS_COMMAND_STATUS_PORT": "-1",
        "ESS_STATUS_PORT": "-1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "ess.operator.cli", "worker", "--role", "command"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "ess keygen --processor" in done.stderr
