"""The compose deployment (``docker/``) checked against the code, without Docker.

Nothing here starts a container. What is checked is what drifts silently when the code moves
on: service layout (one service per role, a single command processor, KRaft Kafka), every
environment variable an ESS container gets being a setting ESS actually reads, ports and
hosts agreeing between compose, Prometheus and the settings, venue credentials supplied for
every venue, and every metric the Grafana dashboard queries existing in the code.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import CollectorRegistry
from pydantic import AliasChoices

from ess.config import EssSettings
from ess.executor.config import ExecutorSettings, parse_venues
from ess.executor.service import ExecutorMetrics
from ess.metrics import ProjectorMetrics
from ess.processor import EXIT_FENCED, FencedError
from ess.worker import ROLES, WorkerError
from streams.settings import DetectEnv

ROOT = Path(__file__).resolve().parents[2]
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
    """Every environment variable ESS reads, from the settings classes themselves."""
    names: set[str] = set()
    for field_name, field in EssSettings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {choice for choice in alias.choices if isinstance(choice, str)}
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"ESS_{field_name}".upper())
    names |= {f"ESS_EXECUTOR_{name}".upper() for name in ExecutorSettings.model_fields}
    names |= {f"ESS_DETECT_{name}".upper() for name in DetectEnv.model_fields}
    # The venue list is read by load_venues() from the raw environment.
    source = (ROOT / "ess" / "executor" / "config.py").read_text()
    names |= set(re.findall(r'env\.get\("(ESS_VENUES(?:_FILE)?)"', source))
    assert {"ESS_VENUES_FILE", "ESS_VENUES"} <= names
    return names


def _venues(services: dict[str, dict[str, Any]]) -> Any:
    execute = services["ess-execute"]
    path = _env(execute)["ESS_VENUES_FILE"]
    host_path = _volume_targets(execute)[path]
    return parse_venues(tomllib.loads((DOCKER / host_path).read_text()))


# --------------------------------------------------------------------------- layout


def test_infrastructure_services_exist(services: dict[str, dict[str, Any]]) -> None:
    assert {"kafka", "redis", "sim", "prometheus", "grafana"} <= set(services)


def test_kafka_runs_in_kraft_mode_without_zookeeper(services: dict[str, dict[str, Any]]) -> None:
    for name, spec in services.items():
        assert "zookeeper" not in name.lower()
        assert "zookeeper" not in str(spec.get("image", "")).lower()
        assert not [key for key in _env(spec) if "ZOOKEEPER" in key], name
    kafka = _env(services["kafka"])
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{kafka['KAFKA_NODE_ID']}@kafka:")
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


def test_restart_policies(services: dict[str, dict[str, Any]]) -> None:
    for name, spec in services.items():
        assert spec.get("restart") == "unless-stopped", name


def test_healthchecks_where_meaningful(services: dict[str, dict[str, Any]]) -> None:
    for name in ("kafka", "redis", "ess-command", "ess-execute", "ess-project", "sim"):
        assert services[name].get("healthcheck", {}).get("test"), name
    project = " ".join(services["ess-project"]["healthcheck"]["test"])
    execute = " ".join(services["ess-execute"]["healthcheck"]["test"])
    assert "127.0.0.1:9464/healthz" in project
    assert "127.0.0.1:9465/healthz" in execute


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


def test_the_default_settings_of_every_role_validate(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each role's environment (with compose's defaults filled in) is accepted by
    EssSettings, as the container would be at start."""
    for name in _role_services(services):
        with monkeypatch.context() as patch:
            for key, value in _env(services[name]).items():
                patch.setenv(key, _interpolated_default(value))
            settings = EssSettings(_env_file=None)
        assert settings.kafka_bootstrap_servers == "kafka:9092"
        assert settings.kafka_security().protocol == "PLAINTEXT"


def test_status_servers_are_reachable_and_scraped(services: dict[str, dict[str, Any]]) -> None:
    project = _env(services["ess-project"])
    execute = _env(services["ess-execute"])
    # Both status servers bind ESS_STATUS_HOST (default 127.0.0.1: unreachable from another
    # container); the executor gets it from the same setting (ess.worker passes it).
    assert project["ESS_STATUS_HOST"] == "0.0.0.0"
    assert execute["ESS_STATUS_HOST"] == "0.0.0.0"
    prometheus = _load_yaml(DOCKER / "prometheus.yml")
    targets = {
        job["job_name"]: [t for config in job["static_configs"] for t in config["targets"]]
        for job in prometheus["scrape_configs"]
    }
    assert targets == {
        "ess-projector": [f"ess-project:{project['ESS_STATUS_PORT']}"],
        "ess-executor": [f"ess-execute:{execute['ESS_EXECUTOR_STATUS_PORT']}"],
    }
    assert EssSettings.model_fields["status_port"].default == 9464
    assert ExecutorSettings.model_fields["status_port"].default == 9465


def test_projector_uses_the_compose_redis(services: dict[str, dict[str, Any]]) -> None:
    url = urlsplit(_env(services["ess-project"])["ESS_REDIS_URL"])
    assert url.scheme == "redis"
    assert url.hostname in services
    assert services[str(url.hostname)]["image"].startswith("redis:")


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
