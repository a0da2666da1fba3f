"""Settings for the ESS processes, from ``ESS_*`` environment variables (and ``.env``).

Only edges (CLI, workers) read settings; they pass plain values into the core.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ess.core import ResetPolicy
from ess.core.attestation import SigningKey, trusted_keys
from ess.core.reader import Trust
from ess.core.signing import KeyMaterialError, load_private_key, parse_public_key
from ess.kafka.clients import KafkaSecurity, SaslMechanism, SecurityProtocol
from schemas import TopicRegistry, topic_registry

#: Sub-directory of ``ESS_OPERATOR_KEYS_DIR`` for keys that may no longer sign resets but
#: whose past resets must still verify when the state log is read.
RETIRED_DIR = "retired"


def _kafka_env(name: str) -> AliasChoices:
    """``KAFKA_<NAME>`` (what Kafka tooling and operators expect), or ``ESS_KAFKA_<NAME>``."""
    return AliasChoices(f"KAFKA_{name}", f"ESS_KAFKA_{name}")


class EssSettings(BaseSettings):
    """Process settings. Every field maps to ``ESS_<NAME>`` unless noted."""

    # hide_input_in_errors: pydantic prints every input of a failed model validation, which
    # would include KAFKA_SASL_PASSWORD (and a Redis URL's password) in plain text.
    model_config = SettingsConfigDict(
        env_prefix="ESS_",
        env_file=".env",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
    )

    #: Kafka bootstrap servers; empty means "start the embedded broker".
    kafka_bootstrap_servers: str = Field(
        default="",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "ESS_KAFKA_BOOTSTRAP_SERVERS"),
    )
    #: Connection security of every Kafka client (``KAFKA_SECURITY_PROTOCOL``, ...; see
    #: :class:`ess.kafka.clients.KafkaSecurity` for the rules). PLAINTEXT by default: the embedded
    #: broker and the compose stack speak nothing else.
    kafka_security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT", validation_alias=_kafka_env("SECURITY_PROTOCOL")
    )
    kafka_sasl_mechanism: SaslMechanism | None = Field(
        default=None, validation_alias=_kafka_env("SASL_MECHANISM")
    )
    kafka_sasl_username: str | None = Field(
        default=None, validation_alias=_kafka_env("SASL_USERNAME")
    )
    #: Prints as ``**********`` (repr, logs, validation errors).
    kafka_sasl_password: SecretStr | None = Field(
        default=None, validation_alias=_kafka_env("SASL_PASSWORD")
    )
    kafka_ssl_cafile: Path | None = Field(default=None, validation_alias=_kafka_env("SSL_CAFILE"))
    kafka_ssl_certfile: Path | None = Field(
        default=None, validation_alias=_kafka_env("SSL_CERTFILE")
    )
    kafka_ssl_keyfile: Path | None = Field(default=None, validation_alias=_kafka_env("SSL_KEYFILE"))
    topic_prefix: str = "ess"
    input_partitions: int = Field(default=4, ge=1, le=256)
    #: Redis PolicyStore (``redis://host:6379/0``); wins over ``policy_store_url`` when set.
    redis_url: str = ""
    #: PolicyStore when Redis is not configured: ``sqlite:///path`` (one host) or ``memory://``.
    policy_store_url: str = "sqlite:///ess-policy.sqlite3"
    #: How often the projector re-asserts the record and ESS publishes its own health beat.
    refresh_interval_sec: float = Field(default=1.0, gt=0)
    #: The projector stops re-asserting the record once ``ess.state`` has not answered for
    #: this long (it can no longer vouch for it): gates then close within this plus their
    #: ``max_record_age``.
    log_timeout_sec: float = Field(default=3.0, gt=0)
    #: ``component`` of ESS's own health beats (detection ignores it for ``system_critical``).
    health_component: str = "ess"
    #: The projector's HTTP ``/status``, ``/metrics`` and ``/healthz``; port 0 picks a free one,
    #: ``-1`` disables the server.
    status_host: str = "127.0.0.1"
    status_port: int = Field(default=9464, ge=-1, le=65535)
    #: The command processor's ``/status``, ``/metrics`` and ``/healthz`` (``-1``: off).
    command_status_port: int = Field(default=9466, ge=-1, le=65535)
    log_level: str = "INFO"
    log_json: bool = True
    #: Directory of operator public keys, one ``<operator>.pub`` file each; keys in its
    #: ``retired/`` sub-directory no longer sign resets but still verify old ones.
    operator_keys_dir: Path = Path("keys/operators")
    reset_quorum: int = Field(default=1, ge=1)
    reset_max_age_sec: float = Field(default=300.0, gt=0)
    reset_max_skew_sec: float = Field(default=30.0, ge=0)
    #: The command processor's private signing key (``ess keygen --processor``).
    processor_key_file: Path = Path("keys/processor.key")
    #: Public keys of the command processor that readers of ``ess.state`` trust (every key
    #: it has used: old entries stay signed by old keys).
    processor_keys_dir: Path = Path("keys/processors")
    #: Unsigned state-log entries (written before entries were signed) are trusted only at
    #: offsets below this; 0 trusts none.
    state_log_unsigned_before: int = Field(default=0, ge=0)
    #: The projector vouches for an INACTIVE record only while the command processor's
    #: signed beat is younger than this and no command has waited longer than
    #: ``command_backlog_timeout_sec``: gates close within this plus their record age when
    #: the processor is gone or wedged.
    processor_timeout_sec: float = Field(default=3.0, gt=0)
    command_backlog_timeout_sec: float = Field(default=3.0, gt=0)
    #: How often the command processor publishes its signed liveness beat.
    processor_beat_interval_sec: float = Field(default=0.5, gt=0)
    #: The command processor's ``/healthz`` fails once one command has been in hand longer
    #: than this (wedged: an orchestrator should restart it).
    command_wedged_after_sec: float = Field(default=30.0, gt=0)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"unknown log level {value!r}")
        return level

    @field_validator("kafka_security_protocol", mode="before")
    @classmethod
    def _protocol_spelling(cls, value: Any) -> Any:
        # `sasl_ssl` is a common spelling in deployment files; blank is the default.
        if isinstance(value, str):
            return value.strip().upper() or "PLAINTEXT"
        return value

    @field_validator("kafka_sasl_mechanism", mode="before")
    @classmethod
    def _mechanism_spelling(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip().upper() or None
        return value

    @field_validator(
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_ssl_cafile",
        "kafka_ssl_certfile",
        "kafka_ssl_keyfile",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        # Compose files and .env templates write `KAFKA_SSL_CAFILE=` for "not set"; as a path
        # that would be the current directory.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _consistent_kafka_security(self) -> EssSettings:
        """Fail at start, naming the settings, not on the first connection."""
        security = self.kafka_security()  # raises KafkaSecurityError (a ValueError)
        if security.protocol != "PLAINTEXT" and not self.kafka_bootstrap_servers.strip():
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={security.protocol} needs KAFKA_BOOTSTRAP_SERVERS: "
                "the embedded broker speaks PLAINTEXT only"
            )
        return self

    def kafka_security(self) -> KafkaSecurity:
        """The Kafka connection security every client of this process uses."""
        return KafkaSecurity(
            protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=self.kafka_sasl_password,
            ssl_cafile=self.kafka_ssl_cafile,
            ssl_certfile=self.kafka_ssl_certfile,
            ssl_keyfile=self.kafka_ssl_keyfile,
        )

    def resolved_policy_store_url(self) -> str:
        """Redis when ``ESS_REDIS_URL`` is set, else ``ESS_POLICY_STORE_URL``."""
        return self.redis_url or self.policy_store_url

    def registry(self) -> TopicRegistry:
        """The topic registry under the configured prefix."""
        return topic_registry(self.topic_prefix, self.input_partitions)

    def reset_policy(self) -> ResetPolicy:
        """Operators from ``operator_keys_dir`` with the configured quorum and time bounds.

        An empty or missing directory gives a policy nobody can satisfy: ESS can still stop,
        it just cannot be reset until keys are installed (fail closed). Two names with one
        key, or an unusable key, raise ``ValueError`` (refuse to start).
        """
        operators = _read_public_keys(self.operator_keys_dir)
        return ResetPolicy(
            operators=operators,
            quorum=self.reset_quorum if operators else 1,
            max_age=timedelta(seconds=self.reset_max_age_sec),
            max_skew=timedelta(seconds=self.reset_max_skew_sec),
        )

    def operator_verification_keys(self) -> dict[str, bytes]:
        """Every operator key a reader verifies old resets with: current and retired."""
        retired = _read_public_keys(self.operator_keys_dir / RETIRED_DIR)
        return {**retired, **_read_public_keys(self.operator_keys_dir)}

    def processor_signing_key(self) -> SigningKey:
        """The command processor's signing key; :class:`KeyMaterialError` (with what to do)
        when it is missing or unusable."""
        path = self.processor_key_file
        if not path.is_file():
            raise KeyMaterialError(
                f"no command processor key at {path} (ESS_PROCESSOR_KEY_FILE): create one with "
                "`ess keygen --processor` and install its .pub in every reader's "
                "ESS_PROCESSOR_KEYS_DIR"
            )
        return SigningKey(load_private_key(path))

    def state_trust(self, *, also_trust: SigningKey | None = None) -> Trust:
        """What this process's readers of ``ess.state`` trust: the processor keys in
        ``processor_keys_dir`` (plus ``also_trust``, the key of a processor running in this
        same process), the operator keys, and the legacy bound. Raises
        :class:`KeyMaterialError` when no processor key is trusted at all: such a reader
        could verify nothing, and must not start."""
        keys = list(_read_public_keys(self.processor_keys_dir).values())
        if also_trust is not None:
            keys.append(also_trust.public)
        if not keys:
            raise KeyMaterialError(
                f"no trusted command processor keys in {self.processor_keys_dir} "
                "(ESS_PROCESSOR_KEYS_DIR): readers of ess.state cannot verify it. Install the "
                "processor's .pub (from `ess keygen --processor`) there"
            )
        return Trust(
            scope=self.registry().state.name,
            processor_keys=trusted_keys(keys),
            operator_keys=self.operator_verification_keys(),
            unsigned_before=self.state_log_unsigned_before,
        )


def _read_public_keys(directory: Path) -> dict[str, bytes]:
    """``<name>.pub`` files of ``directory`` (none if it does not exist), by name."""
    if not directory.is_dir():
        return {}
    keys: dict[str, bytes] = {}
    for path in sorted(directory.glob("*.pub")):
        try:
            keys[path.stem] = parse_public_key(path.read_text())
        except KeyMaterialError as exc:
            raise KeyMaterialError(f"{path}: {exc}") from exc
    return keys
