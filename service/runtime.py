"""What every route shares, on `app.state.runtime`: the model, its batcher, the metrics, the API key and the
one flow a request takes to the model. HTTP routes (features, spot, the Open Inference Protocol) and the gRPC
servicer all go through it, so that limits, auth and counting cannot drift apart between them."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.concurrency import run_in_threadpool
from PIL import Image
from prometheus_client import multiprocess

from .batcher import Batcher, QueueFull
from .config import Settings, usable_cores
from .images import BadImage, open_image
from .metrics import Metrics, forget_dead_workers
from .model import ExportedModel, ModelError
from .statistics import model_statistics

log = logging.getLogger("service.app")  # the name its log lines have always carried
INLINE_WORK = 1 << 16  # pixels to decode or values to encode per request: here, this costs less than a thread hop


class ServiceError(Exception):
    """A request refused or failed, as an HTTP status and a message: each front end answers it its own way
    (FastAPI's `{"detail": ...}`, the Open Inference Protocol's `{"error": ...}`, a gRPC status code)."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


@dataclass
class Work:
    """What a route hands the model: a batch, the outputs it wants, and how many images to count it as."""

    batch: np.ndarray
    outputs: list[str]
    images: int
    context: Any = None  # whatever the route needs again to build its answer


@dataclass
class Answer:
    outputs: dict[str, np.ndarray]
    work: Work
    inference_ms: float  # queued and run: from submitting to the batcher to its answer


class Runtime:
    def __init__(self, settings: Settings, metrics: Metrics | None = None):
        self.settings, self.metrics = settings, metrics or Metrics()
        self.loaded: ExportedModel | None = None
        self.error: str | None = None
        self.batcher: Batcher | None = None
        self.grpc = None
        self.allowed_formats = {f.strip().upper() for f in settings.allowed_formats.split(",") if f.strip()}

    async def start(self) -> None:
        """Loads the model (a failure leaves it unloaded, with the reason: /readyz says it) and starts the
        gRPC server when asked for."""
        forget_dead_workers()
        try:
            self.load()
        except ModelError as exc:
            self.error = str(exc)
            log.error("model not loaded: %s", exc)
        if self.settings.grpc_port:  # up even without a model, to answer "not ready" as HTTP does
            try:
                await self.start_grpc()
            except RuntimeError:
                if self.batcher:
                    await self.batcher.stop()
                raise  # the app does not start: a port asked for and not served is an error

    def load(self) -> None:
        s = self.settings
        threads = s.intra_op_threads or max(1, usable_cores() // max(1, s.workers))
        model = ExportedModel(s.model_dir, s.providers, s.require_gpu, threads, s.ort_spinning)
        model.pad_batches(s.pad_batches, s.max_batch_size)
        model.warm_up()
        if s.run_size == "auto" and s.max_batch_size > 1:
            model.choose_run_sizes(s.max_batch_size)
        self.loaded = model
        m = self.metrics
        self.batcher = Batcher(model, s.max_batch_size, s.max_batch_delay_ms, m.observe_run, s.max_queue_images,
                               s.adaptive_batch_delay, m.pending.set, m.observe_failed)  # fmt: skip
        self.batcher.start()
        m.model_info.labels(model.name, model.version, model.provider).set(1)
        log.info("loaded %s %s on %s; images per run: up to %s", model.name, model.version, model.provider,
                 ", ".join(f"{n} ({g})" for g, n in model.run_sizes.items()) or s.max_batch_size)  # fmt: skip

    async def start_grpc(self) -> None:
        from . import oip_grpc  # grpcio and its stubs are loaded only when asked for

        s = self.settings
        largest = oip_grpc.max_message_bytes(self.loaded, s.max_files, s.max_body_bytes)
        address = oip_grpc.address(s.grpc_host, s.grpc_port)
        self.grpc = await oip_grpc.start(oip_grpc.Servicer(self), address, largest, ready=self.loaded is not None)
        log.info("Open Inference Protocol over gRPC on %s", address)

    async def stop(self) -> None:
        if self.grpc:
            await self.grpc.stop(grace=5)  # answers the calls in flight (compose stops after 10 s)
        if self.batcher:
            await self.batcher.stop()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            multiprocess.mark_process_dead(os.getpid())

    @property
    def folder_name(self) -> str:
        """What the repository index calls the model when it could not be loaded."""
        return Path(self.settings.model_dir).name

    @property
    def instances(self) -> int:
        return max(1, self.settings.workers)  # python -m service sets SPOT_WORKERS to the number it started

    def model(self) -> ExportedModel:
        if self.loaded is None:
            raise ServiceError(503, f"model not loaded: {self.error}")
        return self.loaded

    def statistics(self, model: ExportedModel) -> dict:
        """Triton's $model_stat for the model, all workers added up."""
        return model_statistics(self.metrics.readable(), model.name, model.version)

    def authorized(self, header: str | None) -> bool:
        """`Bearer <key>`, the scheme in any case (RFC 7235); the key compared in constant time."""
        scheme, _, key = (header or "").strip().partition(" ")
        given = key.strip().encode() if scheme.lower() == "bearer" else b""
        return not self.settings.api_key or hmac.compare_digest(given, self.settings.api_key.encode())

    def check_auth(self, header: str | None, where: str = "Authorization: Bearer <key>") -> None:
        if not self.authorized(header):
            raise ServiceError(401, f"missing or wrong API key ({where})")

    def check_queue_room(self, inputs: int) -> None:
        """A request that alone needs more model inputs than may ever wait is a 413: never fits, not a 503."""
        most = self.settings.max_queue_images
        if most and inputs > most:
            raise ServiceError(
                413,
                f"the request needs {inputs} model inputs (images, or a photo's tiles for /spot); at most "
                f"{most} can wait for the model at once: send fewer images per request",
            )

    def submit(self, batch: np.ndarray, names: list[str]) -> asyncio.Future:
        """The job queued for the batcher, or a quick 503 when it is full."""
        self.check_queue_room(len(batch))
        try:
            return self.batcher.submit(batch, names)
        except QueueFull as exc:
            self.metrics.observe_failed([0.0])  # rejected at once: a failed request in Triton's statistics
            raise ServiceError(503, f"overloaded: {exc}; retry shortly", headers={"Retry-After": "1"}) from None

    async def result(self, job: asyncio.Future) -> dict[str, np.ndarray]:
        """The batcher's answer, or a 504 when it takes too long."""
        try:
            return await asyncio.wait_for(job, self.settings.request_timeout_s)
        except TimeoutError:
            raise ServiceError(504, f"no result within {self.settings.request_timeout_s} s") from None

    async def infer(self, route: str, prepare: Callable[[], Awaitable[Work]]) -> Answer:
        """Every inference request's one flow: `prepare` reads and checks the request while the batcher knows
        one is arriving (it may wait for it to join a batch), then the batch is queued and awaited, and its
        images counted under `route`."""
        with self.batcher.arriving_request():
            work = await prepare()
            job = self.submit(work.batch, work.outputs)
        started = time.perf_counter()
        outputs = await self.result(job)
        inference_ms = round(1000 * (time.perf_counter() - started), 3)
        self.metrics.images.labels(route).inc(work.images)
        return Answer(outputs, work, inference_ms)

    def open_images(self, files: list[tuple[str, bytes]]) -> list[tuple[str, Image.Image]]:
        """The request's images with their headers read and the limits checked, nothing decoded yet."""
        s = self.settings
        try:
            return [(name, open_image(data, name, s.max_pixels, self.allowed_formats)) for name, data in files]
        except BadImage as exc:
            raise ServiceError(400, str(exc)) from None

    async def offload(self, amount: int, work: Callable, stage: str):
        """Runs `work` right here when small (`amount`: its pixels or values) and on a worker thread when
        large: a hop costs more than decoding a thumbnail, but a big photo must not stall the event loop."""
        started = time.perf_counter()
        try:
            result = work() if amount <= INLINE_WORK else await run_in_threadpool(work)
        except BadImage as exc:
            raise ServiceError(400, str(exc)) from None
        self.metrics.stage.labels(stage).observe(time.perf_counter() - started)
        return result
