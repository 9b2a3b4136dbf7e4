"""How serving processes share the CPUs they may use (``hardware.cpus.usable_cpus``) between TorchServe workers and
their intra-op threads. No torch here: serve.py sizes TorchServe's worker pool before any model is loaded."""

from __future__ import annotations

import math

from convserve.hardware.cpus import usable_cpus

MAX_THREADS = 8  # intra-op threads beyond this rarely help a batch-1 CNN


def default_workers() -> int:
    """TorchServe workers per model when the archive names none: enough to use every usable CPU at
    ``MAX_THREADS`` intra-op threads each (2 CPUs of quota: 1 worker of 2 threads; 16: 2 of 8)."""
    return max(1, math.ceil(usable_cpus() / MAX_THREADS))


def default_threads(workers: int = 1) -> int:
    """Intra-op threads when none are given: this process's share of the usable CPUs when ``workers``
    processes split them, capped at ``MAX_THREADS``."""
    return max(1, min(usable_cpus() // max(1, workers), MAX_THREADS))


def worker_split(workers: int | None, threads: int | None) -> tuple[int, int]:
    """(worker processes, intra-op threads each): the split above unless either is given."""
    count = workers or default_workers()
    return count, threads or default_threads(count)
