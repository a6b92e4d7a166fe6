"""Prometheus and Grafana: promtool on the configuration, the dashboard's metric names against a real
/metrics scrape, and a real Prometheus server scraping a real ``python -m service``."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from bench.servers import HOST, PORT_FIELD, ServerProcess, ServerSpec
from model_export.synth import generate_image
from service.main import create_app
from service.settings import Settings
from tests.deploy.tools import REPO, load_yaml, require_tool
from tests.service.helpers import png_bytes, serving, wait_ready

PROMETHEUS_CONFIG = REPO / "deploy/prometheus/prometheus.yml"
DASHBOARD = REPO / "deploy/grafana/dashboards/detector.json"
# Metrics that other exporters provide, by prefix: the dashboard's GPU memory panel reads NVIDIA's DCGM exporter.
EXTERNAL_PREFIXES = ("DCGM_",)
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or", "unless", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not its functions, keywords or label names)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", expr):
        if match.group().lower() in PROMQL_KEYWORDS or expr[match.end() :].lstrip().startswith("("):
            continue
        names.add(match.group())
    return names


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def exported_names(scrape: str) -> set[str]:
    """Every series name the scrape's families can have, including those with no sample yet."""
    names: set[str] = set()
    for family in text_string_to_metric_families(scrape):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def test_prometheus_config_passes_promtool() -> None:
    promtool = require_tool("promtool")
    result = subprocess.run([promtool, "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_metric_names_are_found_in_promql() -> None:
    expr = 'histogram_quantile(0.95, sum by (le) (rate(detector_request_duration_seconds_bucket{route="/detect"}[$__rate_interval])))'
    assert metric_names(expr) == {"detector_request_duration_seconds_bucket"}
    assert metric_names("sum(rate(detectr_typo_total[1m])) / sum(up)") == {"detectr_typo_total", "up"}


def test_dashboard_uses_only_metrics_the_service_exports(small_package: Path) -> None:
    image, _ = generate_image(seed=42, index=1)
    with TestClient(create_app(Settings(model_dir=small_package, intra_op_threads=1))) as client:  # type: ignore[call-arg]
        wait_ready(client)
        assert client.post("/detect", content=png_bytes(image), headers={"Content-Type": "image/png"}).status_code == 200
        exported = exported_names(client.get("/metrics").text)
    used = set().union(*(metric_names(expr) for expr in dashboard_exprs()))
    unknown = {name for name in used if name not in exported and not name.startswith(EXTERNAL_PREFIXES)}
    assert not unknown, f"the dashboard queries metrics /metrics does not export: {sorted(unknown)}"
    for needed in (
        "detector_requests_total",
        "detector_request_duration_seconds_bucket",
        "detector_queue_wait_seconds_bucket",
        "detector_batch_size_bucket",
        "detector_queue_depth",
        "detector_rejected_total",
        "DCGM_FI_DEV_FB_USED",
    ):
        assert needed in used, f"no dashboard panel shows {needed}"


def test_dashboard_panels_are_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids should be unique"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    """A factory: the real Prometheus server on loopback, with deploy/'s detector job pointed at a target."""
    binary = require_tool("prometheus")
    servers: list[ServerProcess] = []

    def start(target: str) -> httpx.Client:
        config = load_yaml(PROMETHEUS_CONFIG)
        config["global"] |= {"scrape_interval": "1s", "evaluation_interval": "1s"}
        job = next(job for job in config["scrape_configs"] if job["job_name"] == "detector")
        job["static_configs"] = [{"targets": [target]}]
        config["scrape_configs"] = [job]
        (tmp_path / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        command = [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}"]
        command += [f"--web.listen-address={HOST}:{PORT_FIELD}"]
        servers.append(ServerProcess(ServerSpec(name="prometheus", label="prometheus", command=tuple(command), ready_path="/-/ready")))
        return servers[-1].launch().wait_ready(timeout_s=30)

    yield start
    for server in servers:
        server.close()


def query(client: httpx.Client, promql: str) -> list[dict[str, Any]]:
    body = client.get("/api/v1/query", params={"query": promql}).json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_real_prometheus_scrapes_the_running_service(small_package: Path, prometheus: Any) -> None:
    with serving(small_package) as server:
        service = server.http
        client = prometheus(f"{HOST}:{server.port}")
        image = png_bytes(generate_image(seed=42, index=1)[0])
        started = time.monotonic()
        rate: list[dict[str, Any]] = []
        # Requests spread over a few scrapes, then rate() over them; bounded in count and in time.
        for _ in range(40):
            assert service.post("/detect", content=image, headers={"Content-Type": "image/png"}).status_code == 200
            time.sleep(0.25)
            rate = query(client, 'sum(rate(detector_requests_total{route="/detect",status="200"}[1m]))')
            if rate and float(rate[0]["value"][1]) > 0:
                break
        assert rate and float(rate[0]["value"][1]) > 0, f"rate() has no data after {time.monotonic() - started:.0f} s: {rate}"
        up = query(client, 'up{job="detector"}')
        assert [float(series["value"][1]) for series in up] == [1.0], up
        assert query(client, "detector_ready == 1"), "detector_ready should be 1 while serving"
