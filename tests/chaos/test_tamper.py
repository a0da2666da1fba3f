"""The state tampering phase's own instruments, without a broker: the weak-key check refuses
what it must and accepts what it must not refuse, and the size-limit records sit exactly at
(or one past) the contract's limits with genuine signatures, so that only their size decides.

The phase itself runs in the quick forgery campaign (``test_forgery.py``)."""

from __future__ import annotations

import base64
import math
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ess.chaos import tamper
from ess.core.signing import (
    canonical_reset_bytes,
    generate_private_key,
    public_bytes,
    public_key_text,
    verify_reset,
)
from ess.gate import TradingGate
from ess.roles.command.processor import decode_command
from schemas import IDENT_MAX, TEXT_MAX, RecordError, ResetCommand, TripCommand

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("case", sorted(tamper.weak_key_cases()))
async def test_every_weak_or_shared_key_is_refused_by_the_policy_and_the_processor(
    tmp_path: Path, case: str
) -> None:
    files = tamper.weak_key_cases()[case]
    assert await tamper.weak_key_refused(tmp_path / "keys", files) == []


async def test_the_check_reports_keys_that_are_accepted(tmp_path: Path) -> None:
    """Three distinct, honest keys: the policy takes them, and the processor gets past them
    (to fail on the unreachable broker): the check is not vacuous."""
    files = {f"{name}.pub": public_key_text(generate_private_key()) for name in ("a", "b", "c")}
    accepted = await tamper.weak_key_refused(tmp_path / "keys", files)
    assert accepted == ["reset_policy", "processor start (got past the keys)"]


def test_size_limit_records_are_at_or_one_past_the_limits_with_genuine_signatures() -> None:
    keys = {name: generate_private_key() for name in ("alice", "bob")}
    activation = (7, "trip-7")
    probes = tamper.size_limit_probes(keys, activation, T0, "t")
    assert {probe.expect for probe in probes} == {"trip", "refused", "approval", "stop"}
    names = [probe.name for probe in probes]
    assert len(names) == len(set(names))
    for probe in probes:
        if probe.expect == "stop":
            with pytest.raises(RecordError):
                decode_command(probe.value)
            continue
        command = decode_command(probe.value)
        assert command.command_id == probe.command_id
        assert len(command.command_id) == IDENT_MAX
        assert len(command.detail) == TEXT_MAX
        if isinstance(command, TripCommand):
            assert len(command.source) == IDENT_MAX
        if "ascii" not in probe.name:  # astral characters count as one each
            assert any(ord(char) > 0xFFFF for char in command.command_id + command.detail)
    by_name = {probe.name: probe for probe in probes}
    approval = decode_command(by_name["reset at limit, alice approves"].value)
    assert isinstance(approval, ResetCommand)
    assert (approval.activation_seq, approval.activation_command_id) == activation
    assert verify_reset(approval, public_bytes(keys["alice"]))
    # Bob's completion is one character too long, and genuinely signed for the activation:
    # only its size can refuse it.
    document = orjson.loads(by_name["reset over limit, bob completes"].value)
    assert len(document["detail"]) == TEXT_MAX + 1
    message = canonical_reset_bytes(
        command_id=document["command_id"],
        operator="bob",
        detail=document["detail"],
        ts=datetime.fromisoformat(document["ts"]),
        nonce=document["nonce"],
        activation_seq=activation[0],
        activation_command_id=activation[1],
    )
    bob = Ed25519PublicKey.from_public_bytes(public_bytes(keys["bob"]))
    bob.verify(base64.b64decode(document["signature"]), message)  # raises if not genuine


def test_the_gate_watch_measures_open_spans() -> None:
    watch = tamper._GateWatch(TradingGate())
    watch.spans = [[1.0, 2.0], [3.0, math.inf]]
    assert watch.open_during(0.0, 1.5) == 0.5
    assert watch.open_during(2.0, 3.0) == 0.0
    assert watch.open_until(2.5) == math.inf
    assert not watch.closed()
    watch.spans[-1][1] = 4.0
    assert watch.closed()
    assert watch.open_until(4.5) is None
