"""Decoding uploaded images with Pillow: format and size checks, EXIF orientation, RGB."""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import ImageTooLarge, InvalidImage

# Formats a camera, a browser or an image library would send; everything else is refused.
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"})


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decodes an image to RGB with its EXIF orientation applied.

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
        image.load()
        upright = ImageOps.exif_transpose(image) or image
        return upright.convert("RGB")
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"the image is too large to decode: {error}") from error
    except (OSError, ValueError, SyntaxError) as error:
        raise InvalidImage(f"the image data is damaged or truncated: {error}") from error
