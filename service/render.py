"""Annotated images: the uploaded image, upright, with each detection's box, class name and score drawn on it.

Pure functions of the image bytes and the detections /detect answers (the boxes drawn are exactly the
JSON's); slow (a full decode, drawing, an encode), so the caller runs them on the decode threads.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import cache

from PIL import Image, ImageDraw, ImageFont

from service.decode import decode_image
from service.schemas import Box, Detection

MEDIA_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG"}
# One colour per label id (label % len): Tableau 10, distinct and readable under white or black text. The page at /
# (service/static/page.js) draws with the same list, so a class has one colour wherever it is seen.
PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)
JPEG_QUALITY = 90
PNG_COMPRESS_LEVEL = 3  # zlib level: most of level 6's size at a third of its time


def colour(label: int) -> tuple[int, int, int]:
    return PALETTE[label % len(PALETTE)]


def line_width(width: int, height: int) -> int:
    """Box outline in pixels: 2 on a 640-pixel image, growing with its longer side, at least 1."""
    return max(1, round(max(width, height) / 320))


def font_size(width: int, height: int) -> int:
    """Label text in pixels: 16 on a 640-pixel image, growing with its longer side, at least 10, and at most a
    quarter of the shorter side (a panorama's labels stay inside it) unless that is below 10."""
    return max(10, min(round(max(width, height) / 40), min(width, height) // 4))


@cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's built-in scalable font: no font file to ship or find.
    return ImageFont.load_default(size=size)


def draw_detections(image: Image.Image, detections: Sequence[Detection]) -> Image.Image:
    """Draws each detection on ``image`` (RGB, in the detections' pixels), lowest score first so the best stay on top."""
    draw = ImageDraw.Draw(image)
    lines = line_width(*image.size)
    font = _font(font_size(*image.size))
    for detection in reversed(detections):
        fill = colour(detection.label)
        box = outline(detection.box, image.width, image.height)
        draw.rectangle(box, outline=fill, width=lines)
        text = f"{detection.class_name} {detection.score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        pad = max(1, lines)
        label_w, label_h = right - left + 2 * pad, bottom - top + 2 * pad
        # Above the box where there is room, else inside its top edge; kept within the image.
        x = min(box[0], max(image.width - label_w, 0))
        y = box[1] - label_h if box[1] - label_h >= 0 else min(box[1], max(image.height - label_h, 0))
        draw.rectangle((x, y, x + label_w, y + label_h), fill=fill)
        draw.text((x + pad - left, y + pad - top), text, font=font, fill=_text_colour(fill))
    return image


def outline(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """The pixels a box covers, first and last column and row: its edges x2 and y2 lie past its last pixel.

    A box clipped to the image's right or bottom edge (x2 = width) keeps its outline inside the image.
    """
    left, top = min(round(box.x1), width - 1), min(round(box.y1), height - 1)
    return left, top, max(left, min(round(box.x2) - 1, width - 1)), max(top, min(round(box.y2) - 1, height - 1))


def _text_colour(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    red, green, blue = fill
    return (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue > 150 else (255, 255, 255)


def render_image(data: bytes, detections: Sequence[Detection], media_type: str, max_pixels: int) -> bytes:
    """The image in ``data``, upright after its EXIF orientation and at its full size, annotated and encoded.

    ``media_type`` is one of MEDIA_TYPES. The bytes were decoded once already for the model (maybe at a
    reduced scale): this decode is at full size, so the boxes, in the full image's pixels, land where
    the JSON says.
    """
    if media_type not in MEDIA_TYPES:
        raise ValueError(f"cannot render {media_type!r}; one of {', '.join(MEDIA_TYPES)}")
    image, size = decode_image(data, max_pixels)
    if image.size != size:
        raise ValueError(f"decoded {image.size} for an image of {size}")
    out = io.BytesIO()
    annotated = draw_detections(image, detections)
    if MEDIA_TYPES[media_type] == "JPEG":
        annotated.save(out, format="JPEG", quality=JPEG_QUALITY)
    else:
        annotated.save(out, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return out.getvalue()
