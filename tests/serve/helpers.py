"""Helpers the API tests share: a real photo, image bytes, ONNX Runtime called without the service."""

import io
import zlib

import numpy as np
import onnxruntime as ort
from PIL import Image

from contract.views import centre_view
from service.model import ExportedModel

from ..conftest import DATA

PHOTO = DATA / "photos" / "sklearn" / "china.jpg"  # 640 x 427


def png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def direct(model_dir, rgbs, layers):
    """ONNX Runtime on the same preprocessed tensors, without the service."""
    model = ExportedModel(model_dir, "cpu")
    batch = np.stack([model.normalize(centre_view(rgb, model.size, model.crop_fraction)) for rgb in rgbs])
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return dict(zip(layers, session.run(layers, {"images": batch}), strict=True))


GOOD = png_bytes(Image.new("RGB", (40, 40), (50, 60, 70)))


def truncated_jpeg() -> bytes:
    return PHOTO.read_bytes()[:2000]


def huge_png_header() -> bytes:
    data = bytearray(png_bytes(Image.new("RGB", (8, 8))))
    data[16:24] = (100000).to_bytes(4, "big") + (100000).to_bytes(4, "big")  # IHDR width, height
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # a valid chunk: only the size is hostile
    return bytes(data)


def requests_counted(metrics: str, route: str, status: str) -> float:
    """spot_requests_total for `route` and `status` in a /metrics text (0 before the first)."""
    line = f'spot_requests_total{{route="{route}",status="{status}"}} '
    return next((float(x.split()[-1]) for x in metrics.splitlines() if x.startswith(line)), 0.0)
