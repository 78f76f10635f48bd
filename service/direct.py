"""The inference routes served straight from the ASGI call, past FastAPI's per-request machinery.

/features, /spot and the Open Inference Protocol's infer read everything themselves (API key, options,
the body), so FastAPI's work for them is overhead: matching every route, solving dependencies that have
nothing to solve, its exception and exit-stack middleware. With one small image per request that was
about a tenth of the event loop's time, and the event loop is most of the server's CPU (bench/README.md,
'Against the peers'). The middleware that matters
(CORS, the request ID, the Guard's limits and metrics, the 500 handler) still wraps these routes: this sits
innermost, and anything it does not serve goes on to FastAPI unchanged. The routes stay APIRoutes, so
/docs and the OpenAPI schema describe them as before.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.routing import Match

from .runtime import ServiceError


def refused(exc: ServiceError) -> JSONResponse:
    """FastAPI's own shape, as its HTTPException has it: `{"detail": ...}` (the app's handler writes it too)."""
    return JSONResponse({"detail": exc.detail}, exc.status, headers=exc.headers)


class DirectRoutes:
    """ASGI middleware: a request that fully matches one of `routes` is answered by calling its endpoint
    with the Request and the path's parameters (it returns a Response). A ServiceError becomes FastAPI's
    `{"detail": ...}`, as the app's own handler writes it; any other exception goes up to the app's 500
    handler. Everything else goes on to `app`."""

    def __init__(self, app, routes: list[APIRoute]):
        self.app, self.routes = app, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            for route in self.routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)  # the route (the Guard's metrics label), path parameters
                    try:
                        response = await route.endpoint(Request(scope, receive), **scope["path_params"])
                    except ServiceError as exc:
                        response = refused(exc)
                    return await response(scope, receive, send)
        await self.app(scope, receive, send)
