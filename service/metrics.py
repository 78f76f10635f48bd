"""Prometheus metrics: requests by route and status, latency split queue / preprocess / inference,
batch sizes and images processed. One registry per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

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
        self._inference, self._queue = self.stage.labels("inference"), self.stage.labels("queue")

    def observe_batch(self, batch_size: int, inference_s: float, queue_s: list[float]) -> None:
        self.batch_size.observe(batch_size)
        self._inference.observe(inference_s)
        for q in queue_s:
            self._queue.observe(q)
