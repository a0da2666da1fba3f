"""``ess up``: keys and store chosen for one host, the printout, and the whole thing end to
end: the simulator flattened on a trip, a signed reset with the development key, and a
restart with the same data directory re-establishing the stop the embedded log lost."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from ess.api.protocols import EMERGENCY_STOP_KEY
from ess.clock import SystemClock
from ess.core.signing import generate_private_key, write_key_pair
from ess.gate import TradingGate, gate_feed
from ess.operator.commands import (
    manual_trip,
    outcomes_end,
    read_state,
    send_command,
    signed_reset,
    wait_for_outcome,
)
from ess.operator.up import (
    DEV_OPERATOR,
    UpError,
    UpPlan,
    choose_policy_store,
    prepare_keys,
    run_up,
    simulator_venues,
)
from ess.policystore import ClosablePolicyStore, policy_store_from_url
from ess.settings import EssSettings
from ess.sim.demo import DEMO_API_KEY, DEMO_SECRET
from ess.venues.ccxt_client import make_exchange
from schemas import ReasonCode, topic_registry
from tests.fixtures.redis import closed_port, redis_test_url, scratch_namespace
from tests.helpers import eventually

WAIT = 60.0


def settings_in(tmp_path: Path, **sections: Any) -> EssSettings:
    """Settings as a fresh host has them: no keys anywhere, no Kafka, no Redis (the
    environment of the test run does not leak in), status servers on free ports."""
    base: dict[str, Any] = {
        "kafka": {"bootstrap_servers": ""},
        "policy_store": {"redis_url": ""},
        "keys": {
            "processor_key_file": tmp_path / "nowhere" / "processor.key",
            "processor_keys_dir": tmp_path / "nowhere" / "processors",
            "operator_keys_dir": tmp_path / "nowhere" / "operators",
        },
        "command": {"status_port": 0},
        "project": {"status_port": 0, "refresh_interval_sec": 0.2},
        "execute": {"status_port": 0},
        "detect": {"status_port": 0},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return EssSettings(_env_file=None, **base)


# --------------------------------------------------------------------------- keys


def test_a_fresh_host_gets_a_processor_key_and_a_loud_development_operator(
    tmp_path: Path,
) -> None:
    data = tmp_path / ".ess"

    first = prepare_keys(settings_in(tmp_path), data)

    assert first.processor_key_file == (data / "keys" / "processor.key").resolve()
    assert [p.name for p in first.processor_keys_dir.glob("*.pub")] != []
    assert first.operators == (DEV_OPERATOR,)
    assert first.dev_key == (data / "keys" / f"{DEV_OPERATOR}.key").resolve()
    assert stat.S_IMODE(first.dev_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(first.processor_key_file.stat().st_mode) == 0o600
    assert len(first.generated) == 2

    # The next run keeps them: the same processor key signs the proof of a lost stop.
    second = prepare_keys(settings_in(tmp_path), data)
    assert second.generated == ()
    assert second.processor_key_file.read_bytes() == first.processor_key_file.read_bytes()
    assert second.dev_key == first.dev_key


def test_configured_operator_keys_mean_no_development_key(tmp_path: Path) -> None:
    operators = tmp_path / "operators"
    write_key_pair(generate_private_key(), operators, "alice")
    (operators / "alice.key").unlink()  # only the public key is installed
    settings = settings_in(tmp_path, keys={"operator_keys_dir": operators})

    keys = prepare_keys(settings, tmp_path / ".ess")

    assert keys.operators == ("alice",)
    assert keys.dev_key is None
    assert not (tmp_path / ".ess" / "keys" / f"{DEV_OPERATOR}.key").exists()
    assert keys.operator_keys_dir == operators.resolve()


def test_without_the_development_key_the_printout_says_how_to_make_one(tmp_path: Path) -> None:
    keys = prepare_keys(settings_in(tmp_path), tmp_path / ".ess", dev_operator=None)

    assert keys.operators == ()
    assert keys.dev_key is None
    plan = _plan(tmp_path, keys)
    text = "\n".join(plan.lines())
    assert "none: nobody can reset" in text
    assert "ess keygen --name <you>" in text
    assert "--operator <operator>" in text


def test_a_configured_processor_key_needs_its_public_key_where_readers_look(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "k" / "processor.key"
    write_key_pair(generate_private_key(), key_file.parent, "processor")
    settings = settings_in(
        tmp_path,
        keys={"processor_key_file": key_file, "processor_keys_dir": tmp_path / "k" / "empty"},
    )

    with pytest.raises(UpError, match="is not in"):
        prepare_keys(settings, tmp_path / ".ess")


# --------------------------------------------------------------------------- store


async def test_the_store_is_sqlite_in_the_data_directory_without_redis(tmp_path: Path) -> None:
    url, note = await choose_policy_store(settings_in(tmp_path), tmp_path / ".ess")

    assert url == f"sqlite:///{(tmp_path / '.ess' / 'policy.sqlite3').resolve()}"
    assert note is None


@pytest.mark.integration
async def test_the_store_is_redis_when_it_answers_and_sqlite_loudly_when_not(
    tmp_path: Path,
) -> None:
    async with scratch_namespace(redis_test_url()) as namespace:
        reachable = f"{redis_test_url()}?namespace={namespace}"
        url, note = await choose_policy_store(
            settings_in(tmp_path, policy_store={"redis_url": reachable}), tmp_path
        )
        assert (url, note) == (reachable, None)

    down = f"redis://127.0.0.1:{closed_port()}/0"
    url, note = await choose_policy_store(
        settings_in(tmp_path, policy_store={"redis_url": down}), tmp_path
    )
    assert url.startswith("sqlite:///")
    assert note is not None
    assert "did not answer" in note
    assert "stay closed" in note


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"roles": ("command", "trade")}, "unknown roles"),
        ({"venues_file": Path("no-such-venues.toml")}, "does not exist"),
    ],
)
async def test_what_cannot_work_is_refused_before_anything_starts(
    tmp_path: Path, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(UpError, match=match):
        await run_up(settings_in(tmp_path), data_dir=tmp_path / ".ess", **options)


async def test_an_external_kafka_cluster_is_refused(tmp_path: Path) -> None:
    settings = settings_in(tmp_path, kafka={"bootstrap_servers": "kafka.prod:9092"})

    with pytest.raises(UpError, match="KAFKA_BOOTSTRAP_SERVERS is set"):
        await run_up(settings, data_dir=tmp_path / ".ess")
    assert not (tmp_path / ".ess").exists()  # and no key was generated for it


# --------------------------------------------------------------------------- the printout


def _plan(tmp_path: Path, keys: Any, **changes: Any) -> UpPlan:
    values: dict[str, Any] = {
        "data_dir": tmp_path / ".ess",
        "bootstrap": "127.0.0.1:40000",
        "topic_prefix": "ess",
        "policy_store_url": f"sqlite:///{tmp_path}/.ess/policy.sqlite3",
        "keys": keys,
        "roles": ("command", "execute", "project"),
        "status_ports": {"command": 9466, "execute": 9465, "project": 9464},
        "simulator_url": "http://127.0.0.1:8090",
        "venues_file": tmp_path / ".ess" / "venues.toml",
        "venues": ("sim-futures", "sim-spot"),
        "log_file": tmp_path / ".ess" / "ess.log",
    }
    values.update(changes)
    return UpPlan(**values)


def test_the_printout_says_where_everything_is_and_what_to_type(tmp_path: Path) -> None:
    keys = prepare_keys(settings_in(tmp_path), tmp_path / ".ess")
    plan = _plan(
        tmp_path,
        keys,
        notes=("DEVELOPMENT ONLY: operator 'dev' ...",),
        policy_store_url="redis://ess:s3cret@127.0.0.1:6379/0",
    )

    text = "\n".join(plan.lines())

    assert text.startswith("NOTE: DEVELOPMENT ONLY")
    assert "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:40000" in text
    assert "http://127.0.0.1:8090" in text
    assert "http://127.0.0.1:9466/status" in text
    assert "redis://ess:***@127.0.0.1:6379/0" in text
    assert "s3cret" not in text  # the password is never printed
    assert "ESS_REDIS_URL" not in plan.env()
    assert f"--operator dev --key {keys.dev_key}" in text
    assert "ess status" in text
    assert 'ess trip --detail "trying the stop"' in text
    assert "keeps the state log in memory" in text
    assert plan.env()["ESS_OPERATOR_KEYS_DIR"] == str(keys.operator_keys_dir)


def test_the_simulator_venues_file_names_its_credentials_by_variable() -> None:
    text, credentials = simulator_venues("http://127.0.0.1:1")

    assert DEMO_SECRET not in text
    assert 'base_url = "http://127.0.0.1:1"' in text
    assert credentials["ESS_VENUE_SIM_FUTURES_SECRET"] == DEMO_SECRET
    assert set(credentials) == {
        "ESS_VENUE_SIM_FUTURES_API_KEY",
        "ESS_VENUE_SIM_FUTURES_SECRET",
        "ESS_VENUE_SIM_SPOT_API_KEY",
        "ESS_VENUE_SIM_SPOT_SECRET",
    }


# --------------------------------------------------------------------------- end to end


@asynccontextmanager
async def up(settings: EssSettings, data_dir: Path) -> AsyncIterator[UpPlan]:
    """``ess up`` (command, execute, project: detection is not what is tried here) until the
    block ends; the block starts with the plan it reported."""
    stop = asyncio.Event()
    ready: asyncio.Future[UpPlan] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_up(
            settings,
            data_dir=data_dir,
            roles=("command", "execute", "project"),
            stop=stop,
            on_ready=ready.set_result,
        )
    )
    try:
        await asyncio.wait({ready, task}, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        assert ready.done(), "ess up never reported ready"
        plan = ready.result()
        assert plan.ready
        yield plan
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)


def ess_status(plan: UpPlan) -> dict[str, Any]:
    """``ess status --json`` as printed, run with exactly the environment the plan prints."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ESS_", "KAFKA_"))},
        **plan.env(),
        "COLUMNS": "200",
    }
    done = subprocess.run(
        [sys.executable, "-m", "ess", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


async def futures_positions(plan: UpPlan) -> list[Any]:
    """What the simulator's futures book holds for the demo account, read over its API."""
    assert plan.simulator_url is not None
    exchange = make_exchange("binanceusdm", plan.simulator_url, DEMO_API_KEY, DEMO_SECRET)
    try:
        positions = await exchange.fetch_positions()
    finally:
        await exchange.close()
    return [p for p in positions if float(p.get("contracts") or 0) != 0]


async def executor_phases(plan: UpPlan) -> list[str]:
    import aiohttp  # noqa: PLC0415

    port = plan.status_ports["execute"]
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{plan.status_host}:{port}/status") as answer,
    ):
        document = await answer.json()
    return [venue["phase"] for venue in document["venues"]]


async def trip_and_wait(plan: UpPlan, settings: EssSettings, detail: str) -> None:
    registry = topic_registry(plan.topic_prefix)
    trust = settings.state_trust()
    start = await outcomes_end(plan.bootstrap, registry)
    trip = manual_trip(SystemClock(), detail, "desk")
    await send_command(plan.bootstrap, registry, trip)
    outcome = await wait_for_outcome(
        plan.bootstrap, registry, trip.command_id, trust=trust, from_offset=start, timeout=WAIT
    )
    assert outcome.entry_kind == "activated"


async def reset_and_wait(plan: UpPlan, settings: EssSettings) -> None:
    registry = topic_registry(plan.topic_prefix)
    trust = settings.state_trust()
    view = await read_state(plan.bootstrap, registry, trust)
    activation = view.folded.state.activation
    assert activation is not None
    assert plan.keys.dev_key is not None
    reset = signed_reset(
        SystemClock(), DEV_OPERATOR, plan.keys.dev_key, "all clear", activation=activation
    )
    start = await outcomes_end(plan.bootstrap, registry)
    await send_command(plan.bootstrap, registry, reset)
    outcome = await wait_for_outcome(
        plan.bootstrap, registry, reset.command_id, trust=trust, from_offset=start, timeout=WAIT
    )
    assert outcome.entry_kind == "reset", outcome.detail


@pytest.mark.integration
async def test_ess_up_stops_flattens_resets_and_survives_its_own_restart(
    tmp_path: Path,
) -> None:
    settings = settings_in(tmp_path)
    data_dir = tmp_path / ".ess"
    gate = TradingGate(max_record_age=5.0)
    store: Any = None
    try:
        async with up(settings, data_dir) as plan:
            assert plan.policy_store_kind == "sqlite"
            assert plan.keys.dev_key is not None
            assert any("DEVELOPMENT ONLY" in note for note in plan.notes)
            # What an operator's shell would use: the settings of the printed environment.
            reader = settings_in(
                tmp_path,
                keys={
                    "processor_keys_dir": Path(plan.env()["ESS_PROCESSOR_KEYS_DIR"]),
                    "operator_keys_dir": Path(plan.env()["ESS_OPERATOR_KEYS_DIR"]),
                },
            )
            store = policy_store_from_url(plan.policy_store_url)
            async with gate_feed(store, gate, poll_interval=0.1):
                await eventually(gate.allowed, timeout=WAIT, message=f"gate: {gate.why()}")
                assert await futures_positions(plan) != []  # the demo account holds positions
                assert (await asyncio.to_thread(ess_status, plan))["status"] == "INACTIVE"

                await trip_and_wait(plan, reader, "trying ess up")
                await eventually(lambda: not gate.allowed(), timeout=WAIT)
                await eventually(
                    lambda: _all_flat(plan), timeout=WAIT, message="simulator never flat"
                )

                await reset_and_wait(plan, reader)
                await eventually(gate.allowed, timeout=WAIT, message=f"gate: {gate.why()}")

                # Stopped again, then ess up is stopped: the record stays ACTIVE (seq 2).
                await trip_and_wait(plan, reader, "left stopped")
                await eventually(lambda: "ACTIVE" in gate.why(), timeout=WAIT)
                record = await store.get(EMERGENCY_STOP_KEY)
                assert (record["active"], record["seq"]) == (True, 2)

            # The same data directory: the keys and the SQLite record survived, the log did
            # not. The stop is re-established, verified, past the record's seq.
            async with up(settings, data_dir) as again:
                assert again.keys.generated == ()
                assert any("ESS was ACTIVE (seq 2" in note for note in again.notes)
                status = await eventually(
                    lambda: _active_status(again), timeout=WAIT, message="never ACTIVE again"
                )
                assert status["reason"] == ReasonCode.STATE_LOG_LOST.value
                assert status["activation_seq"] == 3
                assert status["detail"].startswith("the state log was lost")
                assert "left stopped" in status["detail"]
                # The executor holds it: the fresh demo account is flattened too.
                await eventually(lambda: _all_flat(again), timeout=WAIT)

                async with gate_feed(store, gate, poll_interval=0.1):
                    await eventually(lambda: "ACTIVE" in gate.why(), timeout=WAIT)
                    await reset_and_wait(again, reader)
                    await eventually(gate.allowed, timeout=WAIT, message=f"gate: {gate.why()}")
                assert (await asyncio.to_thread(ess_status, again))["status"] == "INACTIVE"
    finally:
        if isinstance(store, ClosablePolicyStore):
            await store.close()


async def _all_flat(plan: UpPlan) -> bool:
    assert await futures_positions(plan) == []
    phases = await executor_phases(plan)
    assert phases == ["FLAT", "FLAT"], phases
    return True


async def _active_status(plan: UpPlan) -> dict[str, Any]:
    status = await asyncio.to_thread(ess_status, plan)
    assert status["status"] == "ACTIVE", status
    return status
