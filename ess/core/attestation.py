"""Signatures over the records ESS writes for itself: state entries, beats, outcomes.

Anyone who can produce to a Kafka topic can write a record that *looks* like ESS's. What only
the command processor can do is sign with its own Ed25519 key, so every record it writes to
``ess.state`` (and its liveness beats and command outcomes) is *sealed*: it names the key
(``signer``, a key id) and carries ``signature``. A reader trusts a set of processor public
keys and applies a record only when its seal verifies.

What is signed. The record as the writer serialised it, not as a reader's model would render
it again: the JSON object of every field except ``signature``, wrapped as
``{"record": <that object>, "scope": <topic name>}`` and rendered canonically (keys sorted,
``,`` and ``:`` separators, no whitespace, ASCII with ``\\u`` escapes). Verifying the object
the reader actually received keeps old records verifiable after a later version adds fields
with defaults, and the scope binds a record to its topic and deployment: an entry copied from
``ess.state`` into another prefix's log, or a beat copied into ``ess.state``, does not verify.

Key ids are the first 16 hex digits of the SHA-256 of the raw public key: stable, short, and
enough to pick the key among the few a deployment trusts (rotation keeps old keys trusted for
old records). Ed25519 is deterministic, so sealing is a pure function of the key and the
record; the core may call it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ess.core.signing import public_bytes

__all__ = [
    "SIGNATURE_FIELD",
    "SIGNER_FIELD",
    "SigningKey",
    "canonical_record_bytes",
    "key_id",
    "seal",
    "seal_problem",
    "trusted_keys",
]

SIGNER_FIELD: Final = "signer"
SIGNATURE_FIELD: Final = "signature"


def key_id(public_key: bytes) -> str:
    """The id a sealed record names its key by: 16 hex digits of SHA-256(raw public key)."""
    return hashlib.sha256(public_key).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class SigningKey:
    """The command processor's private key, with its id."""

    private: Ed25519PrivateKey

    @property
    def public(self) -> bytes:
        return public_bytes(self.private)

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    def __repr__(self) -> str:  # never the key material
        return f"SigningKey(key_id={self.key_id!r})"


def trusted_keys(public_keys: Iterable[bytes]) -> Mapping[str, bytes]:
    """A read-only key-id -> raw public key map, as readers hold them."""
    return MappingProxyType({key_id(key): key for key in public_keys})


def canonical_record_bytes(record: Mapping[str, Any], *, scope: str) -> bytes:
    """The bytes a seal signs: ``record`` without its signature, wrapped with ``scope``."""
    body = {name: value for name, value in record.items() if name != SIGNATURE_FIELD}
    document = {"record": body, "scope": scope}
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def seal(record: Mapping[str, Any], key: SigningKey, *, scope: str) -> dict[str, Any]:
    """``record`` (a JSON object, as it will be written) signed by ``key`` for ``scope``."""
    body = {
        name: value for name, value in record.items() if name not in (SIGNER_FIELD, SIGNATURE_FIELD)
    }
    body[SIGNER_FIELD] = key.key_id
    signature = key.private.sign(canonical_record_bytes(body, scope=scope))
    return {**body, SIGNATURE_FIELD: base64.b64encode(signature).decode()}


def seal_problem(
    record: Mapping[str, Any], trusted: Mapping[str, bytes], *, scope: str
) -> str | None:
    """Why ``record``'s seal does not verify under ``trusted`` keys, or ``None`` if it does."""
    signer = record.get(SIGNER_FIELD)
    signature = record.get(SIGNATURE_FIELD)
    if signer is None and signature is None:
        return "unsigned"
    if not isinstance(signer, str) or not isinstance(signature, str):
        return "malformed signer or signature"
    public_key = trusted.get(signer)
    if public_key is None:
        return f"signed by unknown key {signer[:32]!r}"
    try:
        raw = base64.b64decode(signature, validate=True)
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            raw, canonical_record_bytes(record, scope=scope)
        )
    except (InvalidSignature, ValueError, binascii.Error, TypeError):
        return f"signature by {signer} does not verify"
    return None
