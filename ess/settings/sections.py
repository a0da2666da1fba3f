"""The sections of :class:`ess.settings.EssSettings`: one per concern and one per role.

Each section is a frozen model that knows the environment variables of its fields: field
``x`` of a section is read from ``<prefix>X`` for each of the section's prefixes in order
(the first one set wins), unless the section names the variables of that field explicitly.
Units are in every duration's name: ``_sec`` for seconds, ``_ms`` for milliseconds.

A section built in code (``ExecuteSettings(enforce_interval_sec=1.0)``) reads nothing from the
environment; only :class:`ess.settings.EssSettings` does, once, for all of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from ess.kafka.clients import KafkaSecurity, SaslMechanism, SecurityProtocol

__all__ = [
    "CommandSettings",
    "DetectSettings",
    "ExecuteSettings",
    "KafkaSettings",
    "KeySettings",
    "NotifySettings",
    "ObservabilitySettings",
    "PolicyStoreSettings",
    "ProjectSettings",
    "Section",
    "StorageSettings",
]

_LOG_LEVELS = frozenset({"TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"})


class Section(BaseModel):
    """A group of settings and the environment variables they are read from."""

    # hide_input_in_errors: pydantic prints every input of a failed validation, which would
    # include KAFKA_SASL_PASSWORD (and a Redis URL's password) in plain text.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    #: Field ``x`` is read from ``<prefix>X``, for each prefix in order (the first set wins).
    env_prefixes: ClassVar[tuple[str, ...]] = ("ESS_",)
    #: Fields read from other variables than ``<prefix><FIELD>`` (the first one documented).
    env_overrides: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    #: Old variable names still read for one release, with a warning: old name -> field.
    deprecated_env: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def env_names(cls, field: str) -> tuple[str, ...]:
        """The variables ``field`` is read from, in priority order (deprecated ones excluded)."""
        return cls.env_overrides.get(field) or tuple(
            prefix + field.upper() for prefix in cls.env_prefixes
        )


# --------------------------------------------------------------------------- concerns


class KafkaSettings(Section):
    """Where Kafka is, how every client connects to it, and the topics' names.

    The connection settings are read from ``KAFKA_<NAME>`` (what Kafka tooling and operators
    expect) or ``ESS_KAFKA_<NAME>``; see :class:`ess.kafka.clients.KafkaSecurity` for the
    rules. PLAINTEXT by default: the embedded broker and the compose stack speak nothing else.
    """

    env_prefixes: ClassVar[tuple[str, ...]] = ("KAFKA_", "ESS_KAFKA_")
    env_overrides: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "topic_prefix": ("ESS_TOPIC_PREFIX",),
        "input_partitions": ("ESS_INPUT_PARTITIONS",),
    }

    #: Kafka bootstrap servers; empty means "start the embedded broker".
    bootstrap_servers: str = ""
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    #: Prints as ``**********`` (repr, logs, validation errors).
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    #: Prefix of every topic name (``<prefix>.state``, ``<prefix>.fills``, ...).
    topic_prefix: str = "ess"
    #: Partitions of each input topic (created once; see README, "Scaling").
    input_partitions: int = Field(default=4, ge=1, le=256)

    @field_validator("security_protocol", mode="before")
    @classmethod
    def _protocol_spelling(cls, value: Any) -> Any:
        # `sasl_ssl` is a common spelling in deployment files; blank is the default.
        if isinstance(value, str):
            return value.strip().upper() or "PLAINTEXT"
        return value

    @field_validator("sasl_mechanism", mode="before")
    @classmethod
    def _mechanism_spelling(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip().upper() or None
        return value

    @field_validator(
        "sasl_username", "sasl_password", "ssl_cafile", "ssl_certfile", "ssl_keyfile", mode="before"
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        # `KAFKA_SSL_CAFILE=` means "not set"; as a path it would be the current directory.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _consistent_security(self) -> KafkaSettings:
        """Fail at start, naming the settings, not on the first connection."""
        security = self.security()  # raises KafkaSecurityError (a ValueError)
        if security.protocol != "PLAINTEXT" and not self.bootstrap_servers.strip():
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={security.protocol} needs KAFKA_BOOTSTRAP_SERVERS: "
                "the embedded broker speaks PLAINTEXT only"
            )
        return self

    def security(self) -> KafkaSecurity:
        """The Kafka connection security every client of this process uses."""
        return KafkaSecurity(
            protocol=self.security_protocol,
            sasl_mechanism=self.sasl_mechanism,
            sasl_username=self.sasl_username,
            sasl_password=self.sasl_password,
            ssl_cafile=self.ssl_cafile,
            ssl_certfile=self.ssl_certfile,
            ssl_keyfile=self.ssl_keyfile,
        )


class StorageSettings(Section):
    """Where ESS keeps files of its own on this host."""

    #: Every file ESS writes by default: the SQLite PolicyStore (without Redis), the detect
    #: workers' Faust data, what ``ess up`` generates. Relative to the working directory
    #: (git-ignored in this repository); give an absolute path in a deployment.
    data_dir: Path = Path("ess-data")


class PolicyStoreSettings(Section):
    """Where the projector writes the ``emergency_stop`` record that trading gates read."""

    env_prefixes: ClassVar[tuple[str, ...]] = ("ESS_POLICY_STORE_",)
    env_overrides: ClassVar[Mapping[str, tuple[str, ...]]] = {"redis_url": ("ESS_REDIS_URL",)}

    #: Redis PolicyStore (``redis://host:6379/0``); wins over ``url`` when set.
    redis_url: str = ""
    #: The PolicyStore when Redis is not configured: ``sqlite:///path`` (one host) or
    #: ``memory://`` (this process only); empty: ``policy.sqlite3`` in ``ESS_DATA_DIR``.
    url: str = ""

    def resolved_url(self, data_dir: Path) -> str:
        """Redis when ``ESS_REDIS_URL`` is set, else ``ESS_POLICY_STORE_URL``, else SQLite in
        ``data_dir``."""
        return self.redis_url or self.url or f"sqlite:///{data_dir / 'policy.sqlite3'}"


class KeySettings(Section):
    """Keys: who may reset ESS (operators, quorum, time bounds) and what readers of
    ``ess.state`` trust (the command processor's keys)."""

    #: Directory of operator public keys, one ``<operator>.pub`` file each; keys in its
    #: ``retired/`` sub-directory no longer sign resets but still verify old ones.
    operator_keys_dir: Path = Path("keys/operators")
    #: Distinct operators whose signatures a reset needs.
    reset_quorum: int = Field(default=1, ge=1)
    #: A signed reset older than this is refused (replay bound).
    reset_max_age_sec: float = Field(default=300.0, gt=0)
    #: A signed reset dated further in the future than this is refused (clock skew bound).
    reset_max_skew_sec: float = Field(default=30.0, ge=0)
    #: The command processor's private signing key (``ess keygen --processor``).
    processor_key_file: Path = Path("keys/processor.key")
    #: Public keys of the command processor that readers of ``ess.state`` trust (every key
    #: it has used: old entries stay signed by old keys).
    processor_keys_dir: Path = Path("keys/processors")
    #: Unsigned state-log entries (written before entries were signed) are trusted only at
    #: offsets below this; 0 trusts none.
    state_log_unsigned_before: int = Field(default=0, ge=0)


class ObservabilitySettings(Section):
    """Logs, and where every role's ``/status``, ``/metrics`` and ``/healthz`` listen."""

    log_level: str = "INFO"
    #: One JSON object per line (for log shippers); false: a compact human format.
    log_json: bool = True
    #: The host every role's status server binds (each role has its own port setting);
    #: ``0.0.0.0`` to be scraped from another host or container.
    status_host: str = "127.0.0.1"

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in _LOG_LEVELS:
            raise ValueError(f"unknown log level {value!r}")
        return level


# --------------------------------------------------------------------------- roles


class CommandSettings(Section):
    """The ``command`` role: the command processor, single writer of ``ess.state``."""

    env_prefixes: ClassVar[tuple[str, ...]] = ("ESS_COMMAND_",)
    env_overrides: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "beat_interval_sec": ("ESS_PROCESSOR_BEAT_INTERVAL_SEC",),
    }

    #: ``/status``, ``/metrics`` and ``/healthz`` (``-1``: off, 0: a free port).
    status_port: int = Field(default=9466, ge=-1, le=65535)
    #: How often the processor publishes its signed liveness beat.
    beat_interval_sec: float = Field(default=0.5, gt=0)
    #: ``/healthz`` fails once one command has been in hand longer than this (wedged: an
    #: orchestrator should restart it).
    wedged_after_sec: float = Field(default=30.0, gt=0)


class ProjectSettings(Section):
    """The ``project`` role: the PolicyStore record, events, ESS's health beat, ``/status``."""

    #: ``/status``, ``/metrics`` and ``/healthz`` (``-1``: off, 0: a free port).
    status_port: int = Field(default=9464, ge=-1, le=65535)
    #: How often the projector re-asserts the record and ESS publishes its own health beat.
    refresh_interval_sec: float = Field(default=1.0, gt=0)
    #: The projector stops re-asserting the record once ``ess.state`` has not answered for
    #: this long (it can no longer vouch for it): gates then close within this plus their
    #: ``max_record_age``.
    log_timeout_sec: float = Field(default=3.0, gt=0)
    #: ``component`` of ESS's own health beats (detection ignores it for ``system_critical``).
    health_component: str = "ess"
    #: The projector vouches for an INACTIVE record only while the command processor's
    #: signed beat is younger than this and no command has waited longer than
    #: ``command_backlog_timeout_sec``: gates close within this plus their record age when
    #: the processor is gone or wedged.
    processor_timeout_sec: float = Field(default=3.0, gt=0)
    command_backlog_timeout_sec: float = Field(default=3.0, gt=0)


class DetectSettings(Section):
    """The ``detect`` role: its consumer group, thresholds file and tuning."""

    env_prefixes: ClassVar[tuple[str, ...]] = ("ESS_DETECT_",)

    #: The Faust app id, which is also the consumer group and the prefix of the changelog
    #: topics. Run a second, independent group (``ess-detect-b``) for redundancy: both see
    #: every record and send the same trips with the same command ids, which the command
    #: processor records once.
    group: str = Field(default="ess-detect-a", min_length=1, max_length=200)
    #: A TOML or JSON file holding a :class:`ess.rules.config.DetectionConfig` (thresholds);
    #: defaults otherwise.
    config: Path | None = None
    #: Consumer fetch wait (Faust hard-codes 1500 ms; see :mod:`streams.faust_compat`).
    #: 5 ms: low idle latency at little idle CPU; shorter waits overload the embedded broker
    #: (figures: BENCHMARKS.md).
    fetch_max_wait_ms: int = Field(default=5, ge=1, le=1500)
    #: Most records of one fetch an agent folds before it sends their trips and acks them:
    #: a batch is what one fetch brought for the topic, cut at this size (no timer: a timer
    #: would add to idle latency).
    batch_max: int = Field(default=2000, ge=1, le=100_000)
    #: Silence rules are ticked this often (wall clock).
    tick_interval_sec: float = Field(default=1.0, gt=0, le=60)
    #: Faust's producer only carries changelog records here (trips and dead letters go
    #: through ESS's own producers), so a 10 ms linger costs no trip latency and batches the
    #: changelog, which raises throughput (figures: BENCHMARKS.md).
    producer_linger_ms: float = Field(default=10.0, ge=0, le=1000)
    #: Faust table store (``memory://``; changelogs make it durable).
    store: str = "memory://"
    standby_replicas: int = Field(default=1, ge=0, le=10)
    #: Replication factor of the topics Faust creates (changelogs, leader topic).
    replication_factor: int = Field(default=1, ge=1, le=10)
    #: ``/status``, ``/metrics`` and ``/healthz`` (``-1``: off, 0: a free port).
    status_port: int = Field(default=9467, ge=-1, le=65535)
    #: ``/healthz`` fails once an assigned partition has had records waiting and no progress
    #: for this long (:mod:`ess.roles.detect.observe`).
    wedged_after_sec: float = Field(default=30.0, gt=0, le=3600)

    @field_validator("config", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value


#: Executor durations whose variables were ``ESS_EXECUTOR_<NAME>_S`` before they were
#: renamed ``ESS_EXECUTOR_<NAME>_SEC`` (the old names are read for one more release).
_EXECUTOR_RENAMED = (
    "flatten_deadline",
    "stalled_report_interval",
    "enforce_interval",
    "backoff_initial",
    "backoff_max",
    "log_timeout",
    "credential_probe_interval",
    "start_check_timeout",
    "watchdog_interval",
)


class ExecuteSettings(Section):
    """The ``execute`` role: how hard the executor pushes. Defaults suit a real venue; tests
    shorten them. (Which venues, and their credentials: :func:`ess.venues.config.load_venues`.)
    """

    env_prefixes: ClassVar[tuple[str, ...]] = ("ESS_EXECUTOR_",)
    deprecated_env: ClassVar[Mapping[str, str]] = {
        f"ESS_EXECUTOR_{name.upper()}_S": f"{name}_sec" for name in _EXECUTOR_RENAMED
    }

    #: Past this long without a verified-flat read, ``flatten_stalled`` is reported (and
    #: repeated every ``stalled_report_interval_sec``) while the executor keeps trying.
    flatten_deadline_sec: float = Field(default=10.0, gt=0)
    stalled_report_interval_sec: float = Field(default=10.0, gt=0)
    #: Once flat: how often to re-read while ACTIVE (late fills, rogue orders). A complete read
    #: weighs 90 on Binance futures (positions, account, open orders of both books without a
    #: symbol) and 100 on spot: every 5 s that is about half of the default weight budget.
    enforce_interval_sec: float = Field(default=5.0, gt=0)
    #: Retry backoff after a failed round: doubles from ``backoff_initial_sec`` to the cap.
    backoff_initial_sec: float = Field(default=0.05, gt=0)
    backoff_max_sec: float = Field(default=2.0, gt=0)
    #: No answer from ``ess.state`` for this long: stop re-arming the venues' dead-man's
    #: switches (ESS cannot know whether it was tripped), so the venues cancel on their own.
    log_timeout_sec: float = Field(default=3.0, gt=0)
    #: While INACTIVE, how often each venue's credentials are probed with one authenticated
    #: read (a snapshot: weight 90 on futures, 100 on spot, through the same budget as the
    #: flatten). A venue that refuses them (or refuses them during a flatten) is reported as
    #: an ``api_key_invalid`` security event, which trips ESS: better now than in an emergency.
    credential_probe_interval_sec: float = Field(default=60.0, gt=0)
    #: At start, each venue is read once (bounded by this): an account ESS could never
    #: flatten (hedge mode on an exchange whose position sides ESS cannot name) makes the
    #: executor refuse to start.
    start_check_timeout_sec: float = Field(default=10.0, gt=0)
    #: How often the watchdog checks "while ACTIVE, the current activation is enforced" and
    #: restarts enforcement (counted) if it ever finds it broken.
    watchdog_interval_sec: float = Field(default=1.0, gt=0)
    #: The executor's ``/status``, ``/metrics`` and ``/healthz``; 0 picks a free port, -1 none.
    status_port: int = Field(default=9465, ge=-1, le=65535)


class NotifySettings(Section):
    """The ``notify`` role: where alerts go and how hard delivery tries
    (``docs/notifications.md``). Every receiver is off until its variables are set; the secrets
    (webhook URLs, bot token, routing key) print as ``**********`` everywhere."""

    env_prefixes: ClassVar[tuple[str, ...]] = ("ESS_NOTIFY_",)

    #: A Slack (or Slack-compatible) incoming webhook URL; the URL is the credential.
    slack_webhook_url: SecretStr | None = None
    #: The Telegram bot's token (from @BotFather): alerts and, with an allow-list, commands.
    telegram_bot_token: SecretStr | None = None
    #: The chat alerts are sent to: a numeric id (negative for groups) or ``@channel``.
    telegram_chat_id: str = ""
    #: Chat ids whose ``/status`` and ``/trip`` the bot obeys (comma-separated); empty: the
    #: bot reads no commands at all.
    telegram_allowed_chat_ids: str = ""
    telegram_base_url: str = "https://api.telegram.org"
    #: How long one ``getUpdates`` long poll waits for a message (Telegram allows up to 50).
    telegram_poll_timeout_sec: float = Field(default=30.0, ge=0, le=50)
    #: A PagerDuty Events API v2 integration (routing) key.
    pagerduty_routing_key: SecretStr | None = None
    pagerduty_base_url: str = "https://events.pagerduty.com"
    #: Any endpoint taking the alert as JSON (with an ``Idempotency-Key`` header).
    webhook_url: SecretStr | None = None
    #: Sent to the webhook as ``Authorization: Bearer <token>`` when set.
    webhook_token: SecretStr | None = None
    #: "Processor gone" once no owner beat of the command processor arrived for this long.
    processor_gone_after_sec: float = Field(default=10.0, gt=0)
    #: Tries per alert and receiver (the first included) before it is given up, loudly.
    retry_attempts: int = Field(default=8, ge=1, le=100)
    #: Backoff after the first failed try; it doubles up to ``retry_max_sec`` (with jitter).
    retry_initial_sec: float = Field(default=1.0, gt=0)
    retry_max_sec: float = Field(default=60.0, gt=0)
    #: Bound on one HTTP request to a receiver.
    request_timeout_sec: float = Field(default=10.0, gt=0)
    #: The notifier's ``/status``, ``/metrics`` and ``/healthz`` (``-1``: off, 0: a free port).
    status_port: int = Field(default=9468, ge=-1, le=65535)

    @field_validator(
        "slack_webhook_url",
        "telegram_bot_token",
        "pagerduty_routing_key",
        "webhook_url",
        "webhook_token",
        mode="before",
    )
    @classmethod
    def _blank_secret_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("telegram_allowed_chat_ids")
    @classmethod
    def _chat_ids(cls, value: str) -> str:
        """Comma- or space-separated integers; kept as text, read by :meth:`allowed_chat_ids`."""
        ids = [part for part in value.replace(",", " ").split() if part]
        for part in ids:
            try:
                int(part)
            except ValueError:
                raise ValueError(f"chat ids are integers, got {part!r}") from None
        return ",".join(ids)

    @field_validator("telegram_base_url", "pagerduty_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    def allowed_chat_ids(self) -> frozenset[int]:
        """The chats whose commands the Telegram bot obeys."""
        return frozenset(int(part) for part in self.telegram_allowed_chat_ids.split(",") if part)

    def receivers(self) -> tuple[str, ...]:
        """The receivers these settings configure, by name."""
        names = []
        if self.slack_webhook_url is not None:
            names.append("slack")
        if self.telegram_bot_token is not None and self.telegram_chat_id.strip():
            names.append("telegram")
        if self.pagerduty_routing_key is not None:
            names.append("pagerduty")
        if self.webhook_url is not None:
            names.append("webhook")
        return tuple(names)

    def telegram_commands(self) -> bool:
        """Whether the Telegram bot reads commands (a token and an allow-list)."""
        return self.telegram_bot_token is not None and bool(self.allowed_chat_ids())

    def problems(self) -> list[str]:
        """Why the ``notify`` role cannot start with these settings (empty: it can). How the
        settings fit together is checked by the role, not at load: an incomplete notifier
        configuration must not stop the other roles of a process."""
        found = []
        if self.retry_max_sec < self.retry_initial_sec:
            found.append("ESS_NOTIFY_RETRY_MAX_SEC must be at least ESS_NOTIFY_RETRY_INITIAL_SEC")
        if not self.receivers() and not self.telegram_commands():
            found.append(
                "the notify role has no receiver: set ESS_NOTIFY_SLACK_WEBHOOK_URL, "
                "ESS_NOTIFY_TELEGRAM_BOT_TOKEN with ESS_NOTIFY_TELEGRAM_CHAT_ID, "
                "ESS_NOTIFY_PAGERDUTY_ROUTING_KEY or ESS_NOTIFY_WEBHOOK_URL "
                "(docs/notifications.md)"
            )
        if self.telegram_bot_token is None and (
            self.telegram_chat_id.strip() or self.telegram_allowed_chat_ids
        ):
            found.append(
                "ESS_NOTIFY_TELEGRAM_CHAT_ID / ESS_NOTIFY_TELEGRAM_ALLOWED_CHAT_IDS need "
                "ESS_NOTIFY_TELEGRAM_BOT_TOKEN"
            )
        if self.webhook_token is not None and self.webhook_url is None:
            found.append("ESS_NOTIFY_WEBHOOK_TOKEN needs ESS_NOTIFY_WEBHOOK_URL")
        return found
