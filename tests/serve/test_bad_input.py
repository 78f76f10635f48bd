"""Hostile and odd input, request by request: a clear 4xx naming the problem, and the server goes on."""

import base64
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from .helpers import GOOD, PHOTO, huge_png_header, png_bytes, requests_counted


def _animated_gif() -> bytes:
    frames = [Image.new("P", (40, 40), i) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


# (case, route, request kwargs, expected status, text the message must contain)
CORPUS = [
    ("zero bytes", "/features", {"files": [("files", ("a.jpg", b"", "image/jpeg"))]}, 400, "empty file"),
    ("text file", "/spot", {"files": [("files", ("a.txt", b"just text", "text/plain"))]}, 400, "not a readable image"),
    ("truncated jpeg", "/spot", {"files": [("files", ("t.jpg", PHOTO.read_bytes()[:3000], "image/jpeg"))]}, 400, "t.jpg"),
    ("huge-dimension png header", "/features", {"files": [("files", ("h.png", huge_png_header(), "image/png"))]}, 400, "exceeds the limit"),
    ("decompression bomb", "/spot", {"files": [("files", ("b.png", png_bytes(Image.new("1", (8000, 8000)), "PNG"), "image/png"))]}, 400, "64000000 pixels"),
    ("format not allowed", "/features", {"files": [("files", ("a.ppm", png_bytes(Image.new("RGB", (8, 8)), "PPM"), "image/x-ppm"))]}, 400, "not allowed"),
    ("png signature then garbage", "/features", {"files": [("files", ("g.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "image/png"))]}, 400, "g.png"),
    ("wrong field name", "/features", {"files": [("image", ("a.png", GOOD, "image/png"))]}, 422, "unknown form fields"),
    ("text field named files", "/spot", {"files": [("files", (None, b"not a file"))]}, 422, "file uploads"),
    ("too many files", "/features", {"files": [("files", ("a.png", GOOD, "image/png"))] * 17}, 413, "at most 16"),
    ("invalid base64", "/features", {"json": {"images": ["@@@"]}}, 400, "not valid base64"),
    ("base64 of a text", "/spot", {"json": {"images": [base64.b64encode(b"hello").decode()]}}, 400, "not a readable image"),
    ("empty image list", "/features", {"json": {"images": []}}, 422, "images"),
    ("images not a list", "/features", {"json": {"images": "abc"}}, 422, "images"),
    ("unknown json key", "/spot", {"json": {"images": [base64.b64encode(GOOD).decode()], "colour": "red"}}, 422, "unknown fields ['colour']; valid: images, heatmap\""),
    ("malformed json", "/features", {"content": b'{"images": [', "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ("wrong content type", "/spot", {"content": GOOD, "headers": {"content-type": "image/png"}}, 415, "multipart"),
    ("unknown layer", "/features", {"files": [("files", ("a.png", GOOD, "image/png"))], "params": {"layers": "conv9"}}, 422, "conv5"),
    ("unknown layer in json", "/features", {"json": {"images": [base64.b64encode(GOOD).decode()], "layers": ["fc6"]}}, 422, "conv1"),
    ("unknown pool", "/features", {"files": [("files", ("a.png", GOOD, "image/png"))], "params": {"pool": "sum"}}, 422, "probe"),
    ("unknown normalize", "/features", {"files": [("files", ("a.png", GOOD, "image/png"))], "params": {"normalize": "l1"}}, 422, "l2"),
    ("unknown encoding", "/features", {"files": [("files", ("a.png", GOOD, "image/png"))], "params": {"encoding": "hex"}}, 422, "base64"),
    ("unknown dtype", "/features", {"files": [("files", ("a.png", GOOD, "image/png"))], "params": {"dtype": "int8"}}, 422, "float16"),
    ("unknown heatmap format", "/spot", {"files": [("files", ("a.png", GOOD, "image/png"))], "params": {"heatmap": "gif"}}, 422, "overlay"),
    ("too long and thin to tile", "/spot", {"files": [("files", ("strip.png", png_bytes(Image.new("RGB", (20000, 32)), "PNG"), "image/png"))]}, 413, "1249 tiles even at 20000x32 exceed the limit of 1024"),
    ("a 1 x 400000 strip", "/spot", {"files": [("files", ("thin.png", png_bytes(Image.new("L", (400_000, 1)), "PNG"), "image/png"))]}, 413, "799999 tiles even at 12800000x32"),
    ("option in query and body", "/features", {"json": {"images": [base64.b64encode(GOOD).decode()], "pool": "max"}, "params": {"pool": "avg"}}, 422, "pool given both"),
    ("chunked body without length", "/features", {"content": iter([GOOD]), "headers": {"content-type": "application/json"}}, 411, "Content-Length"),
    ("json body not utf-8", "/spot", {"content": b"\xb8\x00{", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ("deeply nested json", "/features", {"content": b'{"images": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "headers": {"content-type": "application/json"}}, 400, "nested too deeply"),
    ("many multipart text fields", "/features", {"files": [("files", ("a.png", GOOD, "image/png"))] + [(f"f{i}", (None, b"x")) for i in range(100)]}, 400, "Too many fields"),
    ("path traversal in a file name", "/spot", {"files": [("files", ("../../etc/passwd", b"root:x:0:0", "image/png"))]}, 400, "../../etc/passwd"),
    ("a typo'd query parameter", "/features", {"files": [("files", ("a.png", GOOD, "image/png"))], "params": {"layer": "conv5"}}, 422, "unknown query parameters ['layer']; valid: layers, pool"),
    ("an option given twice", "/features", {"files": [("files", ("a.png", GOOD, "image/png"))], "params": [("pool", "avg"), ("pool", "max")]}, 422, "pool given twice"),
    ("the other route's option in json", "/features", {"json": {"images": [base64.b64encode(GOOD).decode()], "heatmap": "png"}}, 422, "unknown fields ['heatmap']; valid: images, layers, pool, normalize, encoding, dtype\""),
    ("the other route's option in the query", "/spot", {"files": [("files", ("a.png", GOOD, "image/png"))], "params": {"layers": "conv5"}}, 422, "unknown query parameters ['layers']; valid: heatmap\""),
    ("a field named file, not files", "/spot", {"files": [("file", ("a.png", GOOD, "image/png"))]}, 422, "unknown form fields ['file']; send images as 'files'"),
    ("an extra file field beside files", "/features", {"files": [("files", ("a.png", GOOD, "image/png")), ("file", ("b.png", GOOD, "image/png"))]}, 422, "unknown form fields ['file']"),
    ("a heatmap of too many values", "/spot", {"files": [("files", ("big.png", png_bytes(Image.new("1", (5000, 4000)), "PNG"), "image/png"))]}, 413, "heatmap=values for 20000000 pixels exceeds the limit of 16777216"),
    ("a data url that is not base64", "/spot", {"json": {"images": ["data:image/png,abc"]}}, 400, "without ';base64,'"),
    ("one bad image among good ones", "/features", {"files": [("files", ("ok.png", GOOD, "image/png")), ("files", ("bad.png", b"xx", "image/png"))]}, 400, "bad.png"),
]  # fmt: skip


@pytest.mark.parametrize("case, route, kwargs, status, text", CORPUS, ids=[c[0] for c in CORPUS])
def test_bad_input_corpus(client, case, route, kwargs, status, text):
    r = client.post(route, **kwargs)
    assert r.status_code == status, r.text
    assert text in json.dumps(r.json()), r.text
    assert client.get("/readyz").json()["ready"] is True


def test_a_validation_error_does_not_echo_the_input(client):
    """A 1 MB base64 string sent where a list belongs: the 422 says where, without sending the megabyte back."""
    r = client.post("/features", json={"images": base64.b64encode(os.urandom(750_000)).decode()})
    assert r.status_code == 422 and "images" in r.text and len(r.content) < 1000, r.text[:300]


def test_base64_as_browsers_and_tools_write_it(client):
    """A data URL, line-wrapped (the base64 command, MIME), URL-safe without padding: all the same image."""
    standard = base64.b64encode(GOOD).decode()
    forms = [
        standard,
        "data:image/png;base64," + standard,
        "DATA:image/png;BASE64," + standard,
        base64.encodebytes(GOOD).decode(),
        base64.urlsafe_b64encode(GOOD).decode().rstrip("="),
    ]
    r = client.post("/features", json={"images": forms, "layers": ["conv1"]})
    assert r.status_code == 200, r.text
    values = [item["features"]["conv1"]["values"] for item in r.json()["results"]]
    assert all(v == values[0] for v in values)


def test_options_read_kindly_where_it_is_unambiguous(client):
    """Layers repeated or with spaces, a media type in capitals, HEAD on the probes."""
    files = [("files", ("a.png", GOOD, "image/png"))]
    params = [("layers", "conv1, conv2"), ("layers", "conv5"), ("pool", "avg")]
    r = client.post("/features", params=params, files=files)
    assert r.status_code == 200, r.text
    assert list(r.json()["results"][0]["features"]) == ["conv1", "conv2", "conv5"]
    body = json.dumps({"images": [base64.b64encode(GOOD).decode()]})
    r = client.post("/spot", content=body, headers={"content-type": "Application/JSON; charset=UTF-8"})
    assert r.status_code == 200, r.text
    assert client.head("/healthz").status_code == 200 and client.head("/readyz").status_code == 200


@pytest.mark.parametrize("name, data", [("animated gif", _animated_gif()), ("exif rotated", None)])
def test_animated_and_rotated_images_are_accepted(client, name, data):
    if data is None:
        img = Image.new("RGB", (60, 30), (200, 10, 10))
        exif = img.getexif()
        exif[0x0112] = 6  # displayed rotated by 90 degrees
        data = png_bytes(img, "JPEG", exif=exif)
    r = client.post("/spot", files=[("files", ("x", data, "application/octet-stream"))])
    assert r.status_code == 200, r.text
    item = r.json()["results"][0]
    expected = (40, 40) if name == "animated gif" else (60, 30)  # (height, width) after the EXIF rotation
    assert (item["height"], item["width"]) == expected
    assert np.asarray(item["heatmap"]["values"]).shape == expected


@pytest.mark.parametrize(
    "path, content_type",
    [
        ("/features", "multipart/form-data; boundary=xyz"),
        ("/features", "application/json"),
        ("/v2/models/spot-tiny/infer", "application/json"),
    ],
)
def test_a_client_gone_mid_body_is_a_400_in_the_metrics_not_a_traceback(server, client, path, content_type):
    """Nobody reads that answer, but the metrics and the log should say a request was cut short, not that the
    server failed (a 500 and a traceback for every client that gives up mid-upload)."""
    import socket
    import time

    def counted() -> float:
        return requests_counted(client.get("/metrics").text, path.replace("spot-tiny", "{model_name}"), "400")

    before = counted()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:  # 10 of the 100,000 bytes promised
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n"
                     f"Content-Length: 100000\r\nX-Request-ID: gone-mid-body\r\n\r\n--xyz\r\nCon".encode())  # fmt: skip
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    while counted() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counted() == before + 1
    assert "Exception in ASGI application" not in server.output()
    assert client.get("/readyz").json()["ready"] is True
