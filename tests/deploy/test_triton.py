"""deploy/triton/make_repository.py on the real shipped model: the config.pbtxt it writes matches
model.json and the ONNX graph itself (names, dims, types), with dynamic batching; the model is copied
byte for byte."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys

import onnxruntime as ort
import pytest

from ..conftest import REPO

SHIPPED = REPO / "models" / "spot-tiny64"
META = json.loads((SHIPPED / "model.json").read_text())
# The ModelConfig fields a generated config may use (Triton's model_config.proto names).
KNOWN = {"name", "platform", "max_batch_size", "input", "output", "dynamic_batching", "instance_group",
         "data_type", "dims", "reshape", "shape", "preferred_batch_size", "max_queue_delay_microseconds",
         "count", "kind"}  # fmt: skip


def parse_pbtxt(text: str):
    """Protobuf text format, just enough for a Triton config: `key: value`, `key [ ... ]`, `key { ... }`.
    Returns nested dicts; a repeated or bracketed field becomes a list."""
    tokens = re.findall(r'"[^"]*"|[{}\[\]:,]|[^\s{}\[\]:,]+', re.sub(r"#.*", "", text))
    pos = 0

    def value():
        nonlocal pos
        token = tokens[pos]
        pos += 1
        if token == "{":
            return message("}")
        if token == "[":
            items = []
            while tokens[pos] != "]":
                items.append(value())
                pos += tokens[pos] == ","
            pos += 1
            return items
        if token.startswith('"'):
            return token[1:-1]
        return int(token) if re.fullmatch(r"-?\d+", token) else token

    def message(end):
        nonlocal pos
        fields = {}
        while pos < len(tokens) and tokens[pos] != end:
            key = tokens[pos]
            assert key in KNOWN, f"unknown field {key!r}"
            pos += 1
            pos += tokens[pos] == ":"
            assert key not in fields, f"field {key} given twice"
            fields[key] = value()
        pos += 1
        return fields

    return message(None)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("triton")
    result = subprocess.run(
        [sys.executable, "deploy/triton/make_repository.py", "--model-dir", str(SHIPPED), "--repo", str(root)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return root


def test_repository_layout_and_model_copy(repo):
    folder = repo / "spot-tiny64"
    v = str(META["version"])  # Triton's version folder is the export's version
    assert sorted(p.relative_to(repo).as_posix() for p in folder.rglob("*")) == [
        f"spot-tiny64/{v}", f"spot-tiny64/{v}/model.onnx", "spot-tiny64/config.pbtxt"
    ]  # fmt: skip
    assert hashlib.sha256((folder / v / "model.onnx").read_bytes()).hexdigest() == META["sha256"]


def test_config_matches_model_json_and_the_onnx_graph(repo):
    config = parse_pbtxt((repo / "spot-tiny64" / "config.pbtxt").read_text())
    assert config["name"] == "spot-tiny64" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 64

    (images,) = config["input"]
    assert images == {"name": "images", "data_type": "TYPE_FP32", "dims": META["input"]["shape"][1:]}
    assert images["dims"] == [3, 64, 64]

    outputs = {o["name"]: o for o in config["output"]}
    assert list(outputs) == [o["name"] for o in META["outputs"]]
    for spec in META["outputs"]:
        out = outputs[spec["name"]]
        assert out["data_type"] == "TYPE_FP32"
        if spec["shape"][1:]:
            assert out["dims"] == spec["shape"][1:] and "reshape" not in out
        else:  # [N] only: Triton wants dims [1] reshaped to []
            assert out["dims"] == [1] and out["reshape"] == {"shape": []}

    # The same names and per-item dims as the graph ONNX Runtime loads (what Triton's backend sees).
    path = repo / "spot-tiny64" / str(META["version"]) / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape[1:]) for i in session.get_inputs()] == [("images", [3, 64, 64])]
    assert [(o.name, o.shape[1:]) for o in session.get_outputs()] == [
        (name, out["dims"] if "reshape" not in out else []) for name, out in outputs.items()
    ]
    assert {o.type for o in session.get_outputs()} == {"tensor(float)"}

    assert config["dynamic_batching"] == {"preferred_batch_size": [16, 32, 64], "max_queue_delay_microseconds": 2000}
    assert config["instance_group"] == [{"count": 1, "kind": "KIND_GPU"}]


def test_options_and_a_corrupt_model(tmp_path):
    from deploy.triton.make_repository import make_repository

    folder = make_repository(SHIPPED, tmp_path / "repo", name="spot", version=3, max_batch_size=8,
                             preferred=(4, 8), delay_us=500, kind="cpu", count=2)  # fmt: skip
    config = parse_pbtxt((folder / "config.pbtxt").read_text())
    assert (folder / "3" / "model.onnx").is_file() and config["name"] == "spot" and config["max_batch_size"] == 8
    assert config["dynamic_batching"] == {"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": 500}
    assert config["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    with pytest.raises(ValueError, match="preferred"):
        make_repository(SHIPPED, tmp_path / "repo2", max_batch_size=8, preferred=(16,))

    broken = tmp_path / "broken"
    shutil.copytree(SHIPPED, broken)
    (broken / "model.json").write_text(json.dumps({**META, "sha256": "0" * 64}))
    with pytest.raises(ValueError, match="sha256"):
        make_repository(broken, tmp_path / "repo3")
