"""Open-loop HTTP load: requests sent on a fixed schedule of arrivals whatever the server does, each timed from
its SCHEDULED send time, so a server that falls behind shows its queue in the latencies.

A closed loop (loadtest/loadgen.py) waits for an answer before sending the next request: when the server slows
down, the client slows down with it and the queue never forms (coordinated omission). Here arrival i is due at
``t0 + offset_i`` (constant: i / rate; poisson: exponential gaps of mean 1 / rate, seeded), and its latency is
answer time − due time, whether the client sent it on time or not.

The client must keep up for the figures to mean anything. It measures its own lag (actual send − due): more
than ``max_late_fraction`` of sends (and more than one) later than ``late_ms``, or any arrival dropped because
``max_in_flight`` requests were already waiting, marks the result INVALID (``valid`` false, ``invalid_reason``
says why): it then describes the client, not the server.

Bounded: ``duration_s`` of arrivals after ``warmup`` uncounted ones on the same schedule, then in-flight requests
get ``timeout_s`` to answer; ``max_duration_s`` caps the whole run. A request that could not be sent or got no
answer counts under status "0" (Locust's convention).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
from pydantic import BaseModel, ConfigDict

from convserve.common.errors import ConvserveError, first_line
from convserve.hardware.cpus import usable_cpus
from convserve.hardware.machine import load_average
from convserve.loadtest.latency_stats import LatencyStats
from convserve.loadtest.loadgen import Payload, check_url
from convserve.loadtest.server_metrics import ServerCounters, ServerSplit, model_from_url, scrape, split
from convserve.serving.http_headers import BATCH_HEADER

Arrivals = Literal["constant", "poisson"]
NO_ANSWER = "0"  # the status of a request that could not be sent or got no answer


@dataclass
class OpenLoopPlan:
    url: str
    payloads: list[Payload]
    rate: float  # arrivals per second
    duration_s: float = 10.0  # seconds of measured arrivals
    arrivals: Arrivals = "constant"
    warmup: int = 0  # arrivals on the same schedule before the measured ones, not counted
    token: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 30.0  # per request, from its actual send
    max_in_flight: int = 512  # arrivals beyond it are dropped (and the result marked invalid)
    late_ms: float = 25.0  # a send later than this after its due time is late (a Python client on shared cores
    # stalls now and then; each stall also lands in that request's latency, timed from its due time)
    max_late_fraction: float = 0.01  # more late sends than this marks the result invalid
    max_duration_s: float = 600.0  # hard cap on the whole run, drain included
    metrics_url: str | None = None  # TorchServe's Prometheus page, read before and after; None: not read
    model: str | None = None  # whose counters to read; None: from the URL (/predictions/NAME), else all
    seed: int = 0  # poisson arrivals

    def check(self) -> OpenLoopPlan:
        check_url(self.url)
        if not self.payloads:
            raise ConvserveError("no request bodies: give at least one image")
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ConvserveError(f"--rate must be a positive number of requests per second, got {self.rate}")
        if not self.duration_s > 0:
            raise ConvserveError(f"--duration must be positive, got {self.duration_s}")
        if self.arrivals not in ("constant", "poisson"):
            raise ConvserveError(f"--arrivals must be constant or poisson, got {self.arrivals!r}")
        if self.warmup < 0:
            raise ConvserveError(f"--warmup cannot be negative, got {self.warmup}")
        if self.max_in_flight < 1:
            raise ConvserveError(f"--max-in-flight must be at least 1, got {self.max_in_flight}")
        if self.timeout_s <= 0 or self.max_duration_s <= 0 or self.late_ms <= 0:
            raise ConvserveError("--timeout, --max-duration and --late-ms must be positive")
        if self.metrics_url is not None and urlsplit(self.metrics_url).scheme not in ("http", "https"):
            raise ConvserveError(f"--metrics-url must be an http(s):// URL (or none), got {self.metrics_url!r}")
        return self


class OpenLoopResult(BaseModel):
    """One open-loop run; field names follow perf_analyzer / Locust (``throughput``, ``p99_ms``, ...)."""

    model_config = ConfigDict(extra="forbid")

    url: str
    arrivals: Arrivals
    started_at: str
    duration_s: float  # planned seconds of measured arrivals
    offered_rate: float  # measured arrivals scheduled per second
    achieved_rate: float  # measured requests actually sent per second of the schedule
    throughput: float  # 2xx answers per second, first due time → last answer
    scheduled: int  # measured arrivals
    sent: int
    ok: int  # 2xx
    errors_by_status: dict[str, int]  # "503": n; "0": not sent, no answer, timed out or unfinished
    dropped_sends: int  # not sent: max_in_flight requests were already waiting
    late_sends: int  # sent more than late_ms after their due time
    late_ms: float
    client_lagged: bool  # more than max_late_fraction of the sends (and more than one) were late
    max_send_lag_ms: float
    max_in_flight: int
    peak_in_flight: int
    unfinished: int  # still unanswered when the run ended (counted under "0")
    stopped_by: Literal["schedule", "hard_cap"]
    elapsed_s: float  # first due time → last answer (or the end)
    latency: LatencyStats  # 2xx only, due time → full body read
    avg_batch_size: float | None  # mean of X-Convserve-Batch-Size over 2xx answers (None: header absent)
    server: ServerSplit | None
    server_metrics_error: str | None = None
    valid: bool
    invalid_reason: str | None = None

    @property
    def error_count(self) -> int:
        return sum(self.errors_by_status.values())

    @property
    def error_rate(self) -> float:
        return self.error_count / self.scheduled if self.scheduled else 0.0

    def row(self) -> dict[str, object]:
        """The flat record of results.csv / results.json (perf_analyzer / Locust names first)."""
        lat, srv = self.latency, self.server
        return {
            "offered_rate": self.offered_rate,
            "achieved_rate": self.achieved_rate,
            "throughput": self.throughput,
            "p50_ms": lat.p50_ms,
            "p90_ms": lat.p90_ms,
            "p95_ms": lat.p95_ms,
            "p99_ms": lat.p99_ms,
            "max_ms": lat.max_ms,
            "mean_ms": lat.mean_ms,
            "errors_by_status": self.errors_by_status,
            "error_rate": self.error_rate,
            "server_queue_ms": srv.server_queue_ms if srv else None,
            "server_compute_ms": srv.server_compute_ms if srv else None,
            "avg_batch_size": self.avg_batch_size,
            "late_sends": self.late_sends,
            "dropped_sends": self.dropped_sends,
            "max_send_lag_ms": self.max_send_lag_ms,
            "sent": self.sent,
            "ok": self.ok,
            "arrivals": self.arrivals,
            "duration_s": self.duration_s,
            "valid": self.valid,
            "invalid_reason": self.invalid_reason,
        }


def poisson_offsets(rate: float, seed: int) -> Iterator[float]:
    """Due times (seconds from the start) of Poisson arrivals at ``rate`` per second: exponential gaps, seeded."""
    rng = random.Random(seed)
    t = 0.0
    while True:
        yield t
        t += rng.expovariate(rate)


def arrival_offsets(rate: float, count: int, arrivals: Arrivals, seed: int = 0) -> list[float]:
    """Due times (seconds from the start) of ``count`` arrivals at ``rate`` per second."""
    if arrivals == "constant":
        return [i / rate for i in range(count)]
    return list(islice(poisson_offsets(rate, seed), count))


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    batch_sizes: list[int] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    sent: int = 0
    last_send: float = 0.0
    dropped: int = 0
    answered: int = 0
    peak_in_flight: int = 0
    last_done: float = 0.0


async def _send(session: aiohttp.ClientSession, plan: OpenLoopPlan, payload: Payload, due: float, tally: _Tally | None):
    """One request timed from ``due``; ``tally`` None for warm-up arrivals."""
    lag = time.perf_counter() - due
    headers = {"Content-Type": payload.content_type, **plan.headers}
    if plan.token:
        headers["Authorization"] = f"Bearer {plan.token}"
    if tally is not None:
        tally.sent += 1
        tally.lags.append(lag)
        tally.last_send = lag + due
    try:
        async with session.post(plan.url, data=payload.data, headers=headers) as resp:
            await resp.read()
            status, batch = resp.status, resp.headers.get(BATCH_HEADER)
    except (TimeoutError, aiohttp.ClientError, OSError):  # no answer: status 0
        status, batch = 0, None
    done = time.perf_counter()
    if tally is None:
        return
    tally.answered += 1
    tally.last_done = done
    if 200 <= status < 300:
        tally.latencies.append(done - due)
        if batch is not None and batch.isdigit():
            tally.batch_sizes.append(int(batch))
    else:
        tally.statuses[str(status)] += 1


def schedule(plan: OpenLoopPlan) -> tuple[list[float], int]:
    """Due offsets of every arrival (warm-up first) and the index of the first measured one."""
    if plan.arrivals == "constant":
        measured = max(1, round(plan.rate * plan.duration_s))
        return arrival_offsets(plan.rate, plan.warmup + measured, "constant"), plan.warmup
    arrivals = poisson_offsets(plan.rate, plan.seed)
    offsets = [next(arrivals) for _ in range(plan.warmup)]
    start = t = next(arrivals)
    while t - start < plan.duration_s or len(offsets) == plan.warmup:
        offsets.append(t)
        t = next(arrivals)
    return offsets, plan.warmup


class _Counters:
    """The server's counters read before the first arrival and once the last answer came, and what went wrong.
    The page answers slowly under load, so a reading between warm-up and measured arrivals would land at no
    definite point: the server's figures cover the warm-up requests too (sent at the same rate)."""

    def __init__(self, plan: OpenLoopPlan):
        self.url = plan.metrics_url
        self.model = plan.model or model_from_url(plan.url)
        self.readings: list[ServerCounters | None] = []
        self.error: str | None = None

    async def read(self, session: aiohttp.ClientSession) -> None:
        if self.url is None or self.error is not None:
            return
        try:
            self.readings.append(await scrape(session, self.url, self.model))
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            self.error = f"cannot read server metrics from {self.url}: {first_line(exc)}"

    async def read_settled(self, session: aiohttp.ClientSession, settle_s: float = 0.1, limit_s: float = 2.0) -> None:
        """The last reading: TorchServe counts a request just after answering it, so the page is read again until
        two readings ``settle_s`` apart agree (for at most ``limit_s``)."""
        await self.read(session)
        deadline = time.perf_counter() + limit_s
        while self.error is None and self.url is not None and time.perf_counter() < deadline:
            await asyncio.sleep(settle_s)
            last = self.readings.pop()
            await self.read(session)
            if self.error is None and self.readings[-1] == last:
                return

    def split(self) -> ServerSplit | None:
        return split(*self.readings) if len(self.readings) == 2 and self.error is None else None


async def run_open_loop(plan: OpenLoopPlan) -> OpenLoopResult:
    """Send ``plan``'s arrivals on schedule and summarise the measured ones (see the module docstring)."""
    plan.check()
    offsets, first = schedule(plan)
    tally, counters = _Tally(), _Counters(plan)
    in_flight: set[asyncio.Task] = set()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    hard_stop = time.perf_counter() + plan.max_duration_s
    stopped_by = "schedule"
    connector = aiohttp.TCPConnector(limit=plan.max_in_flight)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=plan.timeout_s), connector=connector) as s:
        await counters.read(s)
        t0 = time.perf_counter()
        for i, offset in enumerate(offsets):
            due = t0 + offset
            now = time.perf_counter()
            await asyncio.sleep(max(min(due, hard_stop) - now, 0.0))  # 0: behind schedule, let the sends start
            if time.perf_counter() >= hard_stop:
                stopped_by = "hard_cap"
                break
            measured = i >= first
            if len(in_flight) >= plan.max_in_flight:
                tally.dropped += measured
                continue
            payload = plan.payloads[i % len(plan.payloads)]
            task = asyncio.create_task(_send(s, plan, payload, due, tally if measured else None))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            if measured:
                tally.peak_in_flight = max(tally.peak_in_flight, len(in_flight))
        if in_flight:  # each request has its own timeout; the hard cap ends what is left
            _, pending = await asyncio.wait(in_flight, timeout=max(0.0, hard_stop - time.perf_counter()))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            stopped_by = "hard_cap" if pending else stopped_by
        await counters.read_settled(s)
    return _result(plan, offsets, first, t0, tally, counters, started_at, stopped_by)


def run_open_loop_sync(plan: OpenLoopPlan) -> OpenLoopResult:
    """``run_open_loop`` from synchronous code (a fresh event loop)."""
    return asyncio.run(run_open_loop(plan))


def _validity(plan: OpenLoopPlan, tally: _Tally, lagged: bool, late: int, stopped_by: str) -> str | None:
    """Why the client's figures cannot stand for the server's, or None when they can."""
    reasons = []
    if tally.dropped:
        reasons.append(
            f"{tally.dropped} arrivals dropped with {plan.max_in_flight} requests already in flight "
            "(raise --max-in-flight, or the server is far past its capacity)"
        )
    if lagged:
        reasons.append(
            f"{late} of {tally.sent} sends left more than {plan.late_ms:g} ms after their due time "
            f"(over {plan.max_late_fraction:.0%}): the client could not keep up with {plan.rate:g} req/s "
            f"(load average {load_average()[0]:.1f} on {usable_cpus()} usable CPUs)"
        )
    if stopped_by == "hard_cap":
        reasons.append(f"--max-duration ({plan.max_duration_s:g} s) ended the run before every answer came")
    return "; ".join(reasons) or None


def _result(
    plan: OpenLoopPlan,
    offsets: list[float],
    first: int,
    t0: float,
    tally: _Tally,
    counters: _Counters,
    started_at: str,
    stopped_by: str,
) -> OpenLoopResult:
    scheduled = len(offsets) - first
    begin = t0 + offsets[first] if first < len(offsets) else t0
    end = tally.last_done or time.perf_counter()
    elapsed = max(end - begin, 1e-9)
    unfinished = tally.sent - tally.answered
    statuses = Counter(tally.statuses)
    not_sent = scheduled - tally.sent  # dropped at the in-flight cap, or never reached before the hard cap
    statuses[NO_ANSWER] += unfinished + not_sent
    statuses = Counter({k: v for k, v in statuses.items() if v})
    late = sum(lag > plan.late_ms / 1000.0 for lag in tally.lags)
    send_span = max(plan.duration_s, tally.last_send - begin)  # longer than planned when sends fell behind
    lagged = late > max(plan.max_late_fraction * tally.sent, 1)  # one stall of a shared machine is not a trend
    reason = _validity(plan, tally, lagged, late, stopped_by)
    return OpenLoopResult(
        url=plan.url,
        arrivals=plan.arrivals,
        started_at=started_at,
        duration_s=plan.duration_s,
        offered_rate=scheduled / plan.duration_s,
        achieved_rate=tally.sent / send_span,
        throughput=len(tally.latencies) / elapsed,
        scheduled=scheduled,
        sent=tally.sent,
        ok=len(tally.latencies),
        errors_by_status=dict(sorted(statuses.items(), key=lambda kv: int(kv[0]))),
        dropped_sends=tally.dropped,
        late_sends=late,
        late_ms=plan.late_ms,
        client_lagged=lagged,
        max_send_lag_ms=max(tally.lags, default=0.0) * 1000.0,
        max_in_flight=plan.max_in_flight,
        peak_in_flight=tally.peak_in_flight,
        unfinished=unfinished,
        stopped_by=stopped_by,
        elapsed_s=elapsed,
        latency=LatencyStats.from_seconds(tally.latencies),
        avg_batch_size=sum(tally.batch_sizes) / len(tally.batch_sizes) if tally.batch_sizes else None,
        server=counters.split(),
        server_metrics_error=counters.error,
        valid=reason is None,
        invalid_reason=reason,
    )
