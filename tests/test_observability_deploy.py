"""Every role observable in the compose deployment, checked without Docker or Prometheus:
Prometheus scrapes every role, compose gives the detectors and the command processor a
reachable status port and a ``/healthz`` healthcheck, the alerting rules and the dashboard
query only metrics the code really exports (read from the live registries), and every alert
has a promtool unit test (``make check-alerts`` runs them where promtool exists)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from ess.roles.command.metrics import ProcessorMetrics
from ess.roles.detect.metrics import DetectMetrics
from ess.roles.detect.observe import DEAD_LETTER_REASONS
from ess.roles.execute.service import ExecutorMetrics
from ess.roles.notify.metrics import NotifyMetrics
from ess.roles.project.metrics import ProjectorMetrics
from ess.roles.worker import ROLES

DOCKER = Path(__file__).resolve().parents[1] / "docker"

#: What the issue asks alerts for, by the alert that answers it.
REQUIRED_ALERTS = {
    "EssTripped",  # trip
    "EssReset",  # reset
    "EssCommandProcessorGone",  # processor gone
    "EssDetectLag",  # lag
    "EssFlattenStalled",  # flatten stalled
    "EssDeadLetterSpike",  # dead-letter spike
}
#: Prometheus's own series, not ESS's.
BUILTIN = {"up"}


def _yaml(name: str) -> Any:
    return yaml.safe_load((DOCKER / name).read_text())


def _sample_names(registry: CollectorRegistry) -> set[str]:
    names: set[str] = set()
    for family in registry.collect():
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_count", "_sum"),
        }.get(family.type, ("",))
        names |= {family.name + suffix for suffix in suffixes}
    return names


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Every ESS sample name the roles' registries expose."""
    detect = DetectMetrics()
    detect.declare(["ess.fills"], ["trade_rate"], DEAD_LETTER_REASONS)
    registries = [
        ProjectorMetrics().registry,
        ProcessorMetrics().registry,
        ExecutorMetrics().registry,
        NotifyMetrics().registry,
        detect.registry,
    ]
    return set().union(*(_sample_names(registry) for registry in registries))


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in _yaml("alerts.yml")["groups"] for rule in group["rules"]]


def _metrics_in(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', "", expr)
    return set(re.findall(r"\b(ess_[a-z0-9_]+|up)\b", without_strings))


def test_prometheus_scrapes_every_role_and_loads_the_rules() -> None:
    config = _yaml("prometheus.yml")
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == {"ess-detect", "ess-command", "ess-executor", "ess-projector"}
    assert len(jobs) == len(ROLES)
    assert config["rule_files"] == ["alerts.yml"]
    # Mounted next to prometheus.yml in the container, where the relative path points.
    compose = _yaml("compose.yaml")["services"]
    volumes = compose["prometheus"]["volumes"]
    assert "./alerts.yml:/etc/prometheus/alerts.yml:ro" in volumes
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in volumes


def test_detectors_and_the_command_processor_serve_healthz_in_compose() -> None:
    services = _yaml("compose.yaml")["services"]
    for name, port_setting, port in (
        ("ess-detect-a", "ESS_DETECT_STATUS_PORT", "9467"),
        ("ess-detect-b", "ESS_DETECT_STATUS_PORT", "9467"),
        ("ess-command", "ESS_COMMAND_STATUS_PORT", "9466"),
    ):
        env = services[name]["environment"]
        assert env["ESS_STATUS_HOST"] == "0.0.0.0", name
        assert env[port_setting] == port, name
        check = " ".join(services[name]["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/healthz" in check, name
    # The fenced-processor marker still makes the command container unhealthy.
    assert "test ! -e /tmp/ess-command-fenced" in " ".join(
        services["ess-command"]["healthcheck"]["test"]
    )
    # Scaled detectors must not fight over a host port.
    assert "ports" not in services["ess-detect-a"]
    assert "ports" not in services["ess-detect-b"]


def test_the_required_alerts_exist_and_each_has_a_unit_test() -> None:
    alerts = {rule["alert"] for rule in _alert_rules()}
    assert alerts >= REQUIRED_ALERTS
    tests = _yaml("alerts.test.yml")
    assert tests["rule_files"] == ["alerts.yml"]
    tested = {
        case["alertname"] for test in tests["tests"] for case in test.get("alert_rule_test", [])
    }
    assert tested == alerts
    for rule in _alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_alert_rules_query_only_exported_metrics(exported: set[str]) -> None:
    for rule in _alert_rules():
        used = _metrics_in(rule["expr"])
        assert used, rule["alert"]
        unknown = used - exported - BUILTIN
        assert not unknown, f"{rule['alert']} queries {sorted(unknown)}"


def test_dashboard_covers_every_role_with_exported_metrics(exported: set[str]) -> None:
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "ess.json").read_text())
    queried: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queried |= _metrics_in(target["expr"])
    assert not queried - exported - BUILTIN, sorted(queried - exported - BUILTIN)
    assert {
        # detect
        "ess_detect_ready",
        "ess_detect_wedged",
        "ess_detect_consumer_lag_records",
        "ess_detect_consumer_lag_seconds",
        "ess_detect_records_total",
        "ess_detect_rule_records_total",
        "ess_detect_trips_total",
        "ess_detect_dead_letters_total",
        "ess_detect_fetch_to_trip_seconds_bucket",
        # command
        "ess_commands_total",
        "ess_command_processor_owner",
        "ess_command_processor_last_seq",
        "ess_command_processor_last_beat_timestamp_seconds",
        "ess_command_processor_lag_records",
        # project, execute
        "ess_state_active",
        "ess_executor_venue_stalled",
    } <= queried
