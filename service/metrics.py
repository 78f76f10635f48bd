"""Prometheus metrics: requests by route and status, latency split queue / preprocess / inference,
batch sizes, images processed and waiting, and which model and execution provider serve. One registry per
app; with several workers (SPOT_WORKERS) the multiprocess modes say how their gauges add up."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("spot_requests", "HTTP requests", ["route", "status"], registry=self.registry)
        self.latency = Histogram(
            "spot_request_seconds", "Request latency", ["route"], buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.stage = Histogram(
            "spot_stage_seconds", "Time per stage", ["stage"], buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.batch_size = Histogram(
            "spot_batch_size", "Images per ONNX Runtime run", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.images = Counter("spot_images", "Images processed", ["route"], registry=self.registry)
        self.pending = Gauge(
            "spot_pending_images",
            "Images queued for an ONNX Runtime run and not yet in one (what an autoscaler watches)",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.model_info = Gauge(
            "spot_model_info",
            "The model served and the execution provider that actually runs it (value 1)",
            ["model", "version", "provider"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self._inference, self._queue = self.stage.labels("inference"), self.stage.labels("queue")

    def observe_request(self, route: str, status: str, seconds: float) -> None:
        """One HTTP request (status code) or gRPC call (status name), counted and timed under its route."""
        self.requests.labels(route, status).inc()
        self.latency.labels(route).observe(seconds)

    def observe_batch(self, batch_size: int, inference_s: float, queue_s: list[float]) -> None:
        self.batch_size.observe(batch_size)
        self._inference.observe(inference_s)
        for q in queue_s:
            self._queue.observe(q)


def forget_dead_workers() -> None:
    """Several workers (PROMETHEUS_MULTIPROC_DIR): drop the live gauges of workers that are gone, so that a
    worker that crashed and was replaced leaves no images "waiting" behind. Called as a worker starts."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    for path in Path(folder).glob("gauge_live*_*.db") if folder else []:
        pid = int(path.stem.rsplit("_", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid)
        except PermissionError:
            pass  # alive, another user's
