"""Training on the GPU: digits under autocast and under forced fp16 with the GradScaler against the CPU fp32 run
of the same preset; kill -9 during an epoch, then --resume."""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpu_check.context import Context
from gpu_check.plan import ACC_FLOOR_PCT, BF16_CAPABILITY
from gpu_check.report import Row, verdict
from gpu_check.runs import REPO, RunFailed, call_cli, child_env, python_cmd, run_logged, tail


@dataclass(frozen=True)
class TrainedRun:
    folder: Path
    summary: dict[str, Any]
    epoch_seconds: list[float]

    @property
    def median_epoch_s(self) -> float:
        return statistics.median(self.epoch_seconds) if self.epoch_seconds else float("nan")


def train_digits(ctx: Context, name: str, device: str, precision: str) -> TrainedRun:
    """``training/train.py`` (its main, in this process) with the plan's preset on ``device``."""
    from convserve.training import train
    from convserve.training.records import read_metrics

    folder = ctx.work / name
    argv = [*ctx.plan.train_args, "--device", device, "--precision", precision, "--output-dir", str(folder)]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()  # summary's peak_gpu_mem_mb: this run's, not an earlier one's
    call_cli(train.main, [*argv, "--print-freq", "1000"], ctx.log(name))
    summary = json.loads((folder / "summary.json").read_text())
    seconds = [row["epoch_seconds"] for row in read_metrics(folder / "metrics.csv")]
    return TrainedRun(folder, summary, seconds)


def cpu_reference(ctx: Context) -> TrainedRun:
    return ctx.once("the CPU fp32 reference run", lambda: train_digits(ctx, "reference-cpu-fp32", "cpu", "fp32"))


def autocast_run(ctx: Context) -> TrainedRun:
    """The digits run on the plan's device under --precision auto: torchrun and export use it too."""
    return ctx.once("the autocast digits run", lambda: train_digits(ctx, "train-autocast", ctx.plan.device, "auto"))


def expected_auto_precision(device: str) -> str:
    """What ``--precision auto`` must pick, read from the device itself rather than from the trainer's own
    choice: bf16 from compute capability 8.0 (Ampere) on, fp16 with the GradScaler before it; on a CPU (the dry
    run), bf16 where the hardware layer finds native bf16."""
    if device == "cuda":
        return "bf16" if torch.cuda.get_device_capability() >= BF16_CAPABILITY else "fp16"
    from convserve.hardware.cpu_features import cpu_native_bf16

    return "bf16" if cpu_native_bf16() else "fp32"


def scaler_state(folder: Path) -> dict[str, Any] | None:
    """The GradScaler state last.pt carries for --resume (None: the run kept none)."""
    from convserve.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(folder / "checkpoints" / "last.pt", with_train_state=True)
    return (ckpt.train_state or {}).get("scaler")


def _train_row(ctx: Context, name: str, run: TrainedRun, expected: str, extra: list[str], extra_ok: bool) -> Row:
    plan, s = ctx.plan, run.summary
    ref = cpu_reference(ctx)
    delta = s["test_acc1"] - ref.summary["test_acc1"]
    peak = s.get("peak_gpu_mem_mb")
    checks = [s["precision"] == expected, s["test_count"] > 0, extra_ok]
    if not plan.dry_run:
        checks += [s["test_acc1"] >= ACC_FLOOR_PCT, peak is not None and peak > 0]
    peak_text = f"peak GPU {peak:.0f} MB" if peak else "peak_gpu_mem_mb empty" + (" (CPU)" if plan.dry_run else "")
    figure = (
        f"test top-1 {s['test_acc1']:.2f} % (CPU fp32 {ref.summary['test_acc1']:.2f} %, Δ {delta:+.2f} pt) in "
        f"{s['precision']}; {peak_text}; {run.median_epoch_s:.2f} s/epoch (CPU fp32 {ref.median_epoch_s:.2f} s)"
        + "".join(f"; {e}" for e in extra)
    )
    return Row(
        name,
        verdict(all(checks)),
        figure,
        plan.target(f"test top-1 ≥ {ACC_FLOOR_PCT:g} %; {expected} (from the device); GPU memory measured > 0"),
        f"`training/train.py {' '.join(ctx.plan.train_args)} --device {plan.device}` ({s['epochs']} epoch(s), "
        f"{s['test_count']} {s['test_split']} images; precision {s['precision']}: {s['precision_reason']}) against "
        f"the same preset with `--device cpu --precision fp32` in the same command; s/epoch is the median of "
        "metrics.csv's epoch_seconds (training steps only). Validation and test run in fp32 (as the export serves).",
        {
            "test_acc1": s["test_acc1"],
            "reference_cpu_fp32_acc1": ref.summary["test_acc1"],
            "delta_pt": delta,
            "precision": s["precision"],
            "peak_gpu_mem_mb": peak,
            "epoch_seconds": run.epoch_seconds,
            "reference_epoch_seconds": ref.epoch_seconds,
            "test_count": s["test_count"],
        },
    )


def check_train_autocast(ctx: Context) -> Row:
    """--precision auto on the GPU (bf16 where it has it natively, else fp16 with the GradScaler)."""
    run = autocast_run(ctx)
    expected = expected_auto_precision(ctx.plan.device)
    return _train_row(ctx, "train-autocast", run, expected, [], True)


def check_train_fp16(ctx: Context) -> Row:
    """--precision fp16: autocast in float16 with the GradScaler, whose state last.pt must carry."""
    run = train_digits(ctx, "train-fp16-gradscaler", ctx.plan.device, "fp16")
    state = scaler_state(run.folder)
    scale = float(state["scale"]) if state and state.get("scale") is not None else None
    extra = [f"GradScaler scale {scale:g} in last.pt" if scale else "no GradScaler state in last.pt"]
    return _train_row(ctx, "train-fp16-gradscaler", run, "fp16", extra, bool(scale))


EPOCH_LINE = re.compile(r"^Epoch: \[(\d+)\]\[\s*(\d+)/(\d+)\]")  # train_one_epoch's progress line
START_LINE = re.compile(r"^epoch (\d+)/(\d+)\s")  # the line after each epoch, 1-based


def kill_inside_second_epoch(cmd: list[str], log: Path, timeout_s: int) -> tuple[int, int, int] | None:
    """Start ``cmd``; SIGKILL it at its first progress line of epoch 1 (0-based) that is not the epoch's last
    batch. Returns (epoch, batch, batches) where it was killed, None when it ended first."""
    with open(log, "w") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)  # fmt: skip
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        where = None
        try:
            for line in proc.stdout:
                fh.write(line)
                m = EPOCH_LINE.match(line)
                if m and int(m[1]) >= 1 and int(m[2]) < int(m[3]):
                    os.kill(proc.pid, signal.SIGKILL)
                    where = (int(m[1]), int(m[2]), int(m[3]))
                    break
        finally:
            proc.wait()
            timer.cancel()
            proc.stdout.close()
        fh.write(f"[gpu_check] killed with SIGKILL at {where}, exit {proc.returncode}\n")
    return where


def check_kill_resume(ctx: Context) -> Row:
    from convserve.models.checkpoint import load_checkpoint
    from convserve.training.records import read_metrics

    plan, folder = ctx.plan, ctx.work / "kill9"
    epochs = plan.kill_epochs
    argv = [*plan.kill_args, "--device", plan.device, "--epochs", str(epochs), "--checkpoint-every", "1"]
    log = ctx.log("kill9-run")
    cmd = python_cmd("training/train.py", *argv, "--print-freq", "1", "--output-dir", str(folder))
    where = kill_inside_second_epoch(cmd, log, plan.timeout_s)
    if where is None:
        raise RunFailed(f"the run ended before it could be killed: {tail(log)}")
    finished_anyway = (folder / "summary.json").exists()
    saved = load_checkpoint(folder / "checkpoints" / "last.pt").epoch  # intact after the kill, or this raises
    resume_log = ctx.log("kill9-resume")
    run_logged(python_cmd("training/train.py", "--resume", "--output-dir", str(folder), "--print-freq", "1000"),
               resume_log, plan.timeout_s)  # fmt: skip
    starts = [int(m[1]) for line in resume_log.read_text().splitlines() if (m := START_LINE.match(line))]
    rows = [int(r["epoch"]) for r in read_metrics(folder / "metrics.csv")]
    summary = json.loads((folder / "summary.json").read_text())
    first = starts[0] if starts else None  # 1-based epoch the resumed run completed first
    ok = not finished_anyway and first == saved + 2 and rows == list(range(epochs)) and summary["epochs"] == epochs
    epoch, batch, batches = where
    return Row(
        "kill9-resume",
        verdict(ok),
        f"SIGKILL in epoch {epoch + 1}/{epochs} after batch {batch}/{batches}; last.pt held epoch {saved + 1}; "
        f"--resume ran epochs {first}-{starts[-1] if starts else '?'}; metrics.csv epochs {[r + 1 for r in rows]}; "
        f"test top-1 {summary['test_acc1']:.2f} %",
        "resumes from the epoch after last.pt's and finishes every epoch once",
        f"`training/train.py {' '.join(argv)}` on {plan.device} with last.pt every epoch, killed with SIGKILL as "
        "soon as it printed a batch of its second epoch that was not the epoch's last; then `training/train.py "
        "--resume --output-dir RUN` (its config.yaml). Checked: no summary.json before the resume, last.pt loads, "
        "the resumed run's first epoch is the one after last.pt's, metrics.csv lists every epoch once.",
        {
            "killed_at": {"epoch": epoch, "batch": batch, "batches": batches},
            "last_pt_epoch": saved,
            "resumed_epochs": starts,
            "metric_epochs": rows,
        },  # fmt: skip
    )
