"""Metrics across worker processes (SPOT_WORKERS): real prometheus_client multiprocess files."""

import os
import subprocess
import sys

from ..conftest import REPO

WORKER = """
from service.metrics import Metrics
Metrics().pending.set(5)  # this worker dies with 5 images waiting
"""
READER = """
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from service.metrics import forget_dead_workers
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
before = generate_latest(registry).decode()
forget_dead_workers()  # what a replacement worker does as it starts
print(before.count("spot_pending_images 5.0"), generate_latest(registry).decode().count("spot_pending_images 5.0"))
"""


def test_a_dead_workers_waiting_images_are_forgotten_when_a_worker_starts(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", WORKER], cwd=REPO, env=env, check=True, timeout=60)
    out = subprocess.run([sys.executable, "-c", READER], cwd=REPO, env=env, check=True, timeout=60, capture_output=True)
    assert out.stdout.split() == [b"1", b"0"]
