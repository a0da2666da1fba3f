"""PolicyStore adapters: where the ``emergency_stop`` record lives, read by every trading gate.

Three adapters of the :class:`~ess.api.protocols.PolicyStore` protocol, one per deployment size:

* :class:`InMemoryPolicyStore`: one process.
* :class:`SQLitePolicyStore`: every process on one host (one SQLite file in WAL mode).
* :class:`RedisPolicyStore`: every host; each write is also announced on a pub/sub channel so
  gates can re-read within milliseconds.

:func:`policy_store_from_url` picks one from a URL. All three store JSON objects, return fresh
copies, and raise (never return "no record") when the backend cannot answer:
:class:`PolicyStoreUnavailable` for an unreachable backend, :class:`CorruptPolicyValue` for a
stored value that is not a JSON object.
"""

from ess.policystore.base import (
    ClosablePolicyStore,
    CorruptPolicyValue,
    PolicyStoreError,
    PolicyStoreUnavailable,
    redact_url,
)
from ess.policystore.factory import AnyPolicyStore, policy_store_from_url
from ess.policystore.memory_store import InMemoryPolicyStore
from ess.policystore.redis_store import (
    CHANNEL,
    DEFAULT_REDIS_URL,
    PolicyNotifications,
    RedisPolicyStore,
)
from ess.policystore.sqlite_store import SQLitePolicyStore

__all__ = [
    "CHANNEL",
    "DEFAULT_REDIS_URL",
    "AnyPolicyStore",
    "ClosablePolicyStore",
    "CorruptPolicyValue",
    "InMemoryPolicyStore",
    "PolicyNotifications",
    "PolicyStoreError",
    "PolicyStoreUnavailable",
    "RedisPolicyStore",
    "SQLitePolicyStore",
    "policy_store_from_url",
    "redact_url",
]
