"""The FastAPI app: the Runtime (model, batcher, metrics, auth) on `app.state`, the routes of service/routes,
and the middleware every request passes: CORS, the request ID and the Guard."""

from __future__ import annotations

import gc
import time
from contextlib import asynccontextmanager

from asgi_correlation_id import CorrelationIdMiddleware, correlation_id
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from PIL import Image
from starlette.routing import Match

from . import __version__, logs, oip
from .config import Settings, get_settings
from .direct import DirectRoutes, refused
from .metrics import Metrics
from .routes import features, health, spot
from .routes import oip as oip_routes
from .runtime import Runtime, ServiceError


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
    runtime = Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await runtime.start()
        # What start-up made (the app, the model, the libraries) lives as long as the process: out of the
        # collector's reach, its full passes stop walking it, and they were the slowest requests' wait
        # (bench/README.md, 'Against the peers')
        gc.freeze()
        yield
        await runtime.stop()
        gc.unfreeze()  # an app made again in this process (the tests') starts as this one did

    # /docs and /redoc from files installed with the package, not a CDN: they work on an air-gapped host
    app = FastAPIOffline(title="spot-artifacts", version=__version__, lifespan=lifespan)
    app.state.runtime = runtime
    routers = [m.router for m in (features, spot, health, oip_routes)]  # /features and /spot first in /docs
    for router in routers:
        app.include_router(router)
    # for the Guard to name what it refuses (the app's own list holds the routers, not their routes)
    every_route = [r for router in routers for r in router.routes if isinstance(r, APIRoute)]
    inference = [r for r in every_route if r.path in ("/features", "/spot") or r.path.endswith("/infer")]
    app.add_middleware(DirectRoutes, routes=inference)  # innermost: past it, FastAPI's own routing
    app.add_middleware(Guard, max_bytes=settings.max_body_bytes, metrics=runtime.metrics, routes=every_route)
    # outside the Guard, so that its refusals carry the request's ID too
    app.add_middleware(CorrelationIdMiddleware, header_name=logs.HEADER, validator=logs.plain_request_id)
    add_error_handlers(app)
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
    return app


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return refused(exc)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        """A bug's 500 is answered outside every middleware (Starlette's ServerErrorMiddleware), so it names
        the request ID itself: the one line in the log (with its traceback) that explains it."""
        rid = correlation_id.get() or "-"
        return JSONResponse({"detail": f"internal error (request {rid})"}, 500, headers={logs.HEADER: rid})
