#!/bin/bash
# Sourced by gpu_device_run.sh and gpu_device_check.sh (copied beside them into .gpu/carry as setup.sh by
# scripts/gpu_bundle.py): onnxruntime-gpu 1.31.1 with the CUDA provider carried in the call before as
# /tmp/g/cuda.so.xz, the [serve] wheels the device image lacks, and the environment to find CUDA's libraries.
[ -f /tmp/g/cuda.so.xz ] || { echo "MISSING /tmp/g/cuda.so.xz (machine went cold)"; exit 3; }
mkdir -p /tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/carry/whl/*.whl || exit 4
python3 - <<'PY' || exit 5
import lzma, shutil, tarfile
tarfile.open(".gpu/carry/ortcore.tar.xz").extractall("/tmp/site")
with lzma.open("/tmp/g/cuda.so.xz") as src, open("/tmp/site/onnxruntime/capi/libonnxruntime_providers_cuda.so", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
export PYTHONPATH=/tmp/site:$PWD CUDA_MODULE_LOADING=LAZY PYTHONUNBUFFERED=1
LD_LIBRARY_PATH=$(python3 -c "import glob,os,sys; print(':'.join(sorted({os.path.dirname(p) for p in glob.glob(sys.prefix+'/lib/python3*/site-packages/nvidia/**/lib*.so*', recursive=True)})))")
export LD_LIBRARY_PATH
