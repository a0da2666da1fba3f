"""Settings of a detection worker: where Kafka is, which group it is, thresholds and tuning.

Environment (all optional):

* ``KAFKA_BOOTSTRAP_SERVERS``, ``ESS_TOPIC_PREFIX``, ``ESS_INPUT_PARTITIONS`` and the Kafka
  security settings (``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_*``, ``KAFKA_SSL_*``): as for
  every ESS process (:class:`ess.config.EssSettings`, which the caller reads and passes in);
  without a bootstrap the runner starts an embedded broker.
* ``ESS_DETECT_GROUP`` (default ``ess-detect-a``): the Faust app id, which is also the
  consumer group and the prefix of the changelog topics. Run a second, independent group
  (``ess-detect-b``) for redundancy: both see every record and send the same trips with the
  same command ids, which the command processor records once.
* ``ESS_DETECT_CONFIG``: a TOML or JSON file holding a :class:`DetectionConfig`
  (thresholds); defaults otherwise.
* ``ESS_DETECT_FETCH_MAX_WAIT_MS``, ``ESS_DETECT_BATCH_MAX``,
  ``ESS_DETECT_TICK_INTERVAL_SEC``, ``ESS_DETECT_PRODUCER_LINGER_MS``, ``ESS_DETECT_STORE``,
  ``ESS_DETECT_STANDBY_REPLICAS``, ``ESS_DETECT_REPLICATION_FACTOR``: tuning (see the fields).
* ``ESS_DETECT_STATUS_PORT`` (default 9467; ``-1``: off): the worker's ``/status``,
  ``/metrics`` and ``/healthz``, on ``ESS_STATUS_HOST`` like every role's.
  ``ESS_DETECT_WEDGED_AFTER_SEC`` (default 30): ``/healthz`` fails once an assigned partition
  has had records waiting this long without progress (:mod:`ess.roles.detect.observe`).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ess.detection.detector import bind_topics
from ess.kafka.clients import PLAINTEXT, KafkaSecurity
from ess.rules.config import DetectionConfig
from schemas import TopicRegistry

__all__ = ["DetectEnv", "DetectorSettings", "load_detection_config"]


class DetectEnv(BaseSettings):
    """``ESS_DETECT_*`` environment variables (see the module docstring)."""

    model_config = SettingsConfigDict(env_prefix="ESS_DETECT_", extra="ignore", frozen=True)

    group: str = Field(default="ess-detect-a", min_length=1, max_length=200)
    config: Path | None = None
    fetch_max_wait_ms: int = Field(default=5, ge=1, le=1500)
    batch_max: int = Field(default=2000, ge=1, le=100_000)
    tick_interval_sec: float = Field(default=1.0, gt=0, le=60)
    producer_linger_ms: float = Field(default=10.0, ge=0, le=1000)
    store: str = "memory://"
    standby_replicas: int = Field(default=1, ge=0, le=10)
    replication_factor: int = Field(default=1, ge=1, le=10)
    status_port: int = Field(default=9467, ge=-1, le=65535)
    wedged_after_sec: float = Field(default=30.0, gt=0, le=3600)


def load_detection_config(path: Path | None) -> DetectionConfig:
    """A :class:`DetectionConfig` from a TOML or JSON file, or the defaults."""
    if path is None:
        return DetectionConfig()
    text = path.read_text()
    data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    return DetectionConfig.model_validate(data)


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    """Everything :func:`streams.app.create_app` and :func:`streams.runner.run_detector`
    need; build one with :meth:`from_env` or directly (tests, benchmark)."""

    bootstrap: str
    registry: TopicRegistry
    #: Faust app id = consumer group = changelog topic prefix.
    app_id: str = "ess-detect-a"
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    #: Consumer fetch wait (Faust hard-codes 1500 ms; see :mod:`streams.faust_compat`).
    #: 5 ms: ~0.15 core idle on worker and broker together. Measured on the embedded broker:
    #: 2 ms made idle trips slower (p99 ~80 ms against ~25 ms), 1 ms overloads it.
    fetch_max_wait_ms: int = 5
    #: Most records of one fetch an agent folds before it sends their trips and acks them:
    #: a batch is what one fetch brought for the topic, cut at this size (no timer: a timer
    #: would add to idle latency).
    batch_max: int = 2000
    #: Silence rules are ticked this often (wall clock).
    tick_interval_s: float = 1.0
    #: Faust's producer only carries changelog records here (trips and dead letters go
    #: through ESS's own producers), so a 10 ms linger costs no trip latency and batches the
    #: changelog (measured: +45-60 % throughput at 10 ms versus Faust's default 0).
    producer_linger_s: float = 0.010
    store: str = "memory://"
    web_enabled: bool = False
    standby_replicas: int = 1
    #: Replication factor of the topics Faust creates (changelogs, leader topic).
    replication_factor: int = 1
    #: TLS/SASL of every Kafka client of the worker: Faust's (``broker_credentials``) and
    #: ESS's own (epoch follower, trip and dead-letter producers, topic setup).
    security: KafkaSecurity = PLAINTEXT
    #: ``/status``, ``/metrics`` and ``/healthz`` (:func:`ess.observability.status.serve_status`):
    #: ``-1`` (the default here, for tests and tools that build settings directly) serves none, 0 a
    #: free port; :meth:`from_env` reads ``ESS_DETECT_STATUS_PORT`` (default 9467).
    status_host: str = "127.0.0.1"
    status_port: int = -1
    #: ``/healthz`` fails once an assigned partition has had records waiting and no progress
    #: for this long (:mod:`ess.roles.detect.observe`).
    wedged_after_s: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "detection", bind_topics(self.detection, self.registry))

    @classmethod
    def from_env(
        cls,
        bootstrap: str,
        registry: TopicRegistry,
        *,
        security: KafkaSecurity = PLAINTEXT,
        status_host: str = "127.0.0.1",
    ) -> DetectorSettings:
        """Settings from ``ESS_DETECT_*`` for a known Kafka, registry and connection security
        (``EssSettings.kafka_security()``; the Kafka settings are read once, by the caller),
        serving the status page on ``status_host`` (``EssSettings.status_host``)."""
        env = DetectEnv()
        return cls(
            bootstrap=bootstrap,
            registry=registry,
            security=security,
            app_id=env.group,
            detection=load_detection_config(env.config),
            fetch_max_wait_ms=env.fetch_max_wait_ms,
            batch_max=env.batch_max,
            tick_interval_s=env.tick_interval_sec,
            producer_linger_s=env.producer_linger_ms / 1000,
            store=env.store,
            standby_replicas=env.standby_replicas,
            replication_factor=env.replication_factor,
            status_host=status_host,
            status_port=env.status_port,
            wedged_after_s=env.wedged_after_sec,
        )

    def with_group(self, app_id: str) -> DetectorSettings:
        """The same settings for another consumer group."""
        return replace(self, app_id=app_id)
