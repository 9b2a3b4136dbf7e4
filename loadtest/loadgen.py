"""Closed-loop HTTP load generator (aiohttp): C requests in flight, real image bodies cycled, bounded in count and time.

Phases: ``warmup`` requests first (answers not counted), then the measured phase, which stops at ``requests``
answers, at ``duration_s``, or at the hard cap ``max_duration_s`` on the WHOLE run (warm-up and draining
included), whichever comes first. Requests still in flight when issuing stops get ``drain_s`` to finish; what is
left at the hard cap is cancelled and reported as ``unfinished``.

Only the one URL given is ever requested: no discovery, no scanning.
"""

from __future__ import annotations

import asyncio
import itertools
import mimetypes
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
from pydantic import BaseModel, ConfigDict

from convserve.common.errors import ConvserveError
from convserve.common.files import read_image_bytes
from convserve.loadtest.latency_stats import LatencyStats
from convserve.serving.http_headers import BATCH_HEADER

CONNECTION_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError)


@dataclass(frozen=True)
class Payload:
    name: str
    data: bytes
    content_type: str


def read_payloads(paths: list[Path]) -> list[Payload]:
    """Image files as request bodies, with a Content-Type from the file name (image/jpeg for .jpg)."""
    if not paths:
        raise ConvserveError("no images given: pass one or more image files with --images")
    out = []
    for path in paths:
        kind = mimetypes.guess_type(str(path))[0] or "application/octet-stream"
        out.append(Payload(Path(path).name, read_image_bytes(path), kind))
    return out


def check_url(url: str) -> str:
    """An explicit http(s)://host[:port]/path URL, or a one-line error."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConvserveError(f"--url must be an explicit http(s)://HOST:PORT/... URL, got {url!r}")
    return url


@dataclass
class LoadPlan:
    url: str
    payloads: list[Payload]
    concurrency: int = 1
    requests: int | None = None  # measured answers to wait for; None: until duration_s
    duration_s: float | None = None  # seconds of measured phase; None: until requests
    warmup: int = 0
    token: str | None = None
    timeout_s: float = 60.0  # per request
    max_duration_s: float = 600.0  # hard cap on the whole run, whatever requests/duration say
    drain_s: float = 10.0  # time in-flight requests get once issuing stops
    headers: dict[str, str] = field(default_factory=dict)

    def check(self) -> LoadPlan:
        check_url(self.url)
        if not self.payloads:
            raise ConvserveError("no request bodies: give at least one image")
        if self.concurrency < 1:
            raise ConvserveError(f"--concurrency must be at least 1, got {self.concurrency}")
        if self.requests is not None and self.requests < 1:
            raise ConvserveError(f"--requests must be at least 1, got {self.requests}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ConvserveError(f"--duration must be positive, got {self.duration_s}")
        if self.warmup < 0:
            raise ConvserveError(f"--warmup cannot be negative, got {self.warmup}")
        if self.max_duration_s <= 0 or self.timeout_s <= 0:
            raise ConvserveError("--max-duration and --timeout must be positive")
        if self.requests is None and self.duration_s is None:
            self.requests = 100
        return self


class LoadResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str
    concurrency: int
    warmup: int
    planned_requests: int | None
    planned_duration_s: float | None
    started_at: str
    stopped_by: Literal["requests", "duration", "hard_cap"]
    elapsed_s: float  # measured phase: first request sent → last answer received
    sent: int  # measured phase
    completed: int  # answered (any status) or failed
    ok: int  # 2xx
    errors: dict[str, int]  # by HTTP status ("400", "503") or "connection" / "timeout"
    unfinished: int  # cancelled at the hard cap
    throughput_rps: float  # 2xx answers per second
    request_rate_rps: float  # completed requests (any outcome) per second
    latency: LatencyStats  # 2xx answers only, send → full body read
    batch_sizes: dict[str, int] = {}  # X-Convserve-Batch-Size values seen → count (dynamic batching at work)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    batches: Counter = field(default_factory=Counter)
    sent: int = 0
    completed: int = 0
    last_done: float = 0.0


async def _one(session: aiohttp.ClientSession, plan: LoadPlan, payload: Payload, tally: _Tally) -> None:
    headers = {"Content-Type": payload.content_type, **plan.headers}
    if plan.token:
        headers["Authorization"] = f"Bearer {plan.token}"
    tally.sent += 1
    start = time.perf_counter()
    try:
        async with session.post(plan.url, data=payload.data, headers=headers) as resp:
            await resp.read()
            status, batch = resp.status, resp.headers.get(BATCH_HEADER)
    except TimeoutError:
        tally.errors["timeout"] += 1
    except CONNECTION_ERRORS:
        tally.errors["connection"] += 1
    else:
        if 200 <= status < 300:
            tally.latencies.append(time.perf_counter() - start)
            if batch is not None:
                tally.batches[batch] += 1
        else:
            tally.errors[str(status)] += 1
    tally.completed += 1
    tally.last_done = time.perf_counter()


async def _phase(
    session: aiohttp.ClientSession, plan: LoadPlan, count: int | None, stop_at: float, hard_stop: float, tally: _Tally
) -> bool:
    """Run until ``count`` requests were issued or ``stop_at`` (monotonic) passed; True when ``count`` ended it."""
    tickets = itertools.count()

    async def worker() -> None:
        while time.monotonic() < stop_at:
            i = next(tickets)
            if count is not None and i >= count:
                return
            await _one(session, plan, plan.payloads[i % len(plan.payloads)], tally)

    tasks = [asyncio.create_task(worker()) for _ in range(plan.concurrency)]
    # issuing stops at stop_at (checked by each worker); in-flight requests get until the drain ends
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, min(stop_at + plan.drain_s, hard_stop) - time.monotonic()))
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return count is not None and not pending and next(tickets) >= count


async def run_load(plan: LoadPlan) -> LoadResult:
    plan.check()
    hard_stop = time.monotonic() + plan.max_duration_s
    timeout = aiohttp.ClientTimeout(total=plan.timeout_s)
    connector = aiohttp.TCPConnector(limit=plan.concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        if plan.warmup:
            await _phase(session, plan, plan.warmup, hard_stop, hard_stop, _Tally())
        tally = _Tally()
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        begin, begin_wall = time.monotonic(), time.perf_counter()
        stop_at = min(begin + plan.duration_s, hard_stop) if plan.duration_s else hard_stop
        by_count = await _phase(session, plan, plan.requests, stop_at, hard_stop, tally)
    if by_count:
        stopped_by = "requests"
    elif stop_at >= hard_stop:  # the duration (if any) reached past the cap
        stopped_by = "hard_cap"
    else:
        stopped_by = "duration"
    return _result(plan, tally, started_at, begin_wall, stopped_by)


def _result(plan: LoadPlan, tally: _Tally, started_at: str, begin: float, stopped_by: str) -> LoadResult:
    elapsed = max((tally.last_done or time.perf_counter()) - begin, 1e-9)
    ok = len(tally.latencies)
    return LoadResult(
        url=plan.url,
        concurrency=plan.concurrency,
        warmup=plan.warmup,
        planned_requests=plan.requests,
        planned_duration_s=plan.duration_s,
        started_at=started_at,
        stopped_by=stopped_by,
        elapsed_s=elapsed,
        sent=tally.sent,
        completed=tally.completed,
        ok=ok,
        errors=dict(sorted(tally.errors.items())),
        unfinished=tally.sent - tally.completed,
        throughput_rps=ok / elapsed,
        request_rate_rps=tally.completed / elapsed,
        latency=LatencyStats.from_seconds(tally.latencies),
        batch_sizes=dict(sorted(tally.batches.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0)),
    )


def run_load_sync(plan: LoadPlan) -> LoadResult:
    """``run_load`` from synchronous code (a fresh event loop)."""
    return asyncio.run(run_load(plan))


def summary_lines(result: LoadResult) -> list[str]:
    lat = result.latency
    lines = [
        f"{result.url}  concurrency {result.concurrency}  "
        f"stopped by {result.stopped_by} after {result.elapsed_s:.1f} s",
        f"  requests: {result.completed} completed, {result.ok} ok, {result.error_count} errors, "
        f"{result.unfinished} unfinished",
        f"  throughput: {result.throughput_rps:.1f} req/s (ok)",
    ]
    if lat.count:
        lines.append(
            f"  latency ms: p50 {lat.p50_ms:.1f}  p90 {lat.p90_ms:.1f}  p95 {lat.p95_ms:.1f}  "
            f"p99 {lat.p99_ms:.1f}  max {lat.max_ms:.1f}"
        )
    if result.errors:
        lines.append("  errors: " + ", ".join(f"{k}: {v}" for k, v in result.errors.items()))
    if result.batch_sizes:
        lines.append("  server batch sizes: " + ", ".join(f"{k}: {v}" for k, v in result.batch_sizes.items()))
    return lines
