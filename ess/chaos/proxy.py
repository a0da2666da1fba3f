"""A fault-injecting Kafka TCP proxy: lost produce answers, partitions and cut connections.

Why a proxy and not a fake: the faults ESS must survive live between a real client and a real
broker. The one that motivated this module is the *lost answer*: the command processor writes
``ess.state`` with a non-idempotent producer (``enable_idempotence=False``; the embedded Tansu
broker has no ``InitProducerId``), so when the broker applies a Produce request but its
response never reaches the client, aiokafka retries and the record lands twice. Only a
component on the wire can make the broker apply a request and then swallow its answer.

:class:`KafkaFaultProxy` sits between clients and one broker. It understands just enough of
the Kafka protocol to be precise about faults and nothing more:

* Frames (4-byte big-endian size, then the payload) are forwarded byte for byte in both
  directions; the proxy never re-encodes anything.
* Client requests are read for their header (api key, version, correlation id) and, for
  Produce, the topics they write to. Responses are matched to requests by correlation id.
* Anything it cannot parse is forwarded untouched: a parsing gap can weaken a fault, never
  break traffic.

Clients must *only* talk through the proxy, which a Kafka client does not do by itself: after
bootstrapping it connects to the address the broker advertises. :func:`proxied_embedded_broker`
therefore starts an :class:`~ess.kafka.broker.EmbeddedBroker` that advertises the proxy's port.

aiokafka 0.14 sends Produce v0..v7 (its ``ProduceRequestStruct`` stops at v7, and Tansu offers
more), all in the non-flexible layout; the flexible v9+ layout is therefore not parsed, and a
flexible Produce request is forwarded without topics (so no drop fault can match it).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Self

from loguru import logger

from ess.kafka.broker import BrokerError, EmbeddedBroker

__all__ = [
    "API_NAMES",
    "PRODUCE",
    "KafkaFaultProxy",
    "ProxyStats",
    "api_name",
    "free_port",
    "proxied_embedded_broker",
]

#: The Produce api key.
PRODUCE: Final = 0

#: Names of the api keys ESS's clients use, for logs and reports.
API_NAMES: Final[Mapping[int, str]] = {
    0: "Produce",
    1: "Fetch",
    2: "ListOffsets",
    3: "Metadata",
    8: "OffsetCommit",
    9: "OffsetFetch",
    10: "FindCoordinator",
    11: "JoinGroup",
    12: "Heartbeat",
    13: "LeaveGroup",
    14: "SyncGroup",
    15: "DescribeGroups",
    16: "ListGroups",
    17: "SaslHandshake",
    18: "ApiVersions",
    19: "CreateTopics",
    20: "DeleteTopics",
    22: "InitProducerId",
    32: "DescribeConfigs",
    36: "SaslAuthenticate",
    60: "DescribeCluster",
}

#: The newest Produce version whose body has the non-flexible layout this module parses.
_LAST_RIGID_PRODUCE: Final = 8

#: A frame larger than this is not believed to be Kafka; the rest of that direction of the
#: connection is then copied as raw bytes (Kafka's own default limit is 100 MiB).
_MAX_FRAME: Final = 256 * 1024 * 1024
_RAW_CHUNK: Final = 64 * 1024

_SIZE: Final = struct.Struct(">i")
_HEADER: Final = struct.Struct(">hhi")  # api_key, api_version, correlation_id
_INT16: Final = struct.Struct(">h")
_INT32: Final = struct.Struct(">i")


def api_name(api_key: int) -> str:
    """A readable name for ``api_key`` (``"Produce"``), or ``"api<N>"`` when unknown."""
    return API_NAMES.get(api_key, f"api{api_key}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago. Racy by nature: callers retry on a lost race."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- wire parsing


class _Truncated(ValueError):
    """A frame ended inside a field: not the layout we expected."""


@dataclass(frozen=True, slots=True)
class _Request:
    """What the proxy remembers about one request until its response arrives."""

    api_key: int
    api_version: int
    correlation_id: int
    #: Produce only: the topics written, or ``None`` if the body was not parsed.
    topics: tuple[str, ...] | None = None
    #: Produce only: ``acks == 0`` means the broker sends no response at all.
    acks: int | None = None


class _Reader:
    """A cursor over one frame; every read checks bounds and raises :class:`_Truncated`."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self._data = data
        self._pos = pos

    def _take(self, size: int) -> bytes:
        end = self._pos + size
        if size < 0 or end > len(self._data):
            raise _Truncated(f"need {size} bytes at {self._pos} of {len(self._data)}")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def int16(self) -> int:
        value: int = _INT16.unpack(self._take(2))[0]
        return value

    def int32(self) -> int:
        value: int = _INT32.unpack(self._take(4))[0]
        return value

    def skip(self, size: int) -> None:
        self._take(size)

    def nullable_string(self) -> str | None:
        size = self.int16()
        if size == -1:
            return None
        return self._take(size).decode("utf-8")

    def string(self) -> str:
        value = self.nullable_string()
        if value is None:
            raise _Truncated("null where a string is required")
        return value

    def nullable_bytes(self) -> None:
        size = self.int32()
        if size != -1:
            self.skip(size)


def _parse_request(payload: bytes) -> _Request:
    """Header and, for Produce, topics of one client frame (without its size prefix).

    The request header (v1 and v2 alike) starts api_key int16, api_version int16,
    correlation_id int32, client_id nullable string; only v2 (flexible requests) appends
    tagged fields, and flexible Produce bodies are not parsed (see the module docstring).
    """
    if len(payload) < _HEADER.size:
        raise _Truncated("frame shorter than a request header")
    api_key, api_version, correlation_id = _HEADER.unpack_from(payload)
    reader = _Reader(payload, _HEADER.size)
    reader.nullable_string()  # client_id
    if api_key != PRODUCE or not 0 <= api_version <= _LAST_RIGID_PRODUCE:
        return _Request(api_key, api_version, correlation_id)
    try:
        acks, topics = _produce_body(reader, api_version)
    except (_Truncated, UnicodeDecodeError) as exc:
        logger.bind(version=api_version, error=str(exc)).debug(
            "kafka proxy: Produce body not parsed; forwarding it without topics"
        )
        return _Request(api_key, api_version, correlation_id)
    return _Request(api_key, api_version, correlation_id, topics, acks)


def _produce_body(reader: _Reader, version: int) -> tuple[int, tuple[str, ...]]:
    """``acks`` and topic names of a non-flexible Produce body (v0..v8).

    v3+ starts with transactional_id (nullable string); then acks int16, timeout int32 and an
    array of topics, each a name and an array of (partition int32, records nullable bytes).
    """
    if version >= 3:
        reader.nullable_string()  # transactional_id
    acks = reader.int16()
    reader.int32()  # timeout_ms
    topics: list[str] = []
    for _ in range(reader.int32()):
        topics.append(reader.string())
        for _ in range(reader.int32()):
            reader.int32()  # partition
            reader.nullable_bytes()  # records
    return acks, tuple(topics)


def _response_correlation_id(payload: bytes) -> int | None:
    """Every Kafka response header (v0 and v1) starts with the request's correlation id."""
    if len(payload) < _INT32.size:
        return None
    value: int = _INT32.unpack_from(payload)[0]
    return value


async def _read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | bytes | None:
    """The next frame as ``(size_prefix, payload)``; ``None`` at a clean end of stream.

    Returns bare ``bytes`` (the 4 size bytes read) when the size cannot be a Kafka frame: the
    caller forwards them and switches that direction to raw copying.
    """
    try:
        prefix = await reader.readexactly(_SIZE.size)
    except asyncio.IncompleteReadError:
        return None
    size: int = _SIZE.unpack(prefix)[0]
    if not 0 <= size <= _MAX_FRAME:
        return prefix
    try:
        payload = await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        return None
    return prefix, payload


# --------------------------------------------------------------------------- stats


@dataclass(frozen=True, slots=True)
class ProxyStats:
    """A snapshot of what the proxy has seen and done, for assertions and campaign figures.

    ``requests``/``responses`` count frames by api key (see :func:`api_name`);
    ``api_versions`` lists the versions seen per api key (which Produce version a client
    negotiated decides which fault parsing applies). ``unparsed_frames`` counts client frames
    whose header could not be read; they were forwarded anyway. ``connections_cut`` counts
    connections the proxy cut on purpose (resets and lost answers); ``upstream_failures``
    client connections closed because the broker could not be reached. ``frames_held`` is
    how many frames are waiting right now because the proxy is paused.
    """

    connections_accepted: int = 0
    connections_open: int = 0
    connections_cut: int = 0
    upstream_failures: int = 0
    requests: Mapping[int, int] = field(default_factory=dict)
    responses: Mapping[int, int] = field(default_factory=dict)
    api_versions: Mapping[int, frozenset[int]] = field(default_factory=dict)
    dropped_answers: int = 0
    unparsed_frames: int = 0
    frames_held: int = 0


# --------------------------------------------------------------------------- connections


class _Link:
    """One client connection and its upstream twin."""

    def __init__(
        self, ident: int, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        self.ident = ident
        self.client_reader = client_reader
        self.client_writer = client_writer
        self.upstream_writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, _Request] = {}
        self.doomed: dict[int, tuple[str, ...]] = {}  # correlation id -> topics charged
        self.main: asyncio.Task[None] | None = None
        self.closed = False

    def cut(self) -> bool:
        """Close both sides now, without flushing; stop the link's pumps. True if it was open."""
        if self.closed:
            return False
        self.closed = True
        for writer in (self.client_writer, self.upstream_writer):
            if writer is not None:
                writer.transport.abort()
        main = self.main
        if main is not None and not main.done() and main is not asyncio.current_task():
            main.cancel()
        return True


class KafkaFaultProxy:
    """A TCP proxy in front of one Kafka broker that injects faults on demand.

    Use it as an async context manager; the fault policy may change at any time while traffic
    flows (every method is synchronous and runs on the event loop, so no fault is applied
    half-way)::

        async with KafkaFaultProxy("127.0.0.1", broker_port) as proxy:
            proxy.drop_produce_responses("ess.state")
            await producer.send_and_wait("ess.state", value)  # lands twice

    Faults:

    * :meth:`drop_produce_responses`: the broker applies a Produce request, the client never
      gets the answer (its connection is cut when the answer arrives), so it retries.
    * :meth:`pause` / :meth:`resume` / :meth:`blackhole`: nothing moves in either direction
      (a network partition); TCP stays up, so clients only notice through their timeouts.
    * :meth:`reset_connections`: every connection is cut now (a proxy or broker restart as
      the clients see it).

    Args:
        upstream_host: The broker's host.
        upstream_port: The broker's listen port.
        host: Where the proxy listens; loopback by default, like the embedded broker.
        port: The proxy's port; 0 picks a free one (read :attr:`port` after start).
    """

    def __init__(
        self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._next_ident = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._drops: Counter[str] = Counter()
        # statistics
        self._accepted = 0
        self._cut = 0
        self._upstream_failures = 0
        self._requests: Counter[int] = Counter()
        self._responses: Counter[int] = Counter()
        self._versions: dict[int, set[int]] = {}
        self._dropped = 0
        self._unparsed = 0
        self._held = 0
        self._unparsed_produce_versions: set[int] = set()

    def __repr__(self) -> str:
        where = f"{self._host}:{self._port}" if self._port is not None else "not started"
        upstream = f"{self._upstream[0]}:{self._upstream[1]}"
        return f"<KafkaFaultProxy {where} -> {upstream}>"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> Self:
        """Listen; connections are accepted from now on (upstream is dialled per client)."""
        if self._server is not None:
            raise RuntimeError(f"{self!r} is already started")
        self._server = await asyncio.start_server(
            self._serve, self._host, self._requested_port, reuse_address=True
        )
        self._port = self._server.sockets[0].getsockname()[1]
        logger.bind(proxy=self.bootstrap, upstream=f"{self._upstream[0]}:{self._upstream[1]}").info(
            "kafka fault proxy listening"
        )
        return self

    async def stop(self) -> None:
        """Stop listening and cut every connection. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        self._flowing.set()  # nothing waits on a pause that no longer matters
        mains = [link.main for link in self._links if link.main is not None]
        for link in list(self._links):
            link.cut()
        await asyncio.gather(*mains, return_exceptions=True)
        await server.wait_closed()
        logger.bind(proxy=self.bootstrap, **self._summary()).info("kafka fault proxy stopped")

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ addresses

    @property
    def port(self) -> int:
        """The port the proxy listens on. Raises ``RuntimeError`` before :meth:`start`."""
        if self._port is None:
            raise RuntimeError("the kafka fault proxy is not started")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``host:port`` of the proxy, for Kafka clients' ``bootstrap_servers``."""
        return f"{self._host}:{self.port}"

    @property
    def upstream(self) -> tuple[str, int]:
        """The broker every connection is forwarded to."""
        return self._upstream

    # ------------------------------------------------------------------ fault policy

    def drop_produce_responses(self, topic: str, count: int = 1) -> None:
        """Lose the answers to the next ``count`` Produce requests that write to ``topic``.

        Each such request still reaches the broker, which applies it; when the broker's
        response arrives, the proxy discards it and cuts the client's connection (and its
        upstream twin). The client sees a request that failed after it was sent, which
        aiokafka treats as retriable, so a non-idempotent producer writes the batch again.
        Adds to any budget already set for ``topic``. A doomed request whose connection dies
        before its answer arrives gives its budget back. Produce requests with ``acks=0``
        have no answer and never match.
        """
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        self._drops[topic] += count
        logger.bind(topic=topic, count=count, budget=self._drops[topic]).info(
            "kafka fault proxy: will lose produce answers"
        )

    def pending_drops(self) -> dict[str, int]:
        """Produce answers still to be lost, by topic (topics with budget left only)."""
        return {topic: n for topic, n in self._drops.items() if n > 0}

    def clear_faults(self) -> None:
        """Forget every pending drop and resume traffic; counters are kept."""
        self._drops.clear()
        self.resume()

    def pause(self) -> None:
        """Stop forwarding in both directions, as a network partition would.

        Connections stay open and new ones are accepted but not dialled upstream; frames that
        arrive are held (at most one per direction and connection, the rest waits in TCP
        buffers) and delivered in order by :meth:`resume`.
        """
        if self._flowing.is_set():
            logger.bind(proxy=self.bootstrap).info("kafka fault proxy paused")
        self._flowing.clear()

    def resume(self) -> None:
        """Forward again; held frames go first, in their original order."""
        if not self._flowing.is_set():
            logger.bind(proxy=self.bootstrap).info("kafka fault proxy resumed")
        self._flowing.set()

    @property
    def paused(self) -> bool:
        """True between :meth:`pause` and :meth:`resume`."""
        return not self._flowing.is_set()

    async def blackhole(self, seconds: float) -> None:
        """:meth:`pause` for ``seconds``, then :meth:`resume` (also if cancelled).

        Returns when traffic flows again; run it in a task to partition in the background.
        """
        self.pause()
        try:
            await asyncio.sleep(seconds)
        finally:
            self.resume()

    def reset_connections(self) -> int:
        """Cut every connection now, both sides; return how many were cut.

        Clients see their in-flight requests fail with a connection error and reconnect.
        """
        cut = sum(1 for link in list(self._links) if link.cut())
        self._cut += cut
        logger.bind(proxy=self.bootstrap, connections=cut).info(
            "kafka fault proxy reset its connections"
        )
        return cut

    # ------------------------------------------------------------------ statistics

    @property
    def dropped_answers(self) -> int:
        """How many Produce answers were lost on purpose so far."""
        return self._dropped

    @property
    def stats(self) -> ProxyStats:
        """A snapshot of the counters (copies: later traffic does not change it)."""
        return ProxyStats(
            connections_accepted=self._accepted,
            connections_open=len(self._links),
            connections_cut=self._cut,
            upstream_failures=self._upstream_failures,
            requests=dict(self._requests),
            responses=dict(self._responses),
            api_versions={key: frozenset(v) for key, v in self._versions.items()},
            dropped_answers=self._dropped,
            unparsed_frames=self._unparsed,
            frames_held=self._held,
        )

    def _summary(self) -> dict[str, object]:
        return {
            "connections": self._accepted,
            "requests": {api_name(k): n for k, n in sorted(self._requests.items())},
            "dropped_answers": self._dropped,
            "unparsed_frames": self._unparsed,
        }

    # ------------------------------------------------------------------ forwarding

    async def _serve(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        """One client connection, from accept to close (``asyncio.start_server`` callback)."""
        self._accepted += 1
        self._next_ident += 1
        link = _Link(self._next_ident, client_reader, client_writer)
        self._links.add(link)
        link.main = asyncio.create_task(self._run(link), name=f"kafka-proxy-link-{link.ident}")
        try:
            # wait(), not await: a link cut on purpose ends its task cancelled, which is fine.
            await asyncio.wait({link.main})
            if not link.main.cancelled() and (error := link.main.exception()) is not None:
                logger.opt(exception=error).error("kafka fault proxy: connection failed")
        finally:
            link.cut()
            self._links.discard(link)
            for topics in link.doomed.values():
                # Doomed, but its answer never came: the fault did not happen; give it back.
                self._drops.update(topics)

    async def _run(self, link: _Link) -> None:
        await self._flowing.wait()
        host, port = self._upstream
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            self._upstream_failures += 1
            logger.bind(upstream=f"{host}:{port}", error=str(exc)).debug(
                "kafka fault proxy: upstream unreachable; closing the client connection"
            )
            return
        link.upstream_writer = upstream_writer
        if link.closed:  # cut while dialling
            upstream_writer.transport.abort()
            return
        logger.bind(link=link.ident).trace("kafka fault proxy: connection open")
        async with asyncio.TaskGroup() as group:
            group.create_task(self._pump_requests(link, upstream_writer))
            group.create_task(self._pump_responses(link, upstream_reader))

    async def _forward(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        if not self._flowing.is_set():
            self._held += 1
            try:
                await self._flowing.wait()
            finally:
                self._held -= 1
        writer.write(data)
        await writer.drain()

    async def _copy_raw(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> None:
        """Copy bytes unframed until end of stream: the fallback for a stream we cannot frame."""
        await self._forward(writer, head)
        while chunk := await reader.read(_RAW_CHUNK):
            await self._forward(writer, chunk)

    async def _pump_requests(self, link: _Link, upstream: asyncio.StreamWriter) -> None:
        """Client -> broker: remember each request, decide its fate, forward it unchanged."""
        try:
            while True:
                frame = await _read_frame(link.client_reader)
                if frame is None:
                    break
                if isinstance(frame, bytes):
                    self._unparsed += 1
                    await self._copy_raw(link.client_reader, upstream, frame)
                    break
                prefix, payload = frame
                if not self._flowing.is_set():
                    # Decide the fate at forwarding time, not while held by a pause.
                    self._held += 1
                    try:
                        await self._flowing.wait()
                    finally:
                        self._held -= 1
                self._note_request(link, payload)
                await self._forward(upstream, prefix + payload)
        except (ConnectionError, OSError) as exc:
            logger.bind(link=link.ident, error=str(exc)).trace("kafka fault proxy: client gone")
        link.cut()

    def _note_request(self, link: _Link, payload: bytes) -> None:
        try:
            request = _parse_request(payload)
        except (_Truncated, UnicodeDecodeError):
            self._unparsed += 1
            return
        self._requests[request.api_key] += 1
        self._versions.setdefault(request.api_key, set()).add(request.api_version)
        if request.acks != 0:  # acks=0: the broker will not answer; nothing to match
            link.pending[request.correlation_id] = request
        if request.api_key == PRODUCE and request.topics is None:
            if request.api_version not in self._unparsed_produce_versions:
                self._unparsed_produce_versions.add(request.api_version)
                logger.bind(version=request.api_version).warning(
                    "kafka fault proxy: Produce topics not read; drop faults cannot match it"
                )
            return
        if request.topics is None or request.acks == 0:
            return
        charged = tuple(topic for topic in request.topics if self._drops[topic] > 0)
        if charged:
            self._drops.subtract(charged)
            link.doomed[request.correlation_id] = charged
            logger.bind(
                link=link.ident, correlation_id=request.correlation_id, topics=charged
            ).debug("kafka fault proxy: produce request forwarded; its answer will be lost")

    async def _pump_responses(self, link: _Link, upstream: asyncio.StreamReader) -> None:
        """Broker -> client: forward each response unchanged, unless its answer is to be lost."""
        try:
            while True:
                frame = await _read_frame(upstream)
                if frame is None:
                    break
                if isinstance(frame, bytes):
                    await self._copy_raw(upstream, link.client_writer, frame)
                    break
                prefix, payload = frame
                correlation_id = _response_correlation_id(payload)
                request = None if correlation_id is None else link.pending.pop(correlation_id, None)
                if request is not None:
                    self._responses[request.api_key] += 1
                if correlation_id is not None and correlation_id in link.doomed:
                    topics = link.doomed.pop(correlation_id)
                    self._dropped += 1
                    self._cut += 1
                    logger.bind(link=link.ident, correlation_id=correlation_id, topics=topics).info(
                        "kafka fault proxy: produce answer lost; connection cut"
                    )
                    break
                await self._forward(link.client_writer, prefix + payload)
        except (ConnectionError, OSError) as exc:
            logger.bind(link=link.ident, error=str(exc)).trace("kafka fault proxy: broker gone")
        link.cut()


# --------------------------------------------------------------------------- with a broker

#: Attempts at finding a broker port nobody takes between our probe and Tansu's bind.
_PORT_ATTEMPTS: Final = 3


@asynccontextmanager
async def proxied_embedded_broker(
    *, host: str = "127.0.0.1", startup_timeout: float = 15.0
) -> AsyncIterator[tuple[EmbeddedBroker, KafkaFaultProxy]]:
    """An embedded broker that every client reaches only through a :class:`KafkaFaultProxy`.

    Yields ``(broker, proxy)``; give clients ``proxy.bootstrap``. The broker listens on a port
    of its own but advertises the proxy's port in its metadata, so even clients bootstrapped
    elsewhere end up on the proxy. The proxy starts first because the broker's readiness
    probe follows that advertised address. Both stop on exit, broker first.
    """
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        proxy = await KafkaFaultProxy(host, free_port(host), host=host).start()
        broker = EmbeddedBroker(
            port=proxy.upstream[1],
            host=host,
            advertised_port=proxy.port,
            startup_timeout=startup_timeout,
        )
        try:
            await broker.astart()
        except BrokerError as exc:
            await asyncio.to_thread(broker.stop)
            await proxy.stop()
            if attempt < _PORT_ATTEMPTS and "AddrInUse" in str(exc):
                logger.bind(attempt=attempt).warning(
                    "embedded broker behind the proxy lost its port; retrying"
                )
                continue
            raise
        except BaseException:
            await asyncio.to_thread(broker.stop)
            await proxy.stop()
            raise
        break
    else:  # pragma: no cover - the last attempt raises
        raise AssertionError("unreachable")
    try:
        yield broker, proxy
    finally:
        try:
            await asyncio.to_thread(broker.stop)
        finally:
            await proxy.stop()
