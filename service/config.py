"""Service settings from environment variables (prefix SPOT_), e.g. SPOT_MODEL_DIR=models/spot-tiny64."""

import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, NonNegativeInt
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPOT_")

    model_dir: Path = REPO / "models" / "spot-tiny64"
    providers: str = "auto"  # auto (CUDA/TensorRT when present, else CPU) | cpu | cuda | tensorrt
    require_gpu: bool = False  # a missing GPU is an error instead of a CPU fallback
    workers: int = 0  # server processes, each with its own session and batcher; 0 = one per core on a CPU, 1 on a GPU
    intra_op_threads: int = 0  # 0 = one per core, shared out among the workers
    ort_spinning: bool = True  # ONNX Runtime threads spin between runs: faster hand-off, but burns CPU when idle
    max_body_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 50_000_000  # per image, checked from the header before decoding
    max_files: int = 16  # images per request
    max_tiles: NonNegativeInt = 1024  # per image for /spot; a larger image is analysed downscaled to fit; 0 = no limit
    # /spot: heatmap=values for more pixels than this in one request is a 413 (ask for a PNG); 0 = no limit
    max_heatmap_values: NonNegativeInt = 16 * 1024 * 1024
    allowed_formats: str = "JPEG,PNG,WEBP,GIF,BMP,TIFF"
    max_batch_size: int = 64  # images per ONNX Runtime run (1 = batching off)
    pad_batches: Literal["auto", "on", "off"] = "auto"  # auto = on on a GPU: every run padded to max_batch_size
    # max: runs of up to max_batch_size; auto: per graph, runs no larger than the smallest batch within 5% of the
    # fastest per image (timed at start; not with padded batches): a lower p99 for a small model, fewer img/s for a
    # large one on a CPU (bench/README.md)
    run_size: Literal["max", "auto"] = "max"
    max_batch_delay_ms: float = 2.0  # how long a first request waits for others to join its batch
    adaptive_batch_delay: bool = True  # wait only while other requests are arriving; false = always (as Triton)
    # model inputs (images; /spot's tiles) waiting for the model: more is a quick 503 + Retry-After, not a timeout
    max_queue_images: NonNegativeInt = 2048
    max_connections: int = 512  # per worker: connections and requests at once; beyond, uvicorn answers 503
    request_timeout_s: float = 60.0  # waiting for the model longer than this is a 504
    # /spot: artifact_score above it = altered (0 = any score above 0); unset = the model's own (model.json, else 0.5)
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    access_log: bool = True  # uvicorn's one line per request (benchmarks turn it off)
    log_format: Literal["text", "json"] = "text"  # json: one JSON object a line, for log collectors
    api_key: str = ""  # when set, requests need "Authorization: Bearer <key>"
    grpc_port: int = 0  # the Open Inference Protocol over gRPC on this port too (Triton's is 8001); 0 = off
    grpc_host: str = "127.0.0.1"  # `python -m service` sets it to its --host unless given
    cors_origins: str = ""  # comma-separated origins whose web pages may call the API ("*" = any); empty = none


def cpu_quota(cgroup: Path) -> float | None:
    """A container's CPU limit in cores (`docker run --cpus`, compose's `cpus`, a Kubernetes CPU limit), or
    None: cgroup v2's cpu.max ("200000 100000"), else v1's cpu.cfs_quota_us and cpu.cfs_period_us."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()
    except (OSError, ValueError):
        try:
            quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        return None if quota in ("max", "-1") else int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def usable_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: those it may run on (its affinity), capped by a container's CPU
    quota, which the affinity does not show (a container limited to 2 CPUs on a 64-core host sees 64)."""
    cores = len(os.sched_getaffinity(0))
    quota = cpu_quota(cgroup)
    return cores if quota is None else min(cores, max(1, math.ceil(quota)))


def resolve_workers(settings: Settings) -> int:
    """SPOT_WORKERS, or by default one process per usable core (ONNX Runtime on one thread each, which
    the benchmarks found fastest on a CPU, as TorchServe's default) and a single process on a GPU."""
    if settings.workers > 0:
        return settings.workers
    import onnxruntime as ort

    gpu = settings.providers != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers()
    return 1 if gpu else usable_cores()


@lru_cache
def get_settings() -> Settings:
    return Settings()
