"""The whole check: every row in order, the report rewritten after each, the short table printed last."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from convserve.common.errors import first_line
from gpu_check.context import Context
from gpu_check.plan import Plan
from gpu_check.report import Report, Row, machine_facts, table
from gpu_check.serving_checks import check_export, check_half_model, check_serve
from gpu_check.throughput import check_throughput
from gpu_check.torchrun_check import check_torchrun
from gpu_check.training_checks import check_kill_resume, check_train_autocast, check_train_fp16

Check = tuple[str, Callable[[Context], Row]]


def checks(plan: Plan) -> list[Check]:
    """(row name, the function producing that row), in the order they run."""
    return [
        ("train-autocast", check_train_autocast),
        ("train-fp16-gradscaler", check_train_fp16),
        *((f"throughput-{case.arch}", partial(check_throughput, case=case)) for case in plan.throughput),
        ("torchrun-eval-count", check_torchrun),
        ("export-parity", check_export),
        ("fp16-half-model", check_half_model),
        ("serve-eager", partial(check_serve, backend="eager")),
        ("serve-torchscript", partial(check_serve, backend="torchscript")),
        ("kill9-resume", check_kill_resume),
    ]


def failed_row(name: str, exc: BaseException) -> Row:
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    where = " < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames))
    return Row(name, "FAIL", f"did not complete: {first_line(exc)}", "-", f"{type(exc).__name__} at {where}")


@dataclass
class Options:
    plan: Plan
    out: Path
    work: Path
    keep_work: bool
    command: str
    installed_wheels: list[str]
    started: float  # time.perf_counter() when the command began: the report's wall time counts from it


class CheckTimeout(Exception):
    """A check ran past the plan's limit for one check."""


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Interrupt this (main) thread's check after ``seconds`` with CheckTimeout. Checks started in the
    background run subprocesses only, each under its own timeout."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise CheckTimeout(f"over the {seconds} s limit of one check")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def timed(check: Callable[[Context], Row], name: str, ctx: Context) -> Row:
    began = time.perf_counter()
    try:
        with time_limit(ctx.plan.check_limit_s):
            row = check(ctx)
    except Exception as exc:  # a check that breaks (or runs past its limit) is a FAIL row; the others still run
        row = failed_row(name, exc)
    row.seconds = time.perf_counter() - began
    return row


def _record(report: Report, row: Row, start: float, order: list[str]) -> None:
    report.rows = sorted([*report.rows, row], key=lambda r: order.index(r.name))  # the checks' order
    report.pending.remove(row.name)
    report.wall_s = time.perf_counter() - start
    report.write()
    print(f"[{report.wall_s:5.0f} s] {row.status} {row.name}: {row.figure}", flush=True)


def run_all(options: Options) -> int:
    plan, start = options.plan, options.started
    report = Report(options.out, plan.mode, options.command, plan.budget_s, installed_wheels=options.installed_wheels)
    todo = checks(plan)
    order = [name for name, _ in todo]
    report.pending = list(order)
    report.machine = machine_facts(plan.device)
    report.notes = list(plan.notes)
    report.write()
    ctx = Context(plan, options.work)
    with ThreadPoolExecutor(max_workers=max(1, len(plan.background))) as pool:
        started: dict[str, Future[Row]] = {
            name: pool.submit(timed, check, name, ctx) for name, check in todo if name in plan.background
        }
        for name, check in todo:
            if name not in started:
                _record(report, timed(check, name, ctx), start, order)
        for future in started.values():
            _record(report, future.result(), start, order)
    report.machine["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    if report.over_budget:
        report.notes.append(f"FAIL: ran {report.wall_s:.0f} s, over the {plan.budget_s} s budget")
    if options.keep_work or not report.passed:
        report.notes.append(f"run folders and logs kept in {options.work}")
    else:
        shutil.rmtree(options.work, ignore_errors=True)
    report.write()
    print(table(report), flush=True)
    return 0 if report.passed else 1
