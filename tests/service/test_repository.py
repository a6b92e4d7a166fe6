"""The model repository (service/repository.py) on a real server of alpha 1 and 2 and beta 1: requests naming models
and versions, readiness per version, and model control over HTTP and gRPC (tritonclient's own calls)."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException

from bench.servers import ServerProcess, free_port, wait_until
from service.manifest import ModelManifest, sha256_of
from tests.service.helpers import add_version, make_repository, serving, set_policy
from tests.service.readings import requests_in_flight, same_detections, scrape, value

KEY = "a-repository-test-key-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}
GRPC_AUTH = {"authorization": f"Bearer {KEY}"}
CAP = 3


@dataclass(frozen=True)
class Repository:
    root: Path
    process: ServerProcess
    http: httpx.Client
    grpc_address: str


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, small_package: Path) -> Iterator[Repository]:
    root = make_repository(tmp_path_factory.mktemp("repository"), small_package, {"alpha": [1, 2], "beta": [1]})
    set_policy(root, "alpha", {"latest": 2})
    port = free_port()
    env = {"DETECTOR_MODEL_REPOSITORY": str(root), "DETECTOR_MODEL_CONTROL": "explicit", "DETECTOR_API_KEYS": KEY}
    env |= {"DETECTOR_GRPC_PORT": str(port), "DETECTOR_MAX_LOADED_VERSIONS": str(CAP)}
    with serving(small_package, **env) as process, httpx.Client(base_url=process.url, headers=AUTH, timeout=60) as http:
        yield Repository(root, process, http, f"127.0.0.1:{port}")


@pytest.fixture(scope="module")
def tritons(repo: Repository) -> Iterator[tuple[triton_http.InferenceServerClient, triton_grpc.InferenceServerClient]]:
    with triton_grpc.InferenceServerClient(url=repo.grpc_address) as grpc_client:
        yield triton_http.InferenceServerClient(url=repo.process.url.removeprefix("http://")), grpc_client


def detect(http: httpx.Client | TestClient, image: bytes, **params: str) -> httpx.Response:
    return http.post("/detect", params=params, content=image, headers={"Content-Type": "image/jpeg"})


def index(http: httpx.Client) -> dict[tuple[str, str], tuple[str, str]]:
    response = http.post("/v2/repository/index")
    assert response.status_code == 200, response.text
    return {(entry["name"], entry["version"]): (entry["state"], entry["reason"]) for entry in response.json()}


def assert_answered_by(response: httpx.Response, name: str, version: str) -> list[dict]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": name, "version": version}
    assert all(row["class_name"].startswith(f"{name}{version}-") for row in body["detections"]), body["detections"]
    return list(body["detections"])


def test_requests_get_the_model_and_version_they_name(repo: Repository, scene_images: list[bytes]) -> None:
    image = scene_images[0]
    reference = assert_answered_by(detect(repo.http, image, model="alpha", version="1"), "alpha", "1")
    assert reference, "the scene should give detections, or the comparison below proves nothing"
    for params, (name, version) in [
        ({"model": "alpha", "version": "2"}, ("alpha", "2")),
        ({"model": "alpha"}, ("alpha", "2")),  # no version: the highest loaded
        ({"model": "beta", "version": "1"}, ("beta", "1")),
    ]:
        assert same_detections(assert_answered_by(detect(repo.http, image, **params), name, version), reference)
    for params, words in [({}, "several models"), ({"model": "alpha", "version": "3"}, "no version '3'"), ({"model": "gamma"}, "unknown")]:
        response = detect(repo.http, image, **params)
        assert response.status_code == 404 and words in response.json()["detail"], response.text


def test_v2_paths_route_to_their_version(repo: Repository, tritons: tuple, scene_images: list[bytes]) -> None:
    http_client, grpc_client = tritons
    for client, module, headers in ((http_client, triton_http, AUTH), (grpc_client, triton_grpc, GRPC_AUTH)):
        images = module.InferInput("images", [1], "BYTES")
        images.set_data_from_numpy(np.array([scene_images[1]], dtype=np.object_))
        for version, expected in (("1", "1"), ("", "2")):
            result = client.infer("alpha", [images], model_version=version, headers=dict(headers))  # it adds to them
            answer = result.get_response() if module is triton_http else result.get_response(as_json=True)
            assert answer["model_version"] == expected
        with pytest.raises(InferenceServerException, match="no version"):
            client.infer("alpha", [images], model_version="5", headers=dict(headers))


def test_each_version_has_its_own_metrics(repo: Repository, scene_images: list[bytes]) -> None:
    for name, version in (("alpha", "1"), ("beta", "1")):
        assert detect(repo.http, scene_images[2], model=name, version=version).status_code == 200
    families = scrape(repo.http)
    for name, version in (("alpha", "1"), ("alpha", "2"), ("beta", "1")):
        assert value(families, "detector_ready", model=name, version=version) == 1
        assert value(families, "detector_model_info", name=name, version=version) == 1
    for name in ("alpha", "beta"):
        assert value(families, "detector_images", "detector_images_total", model=name, version="1") >= 1


def test_tritonclient_http_unloads_and_loads_a_model(repo: Repository, tritons: tuple, scene_images: list[bytes]) -> None:
    http_client, _ = tritons
    states = {(e["name"], e["version"]): e["state"] for e in http_client.get_model_repository_index(headers=dict(AUTH))}
    assert states == {("alpha", "1"): "READY", ("alpha", "2"): "READY", ("beta", "1"): "READY"}
    http_client.unload_model("beta", headers=dict(AUTH))
    assert index(repo.http)[("beta", "1")] == ("UNAVAILABLE", "unloaded")
    not_ready = repo.http.get("/v2/models/beta/versions/1/ready")
    assert not_ready.status_code == 400 and "unloaded" in not_ready.json()["error"]
    assert repo.http.get("/v2/models/beta/versions/4/ready").status_code == 404
    gone = detect(repo.http, scene_images[0], model="beta")
    assert gone.status_code == 404 and "no version of it is loaded" in gone.json()["detail"]
    assert repo.http.get("/health/ready").status_code == 200, "an unload by the operator does not make the server unready"
    families = scrape(repo.http)
    for family in ("detector_ready", "detector_model_info", "detector_queue_depth"):
        labels = [sample.labels for sample in families[family].samples]
        assert not [s for s in labels if "beta" in (s.get("model"), s.get("name"))], f"an unloaded version's {family} should go: {labels}"
    ran = value(families, "detector_batch_size", "detector_batch_size_sum", model="beta", version="1")
    http_client.load_model("beta", headers=dict(AUTH))
    assert repo.http.get("/v2/models/beta/versions/1/ready").status_code == 200
    warmed = value(scrape(repo.http), "detector_batch_size", "detector_batch_size_sum", model="beta", version="1")
    assert warmed > ran, "a loaded version runs its warm-up before it answers the load, so before any request"
    assert_answered_by(detect(repo.http, scene_images[0], model="beta"), "beta", "1")


def test_an_unload_waits_for_the_requests_that_found_the_version(repo: Repository, scene_images: list[bytes]) -> None:
    """A request that resolved beta 1 (its body still coming) is answered by it; the unload returns only then, and
    meanwhile new requests no longer find beta."""
    release, image = threading.Event(), scene_images[0]

    def slow_body() -> Iterator[bytes]:
        yield image[:100]
        release.wait(30)
        yield image[100:]

    def send(results: list[httpx.Response], path: str, **request: Any) -> threading.Thread:
        def run() -> None:
            with httpx.Client(base_url=repo.process.url, headers=AUTH, timeout=60, trust_env=False) as client:
                results.append(client.post(path, **request))

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    answered: list[httpx.Response] = []
    unloaded: list[httpx.Response] = []
    sender = send(answered, "/detect", params={"model": "beta"}, content=slow_body(), headers={"Content-Type": "image/jpeg"})
    try:
        wait_until(lambda: requests_in_flight(repo.http) >= 1, 30, "the request in flight")
        time.sleep(0.5)  # past its dependencies: it holds beta 1
        unloading = send(unloaded, "/v2/repository/models/beta/unload")
        wait_until(lambda: index(repo.http)[("beta", "1")][0] == "UNAVAILABLE", 30, "beta out of service")
        assert detect(repo.http, image, model="beta").status_code == 404
        time.sleep(0.5)
        assert unloading.is_alive(), "the unload should wait for the request that found beta 1"
    finally:
        release.set()
        sender.join(60)
    unloading.join(60)
    assert_answered_by(answered[0], "beta", "1")
    assert unloaded[0].status_code == 200
    assert repo.http.post("/v2/repository/models/beta/load").status_code == 200


def test_tritonclient_grpc_drives_the_repository(repo: Repository, tritons: tuple, scene_images: list[bytes]) -> None:
    _, client = tritons
    listed = client.get_model_repository_index(headers=GRPC_AUTH, as_json=True)["models"]
    assert {(e["name"], e["version"], e["state"]) for e in listed} == {
        ("alpha", "1", "READY"),
        ("alpha", "2", "READY"),
        ("beta", "1", "READY"),
    }
    client.unload_model("beta", headers=GRPC_AUTH)
    assert not client.is_model_ready("beta", "1", headers=GRPC_AUTH)
    assert client.is_model_ready("alpha", "1", headers=GRPC_AUTH)
    client.load_model("beta", headers=GRPC_AUTH)
    assert client.is_model_ready("beta", "1", headers=GRPC_AUTH)
    with pytest.raises(InferenceServerException, match="takes no parameter") as refused:
        client.load_model("beta", config=json.dumps({"max_batch_size": 2}), headers=GRPC_AUTH)
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_model_control_needs_an_api_key(repo: Repository, tritons: tuple) -> None:
    for path in ("/v2/repository/index", "/v2/repository/models/beta/load", "/v2/repository/models/beta/unload"):
        for headers in ({}, {"Authorization": "Bearer not-the-key-at-all-000"}):
            assert httpx.post(repo.process.url + path, headers=headers).status_code == 401
    _, client = tritons
    for call in (client.get_model_repository_index, lambda: client.unload_model("beta"), lambda: client.load_model("beta")):
        with pytest.raises(InferenceServerException) as refused:
            call()
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
    assert index(repo.http)[("beta", "1")][0] == "READY"


def _corrupt_graph(package: Path) -> str:
    (package / "model.onnx").write_bytes((package / "model.onnx").read_bytes() + b"\0")
    return "SHA-256"


def _unreadable_graph(package: Path) -> str:
    (package / "model.onnx").write_bytes(b"not an onnx graph")
    manifest = ModelManifest.read(package)
    manifest.model_copy(update={"onnx_sha256": sha256_of(package / "model.onnx")}).write(package)
    return "failed to load"


def _wrong_inputs(package: Path) -> str:
    manifest = ModelManifest.read(package)
    inputs = [spec.model_copy(update={"dtype": "float32"}) if spec.name == "images" else spec for spec in manifest.inputs]
    manifest.model_copy(update={"inputs": inputs}).write(package)
    return "in the graph but float32"


def _misplaced(package: Path) -> str:
    ModelManifest.read(package).model_copy(update={"version": "9"}).write(package)
    return "its directory says 'alpha' version 2"


def _bad_policy(package: Path) -> str:
    (package.parent / "policy.json").write_text('{"latest": 0}')
    return "is not a version policy"


@pytest.mark.parametrize("damage", [_corrupt_graph, _unreadable_graph, _wrong_inputs, _misplaced, _bad_policy])
def test_a_failed_load_leaves_what_was_serving(
    repo: Repository, tritons: tuple, scene_images: list[bytes], damage: Callable[[Path], str], tmp_path: Path
) -> None:
    before = {v: assert_answered_by(detect(repo.http, scene_images[3], model="alpha", version=v), "alpha", v) for v in ("1", "2")}
    model = repo.root / "alpha"
    shutil.copytree(model, tmp_path / "alpha")
    try:
        words = damage(model / "2")
        refused = repo.http.post("/v2/repository/models/alpha/load")
        assert refused.status_code == 400 and words in refused.json()["error"], refused.text
        with pytest.raises(InferenceServerException, match=re.escape(words)) as over_grpc:
            tritons[1].load_model("alpha", headers=GRPC_AUTH)
        assert over_grpc.value.status() == "StatusCode.INVALID_ARGUMENT"
    finally:
        shutil.rmtree(model)
        shutil.copytree(tmp_path / "alpha", model)
    for version, detections in before.items():
        after = assert_answered_by(detect(repo.http, scene_images[3], model="alpha", version=version), "alpha", version)
        assert same_detections(after, detections)
        assert index(repo.http)[("alpha", version)][0] == "READY"
    assert repo.http.get("/health/ready").status_code == 200


def test_loading_past_the_cap_is_refused(repo: Repository, tritons: tuple, small_package: Path, scene_images: list[bytes]) -> None:
    add_version(repo.root, small_package, "alpha", 3)
    set_policy(repo.root, "alpha", {"all": True})
    try:
        refused = repo.http.post("/v2/repository/models/alpha/load")
        assert refused.status_code == 400 and f"limit of {CAP} (DETECTOR_MAX_LOADED_VERSIONS)" in refused.json()["error"]
        with pytest.raises(InferenceServerException, match="DETECTOR_MAX_LOADED_VERSIONS") as over_grpc:
            tritons[1].load_model("alpha", headers=GRPC_AUTH)
        assert over_grpc.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        states = index(repo.http)
        assert states[("alpha", "3")][0] == "UNAVAILABLE" and states[("alpha", "2")][0] == states[("beta", "1")][0] == "READY"
    finally:
        shutil.rmtree(repo.root / "alpha" / "3")
        set_policy(repo.root, "alpha", {"latest": 2})
    assert_answered_by(detect(repo.http, scene_images[0], model="alpha"), "alpha", "2")


def test_the_model_dir_is_a_repository_of_one_and_control_is_off_by_default(client: TestClient, scene_images: list[bytes]) -> None:
    assert client.post("/v2/repository/index").json() == [{"name": "shapes", "version": "7", "state": "READY", "reason": ""}]
    for action in ("load", "unload"):
        refused = client.post(f"/v2/repository/models/shapes/{action}")
        assert refused.status_code == 400 and "DETECTOR_MODEL_CONTROL=explicit" in refused.json()["error"]
    assert detect(client, scene_images[0]).json()["model"] == {"name": "shapes", "version": "7"}


def test_start_loads_the_models_asked_for_and_serves_the_default(
    make_client: Callable[..., TestClient], small_package: Path, tmp_path: Path, scene_images: list[bytes]
) -> None:
    root = make_repository(tmp_path, small_package, {"alpha": [1], "beta": [1, 2]})
    client = make_client(model_repository=root, load_models="beta", default_model="beta")
    assert client.get("/health/ready").status_code == 200
    assert client.post("/v2/repository/index").json() == [
        {"name": "alpha", "version": "1", "state": "UNAVAILABLE", "reason": "not loaded"},
        {"name": "beta", "version": "1", "state": "UNAVAILABLE", "reason": "not loaded"},
        {"name": "beta", "version": "2", "state": "READY", "reason": ""},
    ]
    assert detect(client, scene_images[0]).json()["model"] == {"name": "beta", "version": "2"}
