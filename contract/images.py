"""Any Pillow image -> 8-bit RGB, the one conversion training data and served images both go through."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps


def to_rgb(img: Image.Image) -> Image.Image:
    """EXIF orientation applied; greyscale, palette, 16-bit, CMYK converted; alpha composited on white."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit (and 32-bit integer) pixels span 0..65535, scaled by 255/65535 whatever the image holds, so
        # a dark 16-bit image stays dark; floating-point ones are taken as 0..255, as Pillow converts them
        a = np.asarray(img, dtype=np.float32)
        a = a if img.mode == "F" else a / 257.0
        img = Image.fromarray(a.round().clip(0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img.convert("RGB")
