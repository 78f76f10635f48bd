"""service.direct: the inference routes, served past FastAPI's routing, answer as FastAPI would: their
refusals, a bug's 500 with the request's ID, 405 for a wrong method, and the metrics under the route."""

import asyncio
import gc

import httpx

from service.app import create_app
from service.config import Settings
from service.routes import features

from .helpers import GOOD, requests_counted


def test_answers_and_refusals_are_fastapis(client):
    ok = client.post("/features?layers=conv5", files={"files": ("a.png", GOOD, "image/png")})
    assert ok.status_code == 200 and ok.json()["results"][0]["name"] == "a.png"
    refused = client.post("/spot?heatmap=gif", files={"files": ("a.png", GOOD, "image/png")})
    assert refused.status_code == 422 and "overlay" in refused.json()["detail"]
    assert client.get("/features").status_code == 405  # not this route's method: FastAPI answers
    v2 = client.post("/v2/models/nope/infer", json={"inputs": []})  # a path parameter, and the protocol's error
    assert v2.status_code == 404 and "nope" in v2.json()["error"]


def in_process(model_dir, calls):
    """`calls(client)` against the app in this process, started and stopped as uvicorn would."""
    app = create_app(Settings(model_dir=model_dir))

    async def run():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as c:
                return await calls(c)

    return asyncio.run(run())


def test_a_bug_is_a_500_naming_the_request_and_counted_under_its_route(model_dir, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    async def calls(c):
        monkeypatch.setattr(features, "pool", broken)
        failed = await c.post("/features", files={"files": ("a.png", GOOD)}, headers={"X-Request-ID": "bug-9"})
        monkeypatch.undo()
        after = await c.post("/features", files={"files": ("a.png", GOOD)})
        return failed, after, (await c.get("/metrics")).text

    failed, after, metrics = in_process(model_dir, calls)
    assert failed.status_code == 500 and failed.headers["x-request-id"] == "bug-9"
    assert failed.json() == {"detail": "internal error (request bug-9)"}
    assert requests_counted(metrics, "/features", "500") == 1 and after.status_code == 200


def test_what_start_up_made_is_frozen_out_of_the_collectors_reach_until_shutdown(model_dir):
    async def calls(c):
        return gc.get_freeze_count()

    assert in_process(model_dir, calls) > 10_000
    assert gc.get_freeze_count() == 0
