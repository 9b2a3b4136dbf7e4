"""Capacity search: the highest open-loop rate a server holds for a full step within a p99 and an error bound.

Steps run open-loop (loadtest/open_loop.py) at one rate each for ``step_duration_s``: the rate doubles from
``start_rate`` until a step fails (or ``max_rate`` is reached), then bisects between the highest passing and the
lowest failing rate until they are within ``resolution`` of each other. A step passes when the client kept up
(its result is valid), at least one answer was 2xx, p99 ≤ ``p99_ms`` and the error rate ≤ ``max_error_rate``.

Bounded: at most ``max_steps`` steps, and no step starts that could end after ``max_total_s`` (a step takes its
duration plus, at worst, the request timeout to drain). A step the client could not generate runs once more
(a stall of a shared machine passes); twice in a row ends the search: what the server would do at that rate is
unknown, and the report says so.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict

from convserve.common.errors import ConvserveError
from convserve.loadtest.open_loop import OpenLoopPlan, OpenLoopResult, run_open_loop_sync

StopReason = Literal["converged", "max_rate", "max_steps", "max_duration", "client", "nothing_passed"]


class CapacityStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rate: float
    passed: bool
    why: str  # "ok" or what failed
    result: OpenLoopResult


class CapacityResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str
    p99_ms: float
    max_error_rate: float
    step_duration_s: float
    capacity: float | None  # highest passing rate (req/s); None when no step passed
    stopped_by: StopReason
    note: str
    steps: list[CapacityStep]


def judge(result: OpenLoopResult, p99_ms: float, max_error_rate: float) -> tuple[bool, str]:
    """Whether one step holds the bounds, and what failed."""
    if result.client_lagged:
        return False, f"client could not generate the load: {result.invalid_reason}"
    if result.stopped_by == "hard_cap":
        return False, "the time ran out before every answer came"
    if result.dropped_sends:  # the server held max_in_flight requests: far past its capacity
        return False, f"{result.dropped_sends} arrivals dropped at the in-flight cap ({result.max_in_flight})"
    if result.ok == 0:
        return False, "no 2xx answer"
    failed = []
    if result.latency.p99_ms > p99_ms:
        failed.append(f"p99 {result.latency.p99_ms:.1f} ms > {p99_ms:g} ms")
    if result.error_rate > max_error_rate:
        failed.append(f"error rate {result.error_rate:.2%} > {max_error_rate:.2%}")
    return not failed, "; ".join(failed) or "ok"


def _next_rate(passed: list[float], failed: list[float], start: float, max_rate: float) -> float:
    low = max(passed, default=None)
    high = min(failed, default=None)
    if high is None:
        return min(start if low is None else low * 2, max_rate)
    if low is None:
        return high / 2
    return (low + high) / 2


def find_capacity(
    base: OpenLoopPlan,
    p99_ms: float,
    max_error_rate: float = 0.01,
    start_rate: float = 1.0,
    max_rate: float = 1000.0,
    step_duration_s: float = 10.0,
    max_steps: int = 12,
    max_total_s: float = 600.0,
    resolution: float = 0.1,
    min_rate: float = 0.1,
    warmup_s: float | None = 1.0,
    on_step: Callable[[CapacityStep], None] | None = None,
) -> CapacityResult:
    """Search the rate (see the module docstring); ``base`` gives the URL, bodies, arrivals and per-request
    settings, its rate and duration are replaced per step; each step starts with ``warmup_s`` seconds of
    uncounted arrivals at its rate (None: ``base.warmup`` arrivals). ``on_step`` sees each step as it ends."""
    _check(p99_ms, max_error_rate, start_rate, max_rate, step_duration_s, max_steps, max_total_s, resolution)
    deadline = time.monotonic() + max_total_s
    passed: list[float] = []
    failed: list[float] = []
    steps: list[CapacityStep] = []
    stopped_by: StopReason = "max_steps"
    while len(steps) < max_steps:
        rate = _next_rate(passed, failed, start_rate, max_rate)
        if passed and rate <= max(passed):  # doubling hit max_rate, which passed
            stopped_by = "max_rate"
            break
        if (passed and failed and min(failed) - max(passed) <= resolution * max(passed)) or rate < min_rate:
            stopped_by = "converged" if passed else "nothing_passed"
            break
        warmup = base.warmup if warmup_s is None else math.ceil(rate * warmup_s)
        left = deadline - time.monotonic()
        if warmup / rate + step_duration_s + base.timeout_s > left:
            stopped_by = "max_duration"
            break
        plan = dataclasses.replace(base, rate=rate, duration_s=step_duration_s, warmup=warmup, max_duration_s=left)
        result = run_open_loop_sync(plan)
        ok, why = judge(result, p99_ms, max_error_rate)
        step = CapacityStep(rate=rate, passed=ok, why=why, result=result)
        steps.append(step)
        if on_step is not None:
            on_step(step)
        if result.stopped_by == "hard_cap":
            stopped_by = "max_duration"
            break
        if result.client_lagged:  # once may be a stall of a shared machine: the same rate runs again
            if len(steps) > 1 and steps[-2].rate == rate and steps[-2].result.client_lagged:
                stopped_by = "client"
                break
            continue
        (passed if ok else failed).append(rate)
    capacity = max(passed, default=None)
    return CapacityResult(
        url=base.url,
        p99_ms=p99_ms,
        max_error_rate=max_error_rate,
        step_duration_s=step_duration_s,
        capacity=capacity,
        stopped_by=stopped_by,
        note=_note(stopped_by, capacity, failed, max_rate),
        steps=steps,
    )


def _note(stopped_by: StopReason, capacity: float | None, failed: list[float], max_rate: float) -> str:
    held = f"{capacity:g} req/s held" if capacity is not None else "no rate held"
    above = f", {min(failed):g} req/s did not" if failed else ""
    return {
        "converged": f"{held}{above}",
        "max_rate": f"{held}: it is --max-rate, the capacity may be higher",
        "max_steps": f"{held}{above} when the steps ran out (--max-steps)",
        "max_duration": f"{held}{above} when the time ran out (--max-duration)",
        "client": f"{held}; the client could not generate the next step's load: the capacity is at least this",
        "nothing_passed": f"no rate down to the lowest tried held the bounds{above}",
    }[stopped_by]


def _check(
    p99_ms: float,
    max_error_rate: float,
    start_rate: float,
    max_rate: float,
    step_duration_s: float,
    max_steps: int,
    max_total_s: float,
    resolution: float,
) -> None:
    if not p99_ms > 0:
        raise ConvserveError(f"--p99-ms must be positive, got {p99_ms}")
    if not 0 <= max_error_rate < 1:
        raise ConvserveError(f"--max-error-rate must be in [0, 1), got {max_error_rate}")
    if not 0 < start_rate <= max_rate:
        raise ConvserveError(f"--start-rate must be positive and at most --max-rate, got {start_rate} / {max_rate}")
    if not step_duration_s > 0 or not max_total_s > 0:
        raise ConvserveError("--step-duration and --max-duration must be positive")
    if max_steps < 1:
        raise ConvserveError(f"--max-steps must be at least 1, got {max_steps}")
    if not 0 < resolution < 1:
        raise ConvserveError(f"the search resolution must be in (0, 1), got {resolution}")
