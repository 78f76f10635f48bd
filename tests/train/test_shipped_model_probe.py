"""The shipped model's card numbers are reproduced by the command it names (slow: a full probe)."""

import json

import pytest

from ..conftest import REPO, run_cli

SHIPPED = REPO / "models" / "spot-tiny64"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_rerunning_the_default_layers_probe_reproduces_the_card(data_root):
    """The default layer's (what /features gives unasked) Tiny-ImageNet probe, from the ONNX file alone."""
    meta = json.loads((SHIPPED / "model.json").read_text())
    layer = meta["default_layer"]
    key = f"probe_top1/tiny-imagenet:val/{layer}"
    assert key in meta["metrics"], "the shipped model's card must carry its Tiny-ImageNet probe"
    result = run_cli("probe", "--model", str(SHIPPED), "--train-data", "tiny-imagenet:train",
                     "--test-data", "tiny-imagenet:val", "--layers", layer, timeout=1800)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    top1 = json.loads(result.stdout)["top1"][layer]
    # the card's figure came from the checkpoint in PyTorch; ONNX Runtime's features differ by ~1e-4
    assert top1 == pytest.approx(meta["metrics"][key], abs=0.005)
    assert f"| {key} | {meta['metrics'][key]} |" in (SHIPPED / "MODEL_CARD.md").read_text()
