"""Run a sweep's points as ``training/train.py`` subprocesses, each in its own run folder.

Folder layout (SWEEP = --output-dir, default runs/sweeps/<name>):
  SWEEP/<point>/             the point's run folder (checkpoints, metrics.csv, summary.json, plots/)
  SWEEP/configs/<point>.yaml the point's config (base + its grid values), what train.py --config reads
  SWEEP/logs/<point>.log     the point's stdout and stderr
  SWEEP/stale/               folders of attempts that died before their first checkpoint, moved aside on a rerun
A point with summary.json is finished and skipped; one with checkpoints/last.pt is resumed (--resume); a failed
one is recorded as failed and the sweep goes on (a rerun tries it again).

Scheduling: one point at a time on CPU (points would only fight over the cores); with several CUDA GPUs, one
point per GPU at a time, each subprocess seeing only its GPU through CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

from convserve.common.errors import ConvserveError
from convserve.training.analysis.sweep_config import Sweep, SweepPoint
from convserve.training.records import holds_run

TRAIN_ARGS = ("-m", "convserve.training.train")  # what follows the interpreter: installed or a checkout alike


@dataclass
class PointOutcome:
    point: SweepPoint
    status: str = "pending"  # done | failed
    action: str = ""  # ran | resumed | skipped
    seconds: float = 0.0
    exit_code: int | None = None
    reason: str = ""


@dataclass
class _Running:
    outcome: PointOutcome
    process: subprocess.Popen
    log: object
    started: float
    slot: str | None = None


def say(message: str) -> None:
    print(message, flush=True)  # flushed: sweeps run for long and are often logged to a file


def default_slots() -> list[str | None]:
    """GPU ids to spread points over; [None] (one at a time, no CUDA_VISIBLE_DEVICES) without several GPUs."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [str(i) for i in range(count)] if count > 1 else [None]


def _write_point_config(root: Path, point: SweepPoint) -> Path:
    """The point's YAML; a sweep folder that ran this point with other settings is refused, not mixed."""
    path = root / "configs" / f"{point.name}.yaml"
    if path.is_file() and yaml.safe_load(path.read_text()) != point.tree:
        raise ConvserveError(
            f"{root} already ran point {point.name} with other settings ({path}); pick another --output-dir"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(point.tree, sort_keys=False))
    return path


def _move_stale(root: Path, run: Path) -> None:
    target = root / "stale" / f"{run.name}-{datetime.now():%Y%m%d-%H%M%S}"
    target.parent.mkdir(parents=True, exist_ok=True)
    run.rename(target)


def plan_action(root: Path, point: SweepPoint) -> str:
    run = root / point.name
    if (run / "summary.json").is_file():
        return "skipped"
    if (run / "checkpoints" / "last.pt").is_file():
        return "resumed"
    if holds_run(run):  # died before its first checkpoint: nothing worth resuming
        _move_stale(root, run)
    return "ran"


def _command(root: Path, point: SweepPoint, config: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, *TRAIN_ARGS, "--config", str(config), "--output-dir", str(root / point.name)]
    return [*cmd, "--resume"] if resume else cmd


def _failure_reason(log_path: Path) -> str:
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["no output"])[-1].removeprefix("error: ")[:300]


def _start(root: Path, outcome: PointOutcome, slot: str | None) -> _Running:
    point = outcome.point
    config = _write_point_config(root, point)
    env = dict(os.environ)
    if slot is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot
    log_path = root / "logs" / f"{point.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "a")  # noqa: SIM115 -- closed when the process ends
    log.write(f"# {datetime.now().isoformat(timespec='seconds')} {outcome.action}\n")
    log.flush()
    cmd = _command(root, point, config, outcome.action == "resumed")
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    return _Running(outcome, process, log, time.perf_counter(), slot)


def _finish(root: Path, job: _Running, code: int) -> PointOutcome:
    job.log.close()
    outcome = job.outcome
    outcome.seconds, outcome.exit_code = time.perf_counter() - job.started, code
    if code == 0 and (root / outcome.point.name / "summary.json").is_file():
        outcome.status = "done"
    else:
        outcome.status = "failed"
        outcome.reason = _failure_reason(root / "logs" / f"{outcome.point.name}.log")
    return outcome


def _plan(root: Path, outcomes: list[PointOutcome], echo: Callable[[str], None]) -> deque[tuple[int, PointOutcome]]:
    """Decide each point's action; the ones to run, numbered as in the grid."""
    pending: deque[tuple[int, PointOutcome]] = deque()
    for k, outcome in enumerate(outcomes, start=1):
        outcome.action = plan_action(root, outcome.point)
        if outcome.action == "skipped":
            outcome.status = "done"
            echo(f"[{k}/{len(outcomes)}] {outcome.point.name}: finished earlier, skipped")
        else:
            pending.append((k, outcome))
    return pending


def run_points(
    sweep: Sweep, root: Path, slots: list[str | None] | None = None, echo: Callable[[str], None] | None = None
) -> list[PointOutcome]:
    """Run every point not finished yet, one per slot at a time; returns the outcomes in grid order."""
    echo = echo or say
    slots = list(slots or default_slots())
    outcomes = [PointOutcome(p) for p in sweep.points]
    total, pending = len(outcomes), _plan(root, outcomes, echo)
    running: dict[str | None, tuple[int, _Running]] = {}
    try:
        while pending or running:
            for slot in [s for s in slots if s not in running][: len(pending)]:
                k, outcome = pending.popleft()
                running[slot] = (k, _start(root, outcome, slot))
                where = f" on GPU {slot}" if slot is not None else ""
                echo(
                    f"[{k}/{total}] {outcome.point.name}: {outcome.action}{where} (log: logs/{outcome.point.name}.log)"
                )
            time.sleep(0.2)
            for slot, (k, job) in list(running.items()):
                code = job.process.poll()
                if code is not None:
                    del running[slot]
                    done = _finish(root, job, code)
                    result = "done" if done.status == "done" else f"FAILED (exit {code}): {done.reason}"
                    echo(f"[{k}/{total}] {done.point.name}: {result} in {done.seconds:.1f} s")
    except BaseException:
        for _, job in running.values():  # never leave training processes behind
            job.process.terminate()
            job.process.wait()
            job.log.close()
        raise
    return outcomes
