"""benchmarking/compare_servers.py --quick for real: TorchServe and the v2 server, one after the other, on a small
artifact with real photos; both rows measured, nothing failed, the machine and its load stated. With --capacity:
TorchServe's default deployment searched open loop, kinds the artifact cannot serve (no int8 file, an MLP for the
stock handler) listed with their reasons, the figures kept those of the step that held at the capacity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from convserve.hardware.cpu_share import worker_split
from convserve.serving.archive_settings import ArchiveSettings
from tests.serving_helpers import build_artifact, random_run

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_quick_comparison_measures_both_servers(tmp_path, photos):
    artifact = build_artifact(random_run(tmp_path / "run", channels=3), tmp_path / "artifact", formats=("onnx",))
    out = tmp_path / "out"
    cmd = [sys.executable, "benchmarking/compare_servers.py", "--artifact", str(artifact), "--output-dir", str(out)]
    cmd += ["--quick", "--images", str(photos["chelsea"]), str(photos["camera"])]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    torchserve, v2 = results["servers"]
    assert torchserve["server"] == "TorchServe (no batching)"
    workers, threads = worker_split(None, None)  # the v2 server's default split of this machine's CPUs
    assert v2["server"].startswith(f"v2 server, KServe ModelServer ({workers} worker")
    assert f"× {threads} thread" in v2["server"] and "batch 16 / 2 ms" in v2["server"]
    for s in (torchserve, v2):
        assert s["errors"] == {} and s["latency_c1"]["count"] >= 1 and s["throughput_rps"] > 0
        assert s["cold_start_s"] > 0 and s["rss_mb"] > 0 and s["cpu_ms_per_request"] > 0
    assert v2["request_form"] == "v2 binary extension"
    assert set(v2["rss_by_role_mb"]) == {"supervisor", "worker"}  # every process of the server counted
    table = (out / "results.md").read_text()
    assert results["machine"]["cpu_model"] in table and "load average" in table
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "--force" in again.stderr


def test_quick_capacity_of_the_default_deployment(tmp_path, photos):
    artifact = build_artifact(random_run(tmp_path / "run", channels=3), tmp_path / "artifact", formats=("onnx",))
    out = tmp_path / "out"
    cmd = [sys.executable, "benchmarking/compare_servers.py", "--artifact", str(artifact), "--output-dir", str(out)]
    cmd += ["--quick", "--capacity", "onnx", "onnx-int8", "stock", "--images", str(photos["chelsea"])]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    results = json.loads((out / "capacity.json").read_text())
    (row,) = results["kinds"]
    assert row["kind"] == "onnx" and row["handler"] == "convserve", done.stdout[-3000:]
    default = ArchiveSettings()
    assert row["settings"].startswith(f"batch {default.batch_size} / {default.max_batch_delay_ms} ms")
    assert {s["kind"] for s in results["skipped"]} == {"onnx-int8", "stock"}
    assert done.returncode == (0 if row["capacity_rps"] is not None else 1), done.stderr[-3000:]
    steps = row["search"]["steps"]
    assert steps and len(steps) <= 12 and row["search"]["stopped_by"]
    if row["capacity_rps"] is not None:
        held = row["at_capacity"]
        assert held["offered_rate"] == pytest.approx(row["capacity_rps"], rel=0.05)
        assert held["latency"]["p99_ms"] <= results["p99_ms"] and held["valid"]
        assert held["server"]["requests"] >= 1 and held["avg_batch_size"] >= 1  # TorchServe's counters, our header
    table = (out / "capacity.md").read_text()
    assert results["machine"]["cpu_model"] in table and "| onnx | convserve |" in table
    assert "stock: not measured" in table and "onnx-int8: not measured" in table
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "--force" in again.stderr
