"""Image decoding: bytes of any common format -> RGB PIL image, with EXIF orientation applied.

Pillow's decompression-bomb guard stays on; our own pixel limit (usually lower) is checked from the
header before any pixel is decoded, so an oversized image costs no memory.
"""

from __future__ import annotations

import io
import logging
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from handler.errors import ImageTooLargeError, InputError

logger = logging.getLogger(__name__)

#: Default pixel limit (W*H) for images handed to the explainer: 40 MP, e.g. 8000x5000.
DEFAULT_MAX_PIXELS = 40_000_000

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO")


def check_size(width: int, height: int, max_pixels: int) -> None:
    """Raise InputError for zero-size images and ImageTooLargeError above ``max_pixels``."""
    if width < 1 or height < 1:
        raise InputError(f"image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} pixels"
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode (RGBA, LA, P, L, I;16, I, F, CMYK, ...) -> RGB, EXIF orientation applied.

    Transparent pixels are composited over white (what a viewer shows), not left as black.
    """
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit greyscale: scale the full range to 8 bits rather than clipping at 255.
        import numpy as np

        values = np.asarray(image, dtype=np.float64)
        lo, hi = float(values.min()), float(values.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        image = Image.fromarray(((values - lo) * scale).astype(np.uint8))
        return image.convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes | bytearray | memoryview, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode image bytes (JPEG/PNG/WebP/BMP/TIFF/GIF) into an RGB PIL image.

    Raises:
        InputError: empty, undecodable, truncated or unsupported data, or a zero-size image.
        ImageTooLargeError: more than ``max_pixels`` pixels (checked from the header, before decoding).
    """
    if data is None or len(data) == 0:
        raise InputError("image is empty (0 bytes)")
    buffer = io.BytesIO(bytes(data))
    try:
        with warnings.catch_warnings():
            # Pillow warns between MAX_IMAGE_PIXELS and 2x; treat that warning as the bomb it announces.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(buffer)
            check_size(image.width, image.height, max_pixels)
            if image.format not in SUPPORTED_FORMATS:
                raise InputError(f"unsupported image format {image.format}; send one of {', '.join(SUPPORTED_FORMATS)}")
            image.load()  # decode now so truncation is reported here, not later
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image rejected by Pillow's decompression-bomb guard: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InputError("image bytes could not be decoded: not a JPEG/PNG/WebP/BMP/TIFF/GIF image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow raises OSError for truncated files ("image file is truncated") and broken streams.
        raise InputError(f"image could not be decoded (corrupt or truncated): {exc}") from exc
    return to_rgb(image)
