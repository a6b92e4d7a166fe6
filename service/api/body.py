"""Reading the uploaded image from a request: raw body or multipart field ``image``, within the size limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from service.errors import BadRequest, BodyTooLarge, ClientClosedRequest, InvalidParameter, RequestTimeout, UnsupportedMediaType

# The raw body types taken. The declared type is a label, not a promise: the format is read from the bytes
# (service/decode.py), so PNG bytes sent as image/jpeg are served as the PNG they are, as octet-stream bytes are.
IMAGE_MEDIA_TYPES = frozenset(
    {
        "image/jpeg",
        "image/jpg",
        "image/pjpeg",
        "image/png",
        "image/webp",
        "image/bmp",
        "image/gif",
        "image/tiff",
        "application/octet-stream",
    }
)


async def read_limited(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, at most ``limit`` bytes, received within ``timeout_s`` (a trickling client gets 408)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_body(request, limit)
    except TimeoutError:
        raise RequestTimeout(f"the body was not received within {timeout_s:g} s") from None
    except ClientDisconnect:
        raise ClientClosedRequest("the client closed the connection before its body was complete") from None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest(f"Content-Length {declared!r} is not a number")
        if int(declared) > limit:
            raise BodyTooLarge(f"the body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # a chunked upload declares no length: count as it comes
            raise BodyTooLarge(f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_image(request: Request, limit: int, timeout_s: float) -> bytes:
    """The image bytes of a /detect request."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        data = await _multipart_image(request, await read_limited(request, limit, timeout_s), limit)
    elif media_type in IMAGE_MEDIA_TYPES:
        data = await read_limited(request, limit, timeout_s)
    else:
        raise UnsupportedMediaType(_unsupported(media_type))
    if not data:
        raise BadRequest("the request has no image data")
    return data


def _unsupported(media_type: str) -> str:
    shown = media_type or "none"
    return f"Content-Type {shown} is not accepted; send an image (image/jpeg, image/png, image/webp, ...) or multipart/form-data"


async def _multipart_image(request: Request, body: bytes, limit: int) -> bytes:
    """The bytes of the form's one ``image`` part, sent as a file or as a plain field."""

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(_latin1_form(request.headers), stream(), max_files=4, max_fields=16, max_part_size=limit)
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise BadRequest(f"malformed multipart body: {error.message}") from error
    try:
        _check_closed(request.headers["content-type"], body)
        return await _the_image_part(form)
    finally:
        await form.close()


def _latin1_form(headers: Headers) -> Headers:
    """The request's Content-Type with charset latin-1 (the last charset given counts).

    Starlette decodes a part sent without a filename to text, in the charset
    the request names (UTF-8 by default). Image bytes are rarely valid text
    in any charset but latin-1, which maps each byte to one character, so
    that encoding the text back gives exactly the bytes that were sent.
    """
    return Headers({"content-type": f"{headers['content-type']}; charset=latin-1"})


def _check_closed(content_type: str, body: bytes) -> None:
    """A body cut short parses without error, minus its last part: refuse it rather than answer for what is left."""
    boundary = parse_options_header(content_type)[1][b"boundary"]
    if b"--" + boundary + b"--" not in body:
        shown = boundary.decode("latin-1")
        raise BadRequest(f"malformed multipart body: no closing boundary --{shown}-- (the body is cut short, or uses another boundary)")


async def _the_image_part(form: FormData) -> bytes:
    if not form:
        raise BadRequest("malformed multipart body: it has no part (RFC 2046 asks for at least one)")
    fields = form.getlist("image")
    if not fields:
        raise InvalidParameter(f"the multipart request has no 'image' field; its fields are {sorted(set(form.keys()))}")
    if len(fields) > 1:
        raise InvalidParameter(f"the multipart request has {len(fields)} 'image' fields; send one image per request")
    field = fields[0]
    if isinstance(field, UploadFile):
        return await field.read()
    return field.encode("latin-1")
