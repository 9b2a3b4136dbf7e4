"""The trainer as users run it: real subprocesses, the embedded digits dataset, real files on disk."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from convserve.training import checkpoint_keeper
from convserve.training.results import ChosenEpoch
from tests.conftest import PYTHON, REPO, train_digits

pytestmark = pytest.mark.slow


def train(*args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(PYTHON), "training/train.py", *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_run_folder_holds_everything_promised(digits_run):
    run = digits_run("mlp", 2)
    for name in ("config.yaml", "metrics.csv", "summary.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    rows = _metrics_rows(run)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert {"train_loss", "val_loss", "train_acc1", "val_acc5", "lr", "epoch_seconds"} <= set(rows[0])
    summary = json.loads((run / "summary.json").read_text())
    for key in ("test_acc1", "test_acc5", "per_class_acc", "confusion_matrix", "best_epoch", "wall_time_s",
                "images_per_s", "peak_rss_mb", "peak_gpu_mem_mb"):  # fmt: skip
        assert key in summary, key
    assert summary["peak_gpu_mem_mb"] is None and summary["peak_rss_mb"] > 100
    # the precision that ran (never "auto") and the training rate against this machine's measured GEMM rate
    assert summary["precision"] in ("fp32", "bf16") and summary["precision_reason"].startswith("auto")
    assert yaml.safe_load((run / "config.yaml").read_text())["run"]["precision"] == summary["precision"]
    assert summary["train_flops_per_image"] > 1e6  # MLP 3072-512-256-10, forward + backward: ~10 MFLOP
    assert summary["train_gflops_per_s"] == pytest.approx(
        summary["train_flops_per_image"] * summary["images_per_s"] / 1e9
    )
    rate = summary["matmul_gflops_per_s"][summary["matmul_fraction_basis"]]
    assert rate > 0 and summary["matmul_fraction"] == pytest.approx(summary["train_gflops_per_s"] / rate)
    assert summary["memory_read_gbs"] > 0 and summary["threads"] >= 1
    assert set(summary["per_class_acc"]) == {str(d) for d in range(10)}
    matrix = summary["confusion_matrix"]
    assert sum(map(sum, matrix)) == summary["test_count"] == 270
    correct = sum(matrix[i][i] for i in range(10))
    assert abs(100 * correct / 270 - summary["test_acc1"]) < 1e-9
    # by default best.pt is the last epoch (the test measures it); best_val_acc1 is still the highest of any epoch
    assert (summary["selected_by"], summary["best_epoch"]) == ("last", 1)
    assert summary["best_val_acc1"] == pytest.approx(max(float(r["val_acc1"]) for r in rows))
    assert summary["selected_val_acc1"] == pytest.approx(float(rows[1]["val_acc1"]))
    payload = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert payload["epoch"] == summary["best_epoch"] and payload["class_names"] == [str(d) for d in range(10)]


def test_auto_precision_is_fp32_where_bf16_is_emulated_and_forcing_it_warns(tmp_path):
    """The real trainer under oneDNN capped at AVX2 (no native bf16, as on a Zen 3 or most laptops)."""
    avx2 = {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    small = ["--model", "mlp", "--epochs", "1", "--input-size", "8"]
    auto = train(*small, "--output-dir", str(tmp_path / "auto"), env=avx2)
    assert auto.returncode == 0, auto.stderr
    assert "fp32 (auto: this CPU has no native bf16" in auto.stdout and "warning" not in auto.stderr
    assert json.loads((tmp_path / "auto" / "summary.json").read_text())["precision"] == "fp32"
    forced = train(*small, "--precision", "bf16", "--output-dir", str(tmp_path / "forced"), env=avx2)
    assert forced.returncode == 0, forced.stderr
    warnings = [line for line in forced.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "emulated" in warnings[0], forced.stderr
    summary = json.loads((tmp_path / "forced" / "summary.json").read_text())
    assert summary["precision"] == "bf16" and summary["matmul_fraction_basis"] == "fp32"


def test_checkpoint_every_still_leaves_the_best_and_the_last_epoch(tmp_path, monkeypatch):
    """best.pt of an epoch no last.pt write caught must come from memory, not from last.pt.

    Which epoch scores best on validation depends on the CPU's arithmetic (a diverging learning rate picked epoch
    1 on one CPU and epoch 3 on another), so this run's validation rule is pinned to "the first epoch": the
    training, the writes and the final test are real.
    """
    monkeypatch.setattr(checkpoint_keeper, "is_better", lambda val, best: best.epoch < 0)
    run = train_digits(tmp_path / "sparse", "mlp", 3, checkpoint_every=2, select="best-val")
    summary = json.loads((run / "summary.json").read_text())
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert last["epoch"] == 2 and last["train_state"] is not None
    assert best["epoch"] == summary["best_epoch"] == 0 and best["train_state"] is None
    assert summary["selected_by"] == "best-val"
    rows = _metrics_rows(run)
    assert best["metrics"]["val_acc1"] == pytest.approx(float(rows[0]["val_acc1"])) == summary["selected_val_acc1"]
    assert not torch.equal(best["model_state"]["net.1.weight"], last["model_state"]["net.1.weight"])
    out = subprocess.run([str(PYTHON), "training/evaluate.py", str(run / "checkpoints/best.pt"), "--json"],
                         cwd=REPO, capture_output=True, text=True, check=True)  # fmt: skip
    assert json.loads(out.stdout)["acc1"] == pytest.approx(summary["test_acc1"])


def test_best_val_prefers_accuracy_then_the_lower_loss():
    best = ChosenEpoch(epoch=3, val_acc1=98.0, val_loss=0.20)
    is_better = checkpoint_keeper.is_better
    assert is_better(SimpleNamespace(acc1=98.5, loss=0.90), best)
    assert is_better(SimpleNamespace(acc1=98.0, loss=0.10), best)
    assert not is_better(SimpleNamespace(acc1=98.0, loss=0.20), best)  # a full tie keeps the earlier
    assert not is_better(SimpleNamespace(acc1=97.9, loss=0.01), best)


def test_a_diverging_run_stops_with_one_line_and_keeps_its_run_folder(tmp_path):
    run = tmp_path / "diverged"
    proc = train("--model", "mlp", "--epochs", "2", "--optimizer", "sgd", "--lr", "10", "--warmup-epochs", "0",
                 "--schedule", "constant", "--output-dir", str(run))  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if "diverged" in line]
    assert len(error) == 1 and "epoch 1" in error[0] and "lower --lr" in error[0], proc.stderr
    assert (run / "config.yaml").is_file() and not (run / "checkpoints" / "last.pt").exists()


def test_evaluate_cli_matches_the_summary(digits_run):
    run = digits_run("mlp", 2)
    out = subprocess.run([str(PYTHON), "training/evaluate.py", str(run / "checkpoints/best.pt"), "--json"],
                         cwd=REPO, capture_output=True, text=True, check=True)  # fmt: skip
    result = json.loads(out.stdout)
    summary = json.loads((run / "summary.json").read_text())
    assert result["count"] == 270 and abs(result["acc1"] - summary["test_acc1"]) < 1e-9
    text = subprocess.run([str(PYTHON), "training/evaluate.py", str(run / "checkpoints/best.pt"), "--split", "val"],
                          cwd=REPO, capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "Test: [" in text and " *   Acc@1 " in text and "Acc@5" in text and "per-class accuracy" in text


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "vgg"], "invalid choice: 'vgg'"),
        (["--dataset", "imagenet21k"], "invalid choice: 'imagenet21k'"),
        (["--lr", "0"], "optim.lr"),
        (["--dataset", "imagefolder", "--data-dir", "/nonexistent/folder"], "/nonexistent/folder"),
        (["--model", "alexnet", "--input-size", "32"], "at least 63 px"),
        (["--resume"], "--resume needs --output-dir"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, needle, tmp_path):
    proc = train(*args, "--epochs", "1", timeout=120) if "--resume" not in args else train(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def test_existing_run_is_never_overwritten(digits_run):
    run = digits_run("mlp", 2)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    proc = train("--model", "mlp", "--epochs", "1", "--output-dir", str(run), timeout=120)
    assert proc.returncode == 2 and "already holds a run" in proc.stderr
    assert before == {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}


@pytest.mark.parametrize("checkpoint", ["corrupt", "pickled", "other-arch"])
def test_evaluate_refuses_bad_checkpoints(checkpoint, tmp_path, digits_run):
    path = tmp_path / "x.pt"
    if checkpoint == "corrupt":
        good = (digits_run("mlp", 2) / "checkpoints/best.pt").read_bytes()
        path.write_bytes(good[: len(good) // 2])
        needle = "not"
    elif checkpoint == "pickled":
        torch.save({"format": "convserve.checkpoint/v1", "arch": Path("/etc")}, path)
        needle = "pickled Python objects"
    else:
        path = digits_run("mlp", 2) / "checkpoints/best.pt"
        needle = "is a mlp model, not alexnet"
    if checkpoint == "other-arch":
        cmd = [str(PYTHON), "-c", "from convserve.models.checkpoint import load_checkpoint as l; import sys; "
               "from convserve.common.errors import run_cli; "
               "run_cli(lambda a: l(sys.argv[1], expected_arch='alexnet') and 0)", str(path)]  # fmt: skip
    else:
        cmd = [str(PYTHON), "training/evaluate.py", str(path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def _metrics_rows(run: Path) -> list[dict]:
    try:
        with open(run / "metrics.csv", newline="") as fh:
            return list(csv.DictReader(fh))
    except FileNotFoundError:
        return []


def _comparable(run: Path) -> tuple[dict, list[dict]]:
    summary = json.loads((run / "summary.json").read_text())
    keep = ("test_acc1", "test_acc5", "test_loss", "per_class_acc", "confusion_matrix", "best_epoch", "best_val_acc1")
    rows = [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in _metrics_rows(run)]
    return {k: summary[k] for k in keep}, rows


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path):
    # with a weight average: both the raw weights and the average must come back
    args = [
        "--model",
        "mlp",
        "--epochs",
        "5",
        "--batch-size",
        "8",
        "--deterministic",
        "--seed",
        "3",
        "--ema-decay",
        "0.9",
    ]
    assert train(*args, "--output-dir", str(tmp_path / "straight")).returncode == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen([str(PYTHON), "training/train.py", *args, "--output-dir", str(killed)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while len(_metrics_rows(killed)) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
    done = len(_metrics_rows(killed))
    assert 2 <= done < 5
    torch.load(killed / "checkpoints" / "last.pt", weights_only=True)  # intact after the kill
    resumed = train("--resume", "--output-dir", str(killed))
    assert resumed.returncode == 0, resumed.stderr
    assert _comparable(killed) == _comparable(tmp_path / "straight")


def test_torchrun_two_processes_evaluates_every_sample_once(tmp_path, digits_run):
    single = json.loads((digits_run("mlp", 2) / "summary.json").read_text())
    proc = subprocess.run(
        [str(PYTHON.with_name("torchrun")), "--standalone", "--nproc_per_node", "2", "training/train.py",
         "--model", "mlp", "--epochs", "2", "--output-dir", str(tmp_path / "ddp")],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    ddp = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert ddp["world_size"] == 2
    assert ddp["test_count"] == single["test_count"] == 270
    assert sum(map(sum, ddp["confusion_matrix"])) == 270
    assert ddp["test_acc1"] > 50  # it really trained (chance is 10%)
    assert len(_metrics_rows(tmp_path / "ddp")) == 2  # only rank 0 wrote
    # the ranks' all-reduced test figures are what one process measures on the same weights
    alone = subprocess.run([str(PYTHON), "training/evaluate.py", str(tmp_path / "ddp/checkpoints/best.pt"), "--json"],
                           cwd=REPO, capture_output=True, text=True, check=True)  # fmt: skip
    measured = json.loads(alone.stdout)
    assert measured["acc1"] == pytest.approx(ddp["test_acc1"]) and measured["count"] == ddp["test_count"]
    assert measured["confusion_matrix"] == ddp["confusion_matrix"]


def test_profile_step_prints_the_rate_and_where_the_time_goes():
    proc = subprocess.run(
        [str(PYTHON), "training/profile_step.py", "--model", "mlp", "--input-size", "8", "--precision", "fp32"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "mlp 8px batch 64 fp32" in proc.stdout and "% of the measured fp32 matmul rate" in proc.stdout
    groups = {line[2:17].strip(): line[17:].split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")}
    assert {"matmul", "optimizer"} <= set(groups) and all(float(v) >= 0 for v in groups.values())
    assert not (REPO / "runs").exists() or not list((REPO / "runs").glob("*-mlp-digits"))
