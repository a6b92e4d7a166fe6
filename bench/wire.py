"""Raw HTTP/1.1 on loopback: the load generator's client, and the tests' for clients that misbehave at the byte level.

Each request goes on a connection of its own with ``Connection: close``, so that every request is a separate
client as the server sees it, and a reply ends where the connection does. On two cores it costs a fraction of
what httpx does per request, so a load is limited by the server, not by its clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from dataclasses import dataclass
from typing import Any

from bench.servers import HOST

PROBLEM_JSON = "application/problem+json"
HEADER_END = b"\r\n\r\n"
NO_REPLY = 0  # the status of a request that got no answer: refused, reset or timed out


def request_head(method: str, target: str, media_type: str | None = None, length: int = 0, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {HOST}", "Connection: close"]
    if media_type is not None:
        lines += [f"Content-Type: {media_type}", f"Content-Length: {length}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def detect_request(image: bytes, media_type: str, query: str = "", headers: dict[str, str] | None = None) -> bytes:
    """One complete ``POST /detect`` (head and body); the server closes the connection after its reply."""
    return request_head("POST", f"/detect{'?' + query if query else ''}", media_type, len(image), headers) + image


def media_type(image: bytes) -> str:
    """The Content-Type of a JPEG or a PNG, told by its first bytes."""
    return "image/jpeg" if image.startswith(b"\xff\xd8") else "image/png"


@dataclass(frozen=True)
class Reply:
    """A parsed HTTP reply; ``latency_s`` runs from connecting to the last byte; header names are lower case.

    A request that got none has status NO_REPLY and its ``error``.
    """

    status: int
    headers: dict[str, str]
    body: bytes
    latency_s: float = 0.0
    tag: str = ""  # what the sender wants to remember about the request
    error: Exception | None = None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def is_problem(self) -> bool:
        """An RFC 9457 problem of this reply's status."""
        if self.headers.get("content-type") != PROBLEM_JSON:
            return False
        body = self.json()
        return set(body) >= {"type", "title", "status", "detail"} and body["status"] == self.status


def parse_reply(raw: bytes, latency_s: float = 0.0, tag: str = "") -> Reply:
    head, separator, body = raw.partition(HEADER_END)
    if not separator:
        raise ValueError(f"an incomplete HTTP reply ({len(raw)} bytes): {raw[:200]!r}")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    if length is not None and len(body) != int(length):
        raise ValueError(f"a truncated reply: {len(body)} of {length} body bytes")
    return Reply(int(status_line.split(" ", 2)[1]), headers, body, latency_s, tag)


async def send(port: int, request: bytes, tag: str = "", timeout_s: float = 60.0) -> Reply:
    """Sends one raw request on a new connection and reads the reply to the end of the connection.

    OSError (refused, reset), TimeoutError or ValueError (no whole reply) where there is no reply.
    """
    started = time.monotonic()
    chunks = []
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(request)
            await writer.drain()
            with contextlib.suppress(ConnectionResetError):  # see read_reply
                while chunk := await reader.read(65536):
                    chunks.append(chunk)
        finally:
            writer.close()
    return parse_reply(b"".join(chunks), time.monotonic() - started, tag)


async def attempt(port: int, request: bytes, tag: str = "", timeout_s: float = 60.0) -> Reply:
    """``send``, with a request that got no reply returned as one of status NO_REPLY instead of raised."""
    started = time.monotonic()
    try:
        return await send(port, request, tag, timeout_s)
    except (OSError, ValueError, TimeoutError) as error:
        return Reply(NO_REPLY, {}, b"", time.monotonic() - started, tag, error)


def connect(port: int, timeout_s: float = 30.0) -> socket.socket:
    """A blocking socket to the server, for clients that misbehave at the byte level."""
    sock = socket.create_connection((HOST, port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each trickled piece leaves at once
    return sock


def read_reply(sock: socket.socket) -> Reply:
    """Reads a reply on a blocking socket until the server closes the connection."""
    started = time.monotonic()
    chunks = []
    # A server that closes with request bytes still unread ends the connection with a reset instead of
    # a FIN: the reply has arrived whole (parse_reply checks its length), only the end is abrupt.
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return parse_reply(b"".join(chunks), time.monotonic() - started)
