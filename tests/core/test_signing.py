"""Ed25519 reset signatures: canonical bytes, sign/verify, key material on disk."""

from __future__ import annotations

import base64
import json
import stat
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ess.core.signing import (
    SIGNED_FIELDS,
    KeyMaterialError,
    canonical_reset_bytes,
    canonical_ts,
    command_bytes,
    generate_private_key,
    load_private_key,
    parse_public_key,
    public_bytes,
    public_key_text,
    sign_reset,
    verify_reset,
    write_key_pair,
)
from schemas import ResetCommand, decode, encode

from .support import ALICE_KEY, BOB_KEY, T0

PLUS_TWO = timezone(timedelta(hours=2))


def signed(**overrides: object) -> ResetCommand:
    fields: dict[str, object] = {
        "command_id": "reset-1",
        "operator": "alice",
        "ts": T0,
        "nonce": "nonce-1",
        "detail": "root cause fixed",
        "activation_seq": 0,
        "activation_command_id": "trip-0",
    }
    fields.update(overrides)
    return sign_reset(ALICE_KEY, **fields)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- canonical form


def test_canonical_bytes_when_ts_offsets_differ_for_same_instant_then_identical() -> None:
    utc = datetime(2026, 11, 22, 10, 15, 0, 123000, tzinfo=UTC)
    plus_two = datetime(2026, 11, 22, 12, 15, 0, 123000, tzinfo=PLUS_TWO)
    common = {
        "command_id": "r",
        "operator": "alice",
        "detail": "d",
        "nonce": "n",
        "activation_seq": 3,
        "activation_command_id": "trip-3",
    }

    a = canonical_reset_bytes(ts=utc, **common)
    b = canonical_reset_bytes(ts=plus_two, **common)

    assert a == b


def test_canonical_bytes_when_rendered_then_exact_documented_format() -> None:
    ts = datetime(2026, 11, 22, 12, 15, 0, 123000, tzinfo=PLUS_TWO)

    raw = canonical_reset_bytes(
        command_id="reset-1",
        operator="alice",
        detail="clé ok",
        ts=ts,
        nonce="n-1",
        activation_seq=7,
        activation_command_id="trip-7",
    )

    assert (
        raw
        == (
            '{"activation_command_id":"trip-7","activation_seq":7,"command_id":"reset-1",'
            '"detail":"clé ok","kind":"reset","nonce":"n-1","operator":"alice",'
            '"ts":"2026-11-22T10:15:00.123000+00:00"}'
        ).encode()
    )


def test_canonical_bytes_when_unbound_then_activation_fields_rendered_as_null() -> None:
    raw = canonical_reset_bytes(
        command_id="r",
        operator="alice",
        detail="",
        ts=T0,
        nonce="n",
        activation_seq=None,
        activation_command_id=None,
    )

    payload = json.loads(raw)
    assert payload["activation_seq"] is None
    assert payload["activation_command_id"] is None
    assert b'"activation_command_id":null,"activation_seq":null' in raw


def test_canonical_ts_when_whole_second_then_microseconds_still_rendered() -> None:
    assert canonical_ts(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00.000000+00:00"


def test_canonical_bytes_when_signed_fields_listed_then_signature_excluded() -> None:
    payload = json.loads(command_bytes(signed()))

    assert set(payload) == set(SIGNED_FIELDS)
    assert "signature" not in payload


def test_command_bytes_when_command_ts_has_offset_then_equal_to_utc_spelling() -> None:
    in_utc = signed(ts=T0)
    in_plus_two = signed(ts=T0.astimezone(PLUS_TWO))

    assert command_bytes(in_utc) == command_bytes(in_plus_two)
    assert in_utc.signature == in_plus_two.signature


# --------------------------------------------------------------------------- sign / verify


def test_sign_reset_when_called_then_command_fields_set_and_verifies() -> None:
    command = signed()

    assert command.kind == "reset"
    assert command.activation_seq == 0
    assert command.activation_command_id == "trip-0"
    assert command.command_id == "reset-1"
    assert command.operator == "alice"
    assert command.nonce == "nonce-1"
    assert command.detail == "root cause fixed"
    assert len(base64.b64decode(command.signature)) == 64
    assert verify_reset(command, public_bytes(ALICE_KEY))


def test_sign_reset_when_repeated_then_deterministic() -> None:
    assert signed().signature == signed().signature


def test_verify_when_other_operators_key_then_false() -> None:
    assert not verify_reset(signed(), public_bytes(BOB_KEY))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("command_id", "reset-2"),
        ("operator", "bob"),
        ("detail", "root cause fixed!"),
        ("ts", T0 + timedelta(microseconds=1)),
        ("nonce", "nonce-2"),
        ("activation_seq", 1),
        ("activation_seq", None),
        ("activation_command_id", "trip-1"),
        ("activation_command_id", None),
    ],
)
def test_verify_when_any_signed_field_changed_then_false(field: str, value: object) -> None:
    tampered = signed().model_copy(update={field: value})

    assert not verify_reset(tampered, public_bytes(ALICE_KEY))


@pytest.mark.parametrize(
    "signature",
    ["not base64 at all", "QUJD", base64.b64encode(b"\x00" * 64).decode(), "=" * 8],
)
def test_verify_when_signature_malformed_then_false_not_exception(signature: str) -> None:
    command = signed().model_copy(update={"signature": signature})

    assert not verify_reset(command, public_bytes(ALICE_KEY))


@pytest.mark.parametrize("key", [b"", b"\x00" * 31, b"\x00" * 33])
def test_verify_when_public_key_wrong_length_then_false_not_exception(key: bytes) -> None:
    assert not verify_reset(signed(), key)


def test_signed_command_when_sent_as_json_then_still_verifies() -> None:
    command = signed(detail="unicode ✓ détail", ts=T0.astimezone(PLUS_TWO))

    received = decode(ResetCommand, encode(command))

    assert verify_reset(received, public_bytes(ALICE_KEY))


def test_signed_command_when_producer_respells_ts_then_still_verifies() -> None:
    # A non-Python producer may write the same instant with another offset and precision.
    data = json.loads(encode(signed(ts=datetime(2026, 11, 22, 10, 15, tzinfo=UTC))))
    data["ts"] = "2026-11-22T05:15:00-05:00"

    received = decode(ResetCommand, json.dumps(data))

    assert verify_reset(received, public_bytes(ALICE_KEY))


def test_signature_when_made_by_external_signer_over_canonical_bytes_then_verifies() -> None:
    # What a non-Python operator tool does: sign the documented canonical bytes itself.
    message = canonical_reset_bytes(
        command_id="ext-1",
        operator="alice",
        detail="",
        ts=T0,
        nonce="ext-n",
        activation_seq=4,
        activation_command_id="trip-4",
    )
    signature = base64.b64encode(ALICE_KEY.sign(message)).decode()
    command = ResetCommand(
        command_id="ext-1",
        kind="reset",
        operator="alice",
        ts=T0,
        nonce="ext-n",
        signature=signature,
        activation_seq=4,
        activation_command_id="trip-4",
    )

    assert verify_reset(command, public_bytes(ALICE_KEY))


# --------------------------------------------------------------------------- key material


def test_generate_private_key_when_called_twice_then_different_keys() -> None:
    assert public_bytes(generate_private_key()) != public_bytes(generate_private_key())


def test_public_bytes_when_private_or_public_key_then_same_32_bytes() -> None:
    raw = public_bytes(ALICE_KEY)

    assert len(raw) == 32
    assert public_bytes(ALICE_KEY.public_key()) == raw


def test_public_key_text_when_parsed_then_raw_bytes() -> None:
    assert parse_public_key(public_key_text(ALICE_KEY)) == public_bytes(ALICE_KEY)


def test_write_key_pair_when_loaded_back_then_same_key(tmp_path: Path) -> None:
    key = generate_private_key()

    paths = write_key_pair(key, tmp_path / "keys", "alice")
    loaded = load_private_key(paths.private)

    assert paths.private == tmp_path / "keys" / "alice.key"
    assert paths.public == tmp_path / "keys" / "alice.pub"
    assert public_bytes(loaded) == public_bytes(key)
    assert parse_public_key(paths.public.read_text()) == public_bytes(key)


def test_key_pair_on_disk_when_used_then_signs_verifiable_resets(tmp_path: Path) -> None:
    paths = write_key_pair(generate_private_key(), tmp_path, "op")

    command = sign_reset(
        load_private_key(paths.private),
        command_id="c",
        operator="op",
        ts=T0,
        nonce="n",
        activation_seq=0,
        activation_command_id="trip-0",
    )

    assert verify_reset(command, parse_public_key(paths.public.read_text()))


def test_write_key_pair_when_written_then_private_key_mode_0600(tmp_path: Path) -> None:
    paths = write_key_pair(generate_private_key(), tmp_path, "alice")

    assert stat.S_IMODE(paths.private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in paths.private.read_bytes()
    assert "PUBLIC KEY" in paths.public.read_text()


def test_write_key_pair_when_private_key_exists_then_refuses_and_keeps_it(tmp_path: Path) -> None:
    first = generate_private_key()
    paths = write_key_pair(first, tmp_path, "alice")
    before = paths.private.read_bytes()

    with pytest.raises(KeyMaterialError, match="refusing to overwrite"):
        write_key_pair(generate_private_key(), tmp_path, "alice")

    assert paths.private.read_bytes() == before
    assert public_bytes(load_private_key(paths.private)) == public_bytes(first)


def test_load_private_key_when_missing_then_key_material_error(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError, match="cannot load"):
        load_private_key(tmp_path / "nope.key")


def test_load_private_key_when_garbage_then_key_material_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.key"
    path.write_text("-----BEGIN PRIVATE KEY-----\nnonsense\n-----END PRIVATE KEY-----\n")

    with pytest.raises(KeyMaterialError):
        load_private_key(path)


def test_load_private_key_when_not_ed25519_then_key_material_error(tmp_path: Path) -> None:
    path = tmp_path / "ec.key"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

    with pytest.raises(KeyMaterialError, match="not an Ed25519"):
        load_private_key(path)


# --------------------------------------------------------------------------- parse_public_key


def test_parse_public_key_when_base64_raw_with_whitespace_then_bytes() -> None:
    text = f"  {public_key_text(BOB_KEY)}\n"

    assert parse_public_key(text) == public_bytes(BOB_KEY)


def test_parse_public_key_when_pem_then_bytes() -> None:
    pem = (
        BOB_KEY.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )

    assert parse_public_key(pem) == public_bytes(BOB_KEY)


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_parse_public_key_when_wrong_length_then_key_material_error(length: int) -> None:
    text = base64.b64encode(b"\x01" * length).decode()

    with pytest.raises(KeyMaterialError):
        parse_public_key(text)


@pytest.mark.parametrize(
    "text",
    [
        "not a key!",
        "####",
        "-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----",
        "-----BEGIN",
    ],
)
def test_parse_public_key_when_garbage_then_key_material_error(text: str) -> None:
    with pytest.raises(KeyMaterialError):
        parse_public_key(text)


def test_parse_public_key_when_pem_of_other_algorithm_then_key_material_error() -> None:
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )

    with pytest.raises(KeyMaterialError, match="Ed25519"):
        parse_public_key(pem)


def test_parse_public_key_when_pem_of_unknown_algorithm_then_key_material_error() -> None:
    # An algorithm cryptography does not know raises UnsupportedAlgorithm, which is not a
    # ValueError: it must still come out as KeyMaterialError (callers add the file name).
    oid = bytes.fromhex("06032a0304")  # 1.2.3.4
    algorithm = bytes([0x30, len(oid)]) + oid
    bits = bytes([0x03, 33, 0]) + bytes(range(32))
    der = bytes([0x30, len(algorithm) + len(bits)]) + algorithm + bits
    pem = (
        "-----BEGIN PUBLIC KEY-----\n"
        + base64.encodebytes(der).decode()
        + "-----END PUBLIC KEY-----\n"
    )

    with pytest.raises(KeyMaterialError, match="not an Ed25519 public key"):
        parse_public_key(pem)
