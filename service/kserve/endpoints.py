"""The v2 protocol's routes (/v2/...).

The images of one infer request are submitted together, so they share batches
with each other and with /detect requests. Errors are the protocol's
``{"error": "..."}`` (400 for a request it refuses), not problem JSON.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from service.api.body import read_limited
from service.api.deps import DetectorDep
from service.api.disconnect import cancel_on_disconnect
from service.api.routes.health import liveness_problem, readiness_problem
from service.detector import Detector, ImageDetections
from service.errors import ServiceError
from service.kserve import codec, model_config
from service.kserve.messages import InferRequestBody, InferResponseBody, ProtocolErrorBody
from service.options import DetectParams, detect_params
from service.repository import ModelRepository
from service.schemas import inline_schema

log = logging.getLogger(__name__)

# The protocol refuses what it cannot take with 400; the other statuses keep their HTTP meaning.
_AS_BAD_REQUEST = frozenset({415, 422})


def error_response(error: ServiceError) -> JSONResponse:
    status = 400 if error.status in _AS_BAD_REQUEST else error.status
    return JSONResponse({"error": error.detail}, status_code=status, headers=error.headers)


class ProtocolRoute(APIRoute):
    """Answers this router's errors (its dependencies' included) as {"error": ...} instead of problem JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except ServiceError as error:
                return error_response(error)
            except RequestValidationError as error:
                return JSONResponse({"error": str(error.errors())}, status_code=400)
            except Exception:  # answered in the protocol's form; the problem handler would answer problem JSON
                log.exception("unhandled error")
                return JSONResponse({"error": "the server hit an unexpected error; see its logs"}, status_code=500)

        return handle


router = APIRouter(route_class=ProtocolRoute)


def protocol_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route's error statuses, each the protocol's {"error": ...}."""
    return {status: {"model": ProtocolErrorBody, "description": HTTPStatus(status).phrase} for status in statuses}


# Health answers with a status and no body: 200 is the protocol's true, 400 its false.
HEALTH: dict[str, Any] = {"response_class": Response, "responses": {200: {"description": "true"}, **protocol_errors(400)}}
MODEL_HEALTH: dict[str, Any] = {"response_class": Response, "responses": {200: {"description": "true"}, **protocol_errors(400, 404)}}
MODEL_ERRORS = protocol_errors(404, 503)
# The infer body is read by hand (JSON, or JSON then binary data, possibly compressed); this documents it.
INFER_ERRORS = protocol_errors(400, 404, 408, 413, 500, 503, 504)
INFER_OPENAPI: dict[str, Any] = {
    "parameters": [
        {
            "name": codec.HEADER_LENGTH,
            "in": "header",
            "required": False,
            "description": "the JSON header's length in bytes, when binary data follows it (binary tensor extension)",
            "schema": {"type": "string"},
        },
        {"name": "Content-Encoding", "in": "header", "required": False, "schema": {"enum": ["gzip", "deflate", "identity"]}},
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": inline_schema(InferRequestBody)},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": InferResponseBody,
        "description": "the outputs; as application/octet-stream when some are binary data (JSON header, then the data)",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    **INFER_ERRORS,
}


def _path_parameter(name: str, description: str, example: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string", "examples": [example]}}


NAME = _path_parameter("name", "the model's name, or 'default'", "default")
VERSION = _path_parameter("version", "the model's version", "1")


def model_path(extra: dict[str, Any] | None = None, versioned: bool = False) -> dict[str, Any]:
    """The ``openapi_extra`` of a /v2/models/{name}[/versions/{version}]/... route.

    served_model reads both from the path, so FastAPI neither documents them
    nor answers a 422 of its own for them; this documents them.
    """
    extra = extra or {}
    return {**extra, "parameters": [NAME, *([VERSION] if versioned else []), *extra.get("parameters", [])]}


# The version the path names (its highest loaded one without /versions/{version}); DetectorDep reads the path.
ModelDep = DetectorDep


@router.get("/v2")
async def server_metadata(request: Request) -> dict[str, Any]:
    return model_config.server_metadata(request.app.version)


# Health answers as /health does (service/api/routes/health.py), in the protocol's form: 200 true, 400 false with the reason.
def _health(problem: str | None) -> Response:
    return Response(status_code=200) if problem is None else JSONResponse({"error": problem}, status_code=400)


@router.get("/v2/health/live", **HEALTH)
async def server_live(request: Request) -> Response:
    """200 while the process can answer; 400 (the protocol's 'false') once loading the model has failed."""
    return _health(liveness_problem(request.app.state))


@router.get("/v2/health/ready", **HEALTH)
async def server_ready(request: Request) -> Response:
    """200 once the model is loaded and warmed up; 400 with the reason before that, while draining, and while the engine keeps failing."""
    return _health(readiness_problem(request.app.state))


@router.get("/v2/models/{name}/ready", **MODEL_HEALTH, openapi_extra=model_path())
@router.get("/v2/models/{name}/versions/{version}/ready", **MODEL_HEALTH, openapi_extra=model_path(versioned=True))
async def model_ready(request: Request) -> Response:
    """200 when this version (without one: the model's highest loaded version) takes traffic; 400 with the reason when
    it does not (loading, unloaded, draining, failing); 404 for a model or version the repository does not hold."""
    repository: ModelRepository = request.app.state.repository
    name, version = request.path_params["name"], request.path_params.get("version")
    if problem := liveness_problem(request.app.state) or repository.version_problem(name, version):
        return _health(problem)
    return _health(None)


@router.get("/v2/models/{name}", responses=MODEL_ERRORS, openapi_extra=model_path())
@router.get("/v2/models/{name}/versions/{version}", responses=MODEL_ERRORS, openapi_extra=model_path(versioned=True))
async def model_metadata(detector: ModelDep) -> dict[str, Any]:
    return model_config.model_metadata(detector.manifest, detector.engine.describe())


@router.get("/v2/models/{name}/config", responses=MODEL_ERRORS, openapi_extra=model_path())
@router.get("/v2/models/{name}/versions/{version}/config", responses=MODEL_ERRORS, openapi_extra=model_path(versioned=True))
async def model_configuration(detector: ModelDep) -> dict[str, Any]:
    return model_config.model_config(detector.manifest, detector.runtime())


@router.post("/v2/models/{name}/infer", responses=INFER_RESPONSES, openapi_extra=model_path(INFER_OPENAPI))
@router.post(
    "/v2/models/{name}/versions/{version}/infer", responses=INFER_RESPONSES, openapi_extra=model_path(INFER_OPENAPI, versioned=True)
)
async def infer(request: Request, detector: ModelDep) -> Response:
    """Detects objects in a batch of encoded images; the outputs are in each image's pixels."""
    limit = detector.settings.max_body_bytes
    body = codec.decompress(
        await read_limited(request, limit, detector.settings.body_timeout_s), request.headers.get("content-encoding"), limit
    )
    parsed = codec.parse_infer_request(body, request.headers.get(codec.HEADER_LENGTH), detector.batcher.max_batch)
    options = parsed.parameters
    params = detect_params(
        detector.manifest,
        **options.model_dump(include={"score_threshold", "iou_threshold", "max_detections", "classes"}),
        timeout_s=options.timeout / 1e6 if options.timeout is not None else None,
        arrived=request.state.arrived,
    )
    found = await cancel_on_disconnect(request, detect_all(detector, parsed.images, params))
    request.state.batch_size = max(image.batch_size for image in found)
    content, header_length = codec.encode_infer_response(detector.manifest, parsed, codec.detection_tensors(found))
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream", headers={codec.HEADER_LENGTH: str(header_length)})


async def detect_all(detector: Detector, images: list[bytes], params: DetectParams) -> list[ImageDetections]:
    """Submits every image at once, so they batch together; the first failure cancels the rest and answers the request."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(detector.detect(image, params)) for image in images]
    except BaseExceptionGroup as failures:
        raise _first_service_error(failures) from None
    return [task.result() for task in tasks]


def _first_service_error(failures: BaseExceptionGroup) -> BaseException:
    """The error to answer with: a ServiceError if any image failed with one, else the group (a server fault)."""
    matched, _ = failures.split(ServiceError)
    if matched is None:
        return failures
    first = matched.exceptions[0]
    return _first_service_error(first) if isinstance(first, BaseExceptionGroup) else first
