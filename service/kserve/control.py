"""Triton's model repository extension over HTTP: the index, and loading and unloading models (explicit model control).

POST /v2/repository/index answers every version in the repository with its state; POST
/v2/repository/models/{name}/load (re)loads the versions its policy picks, /unload takes them all out of service
(service/repository.py). They need an API key where keys are set, as every route but health does; load and unload
answer 400 unless DETECTOR_MODEL_CONTROL=explicit. gRPC's RepositoryIndex, RepositoryModelLoad and
RepositoryModelUnload (service/grpc/servicer.py) call the same repository with the same checks.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, StrictBool, ValidationError

from service.errors import BadRequest, LoadFailed
from service.kserve.endpoints import ProtocolRoute, protocol_errors
from service.kserve.messages import explain
from service.repository import IndexEntry, ModelRepository

router = APIRouter(route_class=ProtocolRoute)
# What unload may carry: Triton's unload_dependents means nothing here (no ensembles), so it is accepted and ignored.
UNLOAD_PARAMETERS = frozenset({"unload_dependents"})
ModelName = Annotated[str, Path(description="the model's name: its directory in the repository")]


class IndexRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    ready: StrictBool = False


def check_parameters(action: str, names: Iterable[str], allowed: frozenset[str] = frozenset()) -> None:
    """Refuses what Triton's load can carry but this server does not do: a configuration or files sent with the request."""
    refused = sorted(set(names) - allowed)
    if refused:
        raise LoadFailed(
            f"{action} takes no parameter {', '.join(map(repr, refused))}: this server {action}s packages from its repository as they are"
        )


async def _body(request: Request) -> dict[str, Any]:
    """The optional JSON body of a control request ({"parameters": {...}}, or nothing at all as tritonclient may send)."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as error:
        raise BadRequest(f"the request body is not JSON: {error}") from error
    if not isinstance(body, dict) or not isinstance(body.get("parameters", {}), dict):
        raise BadRequest('the request body should be a JSON object, {"parameters": {...}} if any')
    return body


@router.post("/v2/repository/index", responses=protocol_errors(400))
async def repository_index(request: Request) -> list[IndexEntry]:
    """Every model version in the repository, and every loaded one: READY, or UNAVAILABLE with the reason."""
    try:
        asked = IndexRequest.model_validate(await _body(request))
    except ValidationError as error:
        raise BadRequest(f"the index request does not follow the protocol: {explain(error)}") from error
    repository: ModelRepository = request.app.state.repository
    return await repository.index(ready_only=asked.ready)


@router.post("/v2/repository/models/{name}/load", response_class=Response, responses=protocol_errors(400, 404))
async def load_model(request: Request, name: ModelName) -> Response:
    """Loads the versions of the model that its policy picks (reloading those loaded), warmed up before they take traffic."""
    check_parameters("load", (await _body(request)).get("parameters", {}))
    await request.app.state.repository.load(name)
    return Response(status_code=200)


@router.post("/v2/repository/models/{name}/unload", response_class=Response, responses=protocol_errors(400, 404))
async def unload_model(request: Request, name: ModelName) -> Response:
    """Takes every version of the model out of service, then answers once their queued requests are answered."""
    check_parameters("unload", (await _body(request)).get("parameters", {}), UNLOAD_PARAMETERS)
    await request.app.state.repository.unload(name)
    return Response(status_code=200)
