"""Every error as RFC 9457 problem JSON, mapped to its status in one place."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import ServiceError
from service.schemas import Problem, inline_schema

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"


def problem_response(
    status: int, title: str, detail: str, type_: str = "about:blank", headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"type": type_, "title": title, "status": status, "detail": detail}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route's error statuses, each a problem JSON body (application/problem+json only)."""
    content = {PROBLEM_JSON: {"schema": inline_schema(Problem)}}
    return {status: {"description": HTTPStatus(status).phrase, "content": content} for status in statuses}


async def _service_error(request: Request, error: Exception) -> JSONResponse:
    if not isinstance(error, ServiceError):
        raise error
    if error.status >= 500:
        log.warning("request failed: %s", error.detail)
    return problem_response(error.status, error.title, error.detail, error.type, error.headers)


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    errors = error.errors() if isinstance(error, RequestValidationError) else []
    detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in errors) or str(error)
    return problem_response(422, "Invalid Parameter", detail, "/problems/invalid-parameter")


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    if not isinstance(error, StarletteHTTPException):
        raise error
    return problem_response(error.status_code, str(error.detail), str(error.detail), headers=dict(error.headers or {}))


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    log.exception("unhandled error")
    return problem_response(500, "Internal Server Error", "the server hit an unexpected error; see its logs")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
