"""Prometheus metrics: requests by route and status, latency split queue / preprocess / inference,
batch sizes, images processed and waiting, which model and execution provider serve, and the counters that
Triton's statistics extension reads (statistics.py). One registry per app; with several workers
(SPOT_WORKERS) the multiprocess modes say how their gauges add up."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

from .batcher import Run

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
        # Triton's per-model statistics (GET /v2/models/<name>/stats): counters, so that workers add up
        self.model_requests = Counter(
            "spot_model_requests", "Requests that reached the model, by outcome", ["outcome"], registry=self.registry
        )
        self.model_request_seconds = Counter(
            "spot_model_request_seconds",
            "Their time from queued to answered, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.model_phase_seconds = Counter(
            "spot_model_phase_seconds",
            "Successful requests' time per phase (queue, compute_input, compute_infer, compute_output); a "
            "batch's compute phases count for each request in it",
            ["phase"],
            registry=self.registry,
        )
        self.model_inferences = Counter(
            "spot_model_inferences", "Model inputs answered (images; a photo's tiles for /spot)", registry=self.registry
        )
        self.model_executions = Counter(
            "spot_model_executions", "ONNX Runtime runs, by images in the run", ["batch_size"], registry=self.registry
        )
        self.model_execution_seconds = Counter(
            "spot_model_execution_seconds",
            "Their time per phase (compute_input, compute_infer, compute_output), by images in the run",
            ["batch_size", "phase"],
            registry=self.registry,
        )
        self.last_inference = Gauge(
            "spot_model_last_inference_timestamp_seconds",
            "When the model last answered (Unix time)",
            registry=self.registry,
            multiprocess_mode="max",
        )

    def observe_request(self, route: str, status: str, seconds: float) -> None:
        """One HTTP request (status code) or gRPC call (status name), counted and timed under its route."""
        self.requests.labels(route, status).inc()
        self.latency.labels(route).observe(seconds)

    def observe_run(self, run: Run) -> None:
        """One batch through the model: the histograms, and Triton's statistics for it and its requests. An
        execution is one ONNX Runtime run (so batch sizes stay within SPOT_MAX_BATCH_SIZE); a chunked batch's
        gathering and handing out are shared among its runs by images."""
        for images, _ in run.executions:
            self.batch_size.observe(images)
        self._inference.observe(run.infer_s)
        for q in run.queue_s:
            self._queue.observe(q)
        answered = len(run.total_s)
        self.model_requests.labels("success").inc(answered)
        self.model_request_seconds.labels("success").inc(sum(run.total_s))
        self.model_inferences.inc(run.answered_images)
        phases = {"compute_input": run.input_s, "compute_infer": run.infer_s, "compute_output": run.output_s}
        self.model_phase_seconds.labels("queue").inc(sum(run.queue_s))
        for phase, seconds in phases.items():
            self.model_phase_seconds.labels(phase).inc(seconds * answered)
        for images, seconds in run.executions:
            size, share = str(images), images / run.size
            self.model_executions.labels(size).inc()
            self.model_execution_seconds.labels(size, "compute_input").inc(run.input_s * share)
            self.model_execution_seconds.labels(size, "compute_infer").inc(seconds)
            self.model_execution_seconds.labels(size, "compute_output").inc(run.output_s * share)
        self.last_inference.set_to_current_time()

    def observe_failed(self, seconds: list[float]) -> None:
        """Requests the model did not answer: it failed, they timed out waiting, or the queue was full."""
        self.model_requests.labels("fail").inc(len(seconds))
        self.model_request_seconds.labels("fail").inc(sum(seconds))

    def readable(self) -> CollectorRegistry:
        """What /metrics and the statistics read: this process's registry, or with several workers
        (PROMETHEUS_MULTIPROC_DIR) all of theirs added up."""
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return self.registry
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry


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
