"""X-Request-ID: every response carries one (the caller's when plain, else a fresh one), refusals and internal
errors too, and the server's log lines name it, so a failed request can be found in the log."""

import asyncio
import io
import json
import re

import httpx
from PIL import Image

from bench.server import Server
from service.app import create_app
from service.config import Settings

FRESH = re.compile(r"[0-9a-f]{32}")


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 80, 40)).save(out, "JPEG")
    return out.getvalue()


def test_ids_are_echoed_or_made_and_the_log_names_them(model_dir):
    server = Server(model_dir, max_body_bytes="100000")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            spot = c.post("/spot", files={"files": ("a.jpg", jpeg())}, headers={"X-Request-ID": "client-42"})
            assert spot.status_code == 200 and spot.headers["x-request-id"] == "client-42"
            assert FRESH.fullmatch(c.get("/healthz").headers["x-request-id"])
            # not plain (a space, too long): replaced by a fresh one, never written to the log as sent
            for odd in ("two words", "x" * 129):
                assert FRESH.fullmatch(c.get("/healthz", headers={"X-Request-ID": odd}).headers["x-request-id"])
            # the Guard's refusal before reading the body, and FastAPI's 422
            big = c.post("/features", content=b"\0" * 200_000, headers={"X-Request-ID": "too-big-1"})
            assert big.status_code == 413 and big.headers["x-request-id"] == "too-big-1"
            bad = c.post("/features?pool=median", files={"files": ("a.jpg", jpeg())}, headers={"X-Request-ID": "q-2"})
            assert bad.status_code == 422 and bad.headers["x-request-id"] == "q-2"
    finally:
        server.stop()
    log = server.output()
    assert re.search(r'"POST /spot HTTP/1.1" 200 OK \[client-42\]', log), log[-2000:]
    assert re.search(r'"POST /features HTTP/1.1" 413 Request Entity Too Large \[too-big-1\]', log), log[-2000:]
    assert "failed validation" not in log  # no warning per odd ID
    assert re.search(r"INFO service.app \[-\]: loaded ", log), log[-2000:]  # no request: "-"


def test_an_internal_error_names_its_request(model_dir):
    app = create_app(Settings(model_dir=model_dir))

    @app.get("/boom")
    async def boom():
        raise RuntimeError("a bug")

    async def get():
        transport = httpx.ASGITransport(app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await c.get("/boom", headers={"X-Request-ID": "bug-7"})

    r = asyncio.run(get())
    assert r.status_code == 500 and r.headers["x-request-id"] == "bug-7"
    assert r.json() == {"detail": "internal error (request bug-7)"}


def test_json_logs_are_one_object_a_line_with_the_request_id(model_dir):
    server = Server(model_dir, log_format="json")
    try:
        r = httpx.post(f"{server.url}/spot?heatmap=none", files={"files": ("a.jpg", jpeg())},
                       headers={"X-Request-ID": "json-3"}, timeout=30)  # fmt: skip
        assert r.status_code == 200
    finally:
        server.stop()
    lines = [json.loads(line) for line in server.output().splitlines() if line.strip()]  # every line is JSON
    (access,) = [x for x in lines if x.get("request_id") == "json-3"]
    assert access["path"] == "/spot?heatmap=none" and access["status"] == 200 and access["method"] == "POST"
    assert access["level"] == "INFO" and access["logger"] == "uvicorn.access" and access["time"]
    loaded = [x for x in lines if x["logger"] == "service.app" and x["message"].startswith("loaded ")]
    assert loaded and loaded[0]["request_id"] == "-"
    assert any(x["message"].startswith("Finished server process") for x in lines)  # uvicorn's, with colours
    assert not [x for x in lines if "color_message" in x or "\x1b" in json.dumps(x, ensure_ascii=False)]
