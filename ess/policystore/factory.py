"""Pick a PolicyStore adapter from a URL (the one setting a deployment needs)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ess.policystore.base import redact_url
from ess.policystore.memory_store import InMemoryPolicyStore
from ess.policystore.redis_store import RedisPolicyStore
from ess.policystore.sqlite_store import SQLitePolicyStore

#: What :func:`policy_store_from_url` can return.
AnyPolicyStore = InMemoryPolicyStore | SQLitePolicyStore | RedisPolicyStore

_SQLITE_PREFIX = "sqlite:///"


def policy_store_from_url(url: str, *, create: bool = True) -> AnyPolicyStore:
    """The adapter for ``url``:

    * ``redis://host:port/db`` or ``rediss://...`` (TLS): :class:`RedisPolicyStore`. An extra
      query parameter ``namespace=...`` sets the key/channel namespace; every other parameter
      goes to redis-py unchanged.
    * ``sqlite:///relative/file.db`` or ``sqlite:////absolute/file.db``:
      :class:`SQLitePolicyStore`. This is SQLAlchemy's convention (three slashes, then the
      path), chosen because it is the one Python users already know; note that
      ``sqlite:///tmp/x.db`` is therefore the *relative* path ``tmp/x.db``.
    * ``memory://``: a new, empty :class:`InMemoryPolicyStore` (visible to this process only).

    Anything else raises ``ValueError`` naming the accepted forms. Nothing connects yet.
    ``create=False``: a SQLite file is never created by this store, only read once a writer
    made it (see :class:`SQLitePolicyStore`); other adapters are unaffected.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"policy store URL is empty ({url!r}); {_ACCEPTED}")
    url = url.strip()
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in {"redis", "rediss"}:
        return _redis(url)
    if scheme == "sqlite":
        return _sqlite(url, create=create)
    if scheme == "memory":
        if url.lower() != "memory://":
            raise ValueError(f"policy store URL {url!r}: memory:// takes no host, path or query")
        return InMemoryPolicyStore()
    raise ValueError(f"unsupported policy store URL {redact_url(url)!r}; {_ACCEPTED}")


_ACCEPTED = (
    "expected redis://host:port/db, rediss://..., sqlite:///relative.db, "
    "sqlite:////absolute.db or memory://"
)


def _redis(url: str) -> RedisPolicyStore:
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"policy store URL {redact_url(url)!r} names no Redis host")
    query = parse_qsl(parts.query, keep_blank_values=True)
    namespaces = [value for name, value in query if name == "namespace"]
    if len(namespaces) > 1:
        raise ValueError(f"policy store URL {redact_url(url)!r} sets namespace twice")
    rest = urlencode([(name, value) for name, value in query if name != "namespace"])
    return RedisPolicyStore(
        urlunsplit(parts._replace(query=rest)), namespace=namespaces[0] if namespaces else ""
    )


def _sqlite(url: str, *, create: bool = True) -> SQLitePolicyStore:
    if not url.startswith(_SQLITE_PREFIX) or "?" in url:
        raise ValueError(
            f"policy store URL {url!r}: SQLite URLs look like sqlite:///relative.db or "
            "sqlite:////absolute.db (no host, no query)"
        )
    path = url[len(_SQLITE_PREFIX) :]
    if not path or path == ":memory:":
        raise ValueError(
            f"policy store URL {url!r} names no database file (use memory:// for a "
            "process-local store)"
        )
    return SQLitePolicyStore(path, create=create)
