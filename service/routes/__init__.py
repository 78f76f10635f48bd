"""The HTTP routes, each module an APIRouter; they find the Runtime on `app.state`."""

from __future__ import annotations

import orjson
from fastapi import Request
from fastapi.responses import Response
from PIL import Image

from ..runtime import Runtime


def runtime_of(request: Request) -> Runtime:
    return request.app.state.runtime


def pixels(images: list[tuple[str, Image.Image]]) -> int:
    return sum(img.width * img.height for _, img in images)


def json_bytes(content: dict) -> bytes:
    """orjson writes numpy arrays directly: ~20x faster than FastAPI's encoder walking a list of floats.
    (bench/profile.py counts this function's time by its name.)"""
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def json_answer(content: dict) -> Response:
    return Response(json_bytes(content), media_type="application/json")
