"""benchmarking/choose_batching.py for real, in a tiny run: both servers serve each candidate setting, the table
names every setting with its batch sizes (from the servers' X-Convserve-Batch-Size), the rule's verdict is printed.
Figures are not judged (a few requests each)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.serving_helpers import build_artifact, random_run

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("server", ["torchserve", "v2"])
def test_a_tiny_sweep_serves_every_setting_and_prints_the_verdict(tmp_path, server):
    artifact = build_artifact(random_run(tmp_path / "run", channels=3), tmp_path / "artifact", formats=("onnx",))
    cmd = [sys.executable, "benchmarking/choose_batching.py", "--artifact", str(artifact), "--server", server]
    cmd += ["--candidates", "1", "4:2", "--rounds", "1", "--latency-requests", "3", "--duration", "1"]
    cmd += ["--concurrency", "8", "--output", str(tmp_path / "batching.md")]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    table = (tmp_path / "batching.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| no batching") or line.startswith("| batch 4/2")]
    assert len(rows) == 2 and all("| 0 |" in row for row in rows)  # no errors
    assert "–" not in rows[1].split("|")[8]  # the batch sizes the server reported at concurrency 8
    assert ("one v2 server per setting" in table) == (server == "v2")
    assert "the default (batch 16/2 ms)" in table  # the verdict on the shipped default, measured or not
