"""Ed25519 signatures over the canonical JSON of a reset command.

Canonical form (what the signer signs and the verifier recomputes): the JSON object of every
``ResetCommand`` field except ``signature``, keys sorted, no whitespace
(``separators=(",", ":")``), UTF-8 without escaping, and ``ts`` rendered in UTC with
microseconds (``2026-11-22T10:15:00.123000+00:00``). Normalising ``ts`` makes the bytes
independent of how the producer spelled its timestamp. The activation a reset clears
(``activation_seq``, ``activation_command_id``; ``null`` when absent) is part of the signed
object, so a reset signed for one activation cannot be used on another. Ed25519 is
deterministic, so this module is pure: no clock, no randomness except in
:func:`generate_private_key`.

Public keys are checked when parsed (:func:`parse_public_key`): a small-order or otherwise
unusable point is refused, because it would verify forged signatures
(:mod:`ess.core.edwards`).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ess.core.edwards import public_key_problem
from ess.errors import EssError
from schemas import ResetCommand

SIGNED_FIELDS = (
    "command_id",
    "kind",
    "operator",
    "detail",
    "ts",
    "nonce",
    "activation_seq",
    "activation_command_id",
)


class KeyMaterialError(EssError, ValueError):
    """A key file or key text that cannot be used."""


def canonical_ts(ts: datetime) -> str:
    """``ts`` in UTC, microsecond precision, ``+00:00`` offset: one spelling per instant."""
    return ts.astimezone(UTC).isoformat(timespec="microseconds")


def canonical_reset_bytes(
    *,
    command_id: str,
    operator: str,
    detail: str,
    ts: datetime,
    nonce: str,
    activation_seq: int | None,
    activation_command_id: str | None,
) -> bytes:
    """The exact bytes an operator signs for a reset."""
    payload = {
        "command_id": command_id,
        "kind": "reset",
        "operator": operator,
        "detail": detail,
        "ts": canonical_ts(ts),
        "nonce": nonce,
        "activation_seq": activation_seq,
        "activation_command_id": activation_command_id,
    }
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def command_bytes(command: ResetCommand) -> bytes:
    """Canonical bytes of a received reset command (signature excluded)."""
    return canonical_reset_bytes(
        command_id=command.command_id,
        operator=command.operator,
        detail=command.detail,
        ts=command.ts,
        nonce=command.nonce,
        activation_seq=command.activation_seq,
        activation_command_id=command.activation_command_id,
    )


def sign_reset(
    private_key: Ed25519PrivateKey,
    *,
    command_id: str,
    operator: str,
    ts: datetime,
    nonce: str,
    activation_seq: int | None,
    activation_command_id: str | None,
    detail: str = "",
) -> ResetCommand:
    """Build a signed :class:`ResetCommand` for the activation ``activation_seq`` /
    ``activation_command_id`` (read them from the state log first: a reset for any other
    activation is refused). The caller supplies ``ts`` and a fresh ``nonce`` (edges own the
    clock and randomness)."""
    message = canonical_reset_bytes(
        command_id=command_id,
        operator=operator,
        detail=detail,
        ts=ts,
        nonce=nonce,
        activation_seq=activation_seq,
        activation_command_id=activation_command_id,
    )
    signature = base64.b64encode(private_key.sign(message)).decode()
    return ResetCommand(
        command_id=command_id,
        kind="reset",
        operator=operator,
        detail=detail,
        ts=ts,
        nonce=nonce,
        signature=signature,
        activation_seq=activation_seq,
        activation_command_id=activation_command_id,
    )


def verify_reset(command: ResetCommand, public_key: bytes) -> bool:
    """True when ``command.signature`` is a valid Ed25519 signature by ``public_key`` (raw
    32 bytes) over the canonical bytes. Malformed signatures are simply invalid."""
    try:
        signature = base64.b64decode(command.signature, validate=True)
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, command_bytes(command))
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


# --------------------------------------------------------------------------- key material


@dataclass(frozen=True, slots=True)
class KeyPairPaths:
    private: Path
    public: Path


def generate_private_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 private key (uses the OS random source)."""
    return Ed25519PrivateKey.generate()


def public_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32-byte public key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """Base64 of the raw public key: the form operator registries hold."""
    return base64.b64encode(public_bytes(key)).decode()


def parse_public_key(text: str) -> bytes:
    """Raw public key bytes from base64 text or a PEM ``PUBLIC KEY`` block.

    Refuses (:class:`KeyMaterialError`) anything but a canonical point of prime order: a
    small-order key would verify forged signatures (:mod:`ess.core.edwards`)."""
    stripped = text.strip()
    try:
        if stripped.startswith("-----BEGIN"):
            loaded = serialization.load_pem_public_key(stripped.encode())
            if not isinstance(loaded, Ed25519PublicKey):
                raise KeyMaterialError("PEM public key is not Ed25519")
            raw = public_bytes(loaded)
        else:
            raw = base64.b64decode(stripped, validate=True)
    except (ValueError, binascii.Error, UnsupportedAlgorithm) as exc:
        raise KeyMaterialError(f"not an Ed25519 public key: {exc}") from exc
    problem = public_key_problem(raw)
    if problem is not None:
        raise KeyMaterialError(f"unusable Ed25519 public key: {problem}")
    return raw


def write_key_pair(private_key: Ed25519PrivateKey, directory: Path, name: str) -> KeyPairPaths:
    """Write ``<name>.key`` (PKCS#8 PEM, mode 0600, refuses to overwrite) and ``<name>.pub``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = KeyPairPaths(directory / f"{name}.key", directory / f"{name}.pub")
    if paths.private.exists():
        raise KeyMaterialError(f"{paths.private} exists; refusing to overwrite a private key")
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    paths.private.touch(mode=0o600)
    paths.private.write_bytes(pem)
    paths.public.write_text(
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return paths


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load a PKCS#8 PEM Ed25519 private key written by :func:`write_key_pair`."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyMaterialError(f"cannot load private key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyMaterialError(f"{path} is not an Ed25519 private key")
    return key
