"""Probes, metrics, the model's description and the demo page: what load balancers, Prometheus and people ask."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..answers import Health, Ready
from . import runtime_of

INDEX_HTML = (Path(__file__).parents[1] / "static" / "index.html").read_text()
router = APIRouter()


@router.get("/", include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse(INDEX_HTML)


@router.get("/healthz", tags=["health"], response_model=None, responses={200: {"model": Health}})
async def healthz() -> dict:
    return {"status": "ok"}


@router.get(
    "/readyz",
    tags=["health"],
    response_model=None,
    responses={200: {"model": Ready}, 503: {"description": 'not ready: `{"ready": false, "error": ...}`'}},
)
async def readyz(request: Request):
    runtime = runtime_of(request)
    if runtime.loaded is None:
        return JSONResponse({"ready": False, "error": runtime.error or "loading"}, 503)
    m = runtime.loaded
    return {"ready": True, "model": m.name, "version": m.version, "provider": m.provider,
            "padded_batch_size": m.pad_to or None}  # fmt: skip


for path, probe in (("/healthz", healthz), ("/readyz", readyz)):  # HEAD too, as load balancers probe
    router.add_api_route(path, probe, methods=["HEAD"], include_in_schema=False)  # one operation in the schema


@router.get("/metrics", tags=["health"], response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def prometheus_metrics(request: Request) -> Response:
    return Response(generate_latest(runtime_of(request).metrics.readable()), media_type=CONTENT_TYPE_LATEST)


@router.get("/models", tags=["models"], response_model=None)
async def models(request: Request) -> dict:
    """The served model's model.json: name, version, layers, preprocessing, metrics."""
    return runtime_of(request).model().meta
