"""Thin aiokafka constructors and a read-to-the-end helper, correct on Kafka and on Tansu.

Every ESS component builds its clients here, so the broker-specific knobs live in one place.
The defaults are chosen for the embedded Tansu 0.6.0 broker *and* stay correct on real Kafka;
the defects and the measurements behind them are in ``docs/embedded-broker.md``:

* Tansu does not answer a waiting fetch early when data arrives: a fetch on an idle partition
  is held for its full ``fetch_max_wait_ms``, so delivery latency is spread from 0 to about
  half that wait. Consumers therefore wait :data:`FETCH_MAX_WAIT_MS` (10 ms), not aiokafka's
  500 ms (figures: BENCHMARKS.md).
* Tansu lacks idempotent and transactional producers (``InitProducerId`` fails), so producers
  run with ``enable_idempotence=False`` by default and ESS deduplicates in the domain; the
  state log's writer asks :func:`supports_idempotence` at start and uses an idempotent
  producer where the cluster grants one.
* Tansu answers ``ListOffsets`` (``end_offsets()``) with the base offset of the last batch
  + 1, ignoring every record after the first in a multi-record batch. See
  :func:`producer` (``read_to_end_safe``) and :func:`read_to_end`.
* Tansu makes ``JoinGroup`` wait ``session_timeout / 2``; 6 s sessions keep a group join at
  about 3 s (6 s is also real Kafka's default minimum session timeout).

Connection security (TLS, SASL) is a :class:`KafkaSecurity` value handed to every constructor
here (``security=``). This module never reads the environment: :class:`ess.settings.EssSettings`
builds the value from ``KAFKA_SECURITY_PROTOCOL`` and friends, and the edges pass it in. The
default, :data:`PLAINTEXT`, adds no keyword at all, so a client built without ``security`` is
configured exactly as before security existed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, get_args

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context
from loguru import logger
from pydantic import SecretStr

from ess.errors import EssError

__all__ = [
    "FETCH_MAX_WAIT_MS",
    "HEARTBEAT_INTERVAL_MS",
    "PLAINTEXT",
    "SESSION_TIMEOUT_MS",
    "KafkaSecurity",
    "KafkaSecurityError",
    "SaslMechanism",
    "SecurityProtocol",
    "UnknownTopicError",
    "admin_client",
    "consumer",
    "follow_records",
    "producer",
    "read_to_end",
    "supports_idempotence",
]

#: Consumer fetch wait: low idle latency on Tansu at a small idle CPU cost (figures:
#: BENCHMARKS.md). Real Kafka answers a waiting fetch
#: as soon as data arrives, so there the value only sets the idle polling rate.
FETCH_MAX_WAIT_MS: Final = 10
SESSION_TIMEOUT_MS: Final = 6_000
HEARTBEAT_INTERVAL_MS: Final = 1_000

#: aiokafka's ``max_batch_size`` for :func:`producer` with ``read_to_end_safe``. aiokafka always
#: admits the first record into an empty batch, and admits no second one into a batch over
#: this size, so every produce batch holds exactly one record.
_ONE_RECORD_PER_BATCH: Final = 1

#: How long one poll of :func:`read_to_end` waits for records before it re-checks the end.
_POLL_MS: Final = 100


class UnknownTopicError(EssError, LookupError):
    """The topic or partition does not exist (and was deliberately not auto-created)."""


# --------------------------------------------------------------------------- security

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
#: The SASL mechanisms aiokafka speaks with a username and password (GSSAPI and OAUTHBEARER
#: need more than two strings and are not offered).
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

_PROTOCOLS: Final[tuple[str, ...]] = get_args(SecurityProtocol)
_MECHANISMS: Final[tuple[str, ...]] = get_args(SaslMechanism)


class KafkaSecurityError(EssError, ValueError):
    """An inconsistent or unusable combination of Kafka security settings."""


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """How every ESS client authenticates to and encrypts its connection with Kafka.

    One value for the whole process (all clients talk to the same cluster), validated when
    built so that a wrong combination fails at start with the setting's name, not on the
    first connection in an emergency:

    * ``SASL_*`` needs a username and a password; ``sasl_mechanism`` defaults to ``PLAIN``.
    * SASL settings under a non-SASL protocol, or TLS files under a non-TLS protocol, are
      refused rather than ignored: a setting that silently does nothing hides a mistake.
    * TLS files must exist; a key file needs a certificate file. Without ``ssl_cafile`` the
      system's CA store verifies the broker (right for managed clusters with public CAs).
      Hostnames are always checked (:func:`aiokafka.helpers.create_ssl_context`).

    The password is a :class:`~pydantic.SecretStr`: ``repr`` and ``str`` of this object (and
    of :class:`ess.settings.EssSettings`) show ``**********``. Only :meth:`aiokafka_kwargs`
    and :meth:`faust_credentials` reveal it, to the client that needs it; never log those.
    """

    protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    def __post_init__(self) -> None:
        if self.protocol not in _PROTOCOLS:
            raise KafkaSecurityError(
                f"KAFKA_SECURITY_PROTOCOL={self.protocol!r} is not one of {', '.join(_PROTOCOLS)}"
            )
        if self.sasl_mechanism is not None and self.sasl_mechanism not in _MECHANISMS:
            raise KafkaSecurityError(
                f"KAFKA_SASL_MECHANISM={self.sasl_mechanism!r} is not one of "
                f"{', '.join(_MECHANISMS)}"
            )
        self._check_sasl()
        self._check_ssl()

    def _check_sasl(self) -> None:
        given = [
            name
            for name, value in (
                ("KAFKA_SASL_MECHANISM", self.sasl_mechanism),
                ("KAFKA_SASL_USERNAME", self.sasl_username),
                ("KAFKA_SASL_PASSWORD", self.sasl_password),
            )
            if value is not None
        ]
        if not self.uses_sasl:
            if given:
                raise KafkaSecurityError(
                    f"{', '.join(given)} set but KAFKA_SECURITY_PROTOCOL={self.protocol} uses "
                    "no SASL; use SASL_SSL (or SASL_PLAINTEXT), or unset them"
                )
            return
        missing = [
            name
            for name, value in (
                ("KAFKA_SASL_USERNAME", self.sasl_username),
                (
                    "KAFKA_SASL_PASSWORD",
                    None if self.sasl_password is None else self.sasl_password.get_secret_value(),
                ),
            )
            if not value
        ]
        if missing:
            raise KafkaSecurityError(
                f"KAFKA_SECURITY_PROTOCOL={self.protocol} needs {' and '.join(missing)}"
            )

    def _check_ssl(self) -> None:
        files = {
            "KAFKA_SSL_CAFILE": self.ssl_cafile,
            "KAFKA_SSL_CERTFILE": self.ssl_certfile,
            "KAFKA_SSL_KEYFILE": self.ssl_keyfile,
        }
        given = {name: path for name, path in files.items() if path is not None}
        if not self.uses_ssl:
            if given:
                raise KafkaSecurityError(
                    f"{', '.join(given)} set but KAFKA_SECURITY_PROTOCOL={self.protocol} uses "
                    "no TLS; use SSL (or SASL_SSL), or unset them"
                )
            return
        for name, path in given.items():
            if not path.is_file():
                raise KafkaSecurityError(f"{name}={path}: no such file")
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise KafkaSecurityError(
                "KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE (the client certificate it belongs to)"
            )

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @property
    def uses_ssl(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def mechanism(self) -> SaslMechanism | None:
        """The SASL mechanism in force: ``sasl_mechanism``, or ``PLAIN`` (Kafka's and
        aiokafka's default) under a SASL protocol; ``None`` without SASL."""
        return (self.sasl_mechanism or "PLAIN") if self.uses_sasl else None

    def describe(self) -> str:
        """A one-line summary for logs: protocol, mechanism and user, never the password."""
        parts: list[str] = [self.protocol]
        if self.uses_sasl:
            parts.append(f"{self.mechanism} as {self.sasl_username}")
        if self.uses_ssl:
            parts.append(f"CA {self.ssl_cafile or 'system store'}")
            if self.ssl_certfile is not None:
                parts.append(f"client cert {self.ssl_certfile}")
        return ", ".join(parts)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A fresh client TLS context (``None`` without TLS). Built on demand rather than held:
        an :class:`ssl.SSLContext` is mutable, and certificate files rotated on disk are
        picked up by the next client."""
        if not self.uses_ssl:
            return None
        context: ssl.SSLContext = create_ssl_context(
            cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
        )
        return context

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`~aiokafka.AIOKafkaProducer`, ``AIOKafkaConsumer`` and
        ``AIOKafkaAdminClient``. Empty for ``PLAINTEXT`` (aiokafka's default), so the default
        case configures clients exactly as before. Holds the password: never log it."""
        if self.protocol == "PLAINTEXT":
            return {}
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_ssl:
            kwargs["ssl_context"] = self.ssl_context()
        if self.uses_sasl:
            assert self.sasl_password is not None  # checked in __post_init__
            kwargs.update(
                sasl_mechanism=self.mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password.get_secret_value(),
            )
        return kwargs

    def faust_credentials(self) -> Any:
        """Faust's ``broker_credentials`` for the same connection, or ``None`` for PLAINTEXT.

        Faust turns these into the same aiokafka keywords for its consumer, producer and
        admin client (``credentials_to_aiokafka_auth``): ``SASLCredentials`` is SASL_SSL when
        it carries an SSL context and SASL_PLAINTEXT otherwise.
        """
        if self.protocol == "PLAINTEXT":
            return None
        import faust  # noqa: PLC0415 - heavy; only detection workers need it

        if not self.uses_sasl:
            return faust.SSLCredentials(context=self.ssl_context())
        assert self.sasl_password is not None  # checked in __post_init__
        return faust.SASLCredentials(
            username=self.sasl_username,
            password=self.sasl_password.get_secret_value(),
            ssl_context=self.ssl_context(),
            mechanism=self.mechanism,
        )


#: No TLS, no SASL: the embedded broker, the compose stack, and a default-configured Kafka.
PLAINTEXT: Final = KafkaSecurity()


def _security_kwargs(security: KafkaSecurity | None) -> dict[str, Any]:
    return {} if security is None else security.aiokafka_kwargs()


def producer(
    bootstrap: str,
    *,
    read_to_end_safe: bool = False,
    security: KafkaSecurity | None = None,
    **overrides: Any,
) -> AIOKafkaProducer:
    """An unstarted producer of ``bytes`` keys and values, with ``acks="all"``.

    ``linger_ms`` is 2: under load that batches enough to free CPU and lower latency (figures:
    BENCHMARKS.md), and it costs at most 2 ms when idle.

    ``read_to_end_safe=True`` is for topics that someone later reads "to the end" by offset
    (``ess.state``, ``ess.commands``, changelogs): every record is sent as its own batch.
    Tansu 0.6.0 reports the end offset of a partition as *last batch's base offset + 1*; with
    one-record batches that is the true end (docs/embedded-broker.md, "End offsets";
    ``linger_ms=0`` alone does not help, since records sent while a request is in flight
    still share a batch). It costs throughput (figures: BENCHMARKS.md), which these
    low-volume topics do not need, and it is harmless on real Kafka.

    ``security`` (default: :data:`PLAINTEXT`) adds TLS/SASL. ``overrides`` are passed to
    :class:`aiokafka.AIOKafkaProducer` and win over the defaults.
    """
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": "ess",
        "acks": "all",
        # Tansu has no InitProducerId; and aiokafka would turn this on by default with acks=all.
        "enable_idempotence": False,
        "linger_ms": 2,
        **_security_kwargs(security),
    }
    if read_to_end_safe:
        if overrides.get("max_batch_size", _ONE_RECORD_PER_BATCH) != _ONE_RECORD_PER_BATCH:
            raise ValueError(
                "read_to_end_safe=True needs one record per batch; drop max_batch_size"
            )
        # A batch of one is never worth lingering for.
        config.update(max_batch_size=_ONE_RECORD_PER_BATCH, linger_ms=0)
    config.update(overrides)
    return AIOKafkaProducer(**config)


async def supports_idempotence(
    bootstrap: str,
    *,
    security: KafkaSecurity | None = None,
    # Own timeout: a start-up probe must not hang a role's start.
    timeout: float = 10.0,  # noqa: ASYNC109
) -> bool:
    """Whether this cluster gives this principal an idempotent producer.

    An idempotent producer asks the broker for a producer id when it starts
    (``InitProducerId``); the broker then drops the second copy of a retried batch, so a
    lost produce answer cannot write an entry twice. The embedded broker fails that request,
    and a real cluster refuses it without the ``IdempotentWrite`` permission: both answer
    ``False`` (logged), and the writer falls back to recognising its own copies.
    """
    probe = producer(
        bootstrap, security=security, enable_idempotence=True, client_id="ess-idempotence-probe"
    )
    # aiokafka logs a refused InitProducerId as an ERROR of its own; the answer is logged here.
    sender_log = logging.getLogger("aiokafka.producer.sender")
    level = sender_log.level
    sender_log.setLevel(logging.CRITICAL)
    try:
        async with asyncio.timeout(timeout):
            await probe.start()
    except (KafkaError, TimeoutError, OSError) as exc:
        logger.bind(bootstrap=bootstrap, error=f"{type(exc).__name__}: {exc}").info(
            "broker grants no idempotent producer; duplicates are recognised in the domain"
        )
        return False
    finally:
        sender_log.setLevel(level)
        try:
            async with asyncio.timeout(timeout):
                await probe.stop()
        except Exception as exc:  # a probe that never started may not stop cleanly
            logger.bind(error=f"{type(exc).__name__}: {exc}").debug("idempotence probe stop")
    return True


def consumer(
    bootstrap: str,
    *topics: str,
    group_id: str | None,
    security: KafkaSecurity | None = None,
    **overrides: Any,
) -> AIOKafkaConsumer:
    """An unstarted consumer of ``bytes``, subscribed to ``topics`` (if any).

    Defaults: read from the earliest offset when the group has no committed offset (ESS must
    not skip records it has never seen), no auto-commit (commit after processing, so a crash
    re-delivers rather than loses), a 10 ms fetch wait (see the module notes), and 6 s / 1 s
    session / heartbeat so a group join on Tansu takes about 3 s (Tansu holds JoinGroup for
    half the session timeout: 5 s with aiokafka's default 10 s session, 30 s with Faust's).

    ``group_id`` is required on purpose: ``None`` (no group, no commits, every partition, or
    manual ``assign``) and a named group behave very differently. ``security`` (default:
    :data:`PLAINTEXT`) adds TLS/SASL. ``overrides`` are passed to
    :class:`aiokafka.AIOKafkaConsumer` and win over the defaults.
    """
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": "ess",
        "group_id": group_id,
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
        "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
        "session_timeout_ms": SESSION_TIMEOUT_MS,
        "heartbeat_interval_ms": HEARTBEAT_INTERVAL_MS,
        **_security_kwargs(security),
    }
    config.update(overrides)
    return AIOKafkaConsumer(*topics, **config)


def admin_client(
    bootstrap: str, *, security: KafkaSecurity | None = None, **overrides: Any
) -> AIOKafkaAdminClient:
    """An unstarted admin client (topic creation, cluster description) with ``security``.

    ``overrides`` (``client_id``, ``request_timeout_ms``, ...) are passed to
    :class:`aiokafka.admin.AIOKafkaAdminClient` and win over the defaults.
    """
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": "ess-admin",
        **_security_kwargs(security),
    }
    config.update(overrides)
    return AIOKafkaAdminClient(**config)


async def read_to_end(
    bootstrap: str,
    topic: str,
    partition: int = 0,
    *,
    start_offset: int = 0,
    # Own timeout rather than the caller's asyncio.timeout: the error reports progress.
    timeout: float = 30.0,  # noqa: ASYNC109
    security: KafkaSecurity | None = None,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of one partition, from its first offset (or ``start_offset``) to its
    current end, in order.

    "The end" is the high watermark carried by the fetch responses, not ``end_offsets()``:
    on Tansu 0.6.0 ``end_offsets()`` (ListOffsets) under-reports after a multi-record batch,
    while fetches return every record and a correct high watermark. Reading stops once a poll
    comes back empty *and* the position has reached both the fetched high watermark and the
    listed end offset, which is right on real Kafka and on Tansu alike. Records appended
    while reading may or may not be included.

    Raises :class:`UnknownTopicError` for a missing topic or partition without creating it
    (Tansu would auto-create a 4-partition topic), and :class:`TimeoutError` after
    ``timeout`` seconds. ``security`` as for :func:`consumer`.
    """
    tp = TopicPartition(topic, partition)
    reader = consumer(bootstrap, group_id=None, client_id="ess-reader", security=security)
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        async with asyncio.timeout(timeout):
            await reader.start()  # inside: a start that fails half-way still holds connections
            # topics() asks for all topics' metadata, which never auto-creates one.
            if topic not in await reader.topics():
                raise UnknownTopicError(f"topic {topic} does not exist")
            partitions = reader.partitions_for_topic(topic) or set()
            if partition not in partitions:
                raise UnknownTopicError(
                    f"topic {topic} has no partition {partition} (it has {len(partitions)})"
                )
            reader.assign([tp])
            if start_offset > 0:
                reader.seek(tp, start_offset)
            else:
                await reader.seek_to_beginning(tp)
            listed_end: int = (await reader.end_offsets([tp]))[tp]
            while True:
                batch = (await reader.getmany(tp, timeout_ms=_POLL_MS)).get(tp, [])
                if batch:
                    records.extend(batch)
                    continue
                highwater: int | None = reader.highwater(tp)
                if highwater is not None and await reader.position(tp) >= max(
                    highwater, listed_end
                ):
                    return records
    except TimeoutError as exc:
        raise TimeoutError(
            f"reading {topic}[{partition}] to its end took over {timeout:g}s "
            f"({len(records)} records read)"
        ) from exc
    finally:
        await reader.stop()


async def follow_records(
    bootstrap: str,
    topic: str,
    from_offset: int = 0,
    *,
    partition: int = 0,
    security: KafkaSecurity | None = None,
    on_fetch: Callable[[], None] | None = None,
) -> AsyncIterator[list[bytes | None]]:
    """Yield the values of one partition's records in batches, from ``from_offset`` on,
    forever (the caller stops iterating). No group, no commits.

    ``on_fetch`` is called whenever the broker answered a fetch, with or without records: an
    empty batch alone cannot tell an idle topic from an unreachable broker."""
    async for batch in follow_partition(
        bootstrap, topic, from_offset, partition=partition, security=security, on_fetch=on_fetch
    ):
        yield [record.value for record in batch]


async def follow_partition(
    bootstrap: str,
    topic: str,
    from_offset: int = 0,
    *,
    partition: int = 0,
    security: KafkaSecurity | None = None,
    on_fetch: Callable[[], None] | None = None,
    on_end: Callable[[int], None] | None = None,
) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]]]:
    """As :func:`follow_records`, yielding whole records (offsets included).

    An answer is a fetch response: the consumer's poll timestamp for the partition moved.
    ``on_fetch`` is called on each; ``on_end`` then gets the high watermark that same
    response carried (aiokafka stores both from it), so it covers every record it delivered.
    """
    tp = TopicPartition(topic, partition)
    reader = consumer(bootstrap, group_id=None, client_id="ess-follower", security=security)
    try:
        await reader.start()  # inside: a start that fails half-way still holds connections
        reader.assign([tp])
        reader.seek(tp, from_offset)
        last_poll: int | None = None
        while True:
            batch = await reader.getmany(tp, timeout_ms=200)
            polled = reader.last_poll_timestamp(tp)
            if polled is not None and polled != last_poll:
                last_poll = polled
                if on_fetch is not None:
                    on_fetch()
                end = reader.highwater(tp)
                if on_end is not None and end is not None:
                    on_end(int(end))
            records = batch.get(tp, [])
            if records:
                yield list(records)
    finally:
        await reader.stop()
