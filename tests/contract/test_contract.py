"""The contract both sides read model folders by: the shipped model.json passes, a broken one is named,
a changed model file is caught, and the views are the ones the service feeds the model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from contract.images import to_rgb
from contract.spec import ModelSpec, SpecError
from contract.views import centre_view, tiles

from ..conftest import REPO

SHIPPED = REPO / "models" / "spot-tiny64"


def test_the_shipped_model_json_reads_as_a_spec():
    spec = ModelSpec.read(SHIPPED)
    spec.verify(SHIPPED / "model.onnx")
    assert spec.layers == ("conv1", "conv2", "conv3", "conv4", "conv5")
    assert spec.default_layer in spec.layers and {"real_logit", "mask_logits"} <= set(spec.outputs)
    assert spec.input_size % spec.mask_grid == 0 and spec.raw["name"] == spec.name == "spot-tiny64"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.pop("mask_grid"), "no 'mask_grid'"),
        (lambda m: m.update(mask_grid=5), "mask_grid 5 must divide input_size 64"),
        (lambda m: m.update(default_layer="conv9"), "default_layer 'conv9' is not one of"),
        (lambda m: m["preprocessing"].update(std=[1.0, 0.0, 1.0]), "std non-zero"),
        (lambda m: m.update(layers=["conv1", "pool9"]), "must be outputs"),
        (lambda m: m.update(spot_threshold=1.5), "spot_threshold must be in"),
        (lambda m: m.update(spot_zoom=0.5), "spot_zoom must be in"),
        (lambda m: m.update(spot_zoom=16), "spot_zoom must be in"),
        (lambda m: m["preprocessing"].update(input_size="large"), "wrong type"),
    ],
)
def test_a_broken_model_json_is_refused_with_its_field_named(change, message):
    meta = json.loads((SHIPPED / "model.json").read_text())
    change(meta)
    with pytest.raises(SpecError, match=message):
        ModelSpec.from_dict(meta)


def test_a_changed_model_file_fails_verification(tmp_path):
    shutil.copy(SHIPPED / "model.json", tmp_path / "model.json")
    data = bytearray((SHIPPED / "model.onnx").read_bytes())
    data[-1] ^= 1
    (tmp_path / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(SpecError, match="does not match the sha256"):
        ModelSpec.read(tmp_path).verify(tmp_path / "model.onnx")


def test_not_json_is_named(tmp_path):
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(SpecError, match="not valid JSON"):
        ModelSpec.read(tmp_path)


def test_a_transparent_16_bit_image_becomes_8_bit_rgb_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red: white once composited
    assert np.asarray(to_rgb(rgba)).tolist() == [[[255, 255, 255]] * 4] * 4
    grey16 = Image.fromarray(np.full((2, 2), 65535, np.uint16))
    assert to_rgb(grey16).mode == "RGB" and np.asarray(to_rgb(grey16)).max() == 255


def test_views_and_tiles_have_the_model_size():
    rgb = np.random.default_rng(0).integers(0, 256, (100, 150, 3), np.uint8)
    assert centre_view(rgb, 64, 0.875).shape == (64, 64, 3)
    batch, positions, _ = tiles(rgb, 64)
    assert batch.shape[1:] == (64, 64, 3) and len(batch) == len(positions) >= 4
