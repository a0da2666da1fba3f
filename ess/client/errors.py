"""What the client raises. Both derive from :class:`ess.errors.EssError`, so a bot can catch
every ESS failure in one place; validation errors are :class:`schemas.RecordError`."""

from __future__ import annotations

from ess.errors import EssError

__all__ = ["BrokerUnreachable", "PublishError"]


class PublishError(EssError, RuntimeError):
    """Records were not delivered to Kafka (or not confirmed within the send timeout).

    A record the caller did not wait for (``wait=False``) reports its failure at the next
    :meth:`~ess.client.AsyncEssPublisher.flush` or at close: nothing fails silently."""


class BrokerUnreachable(PublishError, ConnectionError):
    """The publisher could not connect to any bootstrap server within its connect timeout."""
