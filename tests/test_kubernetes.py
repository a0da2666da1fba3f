"""The Kubernetes manifests (``deploy/k8s/``) checked offline: no kubectl, no cluster.

Each overlay is rendered by :func:`render`, a small kustomize that does exactly what the
kustomizations use (``resources``, ``namespace``, ``images``, ``replicas``, strategic-merge
``patches`` by kind and name) and refuses anything else, so a kustomization that grows a
feature this renderer does not know fails here instead of being checked wrongly. Every
rendered object is validated against the Kubernetes API schema of :data:`KUBERNETES_VERSION`
(``kubernetes_validate``, strict: unknown fields are errors).

Then what matters for a kill switch and could silently regress: one command processor, ever
(a StatefulSet of one that no overlay scales); probes on each role's real ``/healthz`` port,
and a fenced processor that the probes never restart; a disruption budget for every workload;
default-deny network policies with each role's egress exactly as docs/security.md says;
venue credentials and the processor's signing key in one pod each; every ``ESS_*`` and
``KAFKA_*`` name a setting ESS reads (judged by ``ess.settings.check_environment``, the code's
own check), and each role's environment accepted by :class:`ess.settings.EssSettings`.
"""

from __future__ import annotations

import copy
import functools
import http.server
import importlib.util
import os
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from ess.roles import worker
from ess.roles.detect.settings import load_detection_config
from ess.rules.config import DetectionConfig
from ess.settings import (
    OTHER_VARIABLES,
    CommandSettings,
    DetectSettings,
    EssSettings,
    ExecuteSettings,
    ProjectSettings,
    Section,
    check_environment,
    env_variables,
)
from ess.venues.config import VenueConfig, parse_venues

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
DOCKER = ROOT / "docker"
OVERLAYS = ("dev", "production")

#: The Kubernetes release the manifests target: every object must validate against its API
#: schemas (they use fields GA since 1.31, such as a PDB's unhealthyPodEvictionPolicy). They
#: are also checked against the newest schemas kubernetes_validate ships, so that nothing they
#: use has been removed since.
KUBERNETES_VERSION = "1.31"

NAMESPACE = "ess"
#: Kinds without a namespace (kustomize's namespace transformer leaves them alone).
CLUSTER_SCOPED = frozenset({"Namespace", "PriorityClass"})
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet"})
#: The label that names a pod's role, and the one that names a detector's group.
COMPONENT = "app.kubernetes.io/component"
DETECT_GROUP = "ess/detect-group"
#: Each role's status-port setting: the port its /status, /metrics and /healthz listen on.
STATUS_PORT_SETTING: dict[str, tuple[type[Section], str]] = {
    "command": (CommandSettings, "status_port"),
    "detect": (DetectSettings, "status_port"),
    "execute": (ExecuteSettings, "status_port"),
    "project": (ProjectSettings, "status_port"),
}
#: Roles that must never run twice: StatefulSets of one (base/command.yaml says why).
AT_MOST_ONE = {"command": "ess-command", "execute": "ess-execute"}
SINGLETONS = {**AT_MOST_ONE, "project": "ess-project"}
VENUE_SECRET = "ess-venue-credentials"
SIGNING_KEY_SECRET = "ess-processor-signing-key"
#: Opt-in roles (``ess worker --role X`` only when named) that have no manifests, and why. A
#: new opt-in role must be deployed or named here.
NOT_DEPLOYED = {
    "notify": "the opt-in alert notifier: its receivers are the desk's (deploy/k8s/README.md)",
}


# --------------------------------------------------------------------------- the renderer

#: What the renderer implements; a kustomization using anything else fails loudly.
_KUSTOMIZATION_FIELDS = frozenset(
    {"apiVersion", "kind", "namespace", "resources", "images", "replicas", "patches"}
)
#: Strategic merge patch: lists merged item by item on these keys (as the API's
#: ``patchMergeKey``); every other list is replaced by the patch's.
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """Strategic merge of ``patch`` into ``target``: maps merge, ``null`` deletes, keyed
    lists (:data:`_MERGE_KEYS`) merge by key, other lists and scalars are replaced."""
    for key, value in patch.items():
        assert not str(key).startswith("$"), f"patch directive {key} not supported"
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        elif isinstance(value, list) and isinstance(target.get(key), list) and key in _MERGE_KEYS:
            merge_key = _MERGE_KEYS[key]
            existing = {item[merge_key]: item for item in target[key]}
            for item in value:
                if item[merge_key] in existing:
                    _merge(existing[item[merge_key]], item)
                else:
                    target[key].append(copy.deepcopy(item))
        else:
            target[key] = copy.deepcopy(value)


def _image_name(reference: str) -> str:
    """``registry:5000/team/app:tag@sha256:...`` -> ``registry:5000/team/app``."""
    reference = reference.split("@", 1)[0]
    last = reference.rsplit("/", 1)[-1]
    return reference[: len(reference) - len(last)] + last.split(":", 1)[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def render(directory: Path) -> list[dict[str, Any]]:
    """``kustomize build directory`` for the features of :data:`_KUSTOMIZATION_FIELDS`."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - _KUSTOMIZATION_FIELDS
    assert not unknown, f"{directory}: the test renderer does not implement {sorted(unknown)}"
    assert kustomization["kind"] == "Kustomization"
    objects: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        objects += render(path) if path.is_dir() else _documents(path)
    for entry in kustomization.get("patches", []):
        assert set(entry) == {"path"}, f"{directory}: only `path` patches: {entry}"
        docs = _documents(directory / entry["path"])
        # One patch per file: what every kustomize release accepts under `patches`.
        assert len(docs) == 1, f"{entry['path']}: one patch per file"
        (patch,) = docs
        targets = [
            obj
            for obj in objects
            if (obj["kind"], obj["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"])
        ]
        assert len(targets) == 1, f"{entry['path']}: no single {patch['kind']} to patch"
        _merge(targets[0], patch)
    for entry in kustomization.get("replicas", []):
        targets = [
            obj
            for obj in objects
            if obj["kind"] in WORKLOAD_KINDS and obj["metadata"]["name"] == entry["name"]
        ]
        assert len(targets) == 1, f"{directory}: replicas of unknown workload {entry['name']}"
        targets[0]["spec"]["replicas"] = entry["count"]
    for entry in kustomization.get("images", []):
        for obj in objects:
            if obj["kind"] not in WORKLOAD_KINDS:
                continue
            spec = pod_spec(obj)
            for container in [*spec.get("initContainers", []), *spec["containers"]]:
                if _image_name(container["image"]) != entry["name"]:
                    continue
                name = entry.get("newName", entry["name"])
                if "digest" in entry:
                    container["image"] = f"{name}@{entry['digest']}"
                else:
                    container["image"] = f"{name}:{entry['newTag']}" if "newTag" in entry else name
    if "namespace" in kustomization:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = kustomization["namespace"]
    ids = [(obj["kind"], obj["metadata"]["name"]) for obj in objects]
    assert len(ids) == len(set(ids)), f"{directory}: duplicate objects"
    return objects


@functools.cache
def _rendered(name: str) -> tuple[dict[str, Any], ...]:
    directory = K8S / "base" if name == "base" else K8S / "overlays" / name
    return tuple(render(directory))


def rendered(name: str) -> list[dict[str, Any]]:
    """The rendered objects of an overlay (or ``base``), a copy each test may change."""
    return copy.deepcopy(list(_rendered(name)))


# --------------------------------------------------------------------------- helpers


def _of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return _of_kind(objects, kind)[name]


def workloads(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] in WORKLOAD_KINDS}


def role_of(workload: dict[str, Any]) -> str:
    """The ESS role a workload runs, from its one container's command line (and checked
    against its component label)."""
    (container,) = pod_spec(workload)["containers"]
    command = [*container.get("command", []), *container.get("args", [])]
    if command == ["python", command_wrapper_path()]:
        role = "command"
    else:
        assert command[:3] == ["worker", "--role", command[2]], command
        assert len(command) == 3, f"one role per pod: {command}"
        role = command[2]
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert labels[COMPONENT] == role, workload["metadata"]["name"]
    return role


def by_role(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for workload in workloads(objects).values():
        found.setdefault(role_of(workload), []).append(workload)
    return found


def _labels_match(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes' label selector: every ``matchLabels`` pair, and every ``matchExpressions``
    term (only the ``In`` operator is used in the manifests; any other fails here)."""
    assert set(selector) <= {"matchLabels", "matchExpressions"}, selector
    for term in selector.get("matchExpressions", []):
        assert term["operator"] == "In", f"operator {term['operator']} is not evaluated here"
        if labels.get(term["key"]) not in term["values"]:
            return False
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def secret_catalog() -> dict[str, dict[str, str]]:
    """Every Secret ESS needs, by name, with its keys and placeholder values: the dev overlay's
    placeholder Secrets, which the production overlay expects to exist under the same names."""
    catalog: dict[str, dict[str, str]] = {}
    for secret in _of_kind(rendered("dev"), "Secret").values():
        assert "data" not in secret, "placeholders in stringData (readable)"
        catalog[secret["metadata"]["name"]] = dict(secret["stringData"])
    return catalog


def environment(objects: list[dict[str, Any]], workload: dict[str, Any]) -> dict[str, str]:
    """The environment the workload's container starts with: its ConfigMaps and Secrets
    (``envFrom``, values from the placeholder Secrets), then its ``env`` (which wins)."""
    (container,) = pod_spec(workload)["containers"]
    config_maps = _of_kind(objects, "ConfigMap")
    secrets = secret_catalog()
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]]["data"])
        else:
            env.update(secrets[source["secretRef"]["name"]])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def secret_refs(workload: dict[str, Any]) -> set[tuple[str, str | None]]:
    """Every (Secret, key) the pod reads; key ``None``: the whole Secret."""
    spec = pod_spec(workload)
    refs: set[tuple[str, str | None]] = set()
    for container in spec["containers"]:
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                refs.add((source["secretRef"]["name"], None))
        for item in container.get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None:
                refs.add((ref["name"], ref["key"]))
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            refs.add((volume["secret"]["secretName"], None))
    return refs


def mounts(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Mount path -> the volume mounted there."""
    spec = pod_spec(workload)
    (container,) = spec["containers"]
    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    return {mount["mountPath"]: volumes[mount["name"]] for mount in container["volumeMounts"]}


def status_port_env(role: str) -> str:
    section, field = STATUS_PORT_SETTING[role]
    return section.env_names(field)[0]


def declared_ports(workload: dict[str, Any]) -> dict[str, int]:
    (container,) = pod_spec(workload)["containers"]
    return {port["name"]: port["containerPort"] for port in container.get("ports", [])}


def dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text()


def image_uid() -> int:
    match = re.search(r"useradd [^\n]*--uid (\d+)", dockerfile())
    assert match, "the image's user"
    return int(match.group(1))


def image_workdir() -> str:
    workdirs = re.findall(r"^WORKDIR (\S+)", dockerfile(), re.MULTILINE)
    return str(workdirs[-1])


@functools.cache
def command_wrapper_path() -> str:
    """Where docker/Dockerfile installs docker/run_command.py."""
    match = re.search(r"^COPY docker/run_command.py (\S+)$", dockerfile(), re.MULTILINE)
    assert match, "the image ships the command wrapper"
    return match.group(1)


@pytest.fixture(scope="module")
def run_command() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ess_run_command_k8s", DOCKER / "run_command.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def venues(objects: list[dict[str, Any]], workload: dict[str, Any]) -> tuple[VenueConfig, ...]:
    """The venues the executor reads: the file at ESS_VENUES_FILE, from its ConfigMap."""
    path = Path(environment(objects, workload)["ESS_VENUES_FILE"])
    volume = mounts(workload)[str(path.parent)]
    data = _one(objects, "ConfigMap", volume["configMap"]["name"])["data"][path.name]
    return parse_venues(tomllib.loads(data))


# --------------------------------------------------------------------------- the renderer itself


def test_strategic_merge_merges_containers_by_name_and_replaces_other_lists() -> None:
    target = {
        "containers": [{"name": "a", "image": "x", "args": ["1"]}, {"name": "b", "image": "y"}],
        "egress": [{"ports": [{"port": 1}]}],
        "drop": "me",
    }
    _merge(
        target,
        {
            "containers": [{"name": "a", "args": ["2"]}, {"name": "c", "image": "z"}],
            "egress": [{"ports": [{"port": 2}]}],
            "drop": None,
        },
    )
    assert target == {
        "containers": [
            {"name": "a", "image": "x", "args": ["2"]},
            {"name": "b", "image": "y"},
            {"name": "c", "image": "z"},
        ],
        "egress": [{"ports": [{"port": 2}]}],
    }
    assert (
        _image_name("registry:5000/team/ess-worker:1.0@sha256:ab")
        == "registry:5000/team/ess-worker"
    )
    assert _image_name("ess-worker") == "ess-worker"


def test_the_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\ncommonLabels: {a: b}\n"
    )
    with pytest.raises(AssertionError, match="commonLabels"):
        render(tmp_path)


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize("version", [KUBERNETES_VERSION, kubernetes_validate.latest_version()])
@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_every_object_validates_against_the_kubernetes_api(name: str, version: str) -> None:
    objects = rendered(name)
    assert objects
    errors = []
    for obj in objects:
        try:
            checked = kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
        else:
            # The schemas of that very release were used, not an older fallback.
            assert checked == ".".join(version.split(".")[:2])
    assert not errors, "\n".join(errors)


def test_the_schema_check_rejects_an_unknown_field() -> None:
    """Strict validation is what catches a misspelt field (it would be silently dropped by
    the API server otherwise)."""
    workload = copy.deepcopy(_one(rendered("dev"), "StatefulSet", "ess-command"))
    pod_spec(workload)["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(workload, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_everything_is_in_the_ess_namespace(name: str) -> None:
    for obj in rendered(name):
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in obj["metadata"]
        else:
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]
    namespace = _one(rendered(name), "Namespace", NAMESPACE)
    # Pod Security Admission refuses any pod that is not "restricted".
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --------------------------------------------------------------------------- roles and images


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_role_runs_from_the_one_ess_image(overlay: str) -> None:
    objects = rendered(overlay)
    assert set(by_role(objects)) == set(worker.ROLES)
    (entry,) = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())[
        "images"
    ]
    expected = f"{entry['newName']}:{entry['newTag']}"
    for name, workload in workloads(objects).items():
        spec = pod_spec(workload)
        assert not spec.get("initContainers"), name
        images = {container["image"] for container in spec["containers"]}
        assert images == {expected}, name


def test_an_opt_in_role_is_deployed_or_named() -> None:
    deployed = set(by_role(rendered("production")))
    opt_in = set(getattr(worker, "OPT_IN_ROLES", {}))
    assert opt_in - deployed <= set(NOT_DEPLOYED)
    assert not set(NOT_DEPLOYED) & deployed, "deployed now: drop it from NOT_DEPLOYED"
    readme = (K8S / "README.md").read_text()
    for role in NOT_DEPLOYED:
        assert f"`{role}`" in readme, f"README does not say why {role} is not deployed"


def test_the_command_wrapper_is_the_one_in_the_image(run_command: ModuleType) -> None:
    (container,) = pod_spec(_one(rendered("production"), "StatefulSet", "ess-command"))[
        "containers"
    ]
    assert container["command"] == ["python", command_wrapper_path()]
    assert run_command.EXIT_FENCED == 3


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_command_processor_and_executor_are_statefulsets_of_one(overlay: str) -> None:
    roles = by_role(rendered(overlay))
    for role, name in AT_MOST_ONE.items():
        (workload,) = roles[role]
        assert (workload["kind"], workload["metadata"]["name"]) == ("StatefulSet", name)
        spec = workload["spec"]
        assert spec["replicas"] == 1
        # The replacement starts only after the old pod is gone: never two at once.
        assert spec["podManagementPolicy"] == "OrderedReady"
        assert spec["updateStrategy"]["type"] == "RollingUpdate"
        assert spec["updateStrategy"].get("rollingUpdate", {}).get("partition", 0) == 0
        assert "maxUnavailable" not in spec["updateStrategy"].get("rollingUpdate", {})
        service = _one(rendered(overlay), "Service", spec["serviceName"])
        assert service["spec"]["clusterIP"] == "None"
    (project,) = roles["project"]
    assert project["kind"] == "Deployment"
    assert project["spec"]["replicas"] == 1
    assert project["spec"]["strategy"] == {"type": "Recreate"}


def _singleton_scaling(overlay_dir: Path) -> list[str]:
    """Ways the overlay changes a singleton's replica count, read from its files."""
    kustomization = yaml.safe_load((overlay_dir / "kustomization.yaml").read_text())
    found = [
        f"replicas: {entry['name']}"
        for entry in kustomization.get("replicas", [])
        if entry["name"] in SINGLETONS.values()
    ]
    for entry in kustomization.get("patches", []):
        for patch in _documents(overlay_dir / entry["path"]):
            if patch["metadata"]["name"] in SINGLETONS.values() and "replicas" in patch.get(
                "spec", {}
            ):
                found.append(f"patch {entry['path']}")
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_overlay_scales_a_singleton(overlay: str) -> None:
    assert _singleton_scaling(K8S / "overlays" / overlay) == []
    for role, name in SINGLETONS.items():
        assert workloads(rendered(overlay))[name]["spec"]["replicas"] == 1, role


def test_an_overlay_that_scales_the_processor_is_caught(tmp_path: Path) -> None:
    """The two checks above can fail: an overlay scaling the processor renders 2 replicas and
    is named by the static check."""
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{K8S / 'overlays' / 'production'}]\n"
        "replicas: [{name: ess-command, count: 2}]\n"
    )
    assert workloads(render(tmp_path))["ess-command"]["spec"]["replicas"] == 2
    assert _singleton_scaling(tmp_path) == ["replicas: ess-command"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_two_redundant_detector_groups(overlay: str) -> None:
    objects = rendered(overlay)
    detect = {w["metadata"]["name"]: w for w in by_role(objects)["detect"]}
    assert set(detect) == {"ess-detect-a", "ess-detect-b"}
    partitions = int(_one(objects, "ConfigMap", "ess-settings")["data"]["ESS_INPUT_PARTITIONS"])
    for name, workload in detect.items():
        assert workload["kind"] == "Deployment"
        env = environment(objects, workload)
        assert env["ESS_DETECT_GROUP"] == name
        assert workload["spec"]["template"]["metadata"]["labels"][DETECT_GROUP] == name
        # More workers than input partitions would stand idle.
        assert 1 <= workload["spec"]["replicas"] <= partitions
        if overlay == "production":
            assert workload["spec"]["replicas"] >= 2, "a node loss must not empty a group"
    # Twins: group B is group A with the other name (same rules, same tuning, same probes).
    twin = yaml.safe_dump(detect["ess-detect-a"]).replace("ess-detect-a", "ess-detect-b")
    assert yaml.safe_load(twin) == detect["ess-detect-b"]


# --------------------------------------------------------------------------- probes


def _probe_port(probe: dict[str, Any], workload: dict[str, Any], fenced_marker: Path) -> int:
    """The port a probe checks /healthz on (an httpGet's, or the URL in the command
    processor's exec probe, which must also spare a fenced processor)."""
    if "httpGet" in probe:
        assert probe["httpGet"]["path"] == "/healthz"
        port = probe["httpGet"]["port"]
        return declared_ports(workload)[port] if isinstance(port, str) else int(port)
    assert role_of(workload) == "command", "only the command processor needs an exec probe"
    script = probe["exec"]["command"][-1]
    assert f'os.path.exists("{fenced_marker}")' in script
    match = re.search(r"http://127\.0\.0\.1:(\d+)/healthz", script)
    assert match, script
    return int(match.group(1))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_check_healthz_on_the_roles_status_port(
    overlay: str, run_command: ModuleType
) -> None:
    objects = rendered(overlay)
    for name, workload in workloads(objects).items():
        role = role_of(workload)
        env = environment(objects, workload)
        port = int(env[status_port_env(role)])
        assert declared_ports(workload) == {"status": port}, name
        # Reachable by the kubelet and Prometheus, not only on loopback.
        assert env["ESS_STATUS_HOST"] == "0.0.0.0"
        (container,) = pod_spec(workload)["containers"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = container[kind]
            assert _probe_port(probe, workload, run_command.FENCED_MARKER) == port, (name, kind)
        # Readiness is /healthz itself, even for a fenced processor (never ready).
        assert "httpGet" in container["readinessProbe"], name
        # A restart needs several failures in a row, and never kills a starting role.
        assert container["livenessProbe"]["failureThreshold"] >= 3
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, name
        if role == "command":
            # An httpGet here would restart a fenced processor (its server is gone on
            # purpose) back into the race with the other writer.
            assert "exec" in startup, name
            assert "exec" in container["livenessProbe"], name
            # The marker lives on a writable volume.
            assert mounts(workload)[str(run_command.FENCED_MARKER.parent)]["emptyDir"] is not None


class _Healthz(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def healthz() -> Iterator[tuple[int, type[_Healthz]]]:
    """A loopback server whose /healthz answers ``handler.status``."""
    handler = type("Handler", (_Healthz,), {"status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


def test_the_processor_liveness_probe_spares_a_fenced_processor(
    run_command: ModuleType, tmp_path: Path, healthz: tuple[int, type[_Healthz]]
) -> None:
    """The exec probe run for real: it fails on a 503 or a dead status server, unless the
    wrapper's fenced marker says the processor is held on purpose."""
    port, handler = healthz
    (container,) = pod_spec(_one(rendered("production"), "StatefulSet", "ess-command"))[
        "containers"
    ]
    marker = tmp_path / "fenced"
    for kind in ("startupProbe", "livenessProbe"):
        script = container[kind]["exec"]["command"][-1]
        script = script.replace(str(run_command.FENCED_MARKER), str(marker))
        script = re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{port}", script)

        def probe(script: str = script) -> int:
            return subprocess.run(
                [sys.executable, "-c", script], check=False, capture_output=True, timeout=30
            ).returncode

        handler.status = 200
        assert probe() == 0, kind
        handler.status = 503
        assert probe() != 0, kind
        marker.write_text("fenced\n")
        assert probe() == 0, kind
        marker.unlink()
        dead = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:1", script)
        assert probe(dead) != 0, kind


# --------------------------------------------------------------------------- disruption budgets


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_has_exactly_one_disruption_budget(overlay: str) -> None:
    objects = rendered(overlay)
    budgets = _of_kind(objects, "PodDisruptionBudget")
    used = set()
    for name, workload in workloads(objects).items():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        matching = [
            b for b, pdb in budgets.items() if _labels_match(pdb["spec"]["selector"], labels)
        ]
        # Two budgets over one pod make every eviction of it fail.
        assert len(matching) == 1, f"{name}: {matching}"
        used.update(matching)
    assert used == set(budgets), "a budget that selects nothing"
    # The singletons are moved by a human, never by a drain on its own (see their manifests).
    for name in SINGLETONS.values():
        assert budgets[name]["spec"]["maxUnavailable"] == 0, name
    # A fenced processor is not ready; it must not be evicted into a restart either.
    assert budgets["ess-command"]["spec"]["unhealthyPodEvictionPolicy"] == "IfHealthyBudget"
    # One budget over both detector groups: a drain never takes both at once.
    assert budgets["ess-detect"]["spec"]["maxUnavailable"] == 1
    assert budgets["ess-detect"]["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "ess",
        COMPONENT: "detect",
    }


# --------------------------------------------------------------------------- network policies


def _policies_for(
    objects: list[dict[str, Any]], workload: dict[str, Any], direction: str
) -> list[dict[str, Any]]:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return [
        policy
        for policy in _of_kind(objects, "NetworkPolicy").values()
        if direction in policy["spec"]["policyTypes"]
        and _labels_match(policy["spec"]["podSelector"], labels)
    ]


def _egress_ports(objects: list[dict[str, Any]], workload: dict[str, Any]) -> dict[str, set[Any]]:
    """Policy name -> (protocol, port) pairs it lets the workload's pods reach."""
    found: dict[str, set[Any]] = {}
    for policy in _policies_for(objects, workload, "Egress"):
        for rule in policy["spec"].get("egress", []):
            # A rule without `to` reaches every address, without `ports` every port.
            assert rule.get("to"), policy["metadata"]["name"]
            assert rule.get("ports"), policy["metadata"]["name"]
            found.setdefault(policy["metadata"]["name"], set()).update(
                (port["protocol"], port["port"]) for port in rule["ports"]
            )
    return found


def _kafka_ports(objects: list[dict[str, Any]]) -> set[Any]:
    servers = _one(objects, "ConfigMap", "ess-settings")["data"]["KAFKA_BOOTSTRAP_SERVERS"]
    return {("TCP", int(server.rsplit(":", 1)[1])) for server in servers.split(",")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_everything_else(overlay: str) -> None:
    objects = rendered(overlay)
    policies = _of_kind(objects, "NetworkPolicy")
    deny = policies["ess-default-deny"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    dns = {("UDP", 53), ("TCP", 53)}
    kafka = _kafka_ports(objects)
    for name, workload in workloads(objects).items():
        role = role_of(workload)
        egress = _egress_ports(objects, workload)
        expected = {"ess-egress-dns": dns, "ess-egress-kafka": kafka}
        if role in {"project", "command"}:  # the command processor reads the record only
            expected["ess-egress-redis"] = {("TCP", 6379)}
        if role == "execute":
            expected["ess-egress-exchanges"] = {("TCP", 443)}
        assert egress == expected, name
    # The internet (exchanges): public addresses only, never the cloud metadata service.
    (rule,) = policies["ess-egress-exchanges"]["spec"]["egress"]
    (block,) = rule["to"]
    assert block["ipBlock"]["cidr"] == "0.0.0.0/0"
    assert {"169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} <= set(
        block["ipBlock"]["except"]
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_prometheus_reaches_only_the_status_port(overlay: str) -> None:
    objects = rendered(overlay)
    for name, workload in workloads(objects).items():
        rules = [
            rule
            for policy in _policies_for(objects, workload, "Ingress")
            for rule in policy["spec"].get("ingress", [])
        ]
        assert rules, name
        for rule in rules:
            assert rule["ports"] == [{"port": "status", "protocol": "TCP"}], name
            for peer in rule["from"]:
                assert peer["namespaceSelector"]["matchLabels"], name
                assert peer["podSelector"]["matchLabels"], name
        assert "status" in declared_ports(workload), name


def test_the_redis_policy_port_is_the_projectors_redis_port() -> None:
    objects = rendered("dev")
    (project,) = by_role(objects)["project"]
    url = environment(objects, project)["ESS_REDIS_URL"]
    port = int(re.fullmatch(r"rediss?://[^@]*@[^:/]+:(\d+)/\d+", url).group(1))  # type: ignore[union-attr]
    assert _egress_ports(objects, project)["ess-egress-redis"] == {("TCP", port)}


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_is_a_setting_ess_reads(overlay: str) -> None:
    objects = rendered(overlay)
    settings = {variable.name for variable in env_variables()}
    deprecated = {variable.name for variable in env_variables() if variable.deprecated}
    for name, workload in workloads(objects).items():
        env = environment(objects, workload)
        credentials = frozenset(
            env_name
            for venue in (venues(objects, workload) if role_of(workload) == "execute" else ())
            for env_name in (*venue.env_names(), venue.passphrase_env_name())
        )
        # The code's own judgement (what `ess worker` warns about at start) ...
        report = check_environment(EssSettings, env, venue_env=credentials)
        assert report.unknown == (), f"{name}: {report.unknown}"
        assert report.deprecated == (), f"{name}: {report.deprecated}"
        # ... and stricter: nothing but settings, the venue list and the venues' credentials.
        unknown = set(env) - settings - set(OTHER_VARIABLES) - credentials
        assert not unknown, f"{name}: {sorted(unknown)} are not read by ESS"
        assert not set(env) & deprecated, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_roles_environment_is_accepted_by_the_settings(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As each container starts: EssSettings validates its environment (with the placeholder
    secrets), and every path setting points into the volume that holds it."""
    objects = rendered(overlay)
    catalog = secret_catalog()
    for name, workload in workloads(objects).items():
        role = role_of(workload)
        env = environment(objects, workload)
        with monkeypatch.context() as patch:
            for key in list(os.environ):
                if key.upper().startswith(("ESS_", "KAFKA_")):
                    patch.delenv(key)
            for key, value in env.items():
                patch.setenv(key, value)
            settings = EssSettings(_env_file=None)
        assert settings.kafka.bootstrap_servers == env["KAFKA_BOOTSTRAP_SERVERS"]
        security = settings.kafka_security()
        assert security.protocol.startswith("SASL_"), name
        assert security.sasl_username == f"ess-{role}", "each role is its own Kafka user"
        _, field = STATUS_PORT_SETTING[role]
        assert getattr(getattr(settings, role), field) == declared_ports(workload)["status"]
        volumes = mounts(workload)
        operators = volumes[str(settings.keys.operator_keys_dir)]
        assert operators["secret"]["secretName"] == "ess-operator-keys", name
        processors = volumes[str(settings.keys.processor_keys_dir)]
        assert processors["secret"]["secretName"] == "ess-processor-public-keys", name
        if role == "command":
            key_file = settings.keys.processor_key_file
            volume = volumes[str(key_file.parent)]["secret"]
            assert volume["secretName"] == SIGNING_KEY_SECRET
            assert key_file.name in catalog[SIGNING_KEY_SECRET]
            # Readable by the process's group only (fsGroup), never by others.
            assert volume["defaultMode"] == 0o440
            assert pod_spec(workload)["securityContext"]["fsGroup"] == image_uid()
        if role == "detect":
            assert settings.detect.group == name
            config = settings.detect.config
            assert config is not None
            data = _one(objects, "ConfigMap", volumes[str(config.parent)]["configMap"]["name"])
            assert config.name in data["data"]
        if role == "execute":
            assert venues(objects, workload), "the executor has venues to flatten"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_executor_holds_venue_credentials(overlay: str) -> None:
    objects = rendered(overlay)
    credential = re.compile(r"^ESS_VENUE_[A-Z0-9_]+_(?:API_KEY|SECRET|PASSWORD|PASSPHRASE)$")
    for name, workload in workloads(objects).items():
        role = role_of(workload)
        refs = {secret for secret, _ in secret_refs(workload)}
        env = environment(objects, workload)
        if role == "execute":
            assert VENUE_SECRET in refs
            for venue in venues(objects, workload):
                for env_name in venue.env_names():
                    assert env[env_name], f"{venue.name}: {env_name}"
        else:
            assert VENUE_SECRET not in refs, name
            assert not [key for key in env if credential.match(key)], name
            assert "ESS_VENUES_FILE" not in env, name
        # The processor's private key: in the command pod only.
        assert (SIGNING_KEY_SECRET in refs) == (role == "command"), name
        # Redis: the projector writes the record; the processor reads it (read-only user).
        assert ("ess-redis" in refs) == (role == "project"), name
        assert ("ess-redis-gate" in refs) == (role == "command"), name
        # Each role reads its own Kafka password, and no other.
        kafka = {key for secret, key in secret_refs(workload) if secret == "ess-kafka-passwords"}
        assert kafka == {role}, name


def test_the_venue_credentials_secret_covers_every_venue() -> None:
    objects = rendered("dev")
    (execute,) = by_role(objects)["execute"]
    needed = {env_name for venue in venues(objects, execute) for env_name in venue.env_names()}
    assert set(secret_catalog()[VENUE_SECRET]) == needed


# --------------------------------------------------------------------------- security context


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_restricted(overlay: str) -> None:
    objects = rendered(overlay)
    accounts = _of_kind(objects, "ServiceAccount")
    for name, workload in workloads(objects).items():
        spec = pod_spec(workload)
        role = role_of(workload)
        assert spec["serviceAccountName"] == f"ess-{role}", name
        assert accounts[spec["serviceAccountName"]]["automountServiceAccountToken"] is False
        assert spec["automountServiceAccountToken"] is False, name
        # Service links would inject ESS_<SERVICE>_PORT=tcp://... variables.
        assert spec["enableServiceLinks"] is False, name
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(spec), name
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True
        # The kubelet can only verify a numeric user: the image's, by number.
        assert pod["runAsUser"] == image_uid(), name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context.get("privileged", False) is False
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            for key in ("cpu", "memory"):
                assert container["resources"]["requests"][key], name
                assert container["resources"]["limits"][key], name
        for volume in spec["volumes"]:
            assert set(volume) - {"name"} <= {"emptyDir", "configMap", "secret"}, name
        # A read-only root: the working directory (Faust's data, SQLite) and /tmp writable.
        volumes = mounts(workload)
        for path in (image_workdir(), "/tmp"):
            assert "emptyDir" in volumes[path], f"{name}: {path}"
        for path, volume in volumes.items():
            if "emptyDir" not in volume:
                assert _read_only(workload, path), f"{name}: {path}"


def _read_only(workload: dict[str, Any], path: str) -> bool:
    (container,) = pod_spec(workload)["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == path]
    return bool(mount.get("readOnly"))


def test_production_is_guaranteed_qos_and_not_preemptible() -> None:
    objects = rendered("production")
    priority = _one(objects, "PriorityClass", "ess-critical")
    for name, workload in workloads(objects).items():
        spec = pod_spec(workload)
        assert spec["priorityClassName"] == priority["metadata"]["name"], name
        (container,) = spec["containers"]
        assert container["resources"]["requests"] == container["resources"]["limits"], name


def test_dev_asks_for_less_than_production() -> None:
    def memory(value: str) -> int:
        number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", value).groups()  # type: ignore[union-attr]
        return int(number) * (1024 if unit == "Gi" else 1)

    dev, production = workloads(rendered("dev")), workloads(rendered("production"))
    for name, workload in dev.items():
        (small,) = pod_spec(workload)["containers"]
        (large,) = pod_spec(production[name])["containers"]
        assert memory(small["resources"]["requests"]["memory"]) < memory(
            large["resources"]["requests"]["memory"]
        ), name


# --------------------------------------------------------------------------- secrets


def test_secrets_are_placeholders_in_dev_and_absent_in_production() -> None:
    for name, values in secret_catalog().items():
        for key, value in values.items():
            assert "change-me" in value or "REPLACE-ME" in value, f"{name}/{key}"
    assert not _of_kind(rendered("production"), "Secret")
    assert not _of_kind(rendered("base"), "Secret")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_secret_a_pod_reads_is_in_the_catalog_and_the_readme(overlay: str) -> None:
    catalog = secret_catalog()
    readme = (K8S / "README.md").read_text()
    for name, workload in workloads(rendered(overlay)).items():
        for secret, key in secret_refs(workload):
            assert secret in catalog, f"{name}: {secret}"
            assert key is None or key in catalog[secret], f"{name}: {secret}/{key}"
            assert f"`{secret}`" in readme, f"README does not tell how to create {secret}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_is_written_into_a_manifest(overlay: str) -> None:
    secretish = re.compile(r"PASSWORD|SECRET|API_KEY|PASSPHRASE|REDIS_URL|TOKEN")
    objects = rendered(overlay)
    for name, workload in workloads(objects).items():
        (container,) = pod_spec(workload)["containers"]
        for item in container.get("env", []):
            if secretish.search(item["name"]):
                assert "secretKeyRef" in item.get("valueFrom", {}), f"{name}: {item['name']}"
    for config_map in _of_kind(objects, "ConfigMap").values():
        assert not [key for key in config_map["data"] if secretish.search(key)]


# --------------------------------------------------------------------------- configuration files


def test_the_detection_thresholds_file_and_its_example_are_valid(tmp_path: Path) -> None:
    text = _one(rendered("production"), "ConfigMap", "ess-detection")["data"]["detection.toml"]
    path = tmp_path / "detection.toml"
    path.write_text(text)
    assert load_detection_config(path) == DetectionConfig()
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# Example"))
    example = [line.removeprefix("#").removeprefix(" ") for line in lines[start + 3 :]]
    path.write_text("\n".join(example))
    config = load_detection_config(path)
    assert config.required_components == {"orchestrator", "riskguard"}
    assert config.account.daily_loss == 0.10


def _ess_names(text: str) -> set[str]:
    """``ESS_*`` names in a text; placeholders (``ESS_VENUE_<NAME>_API_KEY``, ``ESS_*``) are
    not names."""
    return set(re.findall(r"\bESS_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_]*[<*{])", text))


def test_every_ess_name_in_deploy_is_read_by_ess() -> None:
    known = {variable.name for variable in env_variables() if not variable.deprecated}
    known |= set(OTHER_VARIABLES)
    venue = re.compile(r"^ESS_VENUE_[A-Z0-9_]+_(?:API_KEY|SECRET|PASSPHRASE)$")
    mentioned = {
        name: str(path.relative_to(ROOT))
        for path in sorted(K8S.rglob("*"))
        if path.is_file()
        for name in _ess_names(path.read_text())
    }
    unknown = {n: where for n, where in mentioned.items() if n not in known and not venue.match(n)}
    assert not unknown, f"not a setting (renamed or misspelt?): {unknown}"
    assert {"ESS_DETECT_GROUP", "ESS_OPERATOR_KEYS_DIR", "ESS_VENUES_FILE"} <= set(mentioned)


def test_prometheus_jobs_match_the_compose_ones() -> None:
    """Same job names and labels as docker/prometheus.yml: docker/alerts.yml works as is."""
    compose = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    k8s = yaml.safe_load((K8S / "prometheus" / "scrape-configs.yaml").read_text())
    assert [job["job_name"] for job in k8s["scrape_configs"]] == [
        job["job_name"] for job in compose["scrape_configs"]
    ]
    roles = by_role(rendered("production"))
    for job in k8s["scrape_configs"]:
        (keep,) = [rule for rule in job["relabel_configs"] if rule.get("action") == "keep"]
        component, port = keep["regex"].split(";")
        assert port == "status"
        assert component in roles, job["job_name"]
        targets = {
            rule["target_label"]: rule for rule in job["relabel_configs"] if "target_label" in rule
        }
        assert targets["role"]["replacement"] == component
        if component == "detect":
            # Prometheus spells a pod label's name with _ for every other character.
            source = "__meta_kubernetes_pod_label_" + re.sub(r"[^A-Za-z0-9_]", "_", DETECT_GROUP)
            assert targets["group"]["source_labels"] == [source]
