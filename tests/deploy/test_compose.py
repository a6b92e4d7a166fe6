"""docker-compose.yml and .env.example: the Compose specification's JSON schema, and agreement with the
service, the Dockerfile and the Prometheus/Grafana files they mount."""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

import pytest
from pydantic import TypeAdapter

from service.settings import ENV_PREFIX, Settings
from tests.deploy.dockerfile import parse_stages
from tests.deploy.tools import REPO, check_settings_env, load_yaml, require_module

GRPC_PORT = "8001"  # Triton's gRPC port: the compose file turns gRPC on there (the setting's default, 0, is off)

ENV_EXAMPLE = REPO / ".env.example"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml("docker-compose.yml")


def env_example() -> tuple[dict[str, str], dict[str, str]]:
    """(variables set, service defaults shown as '# DETECTOR_X=value')."""
    lines = ENV_EXAMPLE.read_text().splitlines()
    assigned = dict(line.split("=", 1) for line in lines if re.match(r"^[A-Z_][A-Z0-9_]*=", line))
    documented = dict(m.groups() for line in lines if (m := re.match(rf"^# ({ENV_PREFIX}[A-Z0-9_]+)=(\S*)$", line)))
    return assigned, documented


def compose_validator() -> Any:
    """A validator for the Compose specification's JSON schema, which check-jsonschema vendors (compose-spec.json)."""
    jsonschema = require_module("jsonschema")
    require_module("check_jsonschema")
    schema = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def test_compose_file_matches_the_compose_specification_schema(compose: dict[str, Any]) -> None:
    validator = compose_validator()
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "\n".join(errors)


def test_schema_check_rejects_a_broken_compose_file(compose: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["detector"]["stop_grace_period"] = {"seconds": 45}
    broken["services"]["detector"]["restart_policy"] = "always"
    assert len(list(compose_validator().iter_errors(broken))) >= 2


def test_gpu_and_cpu_variants_build_the_dockerfile_targets(compose: dict[str, Any]) -> None:
    services = compose["services"]
    stages = parse_stages()
    gpu, cpu = services["detector"], services["detector-cpu"]
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    assert gpu["build"]["target"] == "runtime-gpu" and cpu["build"]["target"] == "runtime-cpu"
    assert {"runtime-gpu", "runtime-cpu"} <= set(stages)
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1 and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert len(devices[0].get("device_ids", [])) == 1 or devices[0].get("count") == 1, "one server process per GPU"
    assert "deploy" not in cpu
    # Prometheus scrapes detector:8000 whichever variant runs.
    assert "detector" in cpu["networks"]["default"]["aliases"]


def test_detector_service_is_healthchecked_restarted_and_drained(compose: dict[str, Any]) -> None:
    grace_s = Settings.model_fields["shutdown_grace_s"].default
    port = Settings.model_fields["port"].default
    for name in ("detector", "detector-cpu"):
        service = compose["services"][name]
        assert "/health/ready" in " ".join(service["healthcheck"]["test"]), name
        assert service["restart"] in ("always", "unless-stopped", "on-failure"), name
        assert service["stop_signal"] == "SIGTERM", name
        stop_s = int(re.fullmatch(r"(\d+)s", service["stop_grace_period"]).group(1))  # type: ignore[union-attr]
        assert stop_s > grace_s, f"{name}: stop_grace_period {stop_s}s leaves no time for a {grace_s}s drain"
        assert [p.rsplit(":", 1)[1] for p in service["ports"]] == [str(port), GRPC_PORT], service["ports"]
        assert service["environment"]["DETECTOR_GRPC_PORT"] == f"${{DETECTOR_GRPC_PORT:-{GRPC_PORT}}}", name
        assert service["env_file"][0]["path"] == ".env", name
    image_env = parse_stages()["runtime-gpu"].env()
    mounts = compose["services"]["detector"]["volumes"]
    assert f"trt-cache:{image_env['DETECTOR_TRT_CACHE_DIR']}" in mounts
    assert any(m.endswith(":/models/local:ro") for m in mounts)


def test_env_example_documents_every_setting_with_its_real_default() -> None:
    assigned, documented = env_example()
    check_settings_env(assigned | documented, ".env.example")
    # Where the image sets a value, the documented default is the image's (the GPU image, compose's default).
    image_env = parse_stages()["runtime-gpu"].env()
    missing = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields} - set(documented)
    assert not missing, f".env.example does not document {sorted(missing)}"
    for variable, value in documented.items():
        field = variable[len(ENV_PREFIX) :].lower()
        if variable in image_env:
            assert value == image_env[variable], f"{variable}: .env.example says {value}, the image sets {image_env[variable]}"
            continue
        info = Settings.model_fields[field]
        if value == "" and info.default is None:
            continue  # an optional setting shown unset: its default, None
        assert TypeAdapter(info.annotation).validate_python(value) == info.default, (
            f"{variable}={value}, but the default is {info.default!r}"
        )


def test_every_variable_the_compose_file_uses_is_in_env_example() -> None:
    assigned, documented = env_example()
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", (REPO / "docker-compose.yml").read_text()))
    assert used, "no ${VARIABLE} found"
    missing = used - set(assigned) - set(documented)
    assert not missing, f"not in .env.example: {sorted(missing)}"
    assert set(assigned["COMPOSE_PROFILES"].split(",")) <= {"gpu", "cpu", "dcgm"}


def test_prometheus_and_grafana_mount_the_provisioning_files(compose: dict[str, Any]) -> None:
    services = compose["services"]
    mounts = {m.split(":")[1]: m.split(":")[0] for name in ("prometheus", "grafana") for m in services[name]["volumes"]}
    for target, source in mounts.items():
        if source.startswith("./"):
            assert (REPO / source).exists(), f"{source} (mounted at {target}) does not exist"
    prometheus = load_yaml(mounts["/etc/prometheus/prometheus.yml"])
    detector_job = next(job for job in prometheus["scrape_configs"] if job["job_name"] == "detector")
    assert detector_job["static_configs"][0]["targets"] == [f"detector:{Settings.model_fields['port'].default}"]
    assert detector_job.get("metrics_path", "/metrics") == "/metrics"
    datasource = load_yaml("deploy/grafana/provisioning/datasources/prometheus.yml")["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in services
    provider = load_yaml("deploy/grafana/provisioning/dashboards/detector.yml")["providers"][0]
    assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/detector.json").read_text())
    assert dashboard["templating"]["list"][0]["current"]["value"] == datasource["uid"]
