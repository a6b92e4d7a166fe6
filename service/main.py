"""The FastAPI app: settings, lifespan (model load, warm-up, drain), middleware, routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi

from service.api import problems
from service.api.admission import Admission, AdmissionMiddleware
from service.api.auth import DOCS_PATHS, HEALTH_PATHS, ApiKeyMiddleware, KeyRing
from service.api.middleware import RequestContextMiddleware
from service.api.routes import detect, health, models, page
from service.kserve import control
from service.kserve import endpoints as kserve
from service.metrics import Metrics
from service.repository import ModelRepository
from service.settings import Settings, load_settings

log = logging.getLogger(__name__)


async def _load(app: FastAPI) -> None:
    """Loads the models asked for at start (engines built off the event loop) and warms them; /health/live answers meanwhile."""
    repository: ModelRepository = app.state.repository
    try:
        await repository.start()
        log.info("ready", extra={"models": [entry.model_dump() for entry in await repository.index(ready_only=True)]})
    except Exception as error:
        app.state.load_error = f"{type(error).__name__}: {error}"
        log.exception("loading the model failed")
        if app.state.on_load_failure is not None:
            app.state.on_load_failure()  # never "ready" with a broken model: the process stops


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    loading = asyncio.create_task(_load(app), name="load-model")
    try:
        yield
    finally:
        repository: ModelRepository = app.state.repository
        repository.begin_drain()
        await loading
        await repository.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    app = FastAPI(title="Faster R-CNN detection service", version="1", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.repository = ModelRepository(settings, app.state.metrics)  # empty until the lifespan loads it
    app.state.load_error = None
    app.state.on_load_failure = None  # python -m service stops the server here
    problems.install(app)
    # The last added runs first: request context (IDs, logs, metrics) sees every answer, CORS answers
    # preflights before the key check, the key check comes before admission, and admission before any
    # route reads a body. Admission holds the waiting requests (max_queue) plus one running batch; the
    # batcher's own queue check stays as a backstop.
    admission_limit = settings.max_queue + settings.max_batch_size
    app.state.admission = Admission(admission_limit, app.state.metrics)  # gRPC counts in it too
    app.add_middleware(AdmissionMiddleware, admission=app.state.admission)
    if settings.api_key_list:
        app.add_middleware(ApiKeyMiddleware, keys=KeyRing(settings.api_key_list, settings.protect_health))
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Request-ID", "X-Request-Timeout"],
            expose_headers=["X-Request-ID", "Retry-After", "X-Detections", "X-Detections-Count"],
            max_age=600,
        )
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics)
    for module in (detect, health, models, kserve, control, page):
        app.include_router(module.router)
    if settings.api_key_list:
        document_api_keys(app, protect_health=settings.protect_health)
    return app


def document_api_keys(app: FastAPI, protect_health: bool) -> None:
    """Adds the two ways to send a key, and the 401 answer, to the OpenAPI description of protected routes."""
    open_paths = DOCS_PATHS if protect_health else DOCS_PATHS | HEALTH_PATHS

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
            for path, operations in schema["paths"].items():
                if path in open_paths:
                    continue
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}, {"apiKey": []}]
                    operation.setdefault("responses", {})["401"] = problems.problem_responses(401)[401]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
