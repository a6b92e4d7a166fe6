"""deploy/k8s: the base and both overlays, rendered by the real kustomize (``kubectl kustomize``), against the
Kubernetes schemas and the service itself."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings
from tests.deploy.dockerfile import parse_stages
from tests.deploy.tools import REPO, check_settings_env, require_module, require_tool
from tests.service.helpers import wait_ready

K8S = REPO / "deploy" / "k8s"
KUBERNETES_VERSION = "1.37.0"  # the newest schemas kubernetes-validate 1.37.0 ships
# Not plain "gpu" as a test id: tests/conftest.py skips items with a "gpu" keyword where there is no GPU.
KUSTOMIZATIONS = {"base": K8S / "base", "gpu-overlay": K8S / "overlays" / "gpu", "cpu-overlay": K8S / "overlays" / "cpu"}
# Custom resources have no schema in kubernetes-validate; test_service_monitor_scrapes_the_service checks it by hand.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
GRPC_PORT = 8001  # Triton's gRPC port (the setting's default, 0, is off)


@cache
def kustomize(name: str) -> str:
    """What ``kubectl apply -k`` would send: the kustomization rendered by kubectl's own kustomize."""
    command = [require_tool("kubectl"), "kustomize", str(KUSTOMIZATIONS[name])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize {KUSTOMIZATIONS[name]} failed: {result.stderr}", pytrace=False)
    return result.stdout


def build(name: str) -> list[dict[str, Any]]:
    """The rendered manifests, parsed afresh on each call (tests may change them)."""
    yaml = require_module("yaml")
    return [document for document in yaml.safe_load_all(kustomize(name)) if document is not None]


def rendered(name: str) -> dict[str, dict[str, Any]]:
    return {manifest["kind"]: manifest for manifest in build(name)}


def container(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    containers = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "one server process (one container) per pod"
    return dict(containers[0])


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_manifests_are_valid_kubernetes_objects(name: str) -> None:
    kubernetes_validate = require_module("kubernetes_validate")
    manifests = build(name)
    kinds = sorted(m["kind"] for m in manifests)
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service", "ServiceMonitor"]
    for manifest in manifests:
        if (manifest["apiVersion"], manifest["kind"]) in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name}: {manifest['kind']} {manifest['metadata']['name']}: {error}")


def test_validation_catches_a_misspelt_field() -> None:
    kubernetes_validate = require_module("kubernetes_validate")
    deployment = rendered("base")["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/", "port": 8000}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.fixture(scope="module")
def ready_service(small_package: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_dir=small_package, intra_op_threads=1))) as client:  # type: ignore[call-arg]
        wait_ready(client)
        yield client


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_probes_and_ports_match_the_service(name: str, ready_service: TestClient) -> None:
    port = Settings.model_fields["port"].default
    manifests = rendered(name)
    main = container(manifests)
    assert [p["containerPort"] for p in main["ports"] if p["name"] == "http"] == [port]
    # gRPC on Triton's port, set in the environment and published; the probes stay on HTTP.
    assert [p["containerPort"] for p in main["ports"] if p["name"] == "grpc"] == [GRPC_PORT]
    assert {item["name"]: item.get("value") for item in main["env"]}["DETECTOR_GRPC_PORT"] == str(GRPC_PORT)
    probes = {kind: main[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["readinessProbe"]["path"] == "/health/ready" and probes["livenessProbe"]["path"] == "/health/live"
    for kind, probe in probes.items():
        # The probe paths answer 200 on a ready service (a path that is not a route would be 404).
        assert ready_service.get(probe["path"]).status_code == 200, f"{kind} path {probe['path']}"
        assert probe["port"] == "http", kind
    startup = main["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "the startup probe should allow a TensorRT engine build"
    service = manifests["Service"]["spec"]
    assert service["ports"] == [
        {"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"},
        {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"},
    ]


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_api_keys_come_from_an_optional_secret_and_health_stays_open(name: str) -> None:
    env = {item["name"]: item for item in container(rendered(name))["env"]}
    reference = env["DETECTOR_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert reference["optional"] is True, "without the secret the pod should start, with no key asked"
    assert "value" not in env["DETECTOR_API_KEYS"], "keys belong in a Secret, not in the manifest"
    # The probes send no key: protecting /health/* would keep every pod unready.
    assert env.get("DETECTOR_PROTECT_HEALTH", {}).get("value", "false") == "false"


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_environment_names_real_settings(name: str) -> None:
    main = container(rendered(name))
    env = {item["name"]: item["value"] for item in main.get("env", []) if "value" in item}
    assert env, "the deployment sets no DETECTOR_* variable"
    check_settings_env(env, f"deploy/k8s/{name}")


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_pods_drain_run_as_non_root_and_keep_the_root_filesystem_read_only(name: str) -> None:
    manifests = rendered(name)
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    main = container(manifests)
    env = {item["name"]: item["value"] for item in main["env"] if "value" in item}
    grace_s = float(env.get("DETECTOR_SHUTDOWN_GRACE_S", Settings.model_fields["shutdown_grace_s"].default))
    pre_stop = main["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + grace_s, "SIGTERM must come early enough to drain"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"] for m in main["volumeMounts"]}
    assert "/tmp" in mounts
    assert main["resources"]["requests"]["cpu"] and main["resources"]["requests"]["memory"]
    # Writable paths the service uses must be volumes, the root filesystem being read-only.
    if "DETECTOR_TRT_CACHE_DIR" in env:
        assert env["DETECTOR_TRT_CACHE_DIR"] in mounts


def test_gpu_overlay_gives_each_pod_one_gpu_and_an_engine_cache() -> None:
    manifests = rendered("gpu-overlay")
    main = container(manifests)
    assert main["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert main["image"] == "detector:gpu"
    env = {item["name"]: item["value"] for item in main["env"] if "value" in item}
    assert env["DETECTOR_TRT_CACHE_DIR"] == parse_stages()["runtime-gpu"].env()["DETECTOR_TRT_CACHE_DIR"]
    metrics = manifests["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert [m["pods"]["metric"]["name"] for m in metrics] == ["detector_queue_depth"]


def test_cpu_overlay_uses_the_cpu_image_and_no_gpu() -> None:
    main = container(rendered("cpu-overlay"))
    assert main["image"] == "detector:cpu"
    assert "nvidia.com/gpu" not in main["resources"].get("limits", {})
    env = {item["name"]: item["value"] for item in main["env"] if "value" in item}
    assert env["DETECTOR_PROVIDERS"] == "cpu"
    assert float(main["resources"]["requests"]["cpu"]) == float(env["DETECTOR_INTRA_OP_THREADS"])


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_service_hpa_pdb_and_monitor_select_the_deployment(name: str) -> None:
    manifests = rendered(name)
    deployment = manifests["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selects = lambda selector: selector.items() <= labels.items()  # noqa: E731
    assert selects(deployment["spec"]["selector"]["matchLabels"])
    assert selects(manifests["Service"]["spec"]["selector"])
    assert selects(manifests["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"])
    target = manifests["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert manifests["PodDisruptionBudget"]["spec"]["minAvailable"] < manifests["HorizontalPodAutoscaler"]["spec"]["minReplicas"]


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_service_monitor_scrapes_the_service(name: str) -> None:
    """The ServiceMonitor's structure by hand: kubernetes-validate has no schemas for custom resources."""
    manifests = rendered(name)
    monitor, service = manifests["ServiceMonitor"], manifests["Service"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}, endpoint
        assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"
