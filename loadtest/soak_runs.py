"""Soak and fault runs against a running server: TorchServe or the v2 server (a URL and the run folder serve.py or
serve_v2.py gave it; loadtest/recorded_server.py reads it and tells which).

The load is loadtest/loadgen.py's closed loop (C requests in flight), or for a soak loadtest/open_loop.py's
arrivals at a fixed rate. A soak runs it in consecutive windows and reads the workers' RSS from /proc after
each. The fault runs add what the load generators' summaries cannot say: when each request around the fault
was sent and how it ended, from requests of their own (``_timed``).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from convserve.common.errors import ConvserveError
from convserve.hardware.machine import load_average, machine_summary
from convserve.loadtest.loadgen import CONNECTION_ERRORS, LoadPlan, Payload, check_url, run_load, run_load_sync
from convserve.loadtest.open_loop import OpenLoopPlan, run_open_loop_sync
from convserve.loadtest.recorded_server import RecordedServer, busy_ports, leftovers
from convserve.loadtest.soak_results import (
    RECOVERY_LIMIT_S,
    SOAK_MAX_ERRORS,
    SOAK_MAX_P99_DRIFT,
    SOAK_MAX_RSS_GROWTH,
    Check,
    GracefulStopReport,
    Outcome,
    SoakReport,
    SoakWindow,
    WorkerKillReport,
    counts,
)
from convserve.serving.server_lifecycle import stop_recorded

FAULTS = ("worker-kill", "graceful-stop")


@dataclass
class SoakPlan:
    url: str
    payloads: list[Payload]
    run_dir: Path
    concurrency: int = 4  # closed loop: requests kept in flight
    rate: float | None = None  # soak only: open loop at this many arrivals per second instead
    minutes: float = 10.0
    window_s: float = 60.0  # the soak's reading interval
    token: str | None = None
    timeout_s: float = 60.0  # per request: TorchServe's response timeout is the natural value
    fault_at_s: float | None = None  # faults: seconds of load before the fault (default: a quarter of the run)
    probe_limit_s: float = 2 * RECOVERY_LIMIT_S  # worker kill: how long to wait for a 200 again
    stop_timeout_s: float = 30.0  # graceful stop: SIGKILL after this (serve.py's and serve_v2.py's --stop's own)

    def check(self) -> SoakPlan:
        check_url(self.url)
        if not self.payloads:
            raise ConvserveError("no request bodies: give at least one image")
        if self.concurrency < 1:
            raise ConvserveError(f"--concurrency must be at least 1, got {self.concurrency}")
        if self.minutes <= 0 or self.window_s <= 0 or self.timeout_s <= 0:
            raise ConvserveError("--minutes, --window and --timeout must be positive")
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            raise ConvserveError(f"--rate must be a positive number of requests per second, got {self.rate}")
        if self.fault_at_s is not None and not 0 < self.fault_at_s < self.minutes * 60:
            raise ConvserveError(f"--fault-at must fall inside the run (0 to {self.minutes * 60:g} s)")
        return self

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def open_load(self, seconds: float, warmup: int = 0) -> OpenLoopPlan:
        return OpenLoopPlan(
            url=self.url,
            payloads=self.payloads,
            rate=self.rate,
            duration_s=seconds,
            warmup=warmup,
            token=self.token,
            timeout_s=self.timeout_s,
            max_duration_s=seconds + 2 * self.timeout_s + 30.0,
        )

    def load(self, seconds: float, warmup: int = 0) -> LoadPlan:
        return LoadPlan(
            url=self.url,
            payloads=self.payloads,
            concurrency=self.concurrency,
            duration_s=seconds,
            warmup=warmup,
            token=self.token,
            timeout_s=self.timeout_s,
            drain_s=self.timeout_s,  # a request in flight when issuing stops still gets its whole timeout
            max_duration_s=seconds + 2 * self.timeout_s + 30.0,
        )


def window_lengths(total_s: float, window_s: float) -> list[float]:
    """``total_s`` cut into windows of ``window_s``; the last one holds the remainder."""
    count = max(1, math.ceil(total_s / window_s - 1e-9))
    return [window_s] * (count - 1) + [total_s - window_s * (count - 1)]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- soak -----------------------------------------------------------------------------------------------------


def run_soak(plan: SoakPlan, say: Callable[[str], None] = print) -> SoakReport:
    plan.check()
    server = RecordedServer.read(plan.run_dir)
    machine, started_at = machine_summary(), _now()
    windows: list[SoakWindow] = []
    for index, seconds in enumerate(window_lengths(plan.minutes * 60, plan.window_s)):
        windows.append(_window(index, plan, seconds, server))
        w = windows[-1]
        p99 = "–" if w.p99_ms is None else f"{w.p99_ms:.1f}"
        rss = "–" if w.worker_rss_mb is None else f"{w.worker_rss_mb:.1f}"
        say(f"window {index}: {w.ok} ok, errors {w.errors or 'none'}, p99 {p99} ms, worker RSS {rss} MB")
    machine.load_average_end = load_average()
    errors: dict[str, int] = {}
    for w in windows:
        for key, value in {**w.errors, **({"unfinished": w.unfinished} if w.unfinished else {})}.items():
            errors[key] = errors.get(key, 0) + value
    first, last = windows[0], windows[-1]
    report = SoakReport(
        server=server.kind.name,
        url=plan.url,
        concurrency=None if plan.rate is not None else plan.concurrency,
        rate=plan.rate,
        minutes=plan.minutes,
        window_s=plan.window_s,
        started_at=started_at,
        machine=machine,
        windows=windows,
        errors=dict(sorted(errors.items())),
        rss_growth=_change(first.worker_rss_mb, last.worker_rss_mb),
        p99_drift=_change(first.p99_ms, last.p99_ms),
        worker_restarts=len({pid for w in windows for pid in w.worker_pids} - set(first.worker_pids)),
        checks=[],
    )
    return report.model_copy(update={"checks": soak_checks(report)})


def _window(index: int, plan: SoakPlan, seconds: float, server: RecordedServer) -> SoakWindow:
    """One window of load (open loop at plan.rate, else closed loop at plan.concurrency), then the RSS."""
    if plan.rate is not None:
        warmup = math.ceil(plan.rate) if index == 0 else 0  # a second of arrivals before the first window
        found = run_open_loop_sync(plan.open_load(seconds, warmup))
        errors, throughput, note = found.errors_by_status, found.throughput, found.invalid_reason
    else:
        found = run_load_sync(plan.load(seconds, warmup=2 * plan.concurrency if index == 0 else 0))
        errors, throughput, note = found.errors, found.throughput_rps, None
    return SoakWindow(
        index=index,
        seconds=found.elapsed_s,
        ok=found.ok,
        errors=errors,
        unfinished=found.unfinished,
        throughput_rps=throughput,
        p50_ms=found.latency.p50_ms,
        p99_ms=found.latency.p99_ms,
        rss_mb={role: server.rss_mb(role) for role in server.kind.rss_roles},
        worker_pids=server.worker_pids(),
        client_invalid=note,
    )


def _change(first: float | None, last: float | None) -> float | None:
    return None if first is None or last is None or first <= 0 else last / first - 1


def soak_checks(r: SoakReport) -> list[Check]:
    failed = sum(r.errors.values())
    windows = f"{len(r.windows)} window(s)"

    def within(value: float | None, limit: float, what: str) -> Check:
        shown = "not measured" if value is None else f"{value:+.1%}"
        return Check(
            name=f"{what} <= {limit:.0%}", met=value is not None and value <= limit, detail=f"{shown}, {windows}"
        )

    return [
        Check(name=f"errors <= {SOAK_MAX_ERRORS}", met=failed <= SOAK_MAX_ERRORS, detail=f"{failed}: {r.errors}"),
        within(r.rss_growth, SOAK_MAX_RSS_GROWTH, "worker RSS growth first → last window"),
        within(r.p99_drift, SOAK_MAX_P99_DRIFT, "p99 drift first → last window"),
    ]


# --- requests with their own timeline ---------------------------------------------------------------------------


@dataclass
class _Timed:
    sent: float  # perf_counter
    done: float
    result: str

    def relative(self, origin: float) -> Outcome:
        return Outcome(sent_s=self.sent - origin, done_s=self.done - origin, result=self.result)


async def _timed(session: aiohttp.ClientSession, plan: SoakPlan, payload: Payload) -> _Timed:
    """One request, classified as loadtest/loadgen.py classifies them (status, "connection" or "timeout")."""
    headers = {"Content-Type": payload.content_type, **plan.headers}
    sent = time.perf_counter()
    try:
        async with session.post(plan.url, data=payload.data, headers=headers) as resp:
            await resp.read()
            result = str(resp.status)
    except TimeoutError:
        result = "timeout"
    except CONNECTION_ERRORS:
        result = "connection"
    return _Timed(sent, time.perf_counter(), result)


def _session(plan: SoakPlan) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=plan.timeout_s))


# --- worker kill ----------------------------------------------------------------------------------------------


def run_worker_kill(plan: SoakPlan, say: Callable[[str], None] = print) -> WorkerKillReport:
    """SIGKILL every worker process of the server under load; the server must start new ones by itself."""
    plan.check()
    server = RecordedServer.read(plan.run_dir)
    return asyncio.run(_worker_kill(plan, server, say))


async def _worker_kill(plan: SoakPlan, server: RecordedServer, say) -> WorkerKillReport:
    victims = server.worker_pids()
    if not victims:
        raise ConvserveError(f"no {server.kind.name} worker process found under process group {server.pgid}")
    machine, started_at = machine_summary(), _now()
    total = plan.minutes * 60
    kill_at = plan.fault_at_s if plan.fault_at_s is not None else total / 4
    load = asyncio.create_task(run_load(plan.load(total, warmup=2 * plan.concurrency)))
    begin = time.perf_counter()
    await asyncio.sleep(kill_at)
    killed = time.perf_counter()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    say(f"killed worker(s) {victims} at {killed - begin:.1f} s")
    probes = await _probe_until_ok(plan, killed)
    result = await load
    machine.load_average_end = load_average()
    recovered = next((p for p in probes if p.result == "200"), None)
    failed = [p.done - p.sent for p in probes if p.result != "200"]
    report = WorkerKillReport(
        server=server.kind.name,
        url=plan.url,
        concurrency=plan.concurrency,
        started_at=started_at,
        machine=machine,
        killed_pids=victims,
        replacement_pids=server.worker_pids(),
        kill_at_s=killed - begin,
        load_errors=result.errors,
        load_ok=result.ok,
        load_unfinished=result.unfinished,
        probes=[p.relative(killed) for p in probes],
        recovery_s=None if recovered is None else recovered.done - killed,
        longest_failed_s=max(failed, default=None),
        checks=[],
    )
    return report.model_copy(update={"checks": worker_kill_checks(report, plan.timeout_s)})


async def _probe_until_ok(plan: SoakPlan, since: float) -> list[_Timed]:
    """One request at a time until one answers 200 or ``probe_limit_s`` passed since ``since``."""
    probes: list[_Timed] = []
    async with _session(plan) as session:
        for i in itertools.count():
            probes.append(await _timed(session, plan, plan.payloads[i % len(plan.payloads)]))
            if probes[-1].result == "200" or time.perf_counter() - since > plan.probe_limit_s:
                return probes
            await asyncio.sleep(0.05)  # a refused connection returns at once: do not spin
    return probes  # unreachable: count() never ends


def worker_kill_checks(r: WorkerKillReport, timeout_s: float) -> list[Check]:
    hung = r.load_errors.get("timeout", 0) + r.load_unfinished + sum(p.result == "timeout" for p in r.probes)
    fresh = bool(r.replacement_pids) and not set(r.replacement_pids) & set(r.killed_pids)
    recovery = "no 200 within the probing limit" if r.recovery_s is None else f"{r.recovery_s:.1f} s"
    return [
        Check(
            name=f"answers 200 again <= {RECOVERY_LIMIT_S:g} s after the kill",
            met=r.recovery_s is not None and r.recovery_s <= RECOVERY_LIMIT_S,
            detail=recovery,
        ),
        Check(
            name=f"every failed request answered (none past the {timeout_s:g} s timeout)",
            met=hung == 0,
            detail=f"failed {r.load_errors or 'none'}; unanswered {r.load_unfinished}; timed out {hung}",
        ),
        Check(
            name="the server replaced the worker(s) by itself",
            met=fresh,
            detail=f"killed {r.killed_pids}, running now {r.replacement_pids}",
        ),
    ]


# --- graceful stop --------------------------------------------------------------------------------------------


def run_graceful_stop(plan: SoakPlan, say: Callable[[str], None] = print) -> GracefulStopReport:
    """serve.py / serve_v2.py --stop (SIGTERM to the server's process group) while C requests are in flight."""
    plan.check()
    server = RecordedServer.read(plan.run_dir)
    return asyncio.run(_graceful_stop(plan, server, say))


async def _graceful_stop(plan: SoakPlan, server: RecordedServer, say) -> GracefulStopReport:
    machine, started_at = machine_summary(), _now()
    before, ports = server.processes(), server.ports()
    warm = plan.fault_at_s if plan.fault_at_s is not None else plan.minutes * 60 / 4
    await run_load(plan.load(warm, warmup=2 * plan.concurrency))
    stopping: list[float] = []  # the stop's start, once it began
    async with _session(plan) as session:
        tasks = [asyncio.create_task(_until_refused(session, plan, i, stopping)) for i in range(plan.concurrency)]
        await asyncio.sleep(0.5)  # every requester has a request in flight
        stopping.append(time.perf_counter())
        say(
            f"stopping the server ({server.kind.cli} --stop --run-dir {plan.run_dir}) with {plan.concurrency} "
            "requests in flight"
        )
        how = await asyncio.to_thread(stop_recorded, plan.run_dir, plan.stop_timeout_s)
        stop_s = time.perf_counter() - stopping[0]
        timelines = await asyncio.gather(*tasks)
    machine.load_average_end = load_average()
    t0 = stopping[0]
    requests = sorted((t for line in timelines for t in line), key=lambda t: t.sent)
    in_flight = [t.relative(t0) for t in requests if t.sent < t0 <= t.done]
    after = [t.relative(t0) for t in requests if t.sent >= t0]
    report = GracefulStopReport(
        server=server.kind.name,
        url=plan.url,
        concurrency=plan.concurrency,
        started_at=started_at,
        machine=machine,
        processes_before=before,
        stop=how,
        stop_s=stop_s,
        in_flight=counts(in_flight),
        after_stop=counts(after),
        requests=[t.relative(t0) for t in requests if t.done >= t0],
        longest_s=max((t.done - t.sent for t in requests if t.done >= t0), default=None),
        busy_ports=busy_ports(ports),
        leftover_pids=leftovers([pid for pid, _ in before], server.pgid),
        checks=[],
    )
    return report.model_copy(update={"checks": graceful_stop_checks(report, plan.timeout_s)})


async def _until_refused(
    session: aiohttp.ClientSession, plan: SoakPlan, first: int, stopping: list[float]
) -> list[_Timed]:
    """Requests one after another; once the stop began, until one fails (the server is gone) or the stop's
    SIGKILL deadline plus a request timeout passed."""
    out: list[_Timed] = []
    i = first
    while True:
        out.append(await _timed(session, plan, plan.payloads[i % len(plan.payloads)]))
        i += 1
        if stopping and (out[-1].result != "200" or out[-1].done - stopping[0] > plan.stop_timeout_s + plan.timeout_s):
            return out


def graceful_stop_checks(r: GracefulStopReport, timeout_s: float) -> list[Check]:
    hung = r.in_flight.get("timeout", 0) + r.after_stop.get("timeout", 0)
    return [
        Check(
            name=f"requests in flight finish or fail cleanly (none past the {timeout_s:g} s timeout)",
            met=hung == 0,
            detail=f"in flight {r.in_flight or 'none'}, sent during the stop {r.after_stop or 'none'}",
        ),
        Check(name="stopped by SIGTERM (no SIGKILL needed)", met=r.stop == "terminated", detail=f"{r.stop_s:.1f} s"),
        Check(name="ports free afterwards", met=not r.busy_ports, detail=f"still bound: {r.busy_ports or 'none'}"),
        Check(
            name="no process of the server left",
            met=not r.leftover_pids,
            detail=f"before: {r.processes_before}; left: {r.leftover_pids or 'none'}",
        ),
    ]
