"""The Open Inference Protocol's HTTP routes (service/oip.py holds the protocol): every error is
`{"error": ...}`, as the protocol has them."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from .. import oip
from ..requests import client_gone, inline_refs
from ..runtime import ServiceError, Work
from . import runtime_of

INLINE_BYTES = 1 << 18  # bodies up to this size are parsed on the event loop; bigger ones on a thread
INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": "JSON; or, with the header Inference-Header-Content-Length: n, n bytes of JSON followed by "
        "each binary input's binary_data_size bytes (Triton's binary tensor extension)",
        "content": {"application/json": {"schema": inline_refs(oip.InferRequest.model_json_schema())}},
    }
}
router = APIRouter(prefix=oip.PREFIX, tags=["open inference protocol (KServe v2)"])


def header_documented(
    inference_header_content_length: str | None = Header(
        None, description="Triton's binary tensor extension: the length of the JSON part; binary tensors follow it"
    ),
) -> None:
    """Puts the binary extension's header into the OpenAPI schema (and so into the fuzzer's requests); the
    route reads it from the request itself."""


def as_error(exc: ServiceError) -> JSONResponse:
    return JSONResponse({"error": str(exc.detail)}, exc.status, headers=exc.headers)


@router.get("")
async def server_metadata() -> dict:
    return oip.SERVER


@router.get("/health/live")
async def live() -> Response:
    return Response(status_code=200)


@router.get("/health/ready")
async def ready(request: Request) -> Response:
    """200 ready, 400 not (the protocol's "4xx = false", Triton's 400)."""
    return Response(status_code=200 if runtime_of(request).loaded is not None else 400)


async def metadata(request: Request, model_name: str, model_version: str | None):
    try:
        return oip.model_metadata(oip.served(runtime_of(request), model_name, model_version))
    except ServiceError as exc:
        return as_error(exc)


async def readiness(request: Request, model_name: str, model_version: str | None):
    try:
        oip.served(runtime_of(request), model_name, model_version)
    except ServiceError as exc:
        return as_error(exc) if exc.status == 404 else Response(status_code=400)
    return Response(status_code=200)


async def infer(request: Request, model_name: str, model_version: str | None):
    runtime = runtime_of(request)
    try:
        runtime.check_auth(request.headers.get("authorization"))
        model = oip.served(runtime, model_name, model_version)

        async def prepare() -> Work:
            encoding = request.headers.get("content-encoding", "identity").strip().lower()
            body = oip.decompressed(await request.body(), encoding, runtime.settings.max_body_bytes)
            header_length = request.headers.get("inference-header-content-length")

            def parse() -> oip.Infer:
                return oip.parse_infer(body, header_length, model, runtime.settings.max_files)

            parsed = parse() if len(body) <= INLINE_BYTES else await run_in_threadpool(parse)
            return Work(parsed.batch, [name for name, _ in parsed.outputs], len(parsed.batch), parsed)

        answer = await runtime.infer(oip.INFER_ROUTE, prepare)
        return oip.infer_response(model, answer.outputs, answer.work.context)
    except ServiceError as exc:
        return as_error(exc)
    except ClientDisconnect:
        return as_error(client_gone())


@router.post("/repository/index", summary="Model repository index")
async def index(request: Request):
    """Triton's model repository extension, read-only: which model is served and whether it is ready
    (`{"ready": true}` lists only ready ones); loading and unloading models is not offered."""
    body = await request.body()
    try:
        options = orjson.loads(body) if body.strip() else {}
        if not isinstance(options, dict):
            raise oip.bad('the body must be a JSON object such as {"ready": true}, or empty')
        return oip.repository_index(runtime_of(request), oip.flag(options, "ready", False))
    except orjson.JSONDecodeError:
        return as_error(oip.bad('the body must be a JSON object such as {"ready": true}, or empty'))
    except ServiceError as exc:
        return as_error(exc)


async def config(request: Request, model_name: str, model_version: str | None):
    runtime = runtime_of(request)
    try:
        return oip.model_config(oip.served(runtime, model_name, model_version), runtime)  # as Triton: no wrapper
    except ServiceError as exc:
        return as_error(exc)


async def statistics(request: Request, model_name: str, model_version: str | None):
    try:
        return {"model_stats": oip.model_stats(runtime_of(request), model_name, model_version)}
    except ServiceError as exc:
        return as_error(exc)


@router.get("/models/stats", summary="Statistics of every model (Triton's extension)")
async def all_statistics(request: Request):
    """Every model served: the one, or none while it is not loaded."""
    return {"model_stats": oip.model_stats(runtime_of(request), None)}


def both(method: str, suffix: str, handler, summary: str, **options) -> None:
    """`handler(request, name, version)` at /models/{name}<suffix> and /models/{name}/versions/{v}<suffix>
    (two functions, so that neither path documents a parameter it does not have)."""

    async def latest(request: Request, model_name: str):
        return await handler(request, model_name, None)

    async def versioned(request: Request, model_name: str, model_version: str):
        return await handler(request, model_name, model_version)

    router.add_api_route(f"/models/{{model_name}}{suffix}", latest, methods=[method], summary=summary, **options)
    path = f"/models/{{model_name}}/versions/{{model_version}}{suffix}"
    router.add_api_route(path, versioned, methods=[method], summary=f"{summary}, one version", **options)


both("GET", "/stats", statistics, "Model statistics (Triton's extension)")
both("GET", "/config", config, "Model configuration (Triton's extension)")
both("GET", "", metadata, "Model metadata")
both("GET", "/ready", readiness, "Model ready: 200, else 400")
both("POST", "/infer", infer, "Inference", openapi_extra=INFER_BODY, dependencies=[Depends(header_documented)])
