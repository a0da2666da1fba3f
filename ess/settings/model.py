"""The root of the settings tree, :class:`EssSettings`, and the helpers derived from it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from loguru import logger
from pydantic import Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ess.core import ResetPolicy
from ess.core.attestation import SigningKey, trusted_keys
from ess.core.reader import Trust
from ess.core.signing import KeyMaterialError, load_private_key, parse_public_key
from ess.kafka.clients import KafkaSecurity
from ess.settings.environment import section_inputs, sections
from ess.settings.sections import (
    CommandSettings,
    DetectSettings,
    ExecuteSettings,
    KafkaSettings,
    KeySettings,
    NotifySettings,
    ObservabilitySettings,
    PolicyStoreSettings,
    ProjectSettings,
    Section,
    StorageSettings,
)
from schemas import TopicRegistry, topic_registry

__all__ = ["RETIRED_DIR", "EssSettings"]

#: Sub-directory of ``ESS_OPERATOR_KEYS_DIR`` for keys that may no longer sign resets but
#: whose past resets must still verify when the state log is read.
RETIRED_DIR = "retired"


class _SectionEnvSource(PydanticBaseSettingsSource):
    """Each section's fields from their own variables (:meth:`Section.env_names`): the
    ``.env`` file's values overridden by the process environment."""

    def __init__(self, settings_cls: type[BaseSettings], *sources: EnvSettingsSource) -> None:
        super().__init__(settings_cls)
        environ: dict[str, str] = {}
        for source in sources:  # later sources win
            environ.update({k.upper(): v for k, v in source.env_vars.items() if v is not None})
        self._values = section_inputs(settings_cls, environ)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, True

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


class EssSettings(BaseSettings):
    """Every setting of every ESS process, one section per concern and per role, read from
    environment variables (and ``.env``) once, by the edges (CLI, worker), which pass plain
    values into the core. The variables of each field: :mod:`ess.settings.sections`.

    In code, give a section as a mapping (merged with the environment) or as a section
    object (replacing it): ``EssSettings(kafka={"bootstrap_servers": "b:9092"})``.
    """

    model_config = SettingsConfigDict(
        env_file=".env", extra="forbid", frozen=True, hide_input_in_errors=True
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    policy_store: PolicyStoreSettings = Field(default_factory=PolicyStoreSettings)
    keys: KeySettings = Field(default_factory=KeySettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    command: CommandSettings = Field(default_factory=CommandSettings)
    project: ProjectSettings = Field(default_factory=ProjectSettings)
    detect: DetectSettings = Field(default_factory=DetectSettings)
    execute: ExecuteSettings = Field(default_factory=ExecuteSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)

    def __init__(self, **values: Any) -> None:
        """Read and validate; an invalid value read from the environment is reported under
        its variable's name (``KAFKA_SECURITY_PROTOCOL``), one given in code under its
        field's (``kafka.security_protocol``)."""
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _named_by_variable(exc, values) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the sections' own variables (environment over ``.env``)."""
        files = [s for s in (dotenv_settings, env_settings) if isinstance(s, EnvSettingsSource)]
        return init_settings, _SectionEnvSource(settings_cls, *files)

    def with_sections(self, **sections: Mapping[str, Any]) -> EssSettings:
        """A copy with some fields of some sections replaced, validated:
        ``settings.with_sections(kafka={"bootstrap_servers": bootstrap})``."""
        data = self.model_dump()
        for name, changes in sections.items():
            data[name] = {**data[name], **changes}
        return type(self).model_validate(data)

    def kafka_security(self) -> KafkaSecurity:
        """The Kafka connection security every client of this process uses."""
        return self.kafka.security()

    def resolved_policy_store_url(self) -> str:
        """Redis when ``ESS_REDIS_URL`` is set, else ``ESS_POLICY_STORE_URL``."""
        return self.policy_store.resolved_url(self.storage.data_dir)

    def registry(self) -> TopicRegistry:
        """The topic registry under the configured prefix."""
        return topic_registry(self.kafka.topic_prefix, self.kafka.input_partitions)

    def reset_policy(self) -> ResetPolicy:
        """Operators from ``keys.operator_keys_dir`` with the configured quorum and bounds.

        An empty or missing directory gives a policy nobody can satisfy: ESS can still stop,
        it just cannot be reset until keys are installed (fail closed). Two names with one
        key, or an unusable key, raise ``ValueError`` (refuse to start).
        """
        keys = self.keys
        operators = _read_public_keys(keys.operator_keys_dir)
        if not operators:
            logger.bind(directory=str(keys.operator_keys_dir)).warning(
                f"no operator keys in {keys.operator_keys_dir} (ESS_OPERATOR_KEYS_DIR): ESS can "
                "be tripped, but no reset can be authorized until an operator's .pub (from "
                "`ess keygen --name NAME`) is installed there"
            )
        return ResetPolicy(
            operators=operators,
            quorum=keys.reset_quorum if operators else 1,
            max_age=timedelta(seconds=keys.reset_max_age_sec),
            max_skew=timedelta(seconds=keys.reset_max_skew_sec),
        )

    def operator_verification_keys(self) -> dict[str, bytes]:
        """Every operator key a reader verifies old resets with: current and retired."""
        directory = self.keys.operator_keys_dir
        retired = _read_public_keys(directory / RETIRED_DIR)
        return {**retired, **_read_public_keys(directory)}

    def processor_signing_key(self) -> SigningKey:
        """The command processor's signing key; :class:`KeyMaterialError` (with what to do)
        when it is missing or unusable."""
        path = self.keys.processor_key_file
        if not path.is_file():
            raise KeyMaterialError(
                f"no command processor key at {path} (ESS_PROCESSOR_KEY_FILE): create one with "
                "`ess keygen --processor` and install its .pub in every reader's "
                "ESS_PROCESSOR_KEYS_DIR"
            )
        return SigningKey(load_private_key(path))

    def state_trust(self, *, also_trust: SigningKey | None = None) -> Trust:
        """What this process's readers of ``ess.state`` trust: the processor keys in
        ``keys.processor_keys_dir`` (plus ``also_trust``, the key of a processor running in
        this same process), the operator keys, and the legacy bound. Raises
        :class:`KeyMaterialError` when no processor key is trusted at all: such a reader
        could verify nothing, and must not start."""
        directory = self.keys.processor_keys_dir
        keys = list(_read_public_keys(directory).values())
        if also_trust is not None:
            keys.append(also_trust.public)
        if not keys:
            raise KeyMaterialError(
                f"no trusted command processor keys in {directory} "
                "(ESS_PROCESSOR_KEYS_DIR): readers of ess.state cannot verify it. Install the "
                "processor's .pub (from `ess keygen --processor`) there"
            )
        return Trust(
            scope=self.registry().state.name,
            processor_keys=trusted_keys(keys),
            operator_keys=self.operator_verification_keys(),
            unsigned_before=self.keys.state_log_unsigned_before,
        )


def _named_by_variable(error: ValidationError, given: Mapping[str, Any]) -> ValidationError:
    """``error`` with each environment-sourced field's location replaced by its variable.

    The input stays hidden (``hide_input``): it may be a password."""
    environ = {k.upper(): v for k, v in os.environ.items()}
    by_section = dict(sections(EssSettings))
    details: list[InitErrorDetails] = []
    for item in error.errors():
        loc = item["loc"]
        section = by_section.get(str(loc[0])) if len(loc) >= 2 else None
        field = str(loc[1]) if len(loc) >= 2 else ""
        in_code = given.get(str(loc[0])) if loc else None
        if (
            section is not None
            and field in section.model_fields
            and not (
                isinstance(in_code, Section) or (isinstance(in_code, Mapping) and field in in_code)
            )
        ):
            names = [
                *section.env_names(field),
                *(old for old, target in section.deprecated_env.items() if target == field),
            ]
            loc = (next((name for name in names if environ.get(name)), names[0]), *loc[2:])
        detail: InitErrorDetails = {"type": item["type"], "loc": loc, "input": item["input"]}
        if "ctx" in item:
            detail["ctx"] = item["ctx"]
        details.append(detail)
    return ValidationError.from_exception_data(error.title, details, hide_input=True)


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
