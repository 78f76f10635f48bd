#!/bin/bash
# Device bootstrap for `python -m bench.gpu`: onnxruntime-gpu 1.31.1 (its CUDA provider with sm_90 code only,
# carried in the call before as /tmp/g/cuda.so.xz), the [serve] wheels, wrk; then the GPU suite. Made by scripts/gpu_bundle.py.
set -uo pipefail
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# shellcheck source=scripts/gpu_device_setup.sh
source "$(dirname "$0")/setup.sh"
cp .gpu/carry/bin/wrk /usr/local/bin/wrk && cp .gpu/carry/bin/libluajit-5.1.so.2 /usr/lib/x86_64-linux-gnu/ && ldconfig
ldd /usr/local/bin/wrk | grep -i "not found"
python3 - <<'PY' || exit 6
import numpy as np, onnxruntime as ort
print(ort.__version__, ort.__file__, ort.get_available_providers())
s = ort.InferenceSession("models/spot-tiny64/model.onnx", providers=["CUDAExecutionProvider"])
print("session providers", s.get_providers())
assert s.get_providers()[0] == "CUDAExecutionProvider"
out = s.run(None, {"images": np.zeros((2, 3, 64, 64), np.float32)})
print("ran", [o.shape for o in out])
PY
timeout 470 python3 -m bench.gpu --commit "${COMMIT:-unknown}" --model-dir models/spot-tiny64 --photos .gpu/carry/photos --out "$OUT/gpu.json" 2>&1 | tee "$OUT/log.txt"
