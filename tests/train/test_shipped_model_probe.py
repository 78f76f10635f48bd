"""The shipped model's card numbers are reproduced by the command it names (slow: a full probe)."""

import json

import pytest

from ..conftest import REPO, run_cli

SHIPPED = REPO / "models" / "spot-tiny64"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_rerunning_the_conv5_probe_reproduces_the_card(data_root):
    meta = json.loads((SHIPPED / "model.json").read_text())
    key = "probe_top1/tiny-imagenet:val/conv5"
    assert key in meta["metrics"], "the shipped model's card must carry its Tiny-ImageNet probe"
    result = run_cli("probe", "--model", str(SHIPPED), "--train-data", "tiny-imagenet:train",
                     "--test-data", "tiny-imagenet:val", "--layers", "conv5", timeout=1800)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    top1 = json.loads(result.stdout)["top1"]["conv5"]
    # the card's figure came from the checkpoint in PyTorch; ONNX Runtime's features differ by ~1e-4
    assert top1 == pytest.approx(meta["metrics"][key], abs=0.005)
    assert f"| {key} | {meta['metrics'][key]} |" in (SHIPPED / "MODEL_CARD.md").read_text()
