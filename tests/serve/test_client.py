"""The Python client (`service.client.SpotClient`) against a real server: every image form it takes gives the
same answer as the server called directly, its arrays have the right shapes, and failures name their image."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from service.client import ServerError, SpotClient

from .test_api import PHOTO, _truncated_jpeg, png_bytes


def test_features_from_every_image_form_equal_the_server_called_directly(server, client):
    pil = Image.open(PHOTO)
    pil.load()
    forms = [PHOTO, str(PHOTO), PHOTO.read_bytes(), pil, np.asarray(pil), np.asarray(pil.convert("L"))]
    with SpotClient(server.url, per_request=4, concurrency=2) as c:  # 6 images: two requests at once
        got = c.features(forms, layers=["conv2", "conv5"], pool="avg")
        default = c.features([PHOTO])
        model = c.model()
    assert set(got) == {"conv2", "conv5"} and got["conv5"].dtype == np.float32
    direct = client.post("/features", params={"layers": "conv2,conv5"}, files=[("files", PHOTO.read_bytes())])
    for layer in ("conv2", "conv5"):
        want = np.asarray(direct.json()["results"][0]["features"][layer]["values"], np.float32)
        assert got[layer].shape == (6, *want.shape)
        for i in range(5):  # a path, bytes, a PIL image or its array: the same pixels reach the model
            np.testing.assert_allclose(got[layer][i], want, rtol=1e-6, atol=1e-6)
        assert not np.allclose(got[layer][5], want, rtol=1e-3)  # the greyscale one is another image
    assert list(default) == [model["default_layer"]] and model["name"] == "spot-tiny"


def test_spot_gives_arrays_at_the_images_sizes(server):
    small = Image.new("RGB", (50, 30), (200, 40, 40))
    with SpotClient(server.url) as c:
        big, little = c.spot([PHOTO, small], heatmap="values")
        [as_png] = c.spot([small], heatmap="png")
        [plain] = c.spot([small])
    assert big["heatmap"]["values"].shape == (427, 640) and little["heatmap"]["values"].shape == (30, 50)
    mask = big["mask"]["values"]
    assert mask.dtype == np.float32 and mask.shape == (big["mask"]["rows"], big["mask"]["cols"])
    assert mask.shape == tuple(math.ceil(s / big["mask"]["cell_pixels"]) for s in big["tiling"]["scaled_to"][::-1])
    assert 0 <= mask.min() <= mask.max() <= 1 and 0 <= big["artifact_score"] <= 1 and big["tiling"]["tiles"] > 1
    assert Image.open(io.BytesIO(as_png["heatmap"]["png"])).size == (50, 30)
    assert "heatmap" not in plain and plain["artifact_score"] == pytest.approx(little["artifact_score"])


def test_a_failing_image_is_named_and_nothing_else_is_lost(server):
    good = png_bytes(Image.new("RGB", (64, 64), (10, 200, 30)))
    with SpotClient(server.url) as c:
        with pytest.raises(ServerError) as failed:
            c.features([good, _truncated_jpeg(), good])
        assert failed.value.status == 400 and "1 of 3 images failed: image 1 (image1)" in str(failed.value)
        with pytest.raises(ServerError) as unknown:  # the same for every request: raised at once
            c.features([good], layers=["conv9"])
        assert unknown.value.status == 422 and "conv1" in str(unknown.value)
        with pytest.raises(ValueError, match="uint8"):
            c.features([np.zeros((8, 8, 3), np.float32)])
        assert c.features([good], layers=["conv3"])["conv3"].shape[0] == 1  # the client still works
