"""The Python gate against the language-neutral conformance fixtures (``tests/gate/conformance``).

Each fixture is a sequence of steps: at a wall-clock instant the gate reads the stored bytes
(or finds no key, or fails to read, or does not read at all) and must then answer
allowed/closed for the stated reason (``docs/gate-protocol.md``). Every case is played through
the real decision path: a :class:`~ess.gate.PolicyStoreGateFeed` reading a store that decodes
the stored bytes with the PolicyStore codec, into a :class:`~ess.gate.TradingGate` on a manual
clock. The Redis tests play the same fixtures against real Redis (raw bytes SET under a scratch
namespace, a real refused connection for failed reads) and one through a started
:class:`~ess.gate.RedisGateFeed`. A last test checks the committed files against the generator.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from ess.api.protocols import EMERGENCY_STOP_KEY
from ess.clock import ManualClock
from ess.gate import GateState, GateStatus, PolicyStoreGateFeed, RedisGateFeed, TradingGate
from ess.policystore import CHANNEL, PolicyStoreUnavailable, RedisPolicyStore
from ess.policystore.base import decode_value
from schemas import ReasonCode
from tests.fixtures.redis import closed_port, redis_test_url, scratch_namespace
from tests.gate.conformance import generate
from tests.helpers import eventually

CONFORMANCE_DIR = Path(__file__).parent / "conformance"
CASE_FILES = sorted(CONFORMANCE_DIR.glob("*.json"))
READ_KINDS = {"value", "missing", "error", "none"}


def load(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return case


def stored_bytes(step: Mapping[str, Any]) -> bytes:
    """The bytes Redis holds in a ``value`` step (``value_b64`` is authoritative)."""
    raw = base64.b64decode(step["value_b64"], validate=True)
    if step["value_text"] is not None:
        assert raw == step["value_text"].encode("utf-8"), "value_text disagrees with value_b64"
    return raw


def reason_code(status: GateStatus) -> str:
    """The protocol's reason code for what the Python gate says."""
    state, why = status.state, status.reason
    simple = {
        GateState.OPEN: "open",
        GateState.ACTIVE: "active",
        GateState.NO_RECORD: "no_record",
        GateState.STALE: "stale",
    }
    if state in simple:
        return simple[state]
    if state is GateState.FAILED:
        # A stored value that is not one JSON object is a read failure for the codec.
        return "unparsable" if "CorruptPolicyValue" in why else "read_failed"
    if state is GateState.INVALID:
        for prefix, code in (
            ("unreadable record", "invalid"),
            ("clock skew", "future"),
            ("inactive record (seq", "seq_regression"),
        ):
            if why.startswith(prefix):
                return code
    raise AssertionError(f"no reason code for {state.value}: {why}")


class SteppedTime:
    """The gate's wall clock and a monotonic clock that follows it, moved step by step."""

    def __init__(self, start: datetime) -> None:
        self.start = start
        self.clock = ManualClock(start)

    def monotonic(self) -> float:
        # Small numbers keep float arithmetic exact at the fixtures' boundaries.
        return 1_000.0 + (self.clock.now() - self.start).total_seconds()

    def set(self, when: datetime) -> None:
        self.clock.set(when)


def gate_for(case: Mapping[str, Any], time: SteppedTime) -> TradingGate:
    params = case["params"]
    return TradingGate(
        max_record_age=params["max_record_age_s"],
        max_clock_skew=params["max_clock_skew_s"],
        clock=time.clock,
        monotonic=time.monotonic,
        name=f"conformance-{case['case']}",
    )


@dataclass
class Harness:
    """How one store backend plays a step: ``put`` stores bytes (``None``: delete the key);
    ``feed`` reads the store, ``failing_feed`` a store whose read fails."""

    put: Callable[[bytes | None], Awaitable[None]]
    feed: PolicyStoreGateFeed
    failing_feed: PolicyStoreGateFeed


async def play(case: Mapping[str, Any], harness: Harness, time: SteppedTime) -> None:
    """Play every step of ``case`` and assert the gate's answer after each."""
    gate = harness.feed.gate
    for number, step in enumerate(case["steps"]):
        time.set(datetime.fromisoformat(step["now"]))
        kind = step["read"]
        if kind == "value":
            await harness.put(stored_bytes(step))
            await harness.feed.refresh()
        elif kind == "missing":
            await harness.put(None)
            await harness.feed.refresh()
        elif kind == "error":
            await harness.failing_feed.refresh()
        else:
            assert kind == "none", kind
        status = gate.status()
        got = {"allowed": gate.allowed(), "reason": reason_code(status)}
        assert status.allowed is got["allowed"]
        assert got == step["expect"], (
            f"{case['case']} step {number} ({step.get('note') or kind}): gate says "
            f"{status.reason!r}"
        )


# ---------------------------------------------------------------------- in-process store


class ScriptedStore:
    """A PolicyStore holding raw stored bytes, decoded on every read with the same codec the
    Redis and SQLite adapters use (so "not a JSON object" fails the read exactly as there)."""

    def __init__(self) -> None:
        self.raw: bytes | None = None

    async def get(self, key: str) -> Mapping[str, Any] | None:
        raw = self.raw
        return None if raw is None else decode_value(key, raw, "conformance store")

    async def set(self, key: str, value: Mapping[str, Any]) -> None:
        raise AssertionError("the gate never writes")


class UnreachableStore:
    """A PolicyStore whose every read fails the way an unreachable backend does."""

    async def get(self, key: str) -> Mapping[str, Any] | None:
        raise PolicyStoreUnavailable("conformance: connection refused")

    async def set(self, key: str, value: Mapping[str, Any]) -> None:
        raise AssertionError("the gate never writes")


@pytest.mark.parametrize("path", CASE_FILES, ids=[path.stem for path in CASE_FILES])
async def test_python_gate_when_fixture_played_then_answers_as_expected(path: Path) -> None:
    case = load(path)
    time = SteppedTime(datetime.fromisoformat(case["steps"][0]["now"]))
    gate = gate_for(case, time)
    store = ScriptedStore()

    async def put(raw: bytes | None) -> None:
        store.raw = raw

    harness = Harness(
        put, PolicyStoreGateFeed(store, gate), PolicyStoreGateFeed(UnreachableStore(), gate)
    )

    await play(case, harness, time)


# ---------------------------------------------------------------------- the protocol, from the doc


#: The reason codes as docs/gate-protocol.md lists them (checked against ``ReasonCode`` below).
REASON_CODES = frozenset(
    [
        "daily_loss",
        "equity_drawdown",
        "flash_crash",
        "system_critical",
        "heartbeat_lost",
        "exchange_disconnected",
        "data_feed_corrupt",
        "data_feed_stale",
        "execution_errors",
        "latency_spike",
        "policy_store_stale",
        "trade_rate",
        "stop_loss_cluster",
        "order_rejects",
        "position_size_anomaly",
        "api_key_invalid",
        "api_key_changed",
        "unauthorized_access",
        "environment_modified",
        "manual",
        "state_log_lost",
    ]
)
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})")


def _instant(value: Any) -> datetime | None:
    if not isinstance(value, str) or not RFC3339.fullmatch(value):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:  # an impossible date or offset
        return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _valid(rec: dict[str, Any]) -> bool:
    """The member table of docs/gate-protocol.md, section 2."""
    return (
        isinstance(rec.get("active"), bool)
        and "reason" in rec
        and (rec["reason"] is None or rec["reason"] in REASON_CODES)
        and _instant(rec.get("timestamp")) is not None
        and rec.get("auto_recover", False) is False
        and (rec.get("seq") is None or (_is_int(rec["seq"]) and rec["seq"] >= 0))
        and isinstance(rec.get("detail", ""), str)
        and len(rec.get("detail", "")) <= 4096
        and (rec.get("refreshed_at") is None or _instant(rec["refreshed_at"]) is not None)
    )


def _refuse(name: str) -> Any:
    raise ValueError(name)


class DocGate:
    """docs/gate-protocol.md, section 6, transcribed with the standard library only: proof
    that the page (not pydantic) is enough to pass the fixtures."""

    def __init__(self, max_age_s: float, skew_s: float) -> None:
        self.skew = timedelta(seconds=skew_s)
        self.limit = timedelta(seconds=max_age_s) - self.skew
        self.highest_active_seq: int | None = None
        self.open_until: timedelta | None = None  # monotonic; None is -infinity
        self.reason = "pending"

    def allowed(self, mono: timedelta) -> bool:
        return self.open_until is not None and mono < self.open_until

    def read(self, reply: bytes | Exception | None, now: datetime, mono: timedelta) -> None:
        self.reason, left = self.decide(reply, now)
        self.open_until = None if left is None else mono + left

    def decide(
        self, reply: bytes | Exception | None, now: datetime
    ) -> tuple[str, timedelta | None]:
        if isinstance(reply, Exception):
            return "read_failed", None
        if reply is None:
            return "no_record", None
        try:
            rec = json.loads(reply.decode("utf-8"), parse_constant=_refuse)
        except ValueError:  # UnicodeDecodeError and JSONDecodeError included
            return "unparsable", None
        if not isinstance(rec, dict):
            return "unparsable", None
        if not _valid(rec):
            return "invalid", None
        seq = rec.get("seq")
        if rec["active"]:
            if seq is not None:
                self.highest_active_seq = max(self.highest_active_seq or 0, seq)
            return "active", None
        if self.highest_active_seq is not None and (seq is None or seq <= self.highest_active_seq):
            return "seq_regression", None
        refreshed = rec.get("refreshed_at")
        seen = _instant(refreshed if refreshed is not None else rec["timestamp"])
        assert seen is not None  # _valid checked it
        age = now - seen
        if age < -self.skew:
            return "future", None
        left = self.limit - max(age, timedelta(0))
        if left <= timedelta(0):
            return "stale", None
        return "open", left


@pytest.mark.parametrize("path", CASE_FILES, ids=[path.stem for path in CASE_FILES])
def test_gate_written_from_the_doc_when_fixture_played_then_answers_as_expected(
    path: Path,
) -> None:
    case = load(path)
    params = case["params"]
    gate = DocGate(params["max_record_age_s"], params["max_clock_skew_s"])
    start = datetime.fromisoformat(case["steps"][0]["now"])
    for number, step in enumerate(case["steps"]):
        now = datetime.fromisoformat(step["now"])
        mono = now - start
        replies: dict[str, bytes | Exception | None] = {
            "missing": None,
            "error": ConnectionRefusedError("conformance"),
        }
        if step["read"] == "value":
            gate.read(stored_bytes(step), now, mono)
        elif step["read"] in replies:
            gate.read(replies[step["read"]], now, mono)
        elif gate.reason == "open" and not gate.allowed(mono):
            gate.reason = "stale"  # an open verdict that expired without a new read
        got = {"allowed": gate.allowed(mono), "reason": gate.reason}
        assert got == step["expect"], f"{case['case']} step {number}"


# ---------------------------------------------------------------------- the fixture set itself


def test_fixtures_when_regenerated_then_identical_to_committed_files() -> None:
    expected = generate.build()
    committed = {path.name: path.read_text(encoding="utf-8") for path in CASE_FILES}

    assert sorted(committed) == sorted(expected), "run tests/gate/conformance/generate.py"
    stale = [name for name in expected if committed[name] != expected[name]]
    assert stale == [], f"out of date (run tests/gate/conformance/generate.py): {stale}"


def test_fixtures_when_read_then_well_formed_and_cover_every_reason_and_read_kind() -> None:
    reasons: set[str] = set()
    kinds: set[str] = set()
    for path in CASE_FILES:
        case = load(path)
        assert case["format"] == generate.FORMAT
        assert case["case"] == path.stem
        assert case["key"] == EMERGENCY_STOP_KEY
        instants = [datetime.fromisoformat(step["now"]) for step in case["steps"]]
        assert instants == sorted(instants), f"{path.name}: time runs backwards"
        for step in case["steps"]:
            assert step["read"] in READ_KINDS
            assert step["expect"]["allowed"] is (step["expect"]["reason"] == "open")
            kinds.add(step["read"])
            reasons.add(step["expect"]["reason"])
            if step["read"] == "value":
                stored_bytes(step)

    assert reasons == set(generate.REASONS)
    assert kinds == READ_KINDS
    assert len(CASE_FILES) >= 40


def test_doc_when_reason_codes_listed_then_exactly_the_contracts() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "gate-protocol.md").read_text(encoding="utf-8")
    listed = doc.split("Reason codes:", 1)[1].split("\n\n", 1)[0]

    assert set(re.findall(r"`([a-z_]+)`", listed)) == {code.value for code in ReasonCode}
    assert {code.value for code in ReasonCode} == REASON_CODES


# ---------------------------------------------------------------------- real Redis


@pytest.fixture
async def redis_namespace() -> AsyncIterator[str]:
    async with scratch_namespace(redis_test_url()) as namespace:
        yield namespace


@pytest.fixture
async def raw_redis() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_test_url(), socket_timeout=2)
    yield client
    await client.aclose()


@pytest.mark.integration
async def test_redis_store_when_every_fixture_played_then_same_answers(
    redis_namespace: str, raw_redis: aioredis.Redis
) -> None:
    unreachable = f"redis://127.0.0.1:{closed_port()}/0"
    for path in CASE_FILES:
        case = load(path)
        namespace = f"{redis_namespace}{case['case']}:"
        time = SteppedTime(datetime.fromisoformat(case["steps"][0]["now"]))
        gate = gate_for(case, time)

        async def put(raw: bytes | None, key: str = f"{namespace}{EMERGENCY_STOP_KEY}") -> None:
            if raw is None:
                await raw_redis.delete(key)
            else:
                await raw_redis.set(key, raw)  # the exact bytes, whatever they are

        async with (
            RedisPolicyStore(redis_test_url(), namespace=namespace) as store,
            RedisPolicyStore(unreachable, namespace=namespace, timeout=0.5) as down,
        ):
            harness = Harness(
                put, PolicyStoreGateFeed(store, gate), PolicyStoreGateFeed(down, gate)
            )
            await play(case, harness, time)


@pytest.mark.integration
async def test_redis_gate_feed_when_fixture_written_then_same_verdicts(
    redis_namespace: str, raw_redis: aioredis.Redis
) -> None:
    """``active-after-open`` through a started RedisGateFeed: the first read opens, the
    active record closes the gate on its write notification."""
    case = load(CONFORMANCE_DIR / "active-after-open.json")
    first, second = case["steps"]
    time = SteppedTime(datetime.fromisoformat(first["now"]))
    gate = gate_for(case, time)
    key = f"{redis_namespace}{EMERGENCY_STOP_KEY}"
    await raw_redis.set(key, stored_bytes(first))

    async with (
        RedisPolicyStore(redis_test_url(), namespace=redis_namespace) as store,
        RedisGateFeed(store, gate, poll_interval=3600) as feed,
    ):
        assert {"allowed": gate.allowed(), "reason": reason_code(gate.status())} == first["expect"]
        await eventually(lambda: feed.subscribed, timeout=5)

        time.set(datetime.fromisoformat(second["now"]))
        await raw_redis.set(key, stored_bytes(second))
        await raw_redis.publish(f"{redis_namespace}{CHANNEL}", EMERGENCY_STOP_KEY)
        await eventually(lambda: not gate.allowed(), timeout=5)

    assert {"allowed": gate.allowed(), "reason": reason_code(gate.status())} == second["expect"]
