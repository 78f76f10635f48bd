"""Server-side dynamic batching: requests from concurrent clients share one ONNX Runtime run.

Knobs as in Triton/TorchServe: `max_batch_size` images per run and `max_batch_delay_ms` to wait for
more once a first request is queued (0 = take only what is already waiting). With `adaptive_delay`
the wait applies only while other requests are being read and decoded (they are about to join), so a
lone client, or clients that are all in the batch already, never wait for company that is not coming;
without it every first request waits, as in Triton and TorchServe. Runs happen on one worker thread, so the
event loop never blocks and the session is never entered twice at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .model import ExportedModel


@dataclass
class Run:
    """One batch through the model, as the metrics record it: the phases of Triton's statistics extension.
    A batch's own phases count for every request in it, as Triton counts them."""

    input_s: float  # the jobs' tensors gathered into one batch
    executions: list[tuple[int, float]]  # (images, seconds) per ONNX Runtime run: one, or for a request larger
    # than max_batch_size (a big photo's tiles) one per chunk of at most max_batch_size
    output_s: float  # the outputs cut back into each job's share
    queue_s: list[float]  # per job answered (not cancelled while the batch ran): queued -> its batch started
    total_s: list[float]  # per job answered: queued -> answered
    answered_images: int

    @property
    def size(self) -> int:
        return sum(images for images, _ in self.executions)

    @property
    def infer_s(self) -> float:
        return sum(seconds for _, seconds in self.executions)


@dataclass
class Job:
    inputs: np.ndarray  # [k, 3, H, W]
    names: list[str]
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class QueueFull(RuntimeError):
    """More images are waiting than the service accepts: the client should retry later."""


class Batcher:
    def __init__(
        self,
        model: ExportedModel,
        max_batch_size: int,
        max_batch_delay_ms: float,
        observe=None,
        max_queue: int = 0,
        adaptive_delay: bool = True,
        on_queued=None,
        on_failed=None,
    ):
        self.model = model
        self.on_queued = on_queued or (lambda images: None)  # metrics hook: images waiting, after each change
        self.max_queue = max_queue  # images waiting; 0 = unbounded
        self.queued = 0
        self.max_batch_size = max(1, max_batch_size)
        self.delay = max(0.0, max_batch_delay_ms) / 1000
        self.adaptive_delay = adaptive_delay
        self.observe = observe or (lambda run: None)  # metrics hook: each Run
        # metrics hook: the time since queued of jobs not answered (the model failed; or cancelled: timed out)
        self.on_failed = on_failed or (lambda seconds: None)
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        self.task: asyncio.Task | None = None
        self.pending: Job | None = None
        self.arriving = 0  # requests being read and decoded: they will queue a job soon

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        self.executor.shutdown(wait=True)

    @contextlib.contextmanager
    def arriving_request(self):
        """Around reading and decoding a request, until its job is submitted: the batcher waits for it."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1

    def submit(self, inputs: np.ndarray, names: list[str]) -> asyncio.Future:
        """Queues a job at once (no await: nothing can run between the caller's decode and its job being
        visible); the future is cancelled by a timeout, and the job then dropped when its turn comes."""
        if self.max_queue and self.queued + len(inputs) > self.max_queue:
            raise QueueFull(f"{self.queued} images are waiting (limit {self.max_queue})")
        job = Job(inputs, names, asyncio.get_running_loop().create_future())
        job.future.add_done_callback(lambda f: f.cancelled() and self.on_failed([time.perf_counter() - job.queued_at]))
        self.queued += len(inputs)
        self.on_queued(self.queued)
        self.queue.put_nowait(job)
        return job.future

    async def run(self, inputs: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        return await self.submit(inputs, names)

    async def _collect(self) -> list[Job]:
        """The next batch: the first waiting job, everything already queued behind it, and what arrives
        before the delay has passed, up to the model's run size for the first job's outputs (at most
        max_batch_size: ExportedModel.run_size)."""
        first, self.pending = self.pending or await self.queue.get(), None
        jobs, size = [first], len(first.inputs)
        limit = self.model.run_size(first.names, self.max_batch_size)
        deadline = time.perf_counter() + self.delay
        while size < limit:
            worth_waiting = self.arriving > 0 or not self.adaptive_delay
            try:
                if not self.queue.empty():  # waiting jobs always join, however late it is
                    job = self.queue.get_nowait()
                elif worth_waiting and (remaining := deadline - time.perf_counter()) > 0:
                    job = await asyncio.wait_for(self.queue.get(), remaining)
                else:
                    break
            except TimeoutError:
                break
            if size + len(job.inputs) > limit:
                self.pending = job  # first in line for the next run
                break
            jobs.append(job)
            size += len(job.inputs)
        return jobs

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            self.queued -= sum(len(j.inputs) for j in jobs)
            self.on_queued(self.queued)
            started = time.perf_counter()
            jobs = [j for j in jobs if not j.future.cancelled()]  # timed out (a 504): counted as they were cancelled
            if not jobs:
                continue
            names = sorted({n for j in jobs for n in j.names})
            batch = np.concatenate([j.inputs for j in jobs])
            gathered = time.perf_counter()
            try:
                outputs, executions = await loop.run_in_executor(self.executor, self._run_chunked, batch, names)
            except Exception as exc:  # noqa: BLE001 - hand the failure to every waiting request
                failed = [j for j in jobs if not j.future.done()]
                for j in failed:
                    j.future.set_exception(exc)
                self.on_failed([time.perf_counter() - j.queued_at for j in failed])
                continue
            answered, offset, ran = [], 0, time.perf_counter()
            for j in jobs:
                k = len(j.inputs)
                if not j.future.done():  # else cancelled while the batch ran
                    j.future.set_result({n: outputs[n][offset : offset + k] for n in j.names})
                    answered.append(j)
                offset += k
            done = time.perf_counter()
            self.observe(
                Run(
                    input_s=gathered - started,
                    executions=executions,
                    output_s=done - ran,
                    queue_s=[started - j.queued_at for j in answered],
                    total_s=[done - j.queued_at for j in answered],
                    answered_images=sum(len(j.inputs) for j in answered),
                )
            )

    def _run_chunked(self, batch: np.ndarray, names: list[str]):
        """The outputs, and (images, seconds) per ONNX Runtime run: one request larger than max_batch_size (a
        big photo's tiles) runs in chunks."""
        parts, executions = [], []
        for i in range(0, len(batch), self.max_batch_size):
            started = time.perf_counter()
            parts.append(self.model.run(batch[i : i + self.max_batch_size], names))
            executions.append((min(self.max_batch_size, len(batch) - i), time.perf_counter() - started))
        return {n: np.concatenate([p[n] for p in parts]) for n in names}, executions
