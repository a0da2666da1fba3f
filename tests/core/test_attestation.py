"""Seals over the records ESS writes for itself (``ess.core.attestation``): real keys, no
mocks."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ess.core.attestation import (
    SIGNATURE_FIELD,
    SIGNER_FIELD,
    SigningKey,
    canonical_record_bytes,
    key_id,
    seal,
    seal_problem,
    trusted_keys,
)
from ess.core.signing import public_bytes

PROCESSOR = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes([21]) * 32))
OTHER = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes([22]) * 32))
TRUSTED = trusted_keys([PROCESSOR.public])
SCOPE = "ess.state"

RECORD: dict[str, Any] = {
    "kind": "activated",
    "seq": 3,
    "command_id": "trip-3",
    "ts": "2026-11-22T10:15:00Z",
    "detail": "daily loss 5.3% > 5% (é)",
    "prev": "ab" * 32,
    "trigger": {"topic": "ess.pnl", "partition": 0, "offset": 9},
    "command_offset": None,
}


def sealed(record: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    return seal(record or RECORD, kwargs.pop("key", PROCESSOR), scope=kwargs.pop("scope", SCOPE))


def received(record: dict[str, Any]) -> dict[str, Any]:
    """The record as a reader gets it: serialised and parsed again."""
    loaded: dict[str, Any] = json.loads(json.dumps(record))
    return loaded


def test_seal_when_verified_after_transport_then_no_problem() -> None:
    record = sealed()

    assert record[SIGNER_FIELD] == PROCESSOR.key_id
    assert len(base64.b64decode(record[SIGNATURE_FIELD])) == 64
    assert {k: v for k, v in record.items() if k not in (SIGNER_FIELD, SIGNATURE_FIELD)} == RECORD
    assert seal_problem(received(record), TRUSTED, scope=SCOPE) is None


def test_seal_when_repeated_then_deterministic() -> None:
    assert sealed() == sealed()


def test_seal_when_record_already_sealed_by_another_key_then_resealed_cleanly() -> None:
    resealed = seal(sealed(key=OTHER), PROCESSOR, scope=SCOPE)

    assert resealed == sealed()


def test_seal_when_field_order_differs_then_same_signature() -> None:
    reordered = dict(reversed(list(RECORD.items())))

    assert sealed(reordered)[SIGNATURE_FIELD] == sealed()[SIGNATURE_FIELD]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seq", 4),
        ("kind", "trip_recorded"),
        ("command_id", "trip-4"),
        ("ts", "2026-11-22T10:15:01Z"),
        ("detail", "daily loss 5.3% > 5% (e)"),
        ("prev", "cd" * 32),
        ("prev", None),
        ("trigger", {"topic": "ess.state", "partition": 0, "offset": 9}),
        ("command_offset", 0),
        (SIGNER_FIELD, OTHER.key_id),
    ],
)
def test_sealed_record_when_any_field_changed_then_does_not_verify(
    field: str, value: object
) -> None:
    tampered = {**sealed(), field: value}

    problem = seal_problem(tampered, TRUSTED | {OTHER.key_id: OTHER.public}, scope=SCOPE)

    assert problem is not None
    assert "does not verify" in problem


def test_sealed_record_when_field_added_or_removed_then_does_not_verify() -> None:
    added = {**sealed(), "approved": True}
    removed = {k: v for k, v in sealed().items() if k != "detail"}

    assert seal_problem(added, TRUSTED, scope=SCOPE) is not None
    assert seal_problem(removed, TRUSTED, scope=SCOPE) is not None


def test_record_sealed_for_one_scope_when_verified_for_another_then_fails() -> None:
    record = sealed(scope="ess.state")

    assert seal_problem(record, TRUSTED, scope="ess.state") is None
    assert seal_problem(record, TRUSTED, scope="other.state") is not None
    assert seal_problem(record, TRUSTED, scope="ess.liveness") is not None


def test_sealed_record_when_signer_unknown_then_problem_names_it() -> None:
    record = sealed(key=OTHER)

    assert seal_problem(record, TRUSTED, scope=SCOPE) == f"signed by unknown key {OTHER.key_id!r}"


def test_sealed_record_when_signer_claims_trusted_id_but_other_key_signed_then_fails() -> None:
    impostor = {**sealed(key=OTHER), SIGNER_FIELD: PROCESSOR.key_id}

    problem = seal_problem(impostor, TRUSTED, scope=SCOPE)

    assert problem == f"signature by {PROCESSOR.key_id} does not verify"


def test_record_when_unsigned_then_problem_unsigned() -> None:
    assert seal_problem(RECORD, TRUSTED, scope=SCOPE) == "unsigned"


@pytest.mark.parametrize(
    "change",
    [
        {SIGNATURE_FIELD: None},
        {SIGNER_FIELD: None},
        {SIGNER_FIELD: 7},
        {SIGNATURE_FIELD: ["x"]},
    ],
    ids=["signer-only", "signature-only", "signer-not-text", "signature-not-text"],
)
def test_record_when_signer_or_signature_malformed_then_problem(change: dict[str, Any]) -> None:
    record = {**sealed(), **change}

    assert seal_problem(record, TRUSTED, scope=SCOPE) == "malformed signer or signature"


@pytest.mark.parametrize(
    "signature",
    [
        "not base64!",
        "QUJD",
        base64.b64encode(bytes(64)).decode(),
        base64.b64encode(bytes(63)).decode(),
        "QUJD\nREVG",
        "",
    ],
    ids=["garbage", "short", "zeros", "63-bytes", "newline", "empty"],
)
def test_record_when_signature_malformed_then_problem_not_exception(signature: str) -> None:
    record = {**sealed(), SIGNATURE_FIELD: signature}

    problem = seal_problem(record, TRUSTED, scope=SCOPE)

    assert problem == f"signature by {PROCESSOR.key_id} does not verify"


def test_trusted_key_when_malformed_then_problem_not_exception() -> None:
    broken = {PROCESSOR.key_id: b"short"}

    assert seal_problem(sealed(), broken, scope=SCOPE) is not None


def test_key_id_when_computed_then_stable_16_hex_of_sha256() -> None:
    public = PROCESSOR.public

    assert key_id(public) == hashlib.sha256(public).hexdigest()[:16]
    assert PROCESSOR.key_id == key_id(public)
    assert SigningKey(Ed25519PrivateKey.from_private_bytes(bytes([21]) * 32)).key_id == (
        PROCESSOR.key_id
    )
    assert PROCESSOR.key_id != OTHER.key_id
    assert public == public_bytes(PROCESSOR.private)


def test_key_id_when_pinned_then_never_changes() -> None:
    # Ids are written into every sealed record: the derivation must not drift.
    assert key_id(bytes(32)) == "66687aadf862bd77"


def test_signing_key_repr_when_printed_then_no_key_material() -> None:
    text = repr(PROCESSOR)

    assert text == f"SigningKey(key_id={PROCESSOR.key_id!r})"
    assert base64.b64encode(PROCESSOR.public).decode() not in text


def test_trusted_keys_when_built_then_read_only_by_key_id() -> None:
    keys = trusted_keys([PROCESSOR.public, OTHER.public])

    assert dict(keys) == {PROCESSOR.key_id: PROCESSOR.public, OTHER.key_id: OTHER.public}
    with pytest.raises(TypeError):
        keys["x"] = b""  # type: ignore[index]


def test_canonical_record_bytes_when_rendered_then_sorted_ascii_wrapped_with_scope() -> None:
    raw = canonical_record_bytes({"b": 1, "a": "é", SIGNATURE_FIELD: "zzz"}, scope="s")

    assert raw == b'{"record":{"a":"\\u00e9","b":1},"scope":"s"}'
