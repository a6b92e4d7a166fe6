"""Schemathesis against a real server's own OpenAPI schema: every route, no server fault, every response as documented.

The server runs in its own process on loopback (tests/service/conftest.py's
module server) and serves the small exported package. Generation is bounded
(at most 80 generated cases per operation, besides the examples and coverage
phases' cases) and deterministic, with no example database, so that CI runs
the same cases every time.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import CheckContext
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from bench.servers import ServerProcess

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20240607,
        "generation": {"mode": "all", "max-examples": 80, "deterministic": True, "database": "none"},
        # The stateful phase chains operations through links; these routes hold no state to chain.
        "phases": {"stateful": {"enabled": False}},
    }
)


# The schema documents every image type /detect takes; Schemathesis ships sample files for JPEG, PNG, GIF and WebP only.
@schemathesis.serializer("image/bmp", "image/tiff", "image/jpg", "image/pjpeg")
def _binary(ctx: schemathesis.SerializationContext, value: Any) -> Any:
    return value if isinstance(value, bytes) else str(value).encode()


@pytest.fixture(scope="module")
def api_schema(server: ServerProcess) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=CONFIG)
    manifest = httpx.get(f"{server.url}/v1/models/default").json()["manifest"]
    schema.hook("flatmap_path_parameters")(often_the_served_model({"name": manifest["name"], "version": manifest["version"]}))
    return schema


def often_the_served_model(served: dict[str, str]) -> Callable[..., st.SearchStrategy]:
    """A random model name only ever meets 404: half the cases name the served model, so that what lies behind the name is fuzzed too."""

    def flatmap_path_parameters(context: schemathesis.HookContext, path_parameters: dict[str, Any] | None) -> st.SearchStrategy:
        if not path_parameters:
            return st.just(path_parameters)
        naming_it = {**path_parameters, **{key: value for key, value in served.items() if key in path_parameters}}
        return st.sampled_from([path_parameters, naming_it])

    return flatmap_path_parameters


fuzzed = schemathesis.pytest.from_fixture("api_schema")


def own_deadline_s(query: Mapping[str, Any] | None, headers: Mapping[str, Any] | None, body: object) -> float | None:
    """The deadline a request sets itself, in seconds, as the server reads it; None when it sets none it could keep.

    ``timeout_ms`` wins over ``X-Request-Timeout`` (seconds); KServe's ``timeout`` parameter is in microseconds.
    """
    named = {name.lower(): value for name, value in (headers or {}).items()}
    parameters = body.get("parameters") if isinstance(body, dict) else None
    if "timeout_ms" in (query or {}):
        return _positive_seconds((query or {})["timeout_ms"], 1e-3)
    if "x-request-timeout" in named:
        return _positive_seconds(named["x-request-timeout"], 1.0)
    if isinstance(parameters, dict) and "timeout" in parameters:
        return _positive_seconds(parameters["timeout"], 1e-6)
    return None


def _positive_seconds(value: object, unit: float) -> float | None:
    try:
        seconds = float(value) * unit  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def deadline_excuses_504(deadline_s: float | None, elapsed_s: float) -> bool:
    """A 504 is the contract's answer only to a request whose own deadline passed before its answer came back."""
    return deadline_s is not None and deadline_s <= elapsed_s


def no_server_fault(ctx: CheckContext, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
    """No 5xx, except 504 for a request whose own deadline was too short to meet (the server's own one never excuses it)."""
    if response.status_code < 500:
        return None
    if response.status_code == 504 and deadline_excuses_504(own_deadline_s(case.query, case.headers, case.body), response.elapsed):
        return None
    raise AssertionError(f"server fault {response.status_code} after {response.elapsed:.3f} s: {response.text[:500]}")


CHECKS = [
    negative_data_rejection,
    unsupported_method,
    no_server_fault,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """Schemathesis 4.32.5 reads a test item's ``_nodeid``, which pytest 9 renamed; give it the ID under the old name."""
    request.node._nodeid = request.node.nodeid


@fuzzed.parametrize()
def test_every_response_is_documented_and_no_server_fault(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=CHECKS)


def test_detections_of_a_real_scene_are_as_documented(api_schema: schemathesis.BaseSchema, scene_images: list[bytes]) -> None:
    """Fuzzed images hold no object; a real scene's detections are checked against the schema too."""
    case = api_schema["/detect"]["POST"].Case(body=scene_images[1], media_type="image/png", query={"score_threshold": 0.05})
    response = case.call()
    assert response.status_code == 200, response.text
    assert response.json()["detections"], "a scene at a low threshold should give detections"
    case.validate_response(response, checks=CHECKS)


def test_infer_outputs_of_a_real_scene_are_as_documented(api_schema: schemathesis.BaseSchema, scene_images: list[bytes]) -> None:
    images = {"name": "images", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(scene_images[1]).decode()]}
    body: dict[str, Any] = {"inputs": [images], "parameters": {"score_threshold": 0.05}}
    case = api_schema["/v2/models/{name}/infer"]["POST"].Case(path_parameters={"name": "default"}, body=body, media_type="application/json")
    response = case.call()
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"][0] > 0, "a scene at a low threshold should give detections"
    case.validate_response(response, checks=CHECKS)


def test_a_504_is_excused_only_by_the_request_own_deadline_passing() -> None:
    assert own_deadline_s({"timeout_ms": 250}, {"X-Request-Timeout": "9"}, None) == 0.25
    assert own_deadline_s(None, {"x-request-timeout": "1.5"}, None) == 1.5
    assert own_deadline_s(None, None, {"inputs": [], "parameters": {"timeout": 2_000_000}}) == 2.0
    assert own_deadline_s({"timeout_ms": "soon"}, None, b"binary body") is None
    assert deadline_excuses_504(own_deadline_s({"timeout_ms": 1}, None, None), elapsed_s=0.05)
    # A deadline of 30 s cannot have passed in 50 ms: that 504 would be a fault; so is one with no deadline asked.
    assert not deadline_excuses_504(own_deadline_s({"timeout_ms": 30_000}, None, None), elapsed_s=0.05)
    assert not deadline_excuses_504(own_deadline_s(None, None, {"parameters": {"score_threshold": 0.5}}), elapsed_s=60.0)
