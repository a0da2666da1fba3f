"""What a detection worker runs with: :class:`DetectorSettings`, the ``detect`` section of
the settings (:class:`ess.settings.DetectSettings`, variables ``ESS_DETECT_*``) bound to a
Kafka cluster, a topic registry, the connection security and the loaded thresholds.

The role reads the section once (:meth:`DetectorSettings.from_settings`); tests, chaos
campaigns and the benchmark build one directly, with the section's defaults for whatever they
leave out. The tuning defaults are the section's: they are written there only.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from ess.detection.detector import bind_topics
from ess.kafka.clients import PLAINTEXT, KafkaSecurity
from ess.rules.config import DetectionConfig
from ess.settings import DetectSettings, EssSettings, ObservabilitySettings, StorageSettings
from schemas import TopicRegistry

__all__ = ["DetectorSettings", "load_detection_config"]

#: The sections' defaults, which :class:`DetectorSettings` built in code starts from.
_DEFAULTS = DetectSettings()
_OBSERVABILITY = ObservabilitySettings()
_STORAGE = StorageSettings()


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
    need; build one with :meth:`from_settings` or directly (tests, benchmark). The fields
    mirror :class:`ess.settings.DetectSettings` (see it for what each one tunes)."""

    bootstrap: str
    registry: TopicRegistry
    #: Faust app id = consumer group = changelog topic prefix (``ESS_DETECT_GROUP``).
    app_id: str = _DEFAULTS.group
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    fetch_max_wait_ms: int = _DEFAULTS.fetch_max_wait_ms
    batch_max: int = _DEFAULTS.batch_max
    tick_interval_sec: float = _DEFAULTS.tick_interval_sec
    producer_linger_ms: float = _DEFAULTS.producer_linger_ms
    store: str = _DEFAULTS.store
    #: Faust's own web server (never used: ESS serves its status page itself).
    web_enabled: bool = False
    standby_replicas: int = _DEFAULTS.standby_replicas
    replication_factor: int = _DEFAULTS.replication_factor
    #: TLS/SASL of every Kafka client of the worker: Faust's (``broker_credentials``) and
    #: ESS's own (epoch follower, trip and dead-letter producers, topic setup).
    security: KafkaSecurity = PLAINTEXT
    #: ``/status``, ``/metrics`` and ``/healthz`` (:func:`ess.observability.status.serve_status`).
    #: Not the setting's default (9467): a worker built in code (tests, tools, several in one
    #: process) serves none unless asked; :meth:`from_settings` takes the setting's value.
    status_host: str = _OBSERVABILITY.status_host
    status_port: int = -1
    wedged_after_sec: float = _DEFAULTS.wedged_after_sec
    #: Where Faust keeps its app data directory (``<app id>-data``): ``ESS_DATA_DIR``, not
    #: the working directory.
    data_dir: Path = _STORAGE.data_dir

    def __post_init__(self) -> None:
        object.__setattr__(self, "detection", bind_topics(self.detection, self.registry))

    @classmethod
    def from_settings(
        cls, settings: EssSettings, *, bootstrap: str | None = None
    ) -> DetectorSettings:
        """The detect role's settings: the ``detect`` section, the thresholds file it names,
        the registry, connection security and status host of ``settings``, on ``bootstrap``
        (the resolved cluster; default ``KAFKA_BOOTSTRAP_SERVERS``)."""
        section = settings.detect
        return cls(
            bootstrap=settings.kafka.bootstrap_servers if bootstrap is None else bootstrap,
            registry=settings.registry(),
            security=settings.kafka_security(),
            app_id=section.group,
            detection=load_detection_config(section.config),
            fetch_max_wait_ms=section.fetch_max_wait_ms,
            batch_max=section.batch_max,
            tick_interval_sec=section.tick_interval_sec,
            producer_linger_ms=section.producer_linger_ms,
            store=section.store,
            standby_replicas=section.standby_replicas,
            replication_factor=section.replication_factor,
            status_host=settings.observability.status_host,
            status_port=section.status_port,
            wedged_after_sec=section.wedged_after_sec,
            data_dir=settings.storage.data_dir,
        )

    def with_group(self, app_id: str) -> DetectorSettings:
        """The same settings for another consumer group."""
        return replace(self, app_id=app_id)
