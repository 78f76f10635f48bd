#!/bin/bash
# Device bootstrap for `python -m bench.gpu`: onnxruntime-gpu 1.31.1 (its CUDA provider with sm_90 code only,
# carried in the call before as /tmp/g/cuda.so.xz), the [serve] wheels, wrk; then the GPU suite. Made by scripts/gpu_bundle.py.
set -uo pipefail
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
[ -f /tmp/g/cuda.so.xz ] || { echo "MISSING /tmp/g/cuda.so.xz (machine went cold)"; exit 3; }
mkdir -p /tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/carry/whl/*.whl || exit 4
python3 - <<'PY' || exit 5
import lzma, shutil, tarfile
tarfile.open(".gpu/carry/ortcore.tar.xz").extractall("/tmp/site")
with lzma.open("/tmp/g/cuda.so.xz") as src, open("/tmp/site/onnxruntime/capi/libonnxruntime_providers_cuda.so", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
cp .gpu/carry/bin/wrk /usr/local/bin/wrk && cp .gpu/carry/bin/libluajit-5.1.so.2 /usr/lib/x86_64-linux-gnu/ && ldconfig
ldd /usr/local/bin/wrk | grep -i "not found"
export PYTHONPATH=/tmp/site:$PWD CUDA_MODULE_LOADING=LAZY PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=$(python3 -c "import glob,os,sys; print(':'.join(sorted({os.path.dirname(p) for p in glob.glob(sys.prefix+'/lib/python3*/site-packages/nvidia/**/lib*.so*', recursive=True)})))")
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
