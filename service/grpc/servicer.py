"""The RPCs of Triton's GRPCInferenceService, served by the HTTP server's own detector, batcher, keys and metrics.

Each RPC runs through :meth:`Servicer._serve`: the API key (metadata
``authorization: Bearer <key>`` or ``x-api-key``; health is open unless
DETECTOR_PROTECT_HEALTH, as over HTTP), then the work, then one status code for
the service's errors (:func:`status_of`), counted in detector_requests_total
with protocol="grpc", the RPC's method as the route and the code's name as the status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from fastapi import FastAPI
from tritonclient.grpc import service_pb2, service_pb2_grpc

from service.api.admission import Admission
from service.api.auth import KeyRing, presented_key
from service.api.routes.health import liveness_problem, readiness_problem
from service.errors import ControlDisabled, QueueFull, ServiceError, TooManyVersions, Unauthorized
from service.grpc import messages
from service.kserve import codec, control, model_config
from service.kserve.endpoints import detect_all
from service.metrics import Metrics
from service.repository import ModelRepository

log = logging.getLogger(__name__)
T = TypeVar("T")
SERVICE = "/inference.GRPCInferenceService/"
# The RPCs that answer as /v2/health/live and /ready do: open unless the health routes need a key too.
HEALTH_PATHS = {"ServerLive": "/v2/health/live", "ServerReady": "/v2/health/ready"}
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_of(error: ServiceError) -> grpc.StatusCode:
    """The gRPC code of a service error: INVALID_ARGUMENT for what v2 over HTTP answers 400, a full queue or the cap on
    loaded versions RESOURCE_EXHAUSTED, model control switched off FAILED_PRECONDITION, not ready or draining
    UNAVAILABLE, and the rest by its HTTP status."""
    if isinstance(error, QueueFull | TooManyVersions):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(error, ControlDisabled):
        return grpc.StatusCode.FAILED_PRECONDITION
    return _CODES.get(error.status, grpc.StatusCode.INTERNAL)


class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.metrics: Metrics = app.state.metrics
        settings = app.state.settings
        self.keys = KeyRing(settings.api_key_list, settings.protect_health) if settings.api_key_list else None
        self.admission: Admission = app.state.admission  # the HTTP requests' count: one limit for both protocols
        self.repository: ModelRepository = app.state.repository

    # The RPCs

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._serve("ServerLive", context, self._live)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._serve("ServerReady", context, self._ready)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._serve("ModelReady", context, lambda: self._model_ready(request.name, request.version))

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._serve("ServerMetadata", context, self._server_metadata)

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._serve("ModelMetadata", context, lambda: self._model_metadata(request.name, request.version))

    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._serve("ModelConfig", context, lambda: self._model_config(request.name, request.version))

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        arrived = time.monotonic()
        return await self._serve("ModelInfer", context, lambda: self._admitted(self._infer(request, arrived, context.time_remaining())))

    # Triton's model repository extension (service/kserve/control.py over HTTP)

    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._serve("RepositoryIndex", context, lambda: self._index(request.ready))

    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._serve("RepositoryModelLoad", context, lambda: self._load(request))

    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._serve("RepositoryModelUnload", context, lambda: self._unload(request))

    # What each answers

    async def _live(self) -> Any:
        return service_pb2.ServerLiveResponse(live=liveness_problem(self.app.state) is None)

    async def _ready(self) -> Any:
        return service_pb2.ServerReadyResponse(ready=readiness_problem(self.app.state) is None)

    async def _model_ready(self, name: str, version: str) -> Any:
        try:
            problem = liveness_problem(self.app.state) or self.repository.version_problem(name, version)
        except ServiceError:  # a model or version the repository does not hold is not ready, as Triton answers
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=problem is None)

    async def _server_metadata(self) -> Any:
        return messages.server_metadata(model_config.server_metadata(self.app.version))

    async def _model_metadata(self, name: str, version: str) -> Any:
        detector = self.repository.resolve(name, version)
        return messages.model_metadata(model_config.model_metadata(detector.manifest, detector.engine.describe()))

    async def _model_config(self, name: str, version: str) -> Any:
        detector = self.repository.resolve(name, version)
        return messages.model_config(model_config.model_config(detector.manifest, detector.runtime()))

    async def _infer(self, request: Any, arrived: float, deadline_s: float | None) -> Any:
        # Leased until answered: an unload of this version drains this request before the version goes.
        with self.repository.resolve(request.model_name, request.model_version).lease() as detector:
            parsed = messages.infer_request(request, detector.batcher.max_batch)
            params = codec.detect_options(detector.manifest, parsed.parameters, arrived, deadline_s)
            found = await detect_all(detector, parsed.images, params)
            return messages.infer_response(detector.manifest, parsed, codec.detection_tensors(found))

    async def _index(self, ready_only: bool) -> Any:
        entries = await self.repository.index(ready_only=ready_only)
        return service_pb2.RepositoryIndexResponse(
            models=[service_pb2.RepositoryIndexResponse.ModelIndex(**entry.model_dump()) for entry in entries]
        )

    async def _load(self, request: Any) -> Any:
        control.check_parameters("load", request.parameters)
        await self.repository.load(request.model_name)
        return service_pb2.RepositoryModelLoadResponse()

    async def _unload(self, request: Any) -> Any:
        control.check_parameters("unload", request.parameters, control.UNLOAD_PARAMETERS)
        await self.repository.unload(request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()

    async def _admitted(self, work: Awaitable[T]) -> T:
        """Admission as over HTTP (service/api/admission.py), in the same count: refused at once past the limit."""
        refusal = self.admission.refusal()
        if refusal is not None:
            if asyncio.iscoroutine(work):
                work.close()
            raise QueueFull(refusal)
        self.admission.admitted += 1
        try:
            return await work
        finally:
            self.admission.admitted -= 1

    # Keys, status codes and metrics, for every RPC

    async def _serve(self, rpc: str, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[T]]) -> T:
        code, started = grpc.StatusCode.OK, time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            self._check_key(rpc, context)
            return await work()
        except ServiceError as error:
            code = status_of(error)
            if code == grpc.StatusCode.INTERNAL:
                log.warning("%s failed: %s", rpc, error.detail)
            retry = error.headers.get("Retry-After")
            await context.abort(code, error.detail, (("retry-after", retry),) if retry else ())
            raise  # abort() raises; this line is never reached
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED  # the client left or its deadline passed: grpcio cancels the RPC
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("%s failed", rpc)
            await context.abort(code, "the server hit an unexpected error; see its logs")
            raise
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(protocol="grpc", route=SERVICE + rpc, status=code.name).inc()
            self.metrics.request_duration.labels(protocol="grpc", route=SERVICE + rpc).observe(time.perf_counter() - started)

    def _check_key(self, rpc: str, context: grpc.aio.ServicerContext) -> None:
        if self.keys is None or HEALTH_PATHS.get(rpc) in self.keys.open_paths:
            return
        metadata = context.invocation_metadata() or ()
        # The metadata as the HTTP check reads headers: bytes; names are lower case in gRPC.
        key = presented_key({name.encode(): value if isinstance(value, bytes) else value.encode() for name, value in metadata})
        if key is None:
            raise Unauthorized("this server needs an API key: send metadata 'authorization: Bearer <key>' or 'x-api-key: <key>'")
        if not self.keys.accepts(key):
            raise Unauthorized("the API key is not valid")
