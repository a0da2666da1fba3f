"""What every PolicyStore adapter shares: its errors, the JSON value codec and URL redaction.

Every adapter stores a value as JSON *text* and parses it again on every read, the in-memory
one included. That gives all three the same semantics (a value is a JSON object and nothing
else; a read returns a fresh copy the caller may mutate; NaN and Infinity are refused, as the
contract refuses non-finite numbers), so a gate tested against memory behaves the same against
Redis.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from ess.api.protocols import PolicyStore
from ess.errors import EssError


class PolicyStoreError(EssError):
    """A PolicyStore could not do what was asked. Never means "no record"."""


class PolicyStoreUnavailable(PolicyStoreError, ConnectionError):
    """The backend could not be reached (or did not answer in time).

    Also a ``ConnectionError``, so code written against the API's fakes (which raise
    ``FakeFailure(ConnectionError)``) handles real outages the same way.
    """


class CorruptPolicyValue(PolicyStoreError, ValueError):
    """The backend answered, but the stored value is not a JSON object."""


@runtime_checkable
class ClosablePolicyStore(PolicyStore, Protocol):
    """A :class:`~ess.api.protocols.PolicyStore` that holds resources to release."""

    async def close(self) -> None: ...


def check_key(key: str) -> str:
    """``key`` if it is a non-empty string; ``ValueError`` otherwise."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"policy store key must be a non-empty string, got {key!r}")
    return key


def encode_value(key: str, value: Mapping[str, Any]) -> str:
    """Compact JSON text of ``value``; ``ValueError`` if it is not a finite JSON object."""
    if not isinstance(value, Mapping):
        raise ValueError(f"policy value for {key!r} must be a JSON object, got {type(value)}")
    try:
        return json.dumps(dict(value), allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:  # a datetime, a set, NaN: refused before storing
        raise ValueError(f"policy value for {key!r} is not valid JSON: {exc}") from exc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not allowed")


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose member names are unique: with ``{"active": true, "active": false}``
    parsers disagree on which one counts, so no gate may read such a record as anything."""
    value = dict(pairs)
    if len(value) != len(pairs):
        raise ValueError("duplicate member name")
    return value


def decode_value(key: str, raw: str | bytes, where: str) -> dict[str, Any]:
    """Parse stored JSON text (UTF-8: no byte-order mark, no UTF-16/32 guessing) back into a
    new dict; :class:`CorruptPolicyValue` if it is not one JSON object with unique member
    names (``where`` names the backend in the message)."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value = json.loads(
            text, parse_constant=_refuse_constant, object_pairs_hook=_refuse_duplicates
        )
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise CorruptPolicyValue(f"{where}: value of {key!r} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise CorruptPolicyValue(
            f"{where}: value of {key!r} is a JSON {type(value).__name__}, not an object"
        )
    return value


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:  # a malformed port: say nothing rather than echo the secret back
        return f"{parts.scheme}://***"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
