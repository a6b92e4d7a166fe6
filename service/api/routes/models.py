"""GET /v1/models/{name}: the manifest and the runtime serving it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.api.deps import DetectorDep
from service.errors import ModelNotFound

router = APIRouter()


@router.get("/v1/models/{name}")
async def model(name: str, detector: DetectorDep) -> dict[str, Any]:
    if name not in ("default", detector.manifest.name):
        raise ModelNotFound(f"no model {name!r}; this server serves {detector.manifest.name!r} (also reachable as 'default')")
    return detector.describe()
