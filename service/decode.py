"""Decoding uploaded images with Pillow: format and size checks, EXIF orientation, RGB."""

from __future__ import annotations

import io
import math
import warnings

from PIL import Image, UnidentifiedImageError

from service.errors import ImageTooLarge, InvalidImage
from service.letterbox import fit_scale

# Formats a camera, a browser or an image library would send; everything else is refused.
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"})
ORIENTATION = 0x0112  # the EXIF tag
# EXIF orientation -> the operation that shows the stored pixels upright: ImageOps.exif_transpose's table.
# exif_transpose itself also re-serialises the EXIF block without the tag, which raises on a damaged block
# (a tag whose value does not fit its type); only the pixels are needed here.
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
TURNED = frozenset({5, 6, 7, 8})  # the orientations that swap width and height


def decode_image(data: bytes, max_pixels: int, fit: tuple[int, int] | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Decodes an image to RGB with its EXIF orientation applied.

    Returns the image and its full size (width, height), upright. With ``fit``
    (a canvas [H, W]), a JPEG much larger than the canvas is decoded at a
    reduced scale (libjpeg's DCT scaling, 1/2 to 1/8) that still covers the
    canvas, which costs a fraction of a full decode; the returned image is
    then smaller than the full size.

    Raises InvalidImage for bytes that are not a whole image of an accepted
    format, ImageTooLarge when its width x height exceeds ``max_pixels``. The
    size is checked from the header, before any pixel is decoded, so that a
    decompression bomb costs nothing.
    """
    if not data:
        raise InvalidImage("the request has no image data")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb guard warns or raises on its global limit; ours is per setting and checked below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"the image is too large to decode: {error}") from error
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise InvalidImage("the data is not an image Pillow can read") from error
    if image.format not in ACCEPTED_FORMATS:
        raise InvalidImage(f"image format {image.format} is not accepted; send one of {', '.join(sorted(ACCEPTED_FORMATS))}")
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    if width < 1 or height < 1:
        raise InvalidImage(f"the image is {width}x{height}")
    try:
        orientation = _orientation(image)
        full_size = (height, width) if orientation in TURNED else (width, height)
        if fit is not None and image.format in ("JPEG", "MPO"):
            scale = fit_scale(*full_size, fit)
            image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
        image.load()
        upright = image.transpose(UPRIGHT[orientation]) if orientation in UPRIGHT else image
        return upright.convert("RGB"), full_size
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"the image is too large to decode: {error}") from error
    except (OSError, ValueError, SyntaxError) as error:
        raise InvalidImage(f"the image data is damaged or truncated: {error}") from error


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation, 1 (as stored) when absent or not a number (a damaged block)."""
    orientation = image.getexif().get(ORIENTATION, 1)
    return orientation if isinstance(orientation, int) else 1
