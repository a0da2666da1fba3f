"""Faust, mode and aiokafka internals that :mod:`streams.faust_compat` depends on, pinned by
source fingerprint (docs/faust.md, "Upgrading Faust").

``faust_compat`` overrides private methods, reads private attributes and carries a copy of
Faust 0.15.3's ``Consumer._drain_messages``/``getmany``. Nothing would fail if an upgrade
changed that code underneath it, so every member it relies on is fingerprinted here: the
sha256 (first 16 hex digits) of its dedented ``inspect.getsource``. A mismatch names the
member and what to re-check in ``faust_compat.py``. The versions are checked first, so an
upgrade fails with one clear message before the fingerprints do.

After re-reading every changed member and adapting ``faust_compat.py``, print the new
fingerprints with::

    .venv/bin/python -c "from tests.streams.test_faust_drift import FINGERPRINTS as F, \\
    fingerprint; [print(f'    \\"{k}\\": \\"{fingerprint(k)}\\",') for k in F]"
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import textwrap
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import faust.transport
import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.faust_compat import TRANSPORT_SCHEME, DetectApp, DetectTransport, consumer_urls

ROOT = Path(__file__).resolve().parents[2]
#: The distributions whose internals faust_compat relies on (constraints.txt pins them).
PINNED = ("faust-streaming", "mode-streaming", "aiokafka")

#: What to re-check in streams/faust_compat.py when a member changes.
RECHECK: dict[str, str] = {
    # The consumer loop: DetectConsumer._drain_messages/_split_fetch/_seek_back are a copy.
    "faust.transport.consumer:Consumer._drain_messages": "DetectConsumer._drain_messages "
    "and _split_fetch are a copy of it: port the change (stop/cancel handling, read offsets, "
    "gaps, the commit-every path we dropped)",
    "faust.transport.consumer:Consumer.getmany": "DetectConsumer._split_fetch and _seek_back "
    "copy it: active/buffered partition filter, generation check, seek back when the flow "
    "is inactive",
    "faust.transport.consumer:Consumer._wait_next_records": "DetectConsumer._drain_messages "
    "calls it and unpacks (records, active_partitions)",
    "faust.transport.consumer:Consumer._add_gap": "_split_fetch calls it with (tp, from, to)",
    "faust.transport.consumer:Consumer.__init__": "the private attributes faust_compat reads "
    "or writes (_read_offset, _committed_offset, _acked, _acked_index, _unacked_messages, "
    "_buffered_partitions, _waiting_for_ack, suspend_flow, callback, in_transaction)",
    "faust.transport.consumer:Consumer.ack": "ack_batch is a copy of it for a FetchedBatch",
    "faust.transport.consumer:Consumer.track_message": "_drain_messages replaces it with "
    "_unacked_messages.add(batch) (the per-message sensor is a LeanMonitor no-op)",
    "faust.transport.consumer:Consumer.wait_empty": "FetchedBatch stands in for a Message in "
    "_unacked_messages: wait_empty reads .refcount",
    "faust.transport.consumer:Consumer._clean_unacked_messages": "FetchedBatch stands in for "
    "a Message in _unacked_messages: this reads .acked",
    "faust.transport.consumer:Consumer._commit_offsets": "DetectConsumer._commit_offsets "
    "flushes DetectTables before calling it; check it still runs on every commit path and "
    "flushes the producer before committing",
    "faust.transport.consumer:Consumer.perform_seek": "DetectConsumer._seek_back calls it",
    "faust.transport.drivers.aiokafka:Consumer._new_consumer_thread": "DetectConsumer "
    "overrides it to build a DetectConsumerThread with the same arguments",
    "faust.transport.drivers.aiokafka:Consumer._to_message": "_split_fetch calls it for "
    "records of topics that are not delivered in batches",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._create_worker_consumer": (
        "DetectConsumerThread overrides it to replace fetch_max_wait_ms=1500 on the consumer "
        "it returns; drop the override if Faust now takes the wait from a setting"
    ),
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._highwaters": (
        "DetectConsumerThread._highwaters calls it and raises its answer to the fetch high "
        "watermark; check the return type and the in_transaction branch"
    ),
    "faust.transport.drivers.aiokafka:server_list": "DetectConsumerThread._highwaters builds "
    "the probe's bootstrap list with it",
    "faust.transport.drivers.aiokafka:credentials_to_aiokafka_auth": "the high watermark "
    "probe connects with these keywords, like Faust's consumer",
    "faust.transport.drivers.aiokafka:Producer._ensure_producer": "DetectTable.flush takes "
    "the aiokafka producer from it",
    "faust.transport.base:Transport.create_consumer": "DetectTransport only swaps the "
    "Consumer class attribute that this reads",
    "faust.transport.conductor:Conductor._update_indices": "DetectApp.deliver_batches relies "
    "on topics.add() subscribing the topic and enabling its acks like an agent's topic",
    "faust.transport.conductor:Conductor.acks_enabled_for": "_split_fetch and ack_batch ask "
    "it per topic",
    "faust.app.base:App._new_transport": "DetectApp gets its DetectTransport from this: "
    "Faust's transport registry looked up by the scheme of broker_consumer[0] "
    "(TRANSPORT_SCHEME, consumer_urls)",
    "faust.app.base:App._new_producer_transport": "the producer transport must still come "
    "from broker_producer (kafka://), not from broker_consumer's DetectTransport",
    "mode.utils.imports:FactoryMapping.by_url": "the TRANSPORTS registry resolves "
    "TRANSPORT_SCHEME to DetectTransport through it",
    "mode.utils.imports:FactoryMapping.by_name": "TRANSPORTS[TRANSPORT_SCHEME] is a "
    "'module:Class' string that this resolves",
    "faust.transport.base:Transport.__init__": "DetectConsumerThread._highwaters reads "
    "transport.url (the ess-kafka:// URLs, turned into host:port by server_list) and "
    "_drain_messages transport.app",
    "faust.transport.consumer:ConsumerThread.__init__": "DetectConsumer._new_consumer_thread "
    "passes (consumer, loop=, beacon=); DetectConsumerThread reads .consumer, .transport "
    "and .app",
    "faust.transport.conductor:Conductor.add": "DetectApp.deliver_batches registers its "
    "topic with topics.add(), like an agent's topic",
    "mode.utils.queues:FlowControlEvent.is_active": "current_batch asks "
    "app.flow_control.is_active(), as the stream iterator does",
    # Outside faust_compat: the observer and the runner read two more private members.
    "faust.app.base:App.consumer": "ess/roles/detect/observe.py (DetectObserver.sample) "
    "reads app._consumer so as not to build the consumer, and consumer._committed_offset",
    "faust.sensors.monitor:Monitor.on_message_in": "LeanMonitor makes it a no-op",
    "faust.sensors.monitor:Monitor.on_stream_event_in": "LeanMonitor makes it a no-op",
    "faust.sensors.monitor:Monitor.on_stream_event_out": "LeanMonitor makes it a no-op",
    "faust.sensors.monitor:Monitor.on_message_out": "LeanMonitor makes it a no-op",
    "faust.sensors.monitor:Monitor.on_send_initiated": "LeanMonitor makes it a no-op",
    "faust.sensors.monitor:Monitor.on_send_completed": "LeanMonitor makes it a no-op",
    "faust.tables.table:Table.on_key_set": "DetectTable.put replaces Table.__setitem__ (and "
    "this hook): check what a set sends and tracks",
    "faust.tables.base:Collection.send_changelog": "DetectTable.flush bypasses it (partition "
    "from current_event(), #300/#497); check the record format it sends",
    "faust.tables.base:Collection._send_changelog": "DetectTable.flush writes the same JSON "
    "key/value records directly",
    "faust.tables.base:Collection.apply_changelog_batch": "recovery must still decode the "
    "records DetectTable.flush writes",
    "faust.tables.base:Collection.changelog_topic_name": "DetectTable.flush sends to it",
    "faust.tables.base:Collection.data": "DetectTable.put and flush use .data directly",
    "faust.stores.memory:Store.apply_changelog_batch": "recovered values are JSON-decoded "
    "dicts: DetectTable.flush skips dicts (unchanged since recovery)",
    "faust.streams:Stream._c_aiter": "the agent iterates the deliver_batches channel; "
    "current_batch mirrors the stream's stale-event skip",
    "faust/_cython/streams.pyx": "the compiled stream iterator skips events of another "
    "consumer generation or while the flow is inactive; current_batch mirrors that",
    "faust.channels:Channel.put": "_drain_messages puts FetchedBatches into the channel",
    "faust.types.tuples:Message.ack": "ack_batch takes the same ack_lock as Message.ack",
    "mode.utils.futures:notify": "ack_batch wakes wait_empty with it",
    "mode.services:Service.__init__": "_drain_messages reads _stopped and diag of the "
    "consumer and the fetcher; DetectTable.__post_init__ relies on it calling "
    "__post_init__; streams/runner.py reads the app's _crashed and _crash_reason",
    "aiokafka.consumer.consumer:AIOKafkaConsumer.__init__": "DetectConsumerThread sets "
    "_fetch_max_wait_ms after construction; check the attribute name",
    "aiokafka.consumer.consumer:AIOKafkaConsumer.start": "the Fetcher must still read "
    "_fetch_max_wait_ms when the consumer starts",
    "aiokafka.consumer.consumer:AIOKafkaConsumer.highwater": "fetched_highwaters reads it",
    "aiokafka.producer.producer:AIOKafkaProducer.create_batch": "DetectTable.flush batches "
    "changelog records with it",
    "aiokafka.producer.producer:AIOKafkaProducer.send_batch": "DetectTable.flush sends with it",
    "aiokafka.producer.message_accumulator:BatchBuilder.append": "DetectTable.flush treats "
    "None as 'batch full' and relies on a new batch taking any first record",
}

#: Source fingerprints of the members above in the pinned versions (constraints.txt).
FINGERPRINTS: dict[str, str] = {
    "faust.transport.consumer:Consumer._drain_messages": "8f35dd7a11144daa",
    "faust.transport.consumer:Consumer.getmany": "e486c434b7928ee8",
    "faust.transport.consumer:Consumer._wait_next_records": "ba40cd3671328d3b",
    "faust.transport.consumer:Consumer._add_gap": "f1cc1db634f5ea09",
    "faust.transport.consumer:Consumer.__init__": "00f02908cf84d93a",
    "faust.transport.consumer:Consumer.ack": "5548cf0f75843f73",
    "faust.transport.consumer:Consumer.track_message": "e43b88ec93553217",
    "faust.transport.consumer:Consumer.wait_empty": "53195dca246c0a86",
    "faust.transport.consumer:Consumer._clean_unacked_messages": "c616dec1d18bd157",
    "faust.transport.consumer:Consumer._commit_offsets": "86b3e9b0aec773ac",
    "faust.transport.consumer:Consumer.perform_seek": "2b4ceebd23deb7ee",
    "faust.transport.drivers.aiokafka:Consumer._new_consumer_thread": "8fd0d41b15145615",
    "faust.transport.drivers.aiokafka:Consumer._to_message": "a2a5aefda42d9cd1",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._create_worker_consumer": (
        "c179c0bdb9755c3a"
    ),
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._highwaters": "829699ec62b7ec5b",
    "faust.transport.drivers.aiokafka:server_list": "5a13d9708b3ced16",
    "faust.transport.drivers.aiokafka:credentials_to_aiokafka_auth": "364c9c9c68523c50",
    "faust.transport.drivers.aiokafka:Producer._ensure_producer": "04016bd22147281a",
    "faust.transport.base:Transport.create_consumer": "9eb4f22bbf3f8dc1",
    "faust.transport.conductor:Conductor._update_indices": "bf2bb3f46e6b4e38",
    "faust.transport.conductor:Conductor.acks_enabled_for": "f928f5da71c45e34",
    "faust.app.base:App._new_transport": "11beddacb9fee5b0",
    "faust.app.base:App._new_producer_transport": "4ebfd7e867b39ca6",
    "mode.utils.imports:FactoryMapping.by_url": "b96d447abaf89314",
    "mode.utils.imports:FactoryMapping.by_name": "3be2cef9eb271c37",
    "faust.transport.base:Transport.__init__": "86f443aad2a67fdf",
    "faust.transport.consumer:ConsumerThread.__init__": "d28391029483fdbc",
    "faust.transport.conductor:Conductor.add": "ee55963a9c6516a7",
    "mode.utils.queues:FlowControlEvent.is_active": "272537214261cd35",
    "faust.app.base:App.consumer": "da61178445fadeaa",
    "faust.sensors.monitor:Monitor.on_message_in": "a2ed6a359743782a",
    "faust.sensors.monitor:Monitor.on_stream_event_in": "de452defd9dad12e",
    "faust.sensors.monitor:Monitor.on_stream_event_out": "dd7e69014a8edac2",
    "faust.sensors.monitor:Monitor.on_message_out": "ae62eaec781dec80",
    "faust.sensors.monitor:Monitor.on_send_initiated": "700a8cb4529caf47",
    "faust.sensors.monitor:Monitor.on_send_completed": "3bc3b8ca314cccec",
    "faust.tables.table:Table.on_key_set": "9ff71a01455e7600",
    "faust.tables.base:Collection.send_changelog": "78a5e11370efe43a",
    "faust.tables.base:Collection._send_changelog": "2fa0cb7eb2b2911e",
    "faust.tables.base:Collection.apply_changelog_batch": "a612598bdc305e1f",
    "faust.tables.base:Collection.changelog_topic_name": "b495af44610eeda6",
    "faust.tables.base:Collection.data": "91cfa32a100b8a5c",
    "faust.stores.memory:Store.apply_changelog_batch": "434520d949dcdb41",
    "faust.streams:Stream._c_aiter": "e1c5071a8280fd46",
    "faust/_cython/streams.pyx": "0041622f4a251188",
    "faust.channels:Channel.put": "f057b920dab6b478",
    "faust.types.tuples:Message.ack": "3c9ee05236d3fe1f",
    "mode.utils.futures:notify": "ef6a073439d5ece3",
    "mode.services:Service.__init__": "4a44ca859d668719",
    "aiokafka.consumer.consumer:AIOKafkaConsumer.__init__": "bda88cd619881d72",
    "aiokafka.consumer.consumer:AIOKafkaConsumer.start": "5ba1baa38f6246a0",
    "aiokafka.consumer.consumer:AIOKafkaConsumer.highwater": "bfbfa9e4c3e5ae5e",
    "aiokafka.producer.producer:AIOKafkaProducer.create_batch": "86ae801b347c9d62",
    "aiokafka.producer.producer:AIOKafkaProducer.send_batch": "ff8d65b595170b0e",
    "aiokafka.producer.message_accumulator:BatchBuilder.append": "65992902ef83c7cb",
}

#: Private instance attributes read or written by faust_compat, and the method that sets them.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "faust.transport.consumer:Consumer.__init__": (
        "_acked",
        "_acked_index",
        "_read_offset",
        "_committed_offset",
        "_unacked_messages",
        "_buffered_partitions",
        "_waiting_for_ack",
        "suspend_flow",
        "callback",
        "in_transaction",
    ),
    # _crashed and _crash_reason: streams/runner.py waits on them.
    "mode.services:Service.__init__": ("_stopped", "diag", "_crashed", "_crash_reason"),
    "aiokafka.consumer.consumer:AIOKafkaConsumer.__init__": ("_fetch_max_wait_ms",),
    "faust.transport.base:Transport.__init__": ("url", "app"),
    "faust.transport.consumer:ConsumerThread.__init__": ("consumer", "transport", "app"),
}

#: Module-level and class-level names imported or read by faust_compat.
NAMES: tuple[str, ...] = (
    "faust.transport.consumer:CONSUMER_FETCHING",
    "faust.transport.consumer:Consumer._n_acked",
    "faust.transport.consumer:Consumer.consumer_stopped_errors",
    "faust.transport.consumer:Consumer.flow_active",
    "faust.app.base:App.consumer_generation_id",
    "faust.app.base:App.flow_control",
    "faust.transport.drivers:TRANSPORTS",
    "faust.transport.drivers.aiokafka:Transport.default_port",
    "faust.types.tuples:ack_lock",
)


def _resolve(name: str) -> Any:
    module_name, _, qualname = name.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = inspect.getattr_static(obj, part) if inspect.isclass(obj) else getattr(obj, part)
    if isinstance(obj, property):
        return obj.fget
    if isinstance(obj, staticmethod | classmethod):
        return obj.__func__
    return obj


def source(name: str) -> str:
    """The source of ``module:qualname``, or of a file inside an installed package."""
    if ":" not in name:
        package = importlib.import_module(name.split("/", 1)[0])
        assert package.__file__ is not None
        return (Path(package.__file__).parent.parent / name).read_text()
    return inspect.getsource(_resolve(name))


def fingerprint(name: str) -> str:
    normalized = textwrap.dedent(source(name))
    return hashlib.sha256(normalized.encode()).hexdigest()[:16]


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        dist, sep, pinned = line.partition("==")
        if sep and dist.strip().lower() in PINNED:
            pins[dist.strip().lower()] = pinned.strip()
    return pins


@pytest.mark.parametrize("dist", PINNED)
def test_installed_version_is_the_pinned_one(dist: str) -> None:
    pinned = _pins().get(dist)
    assert pinned is not None, f"constraints.txt does not pin {dist}"
    assert version(dist) == pinned, (
        f"{dist} {version(dist)} is installed, constraints.txt pins {pinned}. "
        "streams/faust_compat.py relies on this exact version's internals: read docs/faust.md "
        '("Upgrading Faust"), re-check every member this test names, then update the pins and '
        "the fingerprints."
    )


def test_pyproject_pins_faust_exactly() -> None:
    # Wherever it is declared (the base install or an extra such as ``server``): once, exact.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"]]
    for extra in project.get("optional-dependencies", {}).values():
        declared += extra
    faust = [dep for dep in declared if dep.startswith("faust-streaming")]
    assert faust == [f"faust-streaming=={_pins()['faust-streaming']}"]


def test_every_member_has_a_fingerprint_and_a_reason() -> None:
    assert set(FINGERPRINTS) == set(RECHECK)


@pytest.mark.parametrize("name", sorted(RECHECK))
def test_member_unchanged(name: str) -> None:
    found = fingerprint(name)
    assert found == FINGERPRINTS.get(name), (
        f"{name} changed upstream (fingerprint {found}, recorded "
        f"{FINGERPRINTS.get(name)}). Re-check in streams/faust_compat.py: {RECHECK[name]}. "
        "Then record the new fingerprint (see this module's docstring)."
    )


def _assigned_self_attributes(function: Any) -> set[str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.ctx, ast.Store)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    }


@pytest.mark.parametrize("setter", sorted(ATTRIBUTES))
def test_private_attributes_still_set(setter: str) -> None:
    missing = set(ATTRIBUTES[setter]) - _assigned_self_attributes(_resolve(setter))
    assert not missing, (
        f"{setter} no longer sets {sorted(missing)}: streams/faust_compat.py reads or writes "
        "them (see RECHECK in this module for where)."
    )


@pytest.mark.parametrize("name", NAMES)
def test_names_still_exist(name: str) -> None:
    try:
        _resolve(name)
    except AttributeError as exc:
        pytest.fail(f"{name} is gone: streams/faust_compat.py imports or reads it ({exc})")


def test_registry_hands_detect_app_its_transport() -> None:
    """The public seam DetectApp uses instead of overriding ``App._new_transport``: the
    ``ess-kafka://`` consumer URLs select DetectTransport, the producer stays on Faust's."""
    assert faust.transport.by_url(f"{TRANSPORT_SCHEME}://h:1") is DetectTransport
    assert faust.transport.by_url("kafka://h:1") is faust_aiokafka.Transport
    app = DetectApp(
        "drift-registry",
        broker="kafka://127.0.0.1:1",
        broker_consumer=consumer_urls("127.0.0.1:1, 127.0.0.2:2"),
        autodiscover=False,
    )
    assert type(app.transport) is DetectTransport
    assert [str(url) for url in app.transport.url] == [
        f"{TRANSPORT_SCHEME}://127.0.0.1:1",
        f"{TRANSPORT_SCHEME}://127.0.0.2:2",
    ]
    assert faust_aiokafka.server_list(app.transport.url, 9092) == ["127.0.0.1:1", "127.0.0.2:2"]
    assert type(app.producer_transport) is faust_aiokafka.Transport


def test_batch_delivery_refuses_faust_own_consumer() -> None:
    app = DetectApp("drift-plain", broker="kafka://127.0.0.1:1", autodiscover=False)
    with pytest.raises(ValueError, match="ess-kafka://"):
        app.deliver_batches(app.topic("drift-plain-input"))
