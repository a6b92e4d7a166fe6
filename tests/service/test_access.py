"""Access: optional API keys, open or protected health and metrics, CORS, and no secrets or image bytes in logs."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from bench.servers import ServerProcess, wait_until
from tests.service.helpers import serving

KEYS = ("first-key-0123456789abcdef", "second-key-zyxwvutsrq987654")
ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def keyed_server(small_package) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    with serving(small_package, DETECTOR_API_KEYS=",".join(KEYS), DETECTOR_CORS_ORIGINS=ORIGIN) as server:
        yield server


def _post_image(server: ServerProcess, image: bytes, headers: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}/detect", content=image, headers={"Content-Type": "image/png", **headers}, timeout=30)


def _assert_unauthorized(response: httpx.Response, invalid: bool) -> None:
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "/problems/unauthorized"
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="detector"')
    assert ('error="invalid_token"' in challenge) == invalid


def test_requests_without_a_key_are_refused(keyed_server: ServerProcess, scene_images: list[bytes]) -> None:
    _assert_unauthorized(_post_image(keyed_server, scene_images[1], {}), invalid=False)
    _assert_unauthorized(httpx.get(f"{keyed_server.url}/v1/models/shapes"), invalid=False)
    _assert_unauthorized(_post_image(keyed_server, scene_images[1], {"Authorization": "Basic dXNlcjpwYXNz"}), invalid=False)


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {KEYS[0][:-1]}"},  # one character short
        {"Authorization": f"Bearer {KEYS[0]}x"},
        {"X-API-Key": KEYS[1].upper()},
        {"X-API-Key": "🔑".encode()},  # type: ignore[dict-item]  # non-ASCII bytes
    ],
)
def test_wrong_keys_are_refused(keyed_server: ServerProcess, scene_images: list[bytes], headers: dict[str, Any]) -> None:
    _assert_unauthorized(_post_image(keyed_server, scene_images[1], headers), invalid=True)


@pytest.mark.parametrize(
    "headers", [{"Authorization": f"Bearer {KEYS[0]}"}, {"authorization": f"bearer {KEYS[1]}"}, {"X-API-Key": KEYS[1]}]
)
def test_either_key_in_either_header_is_accepted(keyed_server: ServerProcess, scene_images: list[bytes], headers: dict[str, str]) -> None:
    response = _post_image(keyed_server, scene_images[1], headers)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == {"name": "shapes", "version": "7"}


def test_health_and_metrics_stay_open_by_default(keyed_server: ServerProcess) -> None:
    for path in ("/health/live", "/health/ready", "/metrics", "/v2/health/ready", "/openapi.json"):
        assert httpx.get(f"{keyed_server.url}{path}").status_code == 200, path


def test_the_schema_documents_the_keys(keyed_server: ServerProcess) -> None:
    schema = httpx.get(f"{keyed_server.url}/openapi.json").json()
    assert set(schema["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    detect = schema["paths"]["/detect"]["post"]
    assert detect["security"] == [{"bearer": []}, {"apiKey": []}]
    problem = detect["responses"]["401"]["content"]["application/problem+json"]["schema"]
    assert "$ref" not in json.dumps(problem) and set(problem["properties"]) == {"type", "title", "status", "detail"}
    assert "security" not in schema["paths"]["/health/ready"]["get"]
    dangling = [ref for ref in _refs(schema) if ref.rsplit("/", 1)[-1] not in schema["components"]["schemas"]]
    assert not dangling, dangling


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if "$ref" in node:
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_health_and_metrics_can_be_protected(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(DETECTOR_API_KEYS=KEYS[0], DETECTOR_PROTECT_HEALTH="true")
    server.wait_ready(headers={"X-API-Key": KEYS[0]})
    for path in ("/health/live", "/health/ready", "/metrics"):  # a probe without the key sees 401
        _assert_unauthorized(httpx.get(f"{server.url}{path}"), invalid=False)
        assert httpx.get(f"{server.url}{path}", headers={"X-API-Key": KEYS[0]}).status_code == 200, path


def test_cors_allows_the_configured_origin_only(keyed_server: ServerProcess) -> None:
    def preflight(origin: str) -> httpx.Response:
        headers = {
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        }
        return httpx.options(f"{keyed_server.url}/detect", headers=headers)

    allowed = preflight(ORIGIN)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    refused = preflight("https://evil.example")
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
    simple = httpx.get(f"{keyed_server.url}/health/live", headers={"Origin": ORIGIN})
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()


def test_cors_is_off_by_default(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server()
    server.wait_ready()
    headers = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in httpx.options(f"{server.url}/detect", headers=headers).headers
    assert "access-control-allow-origin" not in httpx.get(f"{server.url}/health/live", headers={"Origin": ORIGIN}).headers


def test_logs_hold_no_keys_and_no_image_bytes(keyed_server: ServerProcess, scene_images: list[bytes]) -> None:
    image = scene_images[1]
    _post_image(keyed_server, image, {"X-API-Key": KEYS[0]})
    _post_image(keyed_server, image, {"Authorization": f"Bearer {KEYS[1]}"})
    _post_image(keyed_server, image, {"X-API-Key": "not-a-key-but-secret-anyway"})
    _post_image(keyed_server, b"\x89PNG\r\n\x1a\n" + b"secret-pixels" * 10, {"X-API-Key": KEYS[0]})
    # A request is logged once its answer has gone: the last one's line may come a moment after the answer.
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: '"status": 422' in keyed_server.output(), 10, "the last request logged")
    log = keyed_server.output()
    assert '"status": 401' in log and '"status": 422' in log, "the requests should have been logged"
    for secret in (*KEYS, "not-a-key-but-secret-anyway", "secret-pixels", image[100:140].decode("latin-1")):
        assert secret not in log


def test_a_short_key_stops_the_server_without_echoing_it(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(DETECTOR_API_KEYS=f"{KEYS[0]},short-secret")
    assert server.process.wait(timeout=60) == 2
    output = server.output()
    assert "DETECTOR_API_KEYS" in output and "value hidden" in output
    assert "short-secret" not in output and KEYS[0] not in output
