"""Optional API keys: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.problems import problem_response
from service.errors import Unauthorized

HEALTH_PATHS = frozenset({"/health/live", "/health/ready", "/metrics", "/v2/health/live", "/v2/health/ready"})
# The API's description holds no data; clients and fuzzers read it to learn the routes.
DOCS_PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
# The page at / and its files (service/api/routes/page.py) hold no data; the page asks the user for a key.
PAGE_PATHS = frozenset({"/", "/static/page.js", "/static/page.css"})


def _digest(key: bytes) -> bytes:
    # Equal-length digests: compare_digest then takes the same time whatever the key's length.
    return hashlib.sha256(key).digest()


class KeyRing:
    """The server's API keys and the paths open without one: the one check that HTTP (the middleware below) and gRPC
    (service/grpc/) make."""

    def __init__(self, keys: list[bytes], protect_health: bool) -> None:
        self.digests = [_digest(key) for key in keys]
        self.open_paths = (DOCS_PATHS | PAGE_PATHS) if protect_health else DOCS_PATHS | PAGE_PATHS | HEALTH_PATHS

    def accepts(self, key: bytes) -> bool:
        given = _digest(key)
        # Every key is compared, so the time does not tell which one nearly matched.
        matches = [hmac.compare_digest(given, digest) for digest in self.digests]
        return any(matches)


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: KeyRing) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.keys.open_paths:
            await self.app(scope, receive, send)
            return
        given = presented_key(dict(scope["headers"]))
        if given is None:
            await self._refuse(
                scope, receive, send, "this server needs an API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
            )
        elif not self.keys.accepts(given):
            await self._refuse(scope, receive, send, "the API key is not valid", 'error="invalid_token"')
        else:
            await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, detail: str, challenge_error: str = "") -> None:
        challenge = Unauthorized.headers["WWW-Authenticate"] + (f", {challenge_error}" if challenge_error else "")
        response = problem_response(Unauthorized.status, Unauthorized.title, detail, Unauthorized.type, {"WWW-Authenticate": challenge})
        await response(scope, receive, send)


def presented_key(headers: Mapping[bytes, bytes]) -> bytes | None:
    """The key a request presents: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (names in lower case)."""
    authorization = headers.get(b"authorization", b"")
    scheme, _, credentials = authorization.partition(b" ")
    if scheme.lower() == b"bearer" and credentials.strip():
        return credentials.strip()
    api_key = headers.get(b"x-api-key", b"").strip()
    return api_key or None
