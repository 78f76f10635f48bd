"""The FastAPI app: loads the exported model in its lifespan and serves /features, /spot and health."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import orjson
from asgi_correlation_id import CorrelationIdMiddleware, correlation_id
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest, multiprocess
from starlette.routing import Match

from . import __version__, logs, oip, spot
from .batcher import Batcher, QueueFull
from .config import Settings, get_settings, usable_cores
from .features import encode, normalize, pool
from .images import BadImage, open_image, to_array
from .metrics import Metrics, forget_dead_workers
from .model import HEAD_OUTPUTS, ExportedModel, ModelError
from .preprocess import analysis_size, centre_view, tile_count, tiles
from .requests import (
    FEATURE_OPTIONS,
    HEATMAP_FORMATS,
    SPOT_OPTIONS,
    feature_params,
    query_options,
    read_images,
    spot_params,
)
from .statistics import model_statistics

log = logging.getLogger(__name__)
INDEX_HTML = (Path(__file__).parent / "static" / "index.html").read_text()

MULTIPART_AND_JSON = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                    "required": ["files"],
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {"type": "array", "items": {"type": "string", "format": "byte"}},
                        "layers": {
                            "oneOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}],
                            "description": 'a list, or comma-separated as in the query: "conv3,conv5"',
                        },
                        "pool": {"type": "string"},
                        "normalize": {"type": "string"},
                        "encoding": {"type": "string"},
                        "dtype": {"type": "string"},
                        "heatmap": {"type": "string", "enum": list(HEATMAP_FORMATS)},
                    },
                    "required": ["images"],
                }
            },
        },
    }
}


INLINE_WORK = 1 << 16  # pixels to decode or values to encode per request: here, this costs less than a thread hop


def pixels(images: list[tuple[str, Image.Image]]) -> int:
    return sum(img.width * img.height for _, img in images)


def json_bytes(content: dict) -> bytes:
    """orjson writes numpy arrays directly: ~20x faster than FastAPI's encoder walking a list of floats."""
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def json_answer(body: bytes) -> Response:
    return Response(body, media_type="application/json")


class Guard:
    """Refuses a body over the limit (or without a length) before reading it, and counts every request by
    route and status. Plain ASGI: Starlette's BaseHTTPMiddleware costs a task and two streams per request."""

    def __init__(self, app, max_bytes: int, metrics: Metrics, routes: list[APIRoute]):
        self.app, self.max_bytes, self.metrics, self.routes = app, max_bytes, metrics, routes

    def refusal(self, scope) -> Response | None:
        length = dict(scope["headers"]).get(b"content-length", b"").decode("latin-1")
        # the Open Inference Protocol's error key on its routes, FastAPI's elsewhere
        key = "error" if scope["path"].startswith(f"{oip.PREFIX}/") else "detail"
        if length.isdigit() and int(length) > self.max_bytes:
            return JSONResponse({key: f"body of {length} bytes exceeds the limit of {self.max_bytes}"}, 413)
        if scope["method"] == "POST" and not length:
            return JSONResponse({key: "a Content-Length header is required"}, 411)
        return None

    def route_of(self, scope) -> str:
        """The route a refused request was for (refused before routing, so the scope does not say)."""
        return next((r.path for r in self.routes if r.matches(scope)[0] == Match.FULL), "unmatched")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500  # 500 unless a response starts

        async def noting_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        refusal = self.refusal(scope)
        try:
            await (refusal or self.app)(scope, receive, noting_status)
        finally:
            route = scope.get("route")
            path = route.path if route else self.route_of(scope) if refusal else "unmatched"
            self.metrics.observe_request(path, str(status), time.perf_counter() - started)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    Image.MAX_IMAGE_PIXELS = None  # the service checks SPOT_MAX_PIXELS itself, with a clear message
    state: dict = {"model": None, "error": None, "batcher": None, "grpc": None}
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        forget_dead_workers()
        try:
            model = ExportedModel(
                settings.model_dir,
                settings.providers,
                settings.require_gpu,
                settings.intra_op_threads or max(1, usable_cores() // max(1, settings.workers)),
                settings.ort_spinning,
            )
            model.pad_batches(settings.pad_batches, settings.max_batch_size)
            model.warm_up()
            state["model"] = model
            state["batcher"] = Batcher(
                model,
                settings.max_batch_size,
                settings.max_batch_delay_ms,
                metrics.observe_run,
                settings.max_queue_images,
                settings.adaptive_batch_delay,
                metrics.pending.set,
                metrics.observe_failed,
            )
            state["batcher"].start()
            metrics.model_info.labels(model.name, model.version, model.provider).set(1)
            log.info("loaded %s %s on %s", model.name, model.version, model.provider)
        except ModelError as exc:
            state["error"] = str(exc)
            log.error("model not loaded: %s", exc)
        if settings.grpc_port:  # up even without a model, to answer "not ready" as HTTP does
            from . import oip_grpc  # grpcio and its stubs are loaded only when asked for

            count = metrics.images.labels(f"{oip_grpc.SERVICE}/ModelInfer").inc
            servicer = oip_grpc.Servicer(hooks, authorized, metrics.observe_request, count)
            largest = oip_grpc.max_message_bytes(state["model"], settings.max_files, settings.max_body_bytes)
            address = oip_grpc.address(settings.grpc_host, settings.grpc_port)
            try:
                state["grpc"] = await oip_grpc.start(servicer, address, largest, ready=state["model"] is not None)
            except RuntimeError:
                if state["batcher"]:
                    await state["batcher"].stop()
                raise  # the app does not start: a port asked for and not served is an error
            log.info("Open Inference Protocol over gRPC on %s", address)
        yield
        if state["grpc"]:
            await state["grpc"].stop(grace=5)  # answers the calls in flight (compose stops after 10 s)
        if state["batcher"]:
            await state["batcher"].stop()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            multiprocess.mark_process_dead(os.getpid())

    # /docs and /redoc from files installed with the package, not a CDN: they work on an air-gapped host
    app = FastAPIOffline(title="spot-artifacts", version=__version__, lifespan=lifespan)
    routes: list[APIRoute] = []  # every route, for the Guard to name what it refuses: filled in below
    app.add_middleware(Guard, max_bytes=settings.max_body_bytes, metrics=metrics, routes=routes)
    # outside the Guard, so that its refusals carry the request's ID too
    app.add_middleware(CorrelationIdMiddleware, header_name=logs.HEADER, validator=logs.plain_request_id)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        """A bug's 500 is answered outside every middleware (Starlette's ServerErrorMiddleware), so it names
        the request ID itself: the one line in the log (with its traceback) that explains it."""
        rid = correlation_id.get() or "-"
        return JSONResponse({"detail": f"internal error (request {rid})"}, 500, headers={logs.HEADER: rid})

    if origins := [o.strip() for o in settings.cors_origins.split(",") if o.strip()]:
        # Outermost (added last), so that refusals such as the Guard's 413 carry the headers too and a
        # browser shows the page the error instead of a CORS failure. TorchServe's cors_allowed_origin.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Content-Encoding",
                "Inference-Header-Content-Length",
                logs.HEADER,
            ],
            expose_headers=["Inference-Header-Content-Length", "Retry-After", logs.HEADER],
        )

    allowed = {f.strip().upper() for f in settings.allowed_formats.split(",") if f.strip()}

    def ready_model() -> ExportedModel:
        if state["model"] is None:
            raise HTTPException(503, f"model not loaded: {state['error']}")
        return state["model"]

    def authorized(header: str | None) -> bool:
        """`Bearer <key>`, the scheme in any case (RFC 7235); the key compared in constant time."""
        scheme, _, key = (header or "").strip().partition(" ")
        given = key.strip().encode() if scheme.lower() == "bearer" else b""
        return not settings.api_key or hmac.compare_digest(given, settings.api_key.encode())

    def check_auth(request: Request) -> None:
        if not authorized(request.headers.get("authorization")):
            raise HTTPException(401, "missing or wrong API key (Authorization: Bearer <key>)")

    def check_queue_room(inputs: int) -> None:
        """A request that alone needs more model inputs than may ever wait is a 413: never fits, not a 503."""
        if settings.max_queue_images and inputs > settings.max_queue_images:
            raise HTTPException(
                413,
                f"the request needs {inputs} model inputs (images, or a photo's tiles for /spot); at most "
                f"{settings.max_queue_images} can wait for the model at once: send fewer images per request",
            )

    def submit(batch: np.ndarray, names: list[str]) -> asyncio.Future:
        """The job queued for the batcher, or a quick 503 when it is full."""
        check_queue_room(len(batch))
        try:
            return state["batcher"].submit(batch, names)
        except QueueFull as exc:
            metrics.observe_failed([0.0])  # rejected at once: a failed request in Triton's statistics
            raise HTTPException(503, f"overloaded: {exc}; retry shortly", headers={"Retry-After": "1"}) from None

    async def result(job: asyncio.Future) -> dict[str, np.ndarray]:
        """The batcher's answer, or a 504 when it takes too long."""
        try:
            return await asyncio.wait_for(job, settings.request_timeout_s)
        except TimeoutError:
            raise HTTPException(504, f"no result within {settings.request_timeout_s} s") from None

    async def opened_images(request: Request) -> tuple[list[tuple[str, Image.Image]], dict]:
        """The request's images with headers read and limits checked, and the parameters of a JSON body."""
        files, body_params = await read_images(request, settings.max_files)
        try:
            return [(n, open_image(d, n, settings.max_pixels, allowed)) for n, d in files], body_params
        except BadImage as exc:
            raise HTTPException(400, str(exc)) from None

    async def cheap_here_else_thread(amount: int, work, stage: str):
        """Runs `work` right here when small (`amount`: its pixels or values) and on a worker thread when
        large: a hop costs more than decoding a thumbnail, but a big photo must not stall the event loop."""
        started = time.perf_counter()
        try:
            result = work() if amount <= INLINE_WORK else await run_in_threadpool(work)
        except BadImage as exc:
            raise HTTPException(400, str(exc)) from None
        metrics.stage.labels(stage).observe(time.perf_counter() - started)
        return result

    hooks = oip.Hooks(
        model=ready_model,
        batcher=lambda: state["batcher"],
        check_auth=check_auth,
        submit=submit,
        result=result,
        count_images=lambda n: metrics.images.labels(oip.INFER_ROUTE).inc(n),
        max_images=settings.max_files,
        max_body_bytes=settings.max_body_bytes,
        folder_name=Path(settings.model_dir).name,
        statistics=lambda model: model_statistics(metrics.readable(), model.name, model.version),
        max_run_images=settings.max_batch_size,
        max_batch_delay_ms=settings.max_batch_delay_ms,
        instances=max(1, settings.workers),  # python -m service sets SPOT_WORKERS to the number it started
    )
    oip_routes = oip.router(hooks)
    app.include_router(oip_routes)

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(INDEX_HTML)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz():
        if state["model"] is None:
            return JSONResponse({"ready": False, "error": state["error"] or "loading"}, 503)
        m = state["model"]
        return {"ready": True, "model": m.name, "version": m.version, "provider": m.provider,
                "padded_batch_size": m.pad_to or None}  # fmt: skip

    for path, probe in (("/healthz", healthz), ("/readyz", readyz)):  # HEAD too, as load balancers probe
        app.add_api_route(path, probe, methods=["HEAD"], include_in_schema=False)  # one operation in the schema

    @app.get("/metrics", tags=["health"])
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.readable()), media_type=CONTENT_TYPE_LATEST)

    @app.get("/models", tags=["models"])
    async def models() -> dict:
        return ready_model().meta

    # The routes' query parameters are declared for the OpenAPI schema; query_options reads them, refusing
    # unknown and repeated names, which FastAPI would ignore or override.
    @app.post("/features", tags=["inference"], openapi_extra=MULTIPART_AND_JSON)
    async def features(
        request: Request,
        layers: list[str] | None = Query(
            None,
            description="comma-separated or repeated, e.g. conv3,conv5 "
            "(default: model.json's default_layer, GET /models)",
        ),
        pool_: str | None = Query(None, alias="pool", description="none | avg | max | probe"),
        normalize_: str | None = Query(None, alias="normalize", description="none | l2"),
        encoding: str | None = Query(None, description="json | base64 (little-endian)"),
        dtype: str | None = Query(None, description="float32 | float16"),
    ) -> dict:
        check_auth(request)
        model = ready_model()
        query = query_options(request, FEATURE_OPTIONS)  # a typo is refused before the body is read
        with state["batcher"].arriving_request():  # the batcher may wait for this one
            images, body = await opened_images(request)
            p = feature_params(query, body, model.layers, model.default_layer)

            def prepare():
                views = [centre_view(to_array(img, n), model.size, model.crop_fraction) for n, img in images]
                return model.normalize_batch(views)

            job = submit(await cheap_here_else_thread(pixels(images), prepare, "preprocess"), p["layers"])
        started = time.perf_counter()
        outputs = await result(job)
        inference_ms = round(1000 * (time.perf_counter() - started), 3)
        metrics.images.labels("/features").inc(len(images))
        probe = model.meta["probe_pooling"]

        def answer() -> bytes:
            results = []
            for i, (name, _) in enumerate(images):
                per_layer = {}
                for layer in p["layers"]:
                    values = normalize(pool(outputs[layer][i], p["pool"], probe[layer]["grid"]), p["normalize"])
                    per_layer[layer] = {
                        "shape": list(values.shape),
                        "values": encode(values, p["encoding"], p["dtype"]),
                    }
                results.append({"name": name, "features": per_layer})
            options = {k: v for k, v in p.items() if k != "layers"}
            return json_bytes({"model": model.name, "version": model.version, "provider": model.provider,
                               **options, "inference_ms": inference_ms, "results": results})  # fmt: skip

        # unpooled maps of many images make a large answer: encoded on a thread, as a large image is decoded
        values = len(images) * sum(outputs[layer][0].size for layer in p["layers"]) if p["pool"] == "none" else 0
        return json_answer(await cheap_here_else_thread(values, answer, "postprocess"))

    @app.post("/spot", tags=["inference"], openapi_extra=MULTIPART_AND_JSON)
    async def spot_route(
        request: Request,
        heatmap: str | None = Query(None, description="none | values | png | overlay (PNGs are base64)"),
    ) -> dict:
        check_auth(request)
        model = ready_model()
        query = query_options(request, SPOT_OPTIONS)  # a typo is refused before the body is read
        with state["batcher"].arriving_request():  # the batcher may wait for this one
            images, body = await opened_images(request)
            p = spot_params(query, body)
            own_pixels, most = pixels(images), settings.max_heatmap_values
            if (
                p["heatmap"] == "values" and most and own_pixels > most
            ):  # a PNG of a few kB can be 7000 x 7000: 49 M values
                raise HTTPException(
                    413,
                    f"heatmap=values for {own_pixels} pixels exceeds the limit of {most} per request: ask for "
                    "heatmap=png or overlay (or none: the mask is still there), or send fewer images per request",
                )

            # A photo over the limit is analysed downscaled to fit it; what cannot fit is refused from the
            # image headers, before anything is decoded.
            limit = min((n for n in (settings.max_tiles, settings.max_queue_images) if n > 0), default=0)
            counts, analysed = [], 0
            for name, img in images:
                h, w = analysis_size(img.height, img.width, model.size, limit)
                counts.append(tile_count(h, w, model.size))
                analysed += h * w
                if limit and counts[-1] > limit:  # too long and thin to fit at any size
                    raise HTTPException(413, f"{name}: {counts[-1]} tiles even at {w}x{h} exceed the limit of {limit}")
            check_queue_room(sum(counts))
            # the work grows with the image and with what it is tiled at (a 2 x 1025 strip: 64 x 32800)
            work = max(own_pixels, analysed)

            def prepare():
                per_image = []
                for name, img in images:
                    rgb = to_array(img, name)
                    t, positions, covered = tiles(rgb, model.size, limit)
                    per_image.append((name, rgb, t, positions, covered))
                batch = np.concatenate([model.normalize_batch(t) for _, _, t, _, _ in per_image])
                return per_image, batch

            per_image, batch = await cheap_here_else_thread(work, prepare, "preprocess")
            job = submit(batch, HEAD_OUTPUTS)
        outputs = await result(job)
        metrics.images.labels("/spot").inc(len(images))
        threshold = float(model.meta.get("spot_threshold", 0.5)) if settings.threshold is None else settings.threshold

        def answer() -> bytes:
            results = spot.results(per_image, outputs, p["heatmap"], model.size, model.grid)
            for item in results:
                item["altered"] = item["artifact_score"] > threshold  # the decision, as CNNDetection's at 0.5
            return json_bytes({"model": model.name, "version": model.version, "provider": model.provider,
                               "threshold": threshold, "results": results})  # fmt: skip

        # a heatmap at a large photo's own size is a large answer: built and encoded on a thread
        return json_answer(await cheap_here_else_thread(work, answer, "postprocess"))

    routes += [r for r in [*app.router.routes, *oip_routes.routes] if isinstance(r, APIRoute)]
    return app
