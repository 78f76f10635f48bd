"""Client bytes -> RGB uint8 arrays, with the limits checked before any pixel is decoded."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from contract.images import to_rgb

READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning)


class BadImage(ValueError):
    """The bytes are not an image this service accepts; the message says why."""


def open_image(data: bytes, name: str, max_pixels: int, allowed_formats: set[str]) -> Image.Image:
    """The image with only its header read: format and pixel count checked, nothing decoded yet (cheap)."""
    if not data:
        raise BadImage(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except READ_ERRORS as exc:
        raise BadImage(f"{name}: not a readable image ({why(exc)})") from None
    if img.format not in allowed_formats:
        raise BadImage(f"{name}: format {img.format} not allowed; allowed: {', '.join(sorted(allowed_formats))}")
    w, h = img.size
    if w * h > max_pixels:
        raise BadImage(f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
    return img


def to_array(img: Image.Image, name: str) -> np.ndarray:
    """HxWx3 uint8 RGB: EXIF orientation applied; greyscale, palette, alpha, 16-bit, CMYK converted."""
    try:
        img.load()  # first frame only for animated images
        return np.asarray(to_rgb(img), dtype=np.uint8)
    except READ_ERRORS as exc:
        raise BadImage(f"{name}: not a readable image ({why(exc)})") from None


def why(exc: Exception) -> str:
    """Pillow's reason, without the in-memory file's repr it names ("<_io.BytesIO object at 0x...>")."""
    if isinstance(exc, UnidentifiedImageError):
        return "not a known image format"
    return f"{type(exc).__name__}: {exc}"


def decode(data: bytes, name: str, max_pixels: int, allowed_formats: set[str]) -> np.ndarray:
    return to_array(open_image(data, name, max_pixels, allowed_formats), name)
