"""The FastAPI app: settings, lifespan (model load, warm-up, drain), middleware, routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.api import problems
from service.api.middleware import RequestContextMiddleware
from service.api.routes import detect, health, kserve, models
from service.detector import Detector
from service.manifest import read_manifest
from service.metrics import Metrics
from service.settings import Settings, load_settings

log = logging.getLogger(__name__)


async def _load(app: FastAPI) -> None:
    """Loads the engine off the event loop and warms it up; /health/live answers meanwhile."""
    settings: Settings = app.state.settings
    try:
        detector = await asyncio.to_thread(Detector.load, settings, app.state.metrics)
        app.state.detector = detector
        await detector.start()
        log.info("ready", extra={"model": detector.manifest.name, "runtime": detector.engine.describe()})
    except Exception as error:
        app.state.load_error = f"{type(error).__name__}: {error}"
        log.exception("loading the model failed")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    read_manifest(app.state.settings.model_dir)  # a missing or broken package stops the start at once
    loading = asyncio.create_task(_load(app), name="load-model")
    try:
        yield
    finally:
        detector: Detector | None = getattr(app.state, "detector", None)
        if detector is not None:
            detector.begin_drain()
        await loading
        if getattr(app.state, "detector", None) is not None:
            await app.state.detector.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    app = FastAPI(title="Faster R-CNN detection service", version="1", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.detector = None
    app.state.load_error = None
    problems.install(app)
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics)
    for module in (detect, health, models, kserve):
        app.include_router(module.router)
    return app
