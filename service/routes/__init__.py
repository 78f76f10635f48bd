"""The HTTP routes, each module an APIRouter; they find the Runtime on `app.state`."""

from __future__ import annotations

import orjson
from fastapi import Request
from fastapi.responses import Response
from PIL import Image
from pydantic import BaseModel

from ..model import ExportedModel
from ..requests import query_options
from ..runtime import Runtime


def runtime_of(request: Request) -> Runtime:
    return request.app.state.runtime


def opened(request: Request, options: type[BaseModel]) -> tuple[Runtime, ExportedModel, dict]:
    """An inference route's start: its Runtime, the API key checked, the model served, and the query options
    read (a typo is refused before the body is read)."""
    runtime = runtime_of(request)
    runtime.check_auth(request.headers.get("authorization"))
    return runtime, runtime.model(), query_options(request, options)


def pixels(images: list[tuple[str, Image.Image]]) -> int:
    return sum(img.width * img.height for _, img in images)


def json_bytes(content: dict) -> bytes:
    """orjson writes numpy arrays directly: ~20x faster than FastAPI's encoder walking a list of floats.
    (bench/profile.py counts this function's time by its name.)"""
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def json_answer(content: dict) -> Response:
    return Response(json_bytes(content), media_type="application/json")
