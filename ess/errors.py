"""The root of every exception ESS defines.

Every public exception class in :mod:`ess` derives from :class:`EssError`, so a caller embedding
ESS, or the ``ess`` CLI's top level, can catch "any ESS failure" in one ``except EssError`` and
still let programming errors (``TypeError``, ``AttributeError``, ...) and failures of third-party
code propagate. Each class also keeps the builtin base it had before the root existed
(``class VenueConfigError(EssError, ValueError)``), so every existing ``except ValueError`` or
``except ConnectionError`` keeps catching it.

This module imports nothing, so any layer, including the pure core (:mod:`ess.core`), can import
it without creating a cycle. :mod:`schemas` stays independent of :mod:`ess`, so its
``schemas.codec.RecordError`` (a ``ValueError``) is deliberately *not* an :class:`EssError`.

The hierarchy, by area (second base in brackets)::

    EssError
    ├── core: SequenceError [ValueError]
    │   │     └── LogBroken
    │   └── KeyMaterialError [ValueError]
    ├── command role: ProcessorError [RuntimeError]
    │                 ├── StartupRefused
    │                 └── FencedError
    ├── worker: WorkerError [RuntimeError]
    ├── Kafka: BrokerError [RuntimeError], UnknownTopicError [LookupError],
    │          KafkaSecurityError [ValueError]
    ├── PolicyStore: PolicyStoreError
    │                ├── PolicyStoreUnavailable [ConnectionError]
    │                └── CorruptPolicyValue [ValueError]
    ├── venues: VenueError, VenueConfigError [ValueError], NotFlatError [RuntimeError]
    ├── in-process API: ResetRejected [PermissionError], ActivationIncomplete [RuntimeError],
    │                   EvaluationError [RuntimeError], FakeFailure [ConnectionError]
    ├── operator CLI: OperatorError [RuntimeError]
    ├── audit: RecordingError [ValueError], ConfigError [ValueError]
    ├── chaos campaigns: CampaignError [RuntimeError]
    └── exchange simulator: ApiError

Private exceptions (a leading underscore) that only steer control flow inside one module are not
part of the hierarchy. ``tests/test_errors.py`` checks that no public one is left out.
"""

from __future__ import annotations

__all__ = ["EssError"]


class EssError(Exception):
    """Any failure ESS itself raises; catch it to handle every ESS error in one place."""
