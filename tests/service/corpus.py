"""A corpus of bad and awkward inputs for POST /detect, each with the status the API documents for it.

Every kind is built deterministically (synthetic scenes from model_export.synth,
Pillow encoders, byte surgery), named, and paired with the request to send
and the answer it must get. The rules behind the statuses (DESIGN.md's HTTP
API, applied to each case):

* 400: the request itself is malformed (an empty body, a broken multipart form).
* 413: the image is larger than the server takes, judged from its header alone
  (a decompression bomb costs nothing to refuse).
* 415: the Content-Type is not an image type, application/octet-stream or multipart/form-data.
* 422: a parameter /detect does not take, takes once, or cannot use; or bytes
  that are not a whole image of an accepted format.
* 200: any whole image of an accepted format (JPEG, PNG, WebP, GIF, BMP, TIFF),
  in any pixel mode and of any size within the pixel limit. Its format is
  read from its bytes: the declared image type is a label, not a promise
  (clients mislabel, and application/octet-stream says nothing), so PNG bytes
  sent as image/jpeg are served as the PNG they are. Animations are read by
  their first frame; EXIF orientation is applied.

``python -m tests.service.corpus`` prints the table of kinds (for the README).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from PIL import Image

from model_export.synth import generate_image

PROBLEM_TYPES = {
    400: "/problems/bad-request",
    413: "/problems/image-too-large",
    415: "/problems/unsupported-media-type",
}
INVALID_IMAGE, INVALID_PARAMETER = "/problems/invalid-image", "/problems/invalid-parameter"
FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif", "BMP": "image/bmp", "TIFF": "image/tiff"}
TRUNCATIONS = (0.1, 0.5, 0.9)
BOUNDARY = "corpus-boundary"


@dataclass(frozen=True)
class Kind:
    """One bad input: the request to send and the answer the API documents for it.

    ``query`` is the raw query string, sent as written (so that repeated and
    malformed parameters reach the server as they are). ``problem_type`` is
    the problem's ``type`` for an error (None for 200); ``detail_has`` a
    text the problem's detail must contain (the name of the bad parameter).
    """

    name: str
    status: int
    body: bytes
    content_type: str | None
    query: str = ""
    problem_type: str | None = None
    detail_has: str | None = None

    @property
    def path(self) -> str:
        return f"/detect?{self.query}" if self.query else "/detect"


def served(name: str, body: bytes, content_type: str | None, query: str = "") -> Kind:
    return Kind(name, 200, body, content_type, query)


def refused(name: str, status: int, body: bytes, content_type: str | None, query: str = "", **problem: str) -> Kind:
    """An error kind; its problem type defaults to the status's one (422 needs it given: image or parameter)."""
    return Kind(name, status, body, content_type, query, problem.get("problem_type", PROBLEM_TYPES.get(status)), problem.get("detail_has"))


# Images


@cache
def scene(index: int = 0) -> Image.Image:
    """A small busy synthetic scene (about 250 x 180, within twice the test canvas, so JPEGs decode at full scale)."""
    image, _ = generate_image(seed=7, index=index, size_scale=0.7, empty_fraction=0.0)
    return image


def encode(image: Image.Image, format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def solid(width: int, height: int) -> Image.Image:
    return Image.new("RGB", (width, height), (120, 130, 140))


@cache
def good_png() -> bytes:
    return encode(scene(), "PNG")


def header_length(data: bytes, format: str) -> int:
    """Where the pixel data begins: the bytes before it are the header (size, tables, palette)."""
    if format == "JPEG":
        start_of_scan = data.index(b"\xff\xda")  # the last segment before the entropy-coded data
        return start_of_scan + 2 + int.from_bytes(data[start_of_scan + 2 : start_of_scan + 4], "big")
    if format == "WEBP":
        return data.index(b"VP8") + 8 + 10  # the chunk header, then the frame header that holds the size
    return int(Image.open(io.BytesIO(data)).tile[0].offset)  # PNG, GIF, BMP, TIFF: where Pillow's decoder starts


def animation(format: str) -> bytes:
    """Two frames of different scenes; the first is the one served."""
    frames = [scene(0), scene(1).resize(scene(0).size)]
    options: dict[str, object] = {"lossless": True} if format == "WEBP" else {}
    return encode(frames[0], format, save_all=True, append_images=frames[1:], duration=100, loop=0, **options)


# EXIF orientation o shows the stored pixels turned by exif_transpose's operation; storing the inverse shows the scene upright.
_STORED_AS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def exif_oriented_jpeg(orientation: int, damaged: bool = False) -> bytes:
    """The scene stored so that EXIF orientation ``orientation`` (1-8) shows it upright.

    ``damaged``: the EXIF block also holds a tag whose value does not fit its
    type, as a buggy camera or editor writes it; Pillow reads such a block,
    but raises when it writes it back.
    """
    stored = scene() if orientation == 1 else scene().transpose(_STORED_AS[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    if not damaged:
        return encode(stored, "JPEG", quality=95, exif=exif)
    exif[0x010F] = "Maker"
    data = encode(stored, "JPEG", quality=95, exif=exif)
    # Pillow writes big-endian EXIF: the Make entry (tag 0x010F, type ASCII) becomes Thresholding (0x0107, a number).
    broken = data.replace(b"\x01\x0f\x00\x02", b"\x01\x07\x00\x02", 1)
    if broken == data:
        raise ValueError("the Make entry was not found in the EXIF block")
    return broken


def png_bomb_header(width: int, height: int) -> bytes:
    """A PNG signature and header claiming width x height, and no pixel data at all."""
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + _png_chunk(b"IEND", b"")


def png_deflate_bomb(width: int, height: int) -> bytes:
    """A whole, valid black PNG of width x height: a few hundred kilobytes that inflate to width x height x 3 bytes."""
    deflate = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)  # filter byte, then RGB
    data = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def gif_bomb_header() -> bytes:
    """A GIF whose screen and image claim 65535 x 65535 pixels, with one byte of image data."""
    screen = b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0)
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0) + b"\x02\x02\x44\x01\x00"
    return screen + image + b"\x3b"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def multipart(*parts: bytes, closing: bool = True) -> bytes:
    body = b"".join(f"--{BOUNDARY}\r\n".encode() + part + b"\r\n" for part in parts)
    return body + (f"--{BOUNDARY}--\r\n".encode() if closing else b"")


def form_part(name: str, data: bytes, filename: str | None = "image.png") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"Content-Disposition: {disposition}\r\n\r\n".encode() + data


# The kinds


def empty_and_tiny_bodies() -> list[Kind]:
    return [
        refused("empty body", 400, b"", "image/png"),
        refused("1-byte body", 422, b"\x89", "image/png", problem_type=INVALID_IMAGE),
        refused("text, not an image", 422, b"hello, world", "image/jpeg", problem_type=INVALID_IMAGE),
        refused("no Content-Type", 415, good_png(), None),
        refused("Content-Type text/plain", 415, good_png(), "text/plain"),
    ]


def truncations() -> list[Kind]:
    kinds = []
    for format, media_type in FORMATS.items():
        data = encode(scene(), format)
        cuts = {f"{round(fraction * 100)}%": int(len(data) * fraction) for fraction in TRUNCATIONS}
        cuts["header only"] = header_length(data, format)
        for label, length in cuts.items():
            kinds.append(refused(f"{format} truncated at {label}", 422, data[:length], media_type, problem_type=INVALID_IMAGE))
    return kinds


def mislabels_and_bad_magic() -> list[Kind]:
    kinds = [
        served("PNG bytes sent as image/jpeg", good_png(), "image/jpeg"),
        served("JPEG bytes sent as image/png", encode(scene(), "JPEG"), "image/png"),
        served("WebP bytes sent as image/gif", encode(scene(), "WEBP"), "image/gif"),
        served("PNG bytes sent as application/octet-stream", good_png(), "application/octet-stream"),
        refused(
            "ICO (a format not accepted)", 422, encode(solid(32, 32), "ICO"), "image/png", problem_type=INVALID_IMAGE, detail_has="ICO"
        ),
    ]
    for format, media_type in FORMATS.items():
        data = bytearray(encode(scene(), format))
        data[0] ^= 0xFF  # every one of these formats opens with its magic number
        kinds.append(refused(f"{format} with corrupted magic", 422, bytes(data), media_type, problem_type=INVALID_IMAGE))
    return kinds


def odd_sizes() -> list[Kind]:
    return [
        served("1x1 PNG", encode(solid(1, 1), "PNG"), "image/png"),
        served("1x1 JPEG", encode(solid(1, 1), "JPEG"), "image/jpeg"),
        served("1x500 PNG", encode(solid(1, 500), "PNG"), "image/png"),
        served("500x1 PNG", encode(solid(500, 1), "PNG"), "image/png"),
        served("20000x100 panorama PNG", encode(solid(20000, 100), "PNG"), "image/png"),
        served("100x20000 JPEG", encode(solid(100, 20000), "JPEG"), "image/jpeg"),
        refused("PNG header claiming 100000x100000", 413, png_bomb_header(100_000, 100_000), "image/png"),
        refused("GIF claiming 65535x65535", 413, gif_bomb_header(), "image/gif"),
        refused("deflate bomb: valid 8000x8000 PNG", 413, png_deflate_bomb(8000, 8000), "image/png"),
    ]


def pixel_modes() -> list[Kind]:
    palette = scene().convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return [
        served("16-bit grayscale PNG", encode(Image.new("I;16", (64, 48), 3000), "PNG"), "image/png"),
        served("palette PNG with transparency", encode(palette, "PNG", transparency=0), "image/png"),
        served("RGBA PNG", encode(scene().convert("RGBA"), "PNG"), "image/png"),
        served("grayscale JPEG", encode(scene().convert("L"), "JPEG"), "image/jpeg"),
        served("CMYK JPEG", encode(scene().convert("CMYK"), "JPEG"), "image/jpeg"),
        served("progressive JPEG", encode(scene(), "JPEG", progressive=True), "image/jpeg"),
        served("TIFF", encode(scene(), "TIFF"), "image/tiff"),
        served("BMP", encode(scene(), "BMP"), "image/bmp"),
        served("1-bit BMP", encode(scene().convert("1"), "BMP"), "image/bmp"),
        served("GIF", encode(scene(), "GIF"), "image/gif"),
        served("WebP with alpha", encode(scene().convert("RGBA"), "WEBP", lossless=True), "image/webp"),
        served("animated GIF (first frame)", animation("GIF"), "image/gif"),
        served("animated WebP (first frame)", animation("WEBP"), "image/webp"),
        served("JPEG with EXIF orientation 6", exif_oriented_jpeg(6), "image/jpeg"),
        served("JPEG with a damaged EXIF block, orientation 6", exif_oriented_jpeg(6, damaged=True), "image/jpeg"),
    ]


def malformed_multipart() -> list[Kind]:
    form = f"multipart/form-data; boundary={BOUNDARY}"
    image_part = form_part("image", good_png())
    return [
        served("multipart image as a file part", multipart(image_part), form),
        served("multipart image as a text part (no filename)", multipart(form_part("image", good_png(), filename=None)), form),
        refused("multipart without boundary", 400, multipart(image_part), "multipart/form-data"),
        refused("multipart with another boundary", 400, multipart(image_part), "multipart/form-data; boundary=not-the-one"),
        refused("multipart unterminated part", 400, multipart(image_part, closing=False), form),
        refused("multipart with no part", 400, multipart(), form),
        refused("multipart empty image part", 400, multipart(form_part("image", b"")), form),
        refused("multipart part without a name", 400, multipart(b"Content-Disposition: form-data\r\n\r\nabc"), form),
        refused("multipart without an image field", 422, multipart(form_part("picture", good_png())), form, problem_type=INVALID_PARAMETER),
        refused("multipart with two image fields", 422, multipart(image_part, image_part), form, problem_type=INVALID_PARAMETER),
        refused(
            "multipart text part, not an image", 422, multipart(form_part("image", "€uro".encode(), None)), form, problem_type=INVALID_IMAGE
        ),
    ]


def bad_queries() -> list[Kind]:
    def parameter(name: str, query: str, detail_has: str) -> Kind:
        return refused(name, 422, good_png(), "image/png", query, problem_type=INVALID_PARAMETER, detail_has=detail_has)

    kinds = [
        parameter("unknown parameter (a typo)", "score_treshold=0.1", "score_treshold"),
        parameter("unknown parameter, empty", "foo=", "foo"),
        parameter("parameter given twice", "score_threshold=0.1&score_threshold=0.2", "score_threshold"),
        parameter("classes given twice", "classes=class1&classes=class2", "classes"),
        parameter("max_detections above the model's K", "max_detections=1000000", "max_detections"),
        parameter("max_detections 0", "max_detections=0", "max_detections"),
        parameter("max_detections not an integer", "max_detections=1.5", "max_detections"),
        parameter("timeout_ms 0", "timeout_ms=0", "timeout_ms"),
    ]
    for value in ("nan", "NaN", "inf", "-inf", "Infinity", "-0.1", "1.5", "abc", "", "1e400"):
        kinds.append(parameter(f"score_threshold={value}", f"score_threshold={value}", "score_threshold"))
    kinds.append(parameter("iou_threshold=nan", "iou_threshold=nan", "iou_threshold"))
    for value in ("", ",,", "%20,%20", "nope", "class1,nope"):
        kinds.append(parameter(f"classes={value}", f"classes={value}", "classes" if "nope" not in value else "nope"))
    return kinds


GROUPS: list[Callable[[], list[Kind]]] = [
    empty_and_tiny_bodies,
    truncations,
    mislabels_and_bad_magic,
    odd_sizes,
    pixel_modes,
    malformed_multipart,
    bad_queries,
]


@cache
def corpus() -> tuple[Kind, ...]:
    kinds = tuple(kind for group in GROUPS for kind in group())
    names = [kind.name for kind in kinds]
    if len(set(names)) != len(names):
        raise ValueError(f"corpus kinds should have distinct names: {sorted(n for n in names if names.count(n) > 1)}")
    return kinds


def markdown_table() -> str:
    rows = ["| input | Content-Type | query | status | problem type |", "|---|---|---|---|---|"]
    for kind in corpus():
        query = f"`{kind.query}`" if kind.query else ""
        rows.append(f"| {kind.name} | {kind.content_type or '(none)'} | {query} | {kind.status} | {kind.problem_type or ''} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
