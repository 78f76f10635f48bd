#!/bin/bash
# A correctness check on the device (after the bundle's first call, see scripts/gpu_bundle.py): the shipped model on
# CUDA with SPOT_PROVIDERS=auto and cuda, padded batches against the CPU's outputs, /readyz and /spot of a real service.
set -u
# shellcheck source=scripts/gpu_device_setup.sh
source "$(dirname "$0")/setup.sh"
python3 - <<'PY'
import numpy as np
from service.model import ExportedModel
cpu = ExportedModel("models/spot-tiny64", "cpu")
x = np.random.default_rng(0).uniform(-2, 2, (5, 3, 64, 64)).astype(np.float32)
ref = cpu.run(x)
for setting in ("auto", "cuda"):
    m = ExportedModel("models/spot-tiny64", setting, require_gpu=True)
    m.pad_batches("auto", 64)
    print(setting, "provider", m.provider, "session providers", m.session.get_providers(), "pad_to", m.pad_to)
    m.warm_up()
    for n in (1, 5):
        out = m.run(x[:n])
        print(" n", n, {k: (v.shape, float(np.abs(v - ref[k][:n]).max())) for k, v in out.items()})
PY
timeout 60 python3 -m service --host 127.0.0.1 --port 8123 > /tmp/svc.log 2>&1 &
for _ in $(seq 1 60); do curl -s 127.0.0.1:8123/readyz && break; sleep 1; done; echo
python3 -c "
import httpx, io
from PIL import Image
buf = io.BytesIO(); Image.new('RGB', (300, 200), (120, 30, 200)).save(buf, 'PNG')
r = httpx.post('http://127.0.0.1:8123/spot', files=[('files', ('a.png', buf.getvalue(), 'image/png'))], timeout=60)
j = r.json(); print(r.status_code, j.get('provider'), j['results'][0]['artifact_score'], j['results'][0]['tiling'])
"
grep -i -E "error|warn|fallback|tensorrt" /tmp/svc.log | head -5
