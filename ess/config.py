"""Settings for the ESS processes, from ``ESS_*`` environment variables (and ``.env``).

Only edges (CLI, workers) read settings; they pass plain values into the core.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ess.core import ResetPolicy
from ess.core.signing import parse_public_key
from schemas import TopicRegistry, topic_registry


class EssSettings(BaseSettings):
    """Process settings. Every field maps to ``ESS_<NAME>`` unless noted."""

    model_config = SettingsConfigDict(
        env_prefix="ESS_", env_file=".env", extra="ignore", frozen=True
    )

    #: Kafka bootstrap servers; empty means "start the embedded broker".
    kafka_bootstrap_servers: str = Field(
        default="",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "ESS_KAFKA_BOOTSTRAP_SERVERS"),
    )
    topic_prefix: str = "ess"
    input_partitions: int = Field(default=4, ge=1, le=256)
    #: Redis PolicyStore (``redis://host:6379/0``); wins over ``policy_store_url`` when set.
    redis_url: str = ""
    #: PolicyStore when Redis is not configured: ``sqlite:///path`` (one host) or ``memory://``.
    policy_store_url: str = "sqlite:///ess-policy.sqlite3"
    #: How often the projector re-asserts the record and ESS publishes its own health beat.
    refresh_interval_sec: float = Field(default=1.0, gt=0)
    #: ``component`` of ESS's own health beats (detection ignores it for ``system_critical``).
    health_component: str = "ess"
    #: The projector's HTTP ``/status``, ``/metrics`` and ``/healthz``; port 0 picks a free one,
    #: ``-1`` disables the server.
    status_host: str = "127.0.0.1"
    status_port: int = Field(default=9464, ge=-1, le=65535)
    log_level: str = "INFO"
    log_json: bool = True
    #: Directory of operator public keys, one ``<operator>.pub`` file each.
    operator_keys_dir: Path = Path("keys/operators")
    reset_quorum: int = Field(default=1, ge=1)
    reset_max_age_sec: float = Field(default=300.0, gt=0)
    reset_max_skew_sec: float = Field(default=30.0, ge=0)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"unknown log level {value!r}")
        return level

    def resolved_policy_store_url(self) -> str:
        """Redis when ``ESS_REDIS_URL`` is set, else ``ESS_POLICY_STORE_URL``."""
        return self.redis_url or self.policy_store_url

    def registry(self) -> TopicRegistry:
        """The topic registry under the configured prefix."""
        return topic_registry(self.topic_prefix, self.input_partitions)

    def reset_policy(self) -> ResetPolicy:
        """Operators from ``operator_keys_dir`` with the configured quorum and time bounds.

        An empty or missing directory gives a policy nobody can satisfy: ESS can still stop,
        it just cannot be reset until keys are installed (fail closed).
        """
        operators: dict[str, bytes] = {}
        if self.operator_keys_dir.is_dir():
            for path in sorted(self.operator_keys_dir.glob("*.pub")):
                operators[path.stem] = parse_public_key(path.read_text())
        return ResetPolicy(
            operators=operators,
            quorum=self.reset_quorum if operators else 1,
            max_age=timedelta(seconds=self.reset_max_age_sec),
            max_skew=timedelta(seconds=self.reset_max_skew_sec),
        )
