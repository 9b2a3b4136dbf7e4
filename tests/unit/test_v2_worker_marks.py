"""The v2 server's readiness marks and its split of the CPUs between worker processes."""

from __future__ import annotations

import subprocess
import sys

from convserve.hardware import cpu_share
from convserve.hardware.cpu_share import worker_split
from convserve.serving.v2_workers import (
    LOAD_FAILED_CODE,
    MAX_EARLY_DEATHS,
    WorkerPool,
    all_ready,
    mark_ready,
)


def test_ready_needs_a_mark_of_a_live_process_for_every_worker(tmp_path):
    assert not all_ready(tmp_path, 2)
    mark_ready(tmp_path, 0)
    assert all_ready(tmp_path, 1) and not all_ready(tmp_path, 2)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "1").write_text(dead.stdout.strip())  # a worker that died after it loaded
    assert not all_ready(tmp_path, 2)
    mark_ready(tmp_path, 1)
    assert all_ready(tmp_path, 2)
    (tmp_path / "1").write_text("garbage")
    assert not all_ready(tmp_path, 2)


def test_the_split_is_torchserves_unless_given(monkeypatch):
    monkeypatch.setattr(cpu_share, "usable_cpus", lambda: 16)  # the split's one input
    assert worker_split(None, None) == (2, 8)
    assert worker_split(4, None) == (4, 4)
    assert worker_split(3, 2) == (3, 2)
    monkeypatch.setattr(cpu_share, "usable_cpus", lambda: 2)
    assert worker_split(None, None) == (1, 2)
    assert worker_split(2, None) == (2, 1)


def test_a_worker_that_cannot_load_or_keeps_dying_early_stops_the_server():
    assert WorkerPool.fatal(LOAD_FAILED_CODE, 1, "exit code 3") == "could not load the model"
    assert WorkerPool.fatal(-9, 1, "signal 9") is None  # killed once: replaced
    assert "3 times before its model loaded (last: signal 9)" in WorkerPool.fatal(-9, MAX_EARLY_DEATHS, "signal 9")
