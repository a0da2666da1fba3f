"""The lost state log, end to end: ``ess worker`` on its embedded broker with Redis.

The embedded broker keeps nothing on disk. A worker that is stopped together with its broker
leaves Redis holding the ACTIVE ``emergency_stop`` record, and the next worker starts on an
empty ``ess.state``. Before ESS knew about this, ``ess status`` then said INACTIVE, the
projector refused to replace the ACTIVE record (gates closed for good) and nothing said how
to recover. Now the command processor reads the PolicyStore before it serves, finds the
record's signed activation beyond the log's end and re-establishes the stop (reason
``state_log_lost``) with the ``seq`` carried past the record's, so that ``ess status``, the
record and the gates agree, and a signed reset opens the gates again, including a gate that
lived through both workers and saw the old record's ``seq``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from ess.api.protocols import EMERGENCY_STOP_KEY
from ess.clock import SystemClock
from ess.core.attestation import SigningKey, seal_problem, trusted_keys
from ess.core.reader import Trust
from ess.core.signing import generate_private_key, public_bytes, write_key_pair
from ess.gate import TradingGate, gate_feed
from ess.operator.commands import (
    manual_trip,
    read_state,
    send_command,
    signed_reset,
    state_summary,
)
from ess.policystore import RedisPolicyStore
from ess.roles.worker import run_worker
from ess.settings import EssSettings
from schemas import ReasonCode
from tests.fixtures.redis import redis_test_url, scratch_namespace
from tests.helpers import eventually

pytestmark = pytest.mark.integration

WAIT = 40.0


@pytest.fixture
async def namespace() -> AsyncIterator[str]:
    async with scratch_namespace(redis_test_url()) as ns:
        yield ns


def worker_settings(tmp_path: Path, namespace: str) -> tuple[EssSettings, Trust, Path]:
    """Settings of a worker on its own embedded broker (``bootstrap_servers`` empty, whatever
    the environment says), a processor key that outlives it, operator ``alice``, Redis under
    ``namespace``. Returns the settings, what a reader trusts and alice's private key."""
    keys = tmp_path / "keys"
    processor = SigningKey(generate_private_key())
    paths = write_key_pair(processor.private, keys, "processor")
    (keys / "processors").mkdir()
    paths.public.rename(keys / "processors" / f"{processor.key_id}.pub")
    alice = generate_private_key()
    alice_paths = write_key_pair(alice, keys / "operators", "alice")
    settings = EssSettings(
        _env_file=None,
        kafka={"bootstrap_servers": "", "topic_prefix": "ess"},
        policy_store={"redis_url": f"{redis_test_url()}?namespace={namespace}"},
        keys={
            "processor_key_file": paths.private,
            "processor_keys_dir": keys / "processors",
            "operator_keys_dir": keys / "operators",
        },
        command={"status_port": -1},
        project={"status_port": -1, "refresh_interval_sec": 0.2},
    )
    trust = Trust(
        scope=settings.registry().state.name,
        processor_keys=trusted_keys([processor.public]),
        operator_keys={"alice": public_bytes(alice)},
    )
    return settings, trust, alice_paths.private


class Worker:
    """``run_worker`` in this process: roles command and project on a fresh embedded broker."""

    def __init__(self, settings: EssSettings) -> None:
        self.settings = settings
        self.stop = asyncio.Event()
        self.bootstrap = ""
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Worker:
        ready = asyncio.Event()

        def on_ready(bootstrap: str) -> None:
            self.bootstrap = bootstrap
            ready.set()

        self.task = asyncio.create_task(
            run_worker(self.settings, ("command", "project"), self.stop, on_ready=on_ready)
        )
        await eventually(lambda: ready.is_set() or self.task.done(), timeout=WAIT)  # type: ignore[union-attr]
        if self.task.done():
            self.task.result()
        return self

    async def __aexit__(self, *_: object) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, WAIT)


def stored(store: RedisPolicyStore) -> Callable[[], Awaitable[dict[str, Any]]]:
    async def read() -> dict[str, Any]:
        value = await store.get(EMERGENCY_STOP_KEY)
        assert value is not None, "no record yet"
        return dict(value)

    return read


async def test_a_worker_restarted_without_its_log_re_establishes_the_stop_and_a_reset_works(
    tmp_path: Path, namespace: str
) -> None:
    settings, trust, alice_key = worker_settings(tmp_path, namespace)
    registry = settings.registry()
    store = RedisPolicyStore(redis_test_url(), namespace=namespace)
    record = stored(store)
    gate = TradingGate(max_record_age=5.0)
    try:
        async with gate_feed(store, gate, poll_interval=0.1):
            # First worker: two trips, so the record's seq (1) is beyond a fresh log's first.
            async with Worker(settings) as first:
                await eventually(
                    lambda: _matches(record, active=False), timeout=WAIT, message="no record"
                )
                trips = [
                    manual_trip(SystemClock(), detail, "carol")
                    for detail in ("desk saw a fat finger", "and another one")
                ]
                for trip in trips:
                    await send_command(first.bootstrap, registry, trip)
                await eventually(lambda: _matches(record, active=True, seq=1), timeout=WAIT)
                await eventually(lambda: "ACTIVE" in gate.why(), timeout=WAIT)

            # The worker and its broker are gone: the log with them. Redis still says ACTIVE.
            assert (await record())["seq"] == 1

            async with Worker(settings) as second:
                view = await eventually(
                    lambda: _active_state(second.bootstrap, settings, trust), timeout=WAIT
                )
                summary = state_summary(view.folded)
                assert summary["status"] == "ACTIVE"
                assert summary["reason"] == ReasonCode.STATE_LOG_LOST.value
                assert summary["trusted"] is True
                # The new log continues past the record's seq: gates see a newer activation.
                assert summary["activation_seq"] == 2
                # The detail names what was carried over: the record's seq and its verified
                # activation (the first trip).
                assert summary["detail"].startswith("the state log was lost: it ends before seq 1")
                assert trips[0].command_id in summary["detail"]
                assert "desk saw a fat finger" in summary["detail"]

                # The record, the status and the gate agree: ACTIVE at seq 2, re-established.
                again = await eventually(lambda: _matches(record, active=True, seq=2), timeout=WAIT)
                assert again["reason"] == ReasonCode.STATE_LOG_LOST.value
                proof = again["activation_entry"]
                assert seal_problem(proof, trust.processor_keys, scope=registry.state.name) is None
                assert not gate.allowed()

                # A signed reset of the re-established activation ends it, and the gate that
                # saw seq 1 in the first worker's time opens on the reset at seq 3.
                activation = view.folded.state.activation
                assert activation is not None
                reset = signed_reset(
                    SystemClock(), "alice", alice_key, "log lost, all clear", activation=activation
                )
                await send_command(second.bootstrap, registry, reset)
                await eventually(lambda: _matches(record, active=False, seq=3), timeout=WAIT)
                await eventually(gate.allowed, timeout=WAIT, message=f"gate: {gate.why()}")
                after = await read_state(second.bootstrap, registry, trust)
                assert state_summary(after.folded)["status"] == "INACTIVE"
    finally:
        await store.close()


async def _matches(
    read: Callable[[], Awaitable[dict[str, Any]]], *, active: bool, seq: int | None = None
) -> dict[str, Any]:
    value = await read()
    assert value["active"] is active, value
    if seq is not None:
        assert value["seq"] == seq, value
    return value


async def _active_state(bootstrap: str, settings: EssSettings, trust: Trust) -> Any:
    view = await read_state(bootstrap, settings.registry(), trust)
    assert view.folded.state.active, state_summary(view.folded)
    return view
