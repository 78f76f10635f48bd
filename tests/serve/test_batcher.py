"""The batcher's accounting (Triton's statistics) where the real model cannot misbehave on demand: a run that
fails, and a request given up while its batch runs. The real exported model does the work otherwise."""

import asyncio
import time

import numpy as np
import pytest

from service.batcher import Batcher
from service.model import ExportedModel


class Switched:
    """The real model behind a switch: every run first waits `delay` seconds, or fails."""

    def __init__(self, model: ExportedModel, delay: float = 0.0, fail: bool = False):
        self.model, self.delay, self.fail = model, delay, fail

    def run_size(self, names, largest):
        return self.model.run_size(names, largest)

    def run(self, batch, names):
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("CUDA failure: out of memory")
        return self.model.run(batch, names)


def images(model: ExportedModel, n: int) -> np.ndarray:
    return np.zeros((n, 3, model.size, model.size), np.float32)


async def serve(model, work):
    runs, failed = [], []
    batcher = Batcher(model, 8, 0.0, observe=runs.append, on_failed=failed.extend)
    batcher.start()
    try:
        await work(batcher)
    finally:
        await batcher.stop()
    return runs, failed


def test_a_failed_run_fails_every_request_in_it_and_counts_them(model_dir):
    model = ExportedModel(model_dir, "cpu")

    async def work(batcher):
        jobs = [batcher.submit(images(model, 1), ["conv5"]), batcher.submit(images(model, 2), ["conv5"])]
        for job in jobs:
            with pytest.raises(RuntimeError, match="out of memory"):
                await job

    runs, failed = asyncio.run(serve(Switched(model, fail=True), work))
    assert runs == [] and len(failed) == 2


def test_a_request_given_up_while_its_batch_runs_is_a_failure_not_a_success(model_dir):
    model = ExportedModel(model_dir, "cpu")

    async def work(batcher):
        given_up = batcher.submit(images(model, 1), ["conv5"])
        kept = batcher.submit(images(model, 2), ["conv5"])
        await asyncio.sleep(0.1)  # both are in the run by now, which takes 0.3 s
        given_up.cancel()  # what a timeout (504) does
        assert (await kept)["conv5"].shape[0] == 2

    runs, failed = asyncio.run(serve(Switched(model, delay=0.3), work))
    [run] = runs
    assert run.size == 3 and run.answered_images == 2 and len(run.total_s) == len(run.queue_s) == 1
    assert len(failed) == 1 and 0.09 < failed[0] < run.total_s[0]  # counted as it was given up


def test_runs_stop_at_the_models_run_size_for_the_first_jobs_outputs(model_dir):
    """Six single-image requests waiting at once: runs of two for feature maps (the trunk's run size
    here), one run of six for the heads (theirs is eight, as max_batch_size)."""
    model = ExportedModel(model_dir, providers="cpu")
    model.run_sizes = {"trunk": 2, "heads": 8}

    async def work(batcher):
        await asyncio.gather(*(batcher.run(images(model, 1), model.layers) for _ in range(6)))
        await asyncio.gather(*(batcher.run(images(model, 1), ["real_logit"]) for _ in range(6)))

    runs, failed = asyncio.run(serve(model, work))
    assert [run.size for run in runs] == [2, 2, 2, 6] and not failed


def test_run_sizes_are_timed_per_graph_and_never_chosen_for_padded_batches(model_dir):
    model = ExportedModel(model_dir, providers="cpu", threads=1)
    sizes = model.choose_run_sizes(16)
    assert set(sizes) == {"trunk", "heads"} and all(n in (1, 2, 4, 8, 16) for n in sizes.values())
    assert model.run_size(model.layers, 16) == sizes["trunk"] and model.run_size(["mask_logits"], 16) == sizes["heads"]
    assert model.run_size(model.layers, 1) == 1  # never above max_batch_size
    padded = ExportedModel(model_dir, providers="cpu")
    padded.pad_batches("on", 16)
    assert padded.choose_run_sizes(16) == {} and padded.run_size(padded.layers, 16) == 16
