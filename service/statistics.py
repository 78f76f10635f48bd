"""Triton's statistics extension (GET /v2/models/<name>/stats, gRPC ModelStatistics) read from the Prometheus
counters of metrics.py, so that with several workers the numbers are the server's, not one worker's.

What counts, as in Triton: a request is one that reached the model (a /features, /spot or infer request,
HTTP or gRPC), from the moment its tensor joined the queue (decoding an upload comes before, as Triton's
front end parses a request before its core sees it) until it was answered; it failed when the model failed,
when it timed out (a 504: counted as it happens) or when the queue was full (a 503). An execution is one
ONNX Runtime run, of at most SPOT_MAX_BATCH_SIZE images (a big photo's tiles take several);
inference_count is the model inputs answered: images, and for /spot a photo's tiles. The service has no
response cache: cache_hit and cache_miss stay 0."""

from __future__ import annotations

from collections import defaultdict

from prometheus_client import CollectorRegistry

NS = 1e9
PHASES = ("compute_input", "compute_infer", "compute_output")


def samples(registry: CollectorRegistry) -> dict[str, list[tuple[dict, float]]]:
    """Every sample of the spot_model_* metrics: name -> [(labels, value)]."""
    found = defaultdict(list)
    for family in registry.collect():
        if family.name.startswith("spot_model_"):
            for s in family.samples:
                found[s.name].append((s.labels, s.value))
    return found


def duration(count: float, seconds: float) -> dict:
    return {"count": int(count), "ns": int(round(seconds * NS))}


def model_statistics(registry: CollectorRegistry, name: str, version: str) -> dict:
    """One $model_stat of the extension for the model served."""
    found = samples(registry)

    def total(metric: str, **labels: str) -> float:
        return sum(v for got, v in found[metric] if labels.items() <= got.items())

    requests = {o: total("spot_model_requests_total", outcome=o) for o in ("success", "fail")}
    seconds = {o: total("spot_model_request_seconds_total", outcome=o) for o in ("success", "fail")}
    executions = {int(labels["batch_size"]): v for labels, v in found["spot_model_executions_total"]}
    last = total("spot_model_last_inference_timestamp_seconds")
    inference = {o: duration(requests[o], seconds[o]) for o in ("success", "fail")}
    for phase in ("queue", *PHASES):
        inference[phase] = duration(requests["success"], total("spot_model_phase_seconds_total", phase=phase))
    inference["cache_hit"] = inference["cache_miss"] = duration(0, 0)
    batches = [
        {"batch_size": size}
        | {
            phase: duration(count, total("spot_model_execution_seconds_total", batch_size=str(size), phase=phase))
            for phase in PHASES
        }
        for size, count in sorted(executions.items())
    ]
    return {
        "name": name,
        "version": version,
        "last_inference": int(last * 1000),  # milliseconds since the epoch; 0 = none yet
        "inference_count": int(total("spot_model_inferences_total")),
        "execution_count": int(sum(executions.values())),
        "inference_stats": inference,
        "batch_stats": batches,
    }
