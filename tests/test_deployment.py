"""The compose deployment (``docker/``) checked against the code, without Docker.

Nothing here starts a container. What is checked is what drifts silently when the code moves
on: service layout (one service per role, a single command processor, KRaft Kafka), every
environment variable an ESS container gets being a setting ESS actually reads, ports and
hosts agreeing between compose, Prometheus and the settings, venue credentials supplied for
every venue, and every metric the Grafana dashboard queries existing in the code.

And the security model (docs/security.md): Kafka authenticates every client (SASL/SCRAM) and
authorizes every request; each role connects as its own user; the ACLs that
``docker/kafka/init.sh`` would create (its ``--dry-run`` output, parsed here) let each role
write only what it owns; the init service creates the registry's topics; Redis's ACL
template lets only the projector write the PolicyStore record; no secret is written in
``compose.yaml``. (tests/policystore/test_redis_acl.py runs Redis with the ACL file.)
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shlex
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import CollectorRegistry

from ess.api.protocols import EMERGENCY_STOP_KEY
from ess.policystore import CHANNEL
from ess.roles.command.processor import EXIT_FENCED, FencedError, default_group_id
from ess.roles.execute.service import ExecutorMetrics
from ess.roles.project.metrics import ProjectorMetrics
from ess.roles.worker import ROLES, WorkerError
from ess.settings import (
    OTHER_VARIABLES,
    CommandSettings,
    DetectSettings,
    EssSettings,
    ExecuteSettings,
    ProjectSettings,
    env_variables,
)
from ess.venues.config import parse_venues
from schemas.topics import TopicRegistry, topic_registry

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
WORKER_IMAGE = "${ESS_IMAGE:-ess-worker:local}"


# --------------------------------------------------------------------------- helpers


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = _load_yaml(DOCKER / "compose.yaml")
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def _ess_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Services running the ESS worker image (the roles and the simulator)."""
    return {name: spec for name, spec in services.items() if spec.get("image") == WORKER_IMAGE}


def _roles_of(spec: dict[str, Any]) -> list[str]:
    """The ESS roles a service runs: ``worker --role X`` arguments, or the command-role
    wrapper (``docker/run_command.py``, which runs exactly ``("command",)``: tested below)."""
    entrypoint = spec.get("entrypoint") or []
    if any(str(part).endswith("run_command.py") for part in entrypoint):
        return ["command"]
    command = [str(part) for part in spec.get("command") or []]
    if "worker" not in command:
        return []
    return [command[i + 1] for i, part in enumerate(command) if part == "--role"]


def _role_services(services: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    return {
        name: _roles_of(spec) for name, spec in _ess_services(services).items() if _roles_of(spec)
    }


def _env(spec: dict[str, Any]) -> dict[str, str]:
    environment = spec.get("environment") or {}
    assert isinstance(environment, dict), "use the mapping form of `environment`"
    return {str(key): str(value) for key, value in environment.items()}


def _interpolated_default(value: str) -> str:
    """``${NAME:-default}`` -> ``default``; a plain value unchanged."""
    match = re.fullmatch(r"\$\{[A-Z0-9_]+:-([^}]*)\}", value)
    return match.group(1) if match else value


_INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::([-?])([^}]*))?\}")


def _test_secret(name: str) -> str:
    """What the tests put in for a required variable (a password, a key): legal everywhere."""
    return "test-" + name.lower().replace("_", "-")


def _interpolate(value: str) -> str:
    """Compose's interpolation as `docker compose` would do it with an empty docker/.env:
    ``${NAME:-default}`` -> default, ``${NAME:?message}`` -> a test value, anywhere in the
    string (a Redis URL carries its password inside)."""

    def one(match: re.Match[str]) -> str:
        name, kind, rest = match.groups()
        if kind == "-":
            return rest
        if kind == "?":
            return _test_secret(name)
        raise AssertionError(f"${{{name}}} without a default or a required marker")

    return _INTERPOLATION.sub(one, value)


def _required_variable(value: str) -> str | None:
    """``NAME`` when ``value`` is exactly a required interpolation ``${NAME:?...}``."""
    match = re.fullmatch(r"\$\{([A-Z0-9_]+):\?[^}]*\}", value)
    return match.group(1) if match else None


def _volume_targets(spec: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path of the service's bind mounts and volumes."""
    targets = {}
    for volume in spec.get("volumes") or []:
        # `${NAME:-default}` holds a colon: resolve it to its default before splitting.
        resolved = re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(volume))
        source, target, *_ = resolved.split(":")
        targets[target] = source
    return targets


def _setting_env_names() -> set[str]:
    """Every environment variable ESS reads, from the settings tree itself (deprecated names
    included: they still work), plus the venue list that load_venues() reads."""
    names = {variable.name for variable in env_variables()} | set(OTHER_VARIABLES)
    assert {"ESS_VENUES_FILE", "ESS_VENUES", "KAFKA_BOOTSTRAP_SERVERS"} <= names
    return names


def _venues(services: dict[str, dict[str, Any]]) -> Any:
    execute = services["ess-execute"]
    path = _env(execute)["ESS_VENUES_FILE"]
    host_path = _volume_targets(execute)[path]
    return parse_venues(tomllib.loads((DOCKER / host_path).read_text()))


# --------------------------------------------------------------------------- layout


def test_infrastructure_services_exist(services: dict[str, dict[str, Any]]) -> None:
    assert {"kafka", "kafka-init", "redis", "sim", "prometheus", "grafana"} <= set(services)


def test_kafka_runs_in_kraft_mode_without_zookeeper(services: dict[str, dict[str, Any]]) -> None:
    for name, spec in services.items():
        assert "zookeeper" not in name.lower()
        assert "zookeeper" not in str(spec.get("image", "")).lower()
        assert not [key for key in _env(spec) if "ZOOKEEPER" in key], name
    kafka = _env(services["kafka"])
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    # The controller is this very node, reached over the container's loopback only.
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{kafka['KAFKA_NODE_ID']}@127.0.0.1:9093"
    assert kafka["CLUSTER_ID"]
    # ESS creates its topics with the partition counts it needs; the broker must not.
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    # The roles reach it at the internal listener.
    assert "INTERNAL://kafka:9092" in kafka["KAFKA_ADVERTISED_LISTENERS"]
    for name in _role_services(services):
        bootstrap = _interpolated_default(_env(services[name])["KAFKA_BOOTSTRAP_SERVERS"])
        assert bootstrap == "kafka:9092", name


def test_every_role_is_its_own_service_on_the_worker_image(
    services: dict[str, dict[str, Any]],
) -> None:
    roles = _role_services(services)
    assert {role for names in roles.values() for role in names} == set(ROLES)
    for name, names in roles.items():
        assert len(names) == 1, f"{name} runs {names}: one role per service"
        spec = services[name]
        assert spec["image"] == WORKER_IMAGE
        assert spec["build"]["dockerfile"] == "docker/Dockerfile"
        assert (DOCKER / spec["build"]["context"] / spec["build"]["dockerfile"]).is_file()
        assert spec.get("init") is True, f"{name}: tini forwards SIGTERM for a graceful stop"


def test_exactly_one_command_processor(services: dict[str, dict[str, Any]]) -> None:
    commands = [name for name, roles in _role_services(services).items() if "command" in roles]
    assert commands == ["ess-command"]
    spec = services["ess-command"]
    assert spec.get("deploy", {}).get("replicas", 1) == 1
    assert spec.get("scale", 1) == 1
    # A fixed container name makes `--scale ess-command=2` fail instead of starting a rival.
    assert spec["container_name"] == "ess-command"


def test_detection_runs_two_independent_groups(services: dict[str, dict[str, Any]]) -> None:
    detect = [name for name, roles in _role_services(services).items() if "detect" in roles]
    groups = [_env(services[name])["ESS_DETECT_GROUP"] for name in detect]
    assert sorted(groups) == ["ess-detect-a", "ess-detect-b"]


def _one_shot(services: dict[str, dict[str, Any]]) -> set[str]:
    """Services others wait for to *complete* (kafka-init)."""
    found = set()
    for spec in services.values():
        depends_on = spec.get("depends_on") or {}
        if isinstance(depends_on, dict):  # the list form has no conditions
            found |= {
                name
                for name, condition in depends_on.items()
                if condition.get("condition") == "service_completed_successfully"
            }
    return found


def test_restart_policies(services: dict[str, dict[str, Any]]) -> None:
    one_shot = _one_shot(services)
    assert one_shot == {"kafka-init"}
    for name, spec in services.items():
        # A one-shot service that restarted would never count as completed.
        expected = "no" if name in one_shot else "unless-stopped"
        assert spec.get("restart") == expected, name


def test_healthchecks_where_meaningful(services: dict[str, dict[str, Any]]) -> None:
    for name in ("kafka", "redis", "ess-command", "ess-execute", "ess-project", "sim"):
        assert services[name].get("healthcheck", {}).get("test"), name
    project = " ".join(services["ess-project"]["healthcheck"]["test"])
    execute = " ".join(services["ess-execute"]["healthcheck"]["test"])
    assert "127.0.0.1:9464/healthz" in project
    assert "127.0.0.1:9465/healthz" in execute
    # Kafka and Redis checks authenticate (an unauthenticated client gets nothing).
    kafka = " ".join(services["kafka"]["healthcheck"]["test"])
    assert "--command-config /tmp/ess-admin.properties" in kafka
    assert "/tmp/ess-admin.properties" in (DOCKER / "kafka" / "start.sh").read_text()
    redis = " ".join(services["redis"]["healthcheck"]["test"])
    assert "--user ess-gate" in redis
    assert 'REDISCLI_AUTH="$$REDIS_GATE_PASSWORD"' in redis
    assert "REDIS_GATE_PASSWORD" in _env(services["redis"])


def test_fenced_command_processor_marker_matches_its_healthcheck(
    services: dict[str, dict[str, Any]], run_command: ModuleType
) -> None:
    test = " ".join(services["ess-command"]["healthcheck"]["test"])
    assert f"test ! -e {run_command.FENCED_MARKER}" in test


# --------------------------------------------------------------------------- settings


def test_every_ess_env_var_is_a_real_setting(services: dict[str, dict[str, Any]]) -> None:
    known = _setting_env_names()
    credentials = {name for venue in _venues(services) for name in venue.env_names()}
    for name, spec in _ess_services(services).items():
        unknown = set(_env(spec)) - known - credentials
        assert not unknown, f"{name}: {sorted(unknown)} are not ESS settings"
        assert "ESS_FAULT" not in _env(spec), "test-only fault injection"


#: ``ESS_*`` variables of the deployment's own scripts (compose interpolation, the Kafka and
#: Redis init scripts), never passed to an ESS process.
_DEPLOYMENT_ONLY = frozenset(
    {
        "ESS_IMAGE",
        "ESS_KAFKA_BIN",
        "ESS_KAFKA_BOOTSTRAP",
        "ESS_REDIS_ACL_TEMPLATE",
        "ESS_REDIS_ACL_FILE",
    }
)


def _documented_ess_names() -> dict[str, set[str]]:
    """Every ``ESS_*`` name the README, docs/ and docker/ mention, with where; placeholders
    such as ``ESS_VENUE_<NAME>_API_KEY`` or ``ESS_*`` are not names."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    files += [path for path in sorted(DOCKER.rglob("*")) if path.is_file()]
    found: dict[str, set[str]] = {}
    for path in files:
        text = path.read_text(errors="replace")
        for match in re.finditer(r"\bESS_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_]*[<*{])", text):
            found.setdefault(match.group(0), set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_ess_variable_the_docs_and_docker_mention_is_read_by_ess() -> None:
    known = _setting_env_names() | _DEPLOYMENT_ONLY
    venue = re.compile(r"^ESS_VENUE_[A-Z0-9_]+_(?:API_KEY|SECRET)$")
    mentioned = _documented_ess_names()
    unknown = {
        name: sorted(where)
        for name, where in mentioned.items()
        if name not in known and not name.startswith("ESS_TEST_") and not venue.match(name)
    }
    assert not unknown, f"not a setting (renamed or misspelt?): {unknown}"
    assert {"ESS_TOPIC_PREFIX", "ESS_DETECT_GROUP", "ESS_EXECUTOR_STATUS_PORT"} <= set(mentioned)


def test_the_docs_and_docker_use_the_current_names() -> None:
    deprecated = {variable.name for variable in env_variables() if variable.deprecated}
    assert deprecated, "the executor's old _S names are still read (for one release)"
    used = {name: where for name, where in _documented_ess_names().items() if name in deprecated}
    assert not used, f"deprecated names in use: {used}"


def test_the_default_settings_of_every_role_validate(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each role's environment (with compose's defaults filled in) is accepted by
    EssSettings, as the container would be at start."""
    for name in _role_services(services):
        with monkeypatch.context() as patch:
            for key, value in _env(services[name]).items():
                patch.setenv(key, _interpolate(value))
            settings = EssSettings(_env_file=None)
        assert settings.kafka.bootstrap_servers == "kafka:9092"
        security = settings.kafka_security()
        assert security.protocol == "SASL_PLAINTEXT"
        assert security.sasl_mechanism == "SCRAM-SHA-512"
        assert security.sasl_username == ROLE_USERS[name]


def test_status_servers_are_reachable_and_scraped(services: dict[str, dict[str, Any]]) -> None:
    project = _env(services["ess-project"])
    execute = _env(services["ess-execute"])
    command = _env(services["ess-command"])
    detect = {name: _env(services[name]) for name in ("ess-detect-a", "ess-detect-b")}
    # Every status server binds ESS_STATUS_HOST (default 127.0.0.1: unreachable from another
    # container); the executor and the detector get it from the same setting (ess.roles.worker).
    for env in (project, execute, command, *detect.values()):
        assert env["ESS_STATUS_HOST"] == "0.0.0.0"
    prometheus = _load_yaml(DOCKER / "prometheus.yml")
    # Static targets, and DNS-discovered ones (the scalable detector services) as name:port.
    targets = {
        job["job_name"]: [
            *(t for config in job.get("static_configs", []) for t in config["targets"]),
            *(
                f"{name}:{config['port']}"
                for config in job.get("dns_sd_configs", [])
                for name in config["names"]
            ),
        ]
        for job in prometheus["scrape_configs"]
    }
    assert targets == {
        "ess-projector": [f"ess-project:{project['ESS_STATUS_PORT']}"],
        "ess-executor": [f"ess-execute:{execute['ESS_EXECUTOR_STATUS_PORT']}"],
        "ess-command": [f"ess-command:{command['ESS_COMMAND_STATUS_PORT']}"],
        "ess-detect": [f"{name}:{env['ESS_DETECT_STATUS_PORT']}" for name, env in detect.items()],
    }
    assert ProjectSettings().status_port == 9464
    assert ExecuteSettings().status_port == 9465
    assert CommandSettings().status_port == 9466
    assert DetectSettings().status_port == 9467


def test_projector_uses_the_compose_redis(services: dict[str, dict[str, Any]]) -> None:
    raw = _env(services["ess-project"])["ESS_REDIS_URL"]
    url = urlsplit(_interpolate(raw))
    assert url.scheme == "redis"
    assert url.hostname in services
    assert services[str(url.hostname)]["image"].startswith("redis:")
    # As the projector's own Redis user, with the password from docker/.env.
    assert url.username == "ess-projector"
    assert "${REDIS_PROJECTOR_PASSWORD:?" in raw
    assert url.password == _test_secret("REDIS_PROJECTOR_PASSWORD")


def test_operator_keys_are_mounted_where_the_processor_reads_them(
    services: dict[str, dict[str, Any]],
) -> None:
    spec = services["ess-command"]
    keys_dir = _env(spec)["ESS_OPERATOR_KEYS_DIR"]
    assert keys_dir in _volume_targets(spec)
    assert str(spec["volumes"][0]).endswith(":ro")


# --------------------------------------------------------------------------- venues


def test_executor_venues_point_at_the_simulator(services: dict[str, dict[str, Any]]) -> None:
    sim = services["sim"]
    assert sim["entrypoint"] == ["python", "-m", "ess.sim"]
    command = [str(part) for part in sim["command"]]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert "--seed-demo" in command
    port = int(command[command.index("--port") + 1])
    venues = _venues(services)
    assert {venue.exchange for venue in venues} == {"binanceusdm", "binance"}
    for venue in venues:
        assert venue.base_url == f"http://sim:{port}"
    assert "sim" in services["ess-execute"]["depends_on"]


def test_venue_credentials_come_from_the_environment(services: dict[str, dict[str, Any]]) -> None:
    env = _env(services["ess-execute"])
    example = _env_example()
    for venue in _venues(services):
        for name in venue.env_names():
            # Required interpolation: compose refuses to start without it.
            assert env[name].startswith(f"${{{name}:?"), name
            assert name in example
    venues_text = (DOCKER / "venues.toml").read_text()
    assert "ess-demo-secret" not in venues_text
    assert "api_key =" not in venues_text


def _env_example() -> dict[str, str]:
    values = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def test_env_example_defines_every_required_variable() -> None:
    text = (DOCKER / "compose.yaml").read_text()
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    assert required
    assert required <= set(_env_example())


def test_mounted_files_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, spec in services.items():
        for source in _volume_targets(spec).values():
            if source.startswith("./"):
                assert (DOCKER / source).exists(), f"{name}: {source}"


# --------------------------------------------------------------------------- security model

#: The Kafka user of each ESS role service (docs/security.md): one per role, never the admin.
ROLE_USERS = {
    "ess-detect-a": "ess-detect",
    "ess-detect-b": "ess-detect",
    "ess-command": "ess-command",
    "ess-execute": "ess-execute",
    "ess-project": "ess-project",
}
ADMIN = "ess-admin"
KAFKA_DIR = DOCKER / "kafka"
REDIS_DIR = DOCKER / "redis"


def _image_property_name(variable: str) -> str:
    """The broker property the apache/kafka image makes of a ``KAFKA_*`` variable
    (KafkaDockerWrapper.getServerConfigsFromEnv, Kafka 3.8)."""
    key = variable.replace("KAFKA_", "").lower().replace("_", ".")
    return key.replace("...", "-").replace("..", "_")


_NOT_PROPERTIES = {"KAFKA_VERSION", "KAFKA_HEAP_OPTS", "KAFKA_OPTS", "KAFKA_JMX_OPTS"}


@pytest.fixture(scope="module")
def broker(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The bundled broker's properties, as the image derives them from compose."""
    return {
        _image_property_name(name): _interpolate(value)
        for name, value in _env(services["kafka"]).items()
        if name.startswith("KAFKA_") and name not in _NOT_PROPERTIES
    }


def _listeners(value: str) -> dict[str, str]:
    """``NAME://host:port,...`` -> {NAME: host:port}."""
    return dict(item.split("://", 1) for item in value.split(","))


def test_kafka_authenticates_and_authorizes_every_client(broker: dict[str, str]) -> None:
    protocols = dict(
        item.split(":") for item in broker["listener.security.protocol.map"].split(",")
    )
    listeners = _listeners(broker["listeners"])
    controller = broker["controller.listener.names"]
    assert set(protocols) == set(listeners)
    for name, address in listeners.items():
        if name == controller:
            # PLAINTEXT (User:ANONYMOUS) only where no other container can connect.
            assert protocols[name] == "PLAINTEXT"
            assert address.startswith("127.0.0.1:")
        else:
            assert protocols[name].startswith("SASL_"), name
            jaas = broker[f"listener.name.{name.lower()}.scram-sha-512.sasl.jaas.config"]
            assert jaas.startswith("org.apache.kafka.common.security.scram.ScramLoginModule")
    assert set(_listeners(broker["advertised.listeners"])) == set(listeners) - {controller}
    assert broker["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert broker["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    assert protocols[broker["inter.broker.listener.name"]].startswith("SASL_")
    # Deny unless an ACL allows; the admin is the only super user reachable from outside.
    assert broker["authorizer.class.name"] == (
        "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    )
    assert broker["allow.everyone.if.no.acl.found"] == "false"
    assert set(broker["super.users"].split(";")) == {f"User:{ADMIN}", "User:ANONYMOUS"}
    assert broker["auto.create.topics.enable"] == "false"


def test_the_controller_port_is_not_published(services: dict[str, dict[str, Any]]) -> None:
    published = " ".join(str(port) for port in services["kafka"]["ports"])
    assert ":29092" in published
    assert "9093" not in published
    assert "9092" not in published.replace("29092", "")


def test_the_start_script_formats_with_the_admin_user(
    services: dict[str, dict[str, Any]], broker: dict[str, str]
) -> None:
    kafka = services["kafka"]
    assert kafka["entrypoint"] == ["/bin/bash", "/etc/ess/kafka/start.sh"]
    assert _volume_targets(kafka)["/etc/ess/kafka"] == "./kafka"
    start = (KAFKA_DIR / "start.sh").read_text()
    assert "--add-scram" in start
    assert "SCRAM-SHA-512=[name=ess-admin,password=$admin_password]" in start
    assert "exec /etc/kafka/docker/run" in start
    # start.sh formats with what the image's launcher derives from the same environment.
    env = {name: _interpolate(value) for name, value in _env(kafka).items()}
    printed = _bash(
        "source docker/kafka/lib.sh && server_properties", {**env, "KAFKA_HEAP_OPTS": "-Xmx1G"}
    )
    derived = dict(line.split("=", 1) for line in printed.splitlines())
    assert derived == broker
    admin_var = _bash("source docker/kafka/lib.sh && password_var ess-admin", {}).strip()
    assert env[admin_var] == _test_secret("KAFKA_ADMIN_PASSWORD")
    assert (
        f'password="{env[admin_var]}"'
        in broker["listener.name.internal.scram-sha-512.sasl.jaas.config"]
    )


def _bash(script: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@dataclass(frozen=True)
class Acl:
    principal: str
    operation: str
    resource: str  # topic, group, cluster
    pattern: str  # literal, prefixed
    name: str

    def matches(self, resource: str, name: str) -> bool:
        if resource != self.resource:
            return False
        if self.pattern == "prefixed":
            return name.startswith(self.name)
        return self.name in (name, "*")


#: Kafka's implied operations: Read/Write/Delete/Alter imply Describe; AlterConfigs implies
#: DescribeConfigs.
_IMPLIED_BY = {
    "Describe": {"Read", "Write", "Delete", "Alter"},
    "DescribeConfigs": {"AlterConfigs"},
}


@dataclass(frozen=True)
class InitPlan:
    """What docker/kafka/init.sh would do (its --dry-run), parsed."""

    users: list[str]
    topics: dict[str, dict[str, str]]  # name -> {"partitions": .., "retention.ms": .., ...}
    acls: list[Acl]

    def allows(self, principal: str, operation: str, resource: str, name: str) -> bool:
        if principal == ADMIN:  # the super user
            return True
        return any(
            acl.principal == principal
            and acl.matches(resource, name)
            and (
                acl.operation in ("All", operation)
                or acl.operation in _IMPLIED_BY.get(operation, set())
            )
            for acl in self.acls
        )

    def principals(self) -> set[str]:
        return {acl.principal for acl in self.acls}

    def topics_where(self, principal: str, operation: str, names: list[str]) -> set[str]:
        return {name for name in names if self.allows(principal, operation, "topic", name)}


def _parse_plan(output: str) -> InitPlan:
    users: list[str] = []
    topics: dict[str, dict[str, str]] = {}
    acls: list[Acl] = []
    for line in output.splitlines():
        tool, *args = shlex.split(line)
        pairs = list(zip(args, [*args[1:], ""], strict=True))
        if tool == "kafka-configs.sh":
            assert "--entity-type users" in line
            users.append(args[args.index("--entity-name") + 1])
            assert args[args.index("--add-config") + 1].startswith("SCRAM-SHA-512=[")
        elif tool == "kafka-topics.sh":
            assert "--create" in args
            configs = dict(value.split("=", 1) for flag, value in pairs if flag == "--config")
            name = args[args.index("--topic") + 1]
            topics[name] = {"partitions": args[args.index("--partitions") + 1], **configs}
        elif tool == "kafka-acls.sh":
            assert args[0] == "--add"
            assert "--deny-principal" not in args
            principals = [value for flag, value in pairs if flag == "--allow-principal"]
            operations = [value for flag, value in pairs if flag == "--operation"]
            pattern = dict(pairs).get("--resource-pattern-type", "literal")
            resources = [
                (flag[2:], value) for flag, value in pairs if flag in ("--topic", "--group")
            ]
            if "--cluster" in args:
                resources.append(("cluster", "kafka-cluster"))
            assert principals
            assert operations
            assert resources
            acls += [
                Acl(principal.removeprefix("User:"), operation, resource, pattern, name)
                for principal in principals
                for operation in operations
                for resource, name in resources
            ]
        else:
            raise AssertionError(f"unexpected command {line!r}")
    return InitPlan(users, topics, acls)


@pytest.fixture(scope="module")
def init_env(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {name: _interpolate(value) for name, value in _env(services["kafka-init"]).items()}


@pytest.fixture(scope="module")
def plan(init_env: dict[str, str]) -> InitPlan:
    return _parse_plan(_bash("bash docker/kafka/init.sh --dry-run", init_env))


@pytest.fixture(scope="module")
def registry(services: dict[str, dict[str, Any]]) -> TopicRegistry:
    env = _env(services["ess-command"])
    return topic_registry(
        _interpolate(env["ESS_TOPIC_PREFIX"]), int(_interpolate(env["ESS_INPUT_PARTITIONS"]))
    )


def test_the_init_service_runs_before_every_role(services: dict[str, dict[str, Any]]) -> None:
    init = services["kafka-init"]
    assert init["image"] == services["kafka"]["image"]
    assert init["entrypoint"] == ["/bin/bash", "/etc/ess/kafka/init.sh"]
    assert _volume_targets(init)["/etc/ess/kafka"] == "./kafka"
    assert init["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    for name in _role_services(services):
        depends_on = services[name]["depends_on"]
        assert depends_on["kafka-init"] == {"condition": "service_completed_successfully"}, name
        assert "kafka" not in depends_on, f"{name}: kafka-init already waits for the broker"
    # The init service and the roles agree on the topic prefix.
    prefix = _env(services["ess-command"])["ESS_TOPIC_PREFIX"]
    assert _env(init)["ESS_TOPIC_PREFIX"] == prefix


def test_init_creates_the_registry_topics(plan: InitPlan, registry: TopicRegistry) -> None:
    expected = {
        spec.name: {"partitions": str(spec.partitions), **spec.configs} for spec in registry.topics
    }
    assert plan.topics == expected
    for spec in (registry.commands, registry.state):
        assert plan.topics[spec.name] == {
            "partitions": "1",
            "retention.ms": "-1",
            "cleanup.policy": "delete",
        }


def test_every_role_uses_sasl_with_its_own_user(
    services: dict[str, dict[str, Any]], init_env: dict[str, str], plan: InitPlan
) -> None:
    assert set(_role_services(services)) == set(ROLE_USERS)
    passwords: dict[str, set[str]] = {}
    for name, user in ROLE_USERS.items():
        env = _env(services[name])
        assert _interpolate(env["KAFKA_SECURITY_PROTOCOL"]) == "SASL_PLAINTEXT", name
        assert _interpolate(env["KAFKA_SASL_MECHANISM"]) == "SCRAM-SHA-512", name
        assert env["KAFKA_SASL_USERNAME"] == user, name
        assert user != ADMIN
        assert user in plan.users, f"{name}: kafka-init creates no user {user}"
        variable = _required_variable(env["KAFKA_SASL_PASSWORD"])
        assert variable, f"{name}: the password must be a required ${{VAR:?}} from docker/.env"
        passwords.setdefault(variable, set()).add(user)
        # kafka-init gives the user the very password the role connects with.
        scram_var = _bash(f"source docker/kafka/lib.sh && password_var {user}", {}).strip()
        assert init_env[scram_var] == _test_secret(variable), name
    # One password per user: no two users share a variable.
    assert all(len(users) == 1 for users in passwords.values()), passwords


def test_no_role_runs_as_the_admin(services: dict[str, dict[str, Any]]) -> None:
    for name, spec in services.items():
        env = _env(spec)
        assert env.get("KAFKA_SASL_USERNAME") != ADMIN, name
        if name not in ("kafka", "kafka-init"):
            assert "KAFKA_ADMIN_PASSWORD" not in json.dumps(spec), name


def test_every_principal_has_a_scram_user_with_its_own_password(
    services: dict[str, dict[str, Any]], plan: InitPlan
) -> None:
    assert ADMIN not in plan.principals()
    assert sorted(plan.users) == sorted(plan.principals())
    assert {"ess-trader", "ess-operator"} | set(ROLE_USERS.values()) == plan.principals()
    init = _env(services["kafka-init"])
    variables = []
    for user in [*plan.users, ADMIN]:
        scram_var = _bash(f"source docker/kafka/lib.sh && password_var {user}", {}).strip()
        variable = _required_variable(init[scram_var])
        assert variable, f"{scram_var} must be a required ${{VAR:?}} from docker/.env"
        variables.append(variable)
    assert len(set(variables)) == len(variables)
    # The broker formats ess-admin with the password kafka-init authenticates with.
    assert _env(services["kafka"])["SCRAM_PASSWORD_ESS_ADMIN"] == init["SCRAM_PASSWORD_ESS_ADMIN"]


def test_only_the_command_processor_writes_the_state_log(
    plan: InitPlan, registry: TopicRegistry
) -> None:
    writers = {
        p for p in plan.principals() if plan.allows(p, "Write", "topic", registry.state.name)
    }
    assert writers == {"ess-command"}


def test_commands_come_from_trading_operators_and_detection_only(
    plan: InitPlan, registry: TopicRegistry
) -> None:
    name = registry.commands.name
    writers = {p for p in plan.principals() if plan.allows(p, "Write", "topic", name)}
    assert writers == {"ess-trader", "ess-operator", "ess-detect"}


def _names(registry: TopicRegistry, *logical: str) -> set[str]:
    return {getattr(registry, name).name for name in logical}


def test_each_role_reads_and_writes_exactly_what_it_owns(
    plan: InitPlan, registry: TopicRegistry
) -> None:
    inputs = {spec.logical for spec in registry.inputs()}
    expected: dict[str, tuple[set[str], set[str]]] = {  # principal: (reads, writes)
        "ess-command": (
            {"commands", "state"},
            {"state", "outcomes", "liveness", "deadletter", "security"},
        ),
        "ess-detect": (inputs | {"state"}, {"commands", "deadletter"}),
        "ess-project": ({"state", "events", "liveness", "commands"}, {"events", "health"}),
        "ess-execute": ({"state"}, {"actions", "security"}),
        "ess-trader": (set(), inputs | {"commands"}),
        "ess-operator": ({"state", "outcomes"}, {"commands"}),
    }
    assert set(expected) == plan.principals()
    every = registry.names
    for principal, (reads, writes) in expected.items():
        assert plan.topics_where(principal, "Read", every) == _names(registry, *reads), principal
        assert plan.topics_where(principal, "Write", every) == _names(registry, *writes), principal
        for operation in ("Create", "Delete", "Alter", "AlterConfigs"):
            assert not plan.topics_where(principal, operation, every), (principal, operation)


def test_service_roles_describe_every_registry_topic_and_its_configs(
    plan: InitPlan, registry: TopicRegistry
) -> None:
    """ess.kafka.broker.ensure_topics lists every registry topic at start: a topic a role cannot
    describe looks missing, and creating it is (rightly) denied."""
    for user in set(ROLE_USERS.values()):
        for operation in ("Describe", "DescribeConfigs"):
            assert plan.topics_where(user, operation, registry.names) == set(registry.names)


def test_consumer_groups_and_cluster_rights(
    services: dict[str, dict[str, Any]], plan: InitPlan, registry: TopicRegistry
) -> None:
    processor_group = default_group_id(registry.prefix)
    detect_groups = sorted(
        _env(services[name])["ESS_DETECT_GROUP"]
        for name, user in ROLE_USERS.items()
        if user == "ess-detect"
    )
    groups: dict[str, set[str]] = {}
    for acl in plan.acls:
        if acl.resource == "group":
            groups.setdefault(acl.principal, set()).add(acl.name)
    assert groups == {
        "ess-command": {processor_group},
        "ess-detect": {*detect_groups, *(f"{group}-" for group in detect_groups)},
    }
    for group in detect_groups:
        assert plan.allows("ess-detect", "Read", "group", group)
        # Faust creates and owns its app's topics: changelogs and the leader topic.
        for topic in (f"{group}-detect-fills-changelog", f"{group}-__assignor-__leader"):
            for operation in ("Create", "Read", "Write", "DescribeConfigs"):
                assert plan.allows("ess-detect", operation, "topic", topic)
        assert not any(name.startswith(f"{group}-") for name in registry.names)
    cluster = {(acl.principal, acl.operation) for acl in plan.acls if acl.resource == "cluster"}
    assert cluster == {("ess-command", "IdempotentWrite")}


@dataclass(frozen=True)
class RedisUser:
    name: str
    rules: list[str]

    @property
    def commands(self) -> set[str]:
        return {rule[1:] for rule in self.rules if rule.startswith("+") and "@" not in rule}

    @property
    def key_patterns(self) -> set[str]:
        return {rule for rule in self.rules if "~" in rule}

    @property
    def channels(self) -> set[str]:
        return {rule[1:] for rule in self.rules if rule.startswith("&")}

    @property
    def password_variable(self) -> str | None:
        for rule in self.rules:
            match = re.fullmatch(r">\$\{([A-Z0-9_]+)\}", rule)
            if match:
                return match.group(1)
        return None


@pytest.fixture(scope="module")
def redis_users() -> dict[str, RedisUser]:
    users = {}
    for line in (REDIS_DIR / "users.acl").read_text().splitlines():
        if line.startswith("user "):
            _, name, *rules = line.split()
            assert name not in users
            users[name] = RedisUser(name, rules)
    return users


#: Commands a non-admin Redis user may be granted at all (redis-py connects with HELLO and
#: CLIENT SETINFO; the store's write is MULTI / SET / PUBLISH / EXEC).
_REDIS_READ = {"get", "subscribe", "unsubscribe", "ping", "hello", "client|setinfo"}
_REDIS_WRITE = {"set", "publish", "multi", "exec", "discard"}


def test_redis_has_no_anonymous_access(redis_users: dict[str, RedisUser]) -> None:
    default = redis_users["default"]
    assert "off" in default.rules
    assert "-@all" in default.rules
    assert "nopass" not in default.rules
    assert not [rule for rule in default.rules if rule[0] in ">#+~%&"]


def test_only_the_projector_may_write_the_policy_store(
    redis_users: dict[str, RedisUser],
) -> None:
    assert set(redis_users) == {"default", "ess-projector", "ess-gate", ADMIN}
    for user in redis_users.values():
        if user.name == ADMIN:  # operations: every command, like Kafka's super user
            assert user.rules[-1] == "+@all"
            continue
        # Everything off first, then single commands only: no category, no key/channel glob.
        assert user.rules.index("-@all") < min(
            (i for i, rule in enumerate(user.rules) if rule.startswith("+")), default=99
        )
        assert not [rule for rule in user.rules if rule.startswith("+@")], user.name
        assert not {"allkeys", "allchannels", "allcommands", "~*", "&*"} & set(user.rules)
    writers = {name for name, user in redis_users.items() if user.commands & {"set"}}
    assert writers == {"ess-projector"}
    projector, gate = redis_users["ess-projector"], redis_users["ess-gate"]
    assert projector.commands == _REDIS_READ - {"subscribe", "unsubscribe"} | _REDIS_WRITE
    assert gate.commands == _REDIS_READ
    # Exactly the record and its channel, as the store names them (empty namespace).
    assert projector.key_patterns == {f"~{EMERGENCY_STOP_KEY}"}
    assert gate.key_patterns == {f"%R~{EMERGENCY_STOP_KEY}"}
    assert projector.channels == gate.channels == {CHANNEL}


def test_redis_passwords_come_from_the_environment(
    services: dict[str, dict[str, Any]], redis_users: dict[str, RedisUser]
) -> None:
    redis = services["redis"]
    assert redis["entrypoint"] == ["/bin/sh", "/etc/ess/redis/start.sh"]
    assert _volume_targets(redis)["/etc/ess/redis"] == "./redis"
    env = _env(redis)
    variables = {
        name: user.password_variable for name, user in redis_users.items() if name != "default"
    }
    assert all(variables.values()), variables
    assert len(set(variables.values())) == len(variables)
    for variable in variables.values():
        assert _required_variable(env[str(variable)]) == variable
    url = _env(services["ess-project"])["ESS_REDIS_URL"]
    assert f"${{{variables['ess-projector']}:?" in url


_SECRET_NAME = re.compile(r"PASSWORD|SECRET|API_KEY|TOKEN|JAAS")


def test_no_secret_is_written_in_compose(services: dict[str, dict[str, Any]]) -> None:
    for name, spec in services.items():
        for key, value in _env(spec).items():
            if _SECRET_NAME.search(key):
                # A required variable; in a JAAS config, every password="..." part is one.
                jaas = "JAAS" in key
                passwords = re.findall(r'password="([^"]*)"', value) if jaas else [value]
                for password in passwords:
                    assert _required_variable(password), f"{name}: {key} is not from .env"
    text = (DOCKER / "compose.yaml").read_text()
    assert not re.findall(r'password="(?!\$\{)', text)
    # URLs with credentials carry them as required interpolations only.
    marked = re.sub(r"\$\{[A-Z0-9_]+:\?[^}]*\}", "<required>", text)
    marked = re.sub(r"\$\{[A-Z0-9_]+(:-[^}]*)?\}", "<default>", marked)
    userinfos = re.findall(r"[a-z]+://([^/@\s]+)@", marked)
    assert userinfos  # the projector's Redis URL at least
    for userinfo in userinfos:
        assert userinfo.partition(":")[2] == "<required>", userinfo


def test_env_example_passwords_are_placeholders(services: dict[str, dict[str, Any]]) -> None:
    example = _env_example()
    passwords = {key: value for key, value in example.items() if key.endswith("_PASSWORD")}
    assert {
        "KAFKA_ADMIN_PASSWORD",
        "KAFKA_COMMAND_PASSWORD",
        "KAFKA_DETECT_PASSWORD",
        "KAFKA_PROJECT_PASSWORD",
        "KAFKA_EXECUTE_PASSWORD",
        "KAFKA_TRADER_PASSWORD",
        "KAFKA_OPERATOR_PASSWORD",
        "REDIS_PROJECTOR_PASSWORD",
        "REDIS_GATE_PASSWORD",
        "REDIS_ADMIN_PASSWORD",
    } <= set(passwords)
    for key, value in passwords.items():
        assert value.startswith("change-me"), f"{key}: .env.example holds placeholders only"
    # Distinct, so that forgetting to change one never makes two users share a password.
    assert len(set(passwords.values())) == len(passwords)


def test_the_security_model_is_documented(plan: InitPlan) -> None:
    doc = (ROOT / "docs" / "security.md").read_text()
    assert "## Security model" in doc
    for principal in plan.principals() | {ADMIN, "ess-projector", "ess-gate"}:
        assert f"`{principal}`" in doc, principal


# --------------------------------------------------------------------------- image


def test_image_ships_the_command_wrapper(services: dict[str, dict[str, Any]]) -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    wrapper = services["ess-command"]["entrypoint"][-1]
    assert f"COPY docker/run_command.py {wrapper}" in dockerfile
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    assert "!docker/run_command.py" in ignore


@pytest.fixture(scope="module")
def run_command() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ess_run_command", DOCKER / "run_command.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def wrapper(
    run_command: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> tuple[ModuleType, list[tuple[str, ...]]]:
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(run_command, "FENCED_MARKER", tmp_path / "fenced")
    monkeypatch.setattr(run_command, "configure_logging", lambda *_a, **_k: None)

    async def no_wait() -> None:
        await asyncio.sleep(0)

    monkeypatch.setattr(run_command, "_hold_until_stopped", no_wait)
    return run_command, calls


def _fake_worker(calls: list[tuple[str, ...]], error: BaseException | None) -> Any:
    async def run_worker(_settings: EssSettings, roles: tuple[str, ...]) -> None:
        calls.append(tuple(roles))
        if error is not None:
            raise WorkerError(f"role command failed: {error}") from error

    return run_worker


def test_wrapper_runs_the_command_role_and_exits_0(
    wrapper: tuple[ModuleType, list[tuple[str, ...]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    module, calls = wrapper
    module.FENCED_MARKER.write_text("stale\n")
    monkeypatch.setattr(module, "run_worker", _fake_worker(calls, None))
    assert module.main() == 0
    assert calls == [("command",)]
    assert not module.FENCED_MARKER.exists()


def test_wrapper_holds_a_fenced_processor(
    wrapper: tuple[ModuleType, list[tuple[str, ...]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    module, calls = wrapper
    fenced = FencedError("entry seq 7 at offset 9 was not ours")
    monkeypatch.setattr(module, "run_worker", _fake_worker(calls, fenced))
    assert module.main() == EXIT_FENCED == 3
    assert "not ours" in module.FENCED_MARKER.read_text()


def test_wrapper_exits_1_on_other_failures(
    wrapper: tuple[ModuleType, list[tuple[str, ...]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    module, calls = wrapper
    monkeypatch.setattr(module, "run_worker", _fake_worker(calls, RuntimeError("broker gone")))
    assert module.main() == 1
    assert not module.FENCED_MARKER.exists()


# --------------------------------------------------------------------------- Grafana


_METRIC_CONSTRUCTOR = re.compile(
    r"\b(Counter|Gauge|Histogram|Summary|Info|Enum|CounterMetricFamily|GaugeMetricFamily|"
    r"HistogramMetricFamily|SummaryMetricFamily|InfoMetricFamily)\(\s*\"(ess_[a-z0-9_]+)\"",
)
_SUFFIXES = {
    "Counter": ("_total", "_created"),
    "CounterMetricFamily": ("_total", "_created"),
    "Histogram": ("_bucket", "_count", "_sum", "_created"),
    "HistogramMetricFamily": ("_bucket", "_count", "_sum"),
    "Summary": ("_count", "_sum", "_created"),
    "SummaryMetricFamily": ("_count", "_sum"),
    "Info": ("_info",),
    "InfoMetricFamily": ("_info",),
}


def _exported(kind: str, name: str) -> set[str]:
    if kind in ("Counter", "CounterMetricFamily"):
        name = name.removesuffix("_total")
    suffixes = _SUFFIXES.get(kind, ("",))
    return {name + suffix for suffix in suffixes}


@pytest.fixture(scope="module")
def code_metrics() -> set[str]:
    """Every ``ess_*`` sample name the code base can export, found by grepping the metric
    constructors in ``ess/`` and ``streams/`` (so a metric added anywhere is covered)."""
    names: set[str] = set()
    for package in ("ess", "streams"):
        for path in (ROOT / package).rglob("*.py"):
            for kind, name in _METRIC_CONSTRUCTOR.findall(path.read_text()):
                names |= _exported(kind, name)
    return names


def test_metric_grep_sees_what_the_registries_expose(code_metrics: set[str]) -> None:
    """Guards the grep: every family the projector and executor registries really expose."""
    exposed: set[str] = set()
    registries: list[CollectorRegistry] = [
        ProjectorMetrics().registry,
        ExecutorMetrics().registry,
    ]
    kinds = {"counter": "Counter", "gauge": "Gauge", "histogram": "Histogram"}
    for registry in registries:
        for family in registry.collect():
            exposed |= _exported(kinds.get(family.type, "Gauge"), family.name)
    assert exposed <= code_metrics
    assert {"ess_state_active", "ess_activations_total", "ess_executor_actions_total"} <= exposed


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DOCKER / "grafana" / "dashboards" / "ess.json").read_text())
    return data


def _queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def test_dashboard_is_well_formed(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"]
    assert dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    datasource = _load_yaml(DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")
    uid = datasource["datasources"][0]["uid"]
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_every_queried_metric_exists_in_the_code(
    dashboard: dict[str, Any], code_metrics: set[str]
) -> None:
    for title, expr in _queries(dashboard):
        for metric in re.findall(r"\bess_[a-z0-9_]+\b", expr):
            assert metric in code_metrics, f"panel {title!r} queries unknown {metric}"


def test_dashboard_covers_the_ess_signals(dashboard: dict[str, Any]) -> None:
    queried = {m for _, expr in _queries(dashboard) for m in re.findall(r"ess_[a-z0-9_]+", expr)}
    assert {
        "ess_state_active",
        "ess_activations_total",
        "ess_trips_total",
        "ess_resets_total",
        "ess_resets_rejected_total",
        "ess_state_log_lag_records",
        "ess_state_log_trusted",
        "ess_policy_store_last_write_timestamp_seconds",
        "ess_events_published_total",
        "ess_executor_venue_flat",
        "ess_executor_venue_stalled",
        "ess_executor_flatten_seconds",
        "ess_executor_actions_total",
        "ess_executor_reports_dropped_total",
    } <= queried


def test_grafana_provisioning_matches_the_mounts(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    mounts = _volume_targets(grafana)
    provider = _load_yaml(DOCKER / "grafana" / "provisioning" / "dashboards" / "ess.yaml")
    path = provider["providers"][0]["options"]["path"]
    assert mounts[path] == "./grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    home = _env(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(path + "/")
    assert (DOCKER / "grafana" / "dashboards" / Path(home).name).is_file()
    datasource = _load_yaml(DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")
    assert urlsplit(datasource["datasources"][0]["url"]).hostname == "prometheus"
