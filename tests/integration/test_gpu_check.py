"""scripts/gpu_check.sh as a user runs it: ``--dry-run`` on this CPU (every row, tiny sizes), the one-line
refusal without a GPU, and (marked gpu, run on a CUDA machine) the real check passing."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch

from tests.conftest import PYTHON, REPO

pytestmark = pytest.mark.slow

ROWS = [
    "train-autocast",
    "train-fp16-gradscaler",
    "throughput-alexnet",
    "throughput-resnet18",
    "torchrun-eval-count",
    "export-parity",
    "fp16-half-model",
    "serve-eager",
    "serve-torchscript",
    "kill9-resume",
]
GPU_ONLY_TARGETS = {"train-autocast", "train-fp16-gradscaler", "throughput-alexnet", "throughput-resnet18"}


def gpu_check(*args: str, timeout: int, **extra_env: str) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}, "PYTHON": str(PYTHON), **extra_env}
    return subprocess.run(["bash", "scripts/gpu_check.sh", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip


def read_report(out) -> tuple[dict, str]:
    return json.loads((out / "gpu_report.json").read_text()), (out / "gpu_report.md").read_text()


def test_dry_run_writes_both_reports_with_every_row_and_prints_the_table_last(tmp_path):
    out = tmp_path / "report"
    proc = gpu_check("--dry-run", str(out), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report, md = read_report(out)
    assert report["mode"] == "dry-run" and report["device"] == "cpu" and report["passed"] is True
    assert [r["name"] for r in report["rows"]] == ROWS and report["not_run"] == []
    for row in report["rows"]:
        assert row["status"] == "PASS", row
        assert row["figure"].strip() and row["detail"].strip() and row["target"].strip()
        assert (row["target"] == "n/a on dry run") == (row["name"] in GPU_ONLY_TARGETS), row
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["train-fp16-gradscaler"]["metrics"]["precision"] == "fp16"
    assert rows["torchrun-eval-count"]["metrics"]["test_count"] == rows["train-autocast"]["metrics"]["test_count"]
    torchrun = rows["torchrun-eval-count"]["metrics"]
    assert torchrun["backend"] == "gloo" and torchrun["world_size"] == 2  # two ranks really reduce on a dry run
    assert torchrun["single_process_acc1"] == pytest.approx(torchrun["test_acc1"])  # all-reduced = one process
    assert rows["fp16-half-model"]["metrics"]["finite"] is True
    assert rows["fp16-half-model"]["metrics"]["agree"] == rows["fp16-half-model"]["metrics"]["images"]
    assert "warm-up" in rows["throughput-alexnet"]["figure"]
    assert rows["throughput-alexnet"]["metrics"]["synthetic_data"] is True
    assert rows["throughput-alexnet"]["metrics"]["images_per_s"] > 0
    assert rows["export-parity"]["metrics"]["onnx-fp16"]["passed"] is True
    assert rows["kill9-resume"]["metrics"]["metric_epochs"] == [0, 1]
    assert report["machine"]["cpu_model"] and report["machine"]["load_average_end"]
    for name in ROWS:
        assert f"| {name} | PASS |" in md
    assert "n/a on dry run" in md and "synthetic" in md
    table = proc.stdout.strip().splitlines()
    assert table[-1].startswith("overall: PASS") and str(out) in table[-1]
    assert [line.split()[0] for line in table[-len(ROWS) - 1 : -1]] == ROWS


BROKEN_PLAN = """
import dataclasses, sys, time
from pathlib import Path
from gpu_check.plan import dry_plan
from gpu_check.suite import Options, run_all
plan = dataclasses.replace(dry_plan(1, False), train_args=("--model", "nope"), kill_args=("--model", "nope"),
                           throughput=())
out, work = Path(sys.argv[1]), Path(sys.argv[2])
sys.exit(run_all(Options(plan, out, work, False, "broken plan", [], time.perf_counter())))
"""


def test_a_check_that_breaks_is_a_fail_row_the_rest_still_report_and_the_exit_is_1(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'scripts'}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(PYTHON), "-c", BROKEN_PLAN, str(tmp_path / "out"), str(tmp_path / "work")], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    report, md = read_report(tmp_path / "out")
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == set(ROWS) - {"throughput-alexnet", "throughput-resnet18"} and not report["passed"]
    assert all(r["status"] == "FAIL" and "invalid choice: 'nope'" in r["figure"] for r in rows.values())
    assert "the autocast digits run failed" in rows["serve-eager"]["figure"]  # failures reach their dependents
    assert f"run folders and logs kept in {tmp_path / 'work'}" in md  # kept for a look at what failed
    assert proc.stdout.strip().splitlines()[-1].startswith("overall: FAIL")


def test_without_a_gpu_the_real_check_refuses_in_one_line_and_writes_nothing(tmp_path):
    proc = gpu_check(str(tmp_path / "report"), timeout=120, CUDA_VISIBLE_DEVICES="")  # no GPU, even on a GPU host
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: no CUDA GPU visible to torch here; --dry-run runs the same checks on the CPU"
    assert not (tmp_path / "report").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_gpu_check_passes_on_this_gpu(tmp_path):
    out = tmp_path / "report"
    proc = gpu_check(str(out), timeout=900)
    report, _ = read_report(out)
    failed = [f"{r['name']}: {r['figure']}" for r in report["rows"] if r["status"] != "PASS"]
    assert proc.returncode == 0 and not failed, "\n".join(failed) or proc.stderr[-3000:]
    assert report["mode"] == "gpu" and [r["name"] for r in report["rows"]] == ROWS
