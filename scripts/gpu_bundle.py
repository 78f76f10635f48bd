"""What a device machine without a package index needs for `python -m bench.gpu`, in two folders that fit
the device tool's 64 MiB per call (bench/README.md, "GPU variant"):

    .gpu/c1/cuda.so.xz   onnxruntime-gpu's CUDA provider with sm_90 (H100/H200) machine code only
    .gpu/carry/          the rest of onnxruntime-gpu (unpacked there by setup.sh), the [serve] wheels its image
                         lacks (CPython 3.12: the image's own python; numpy, pillow, onnx, httpx,
                         prometheus-client are there),
                         wrk, photos, run.sh

The CUDA provider library is 284 MB, 218 MB of it fatbins (machine code for sm_75..sm_120). Every fatbin
that has sm_90 code keeps only that; fatbins built for sm_90 alone (kernels written for Hopper only;
the model's run never loads them) are zeroed too. Headers stay, so the library loads unchanged and, with
CUDA_MODULE_LOADING=LAZY, a zeroed module is never read. xz then takes it to 39 MB.

    python scripts/gpu_bundle.py        # then, on the device: mkdir -p /tmp/g && cp .gpu/c1/cuda.so.xz /tmp/g/
                                        # and, in the next call: COMMIT=<sha> bash .gpu/carry/run.sh
                                        # (or bash .gpu/carry/check.sh: bench/results/gpu-check.log)
"""

from __future__ import annotations

import lzma
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
ORT_GPU = "onnxruntime-gpu==1.31.1"  # the version pyproject pins for onnxruntime
WHEELS = ["fastapi==0.165.0", "fastapi-offline==1.7.7", "asgi-correlation-id==5.0.1", "python-json-logger==4.2.0",
          "starlette==1.10.0", "pydantic==2.14.4", "pydantic_core==2.50.5",
          "pydantic-settings==2.16.3", "python-dotenv==1.2.4", "python-multipart==0.0.34", "orjson==3.13.0",
          "uvicorn==0.54.0", "httptools==0.9.0", "annotated-types==0.8.0", "typing-inspection==0.4.5",
          "typing_extensions==4.16.0", "annotated-doc==0.0.7", "opentelemetry-api==1.45.2"]  # fmt: skip
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux_2_5_x86_64", "manylinux1_x86_64"]  # fmt: skip
FATBIN_MAGIC = 0xBA55ED50


def download(names: list[str], folder: Path) -> None:
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", *platforms, "-d", str(folder)]  # fmt: skip
    subprocess.run(cmd + names, check=True)


def keep_sm90(path: Path) -> None:
    """Zero, in place, every fatbin payload the bundle leaves out (see the module docstring)."""
    data = bytearray(path.read_bytes())
    fields = next(ln.split() for ln in subprocess.run(["readelf", "-S", "-W", str(path)], capture_output=True,
                  text=True, check=True).stdout.splitlines() if ".nv_fatbin" in ln)  # fmt: skip
    i = fields.index(".nv_fatbin")
    pos, end = int(fields[i + 3], 16), int(fields[i + 3], 16) + int(fields[i + 4], 16)
    while pos < end:
        magic, _, header, size = struct.unpack_from("<IHHQ", data, pos)
        if magic != FATBIN_MAGIC:
            pos += 8  # alignment between fatbins
            continue
        entries, p, fatbin_end = [], pos + header, pos + header + size
        if header == 0 or fatbin_end > end:
            raise ValueError(f"malformed fatbin at {pos:#x}")
        while p < fatbin_end:
            _, _, entry_header, payload = struct.unpack_from("<HHIQ", data, p)
            arch = struct.unpack_from("<I", data, p + 28)[0]
            if entry_header == 0 or p + entry_header + payload > fatbin_end:
                raise ValueError(f"malformed fatbin entry at {p:#x}")
            entries.append((arch, p + entry_header, payload))
            p += entry_header + payload
        archs = {a for a, _, _ in entries}
        for arch, start, payload in entries:
            if (arch != 90 and 90 in archs) or archs == {90}:
                data[start : start + payload] = bytes(payload)
        pos += header + size
    path.write_bytes(data)


def main() -> None:
    gpu, c1, carry = REPO / ".gpu", REPO / ".gpu" / "c1", REPO / ".gpu" / "carry"
    shutil.rmtree(c1, ignore_errors=True), shutil.rmtree(carry, ignore_errors=True)
    c1.mkdir(parents=True), (carry / "bin").mkdir(parents=True), (carry / "photos").mkdir()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        download([ORT_GPU], tmp)
        with zipfile.ZipFile(next(tmp.glob("onnxruntime_gpu-*.whl"))) as whl:
            whl.extractall(tmp / "pkg")
        capi = tmp / "pkg" / "onnxruntime" / "capi"
        cuda = capi / "libonnxruntime_providers_cuda.so"
        keep_sm90(cuda)
        with open(cuda, "rb") as src, lzma.open(c1 / "cuda.so.xz", "wb", preset=9) as dst:
            shutil.copyfileobj(src, dst)
        cuda.unlink()
        (capi / "libonnxruntime_providers_tensorrt.so").unlink()  # no TensorRT libraries there to load it
        with tarfile.open(carry / "ortcore.tar.xz", "w:xz", preset=9) as tar:
            for item in (tmp / "pkg").iterdir():
                tar.add(item, item.name)
    download(WHEELS, carry / "whl")
    shutil.copy(shutil.which("wrk"), carry / "bin")
    luajit = next(ln.split()[2] for ln in subprocess.run(["ldd", shutil.which("wrk")], capture_output=True,
                  text=True).stdout.splitlines() if "luajit" in ln)  # fmt: skip
    shutil.copy(luajit, carry / "bin")
    photos = sorted(
        p
        for p in (REPO.parent / "shared" / "data" / "photos").rglob("*")
        if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )
    for k, photo in enumerate(photos[:: max(1, len(photos) // 24)][:24]):
        with Image.open(photo) as im:
            im = im.convert("RGB")
            im.thumbnail((640, 640))
            im.save(carry / "photos" / f"{k:02d}.jpg", quality=92)
    shutil.copy(REPO / "scripts" / "gpu_device_run.sh", carry / "run.sh")
    shutil.copy(REPO / "scripts" / "gpu_device_check.sh", carry / "check.sh")
    shutil.copy(REPO / "scripts" / "gpu_device_setup.sh", carry / "setup.sh")
    sizes = {p.name: sum(f.stat().st_size for f in p.rglob("*")) / 2**20 for p in (c1, carry)}
    print(f"{gpu}: " + ", ".join(f"{k} {v:.1f} MiB" for k, v in sizes.items()))


if __name__ == "__main__":
    main()
