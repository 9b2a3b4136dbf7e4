"""What a soak or fault run reports (pydantic, written as JSON by loadtest/soak.py) and our targets for each.

Soak: fixed load (C requests in flight, or a fixed arrival rate) for minutes, read per window: answers, errors,
p99, the RSS of the workers and of what serves beside them (TorchServe's java frontend, the v2 server's
supervisor); the first window against the last. Worker kill: every worker SIGKILLed under load; the requests that
failed, how long until a 200 again, the workers the server started in their place. Graceful stop: serve.py or
serve_v2.py --stop (SIGTERM) with requests in flight; how each ended, the ports and processes left.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from convserve.hardware.machine import MachineSummary

# our targets
SOAK_MAX_ERRORS = 0
SOAK_MAX_RSS_GROWTH = 0.05  # worker RSS, last window against the first
SOAK_MAX_P99_DRIFT = 0.20  # p99, last window against the first
RECOVERY_LIMIT_S = 30.0  # worker killed → a 200 again


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Check(_Model):
    name: str
    met: bool
    detail: str


class SoakWindow(_Model):
    index: int
    seconds: float
    ok: int
    errors: dict[str, int]
    unfinished: int
    throughput_rps: float
    p50_ms: float | None
    p99_ms: float | None
    # summed VmRSS by role at the window's end: "worker", then TorchServe's "frontend" or the v2 server's
    # "supervisor" (None: no such process ran)
    rss_mb: dict[str, float | None]
    worker_pids: list[int]
    client_invalid: str | None = None  # open loop: why the client could not keep its schedule

    @property
    def worker_rss_mb(self) -> float | None:
        return self.rss_mb.get("worker")


class SoakReport(_Model):
    kind: Literal["soak"] = "soak"
    server: str  # "TorchServe" or "v2 server"
    url: str
    concurrency: int | None  # closed loop
    rate: float | None = None  # open loop: arrivals per second
    minutes: float
    window_s: float
    started_at: str
    machine: MachineSummary
    windows: list[SoakWindow]
    errors: dict[str, int]
    rss_growth: float | None  # last window's worker RSS / the first's - 1
    p99_drift: float | None  # last window's p99 / the first's - 1
    worker_restarts: int  # worker pids that appeared after the first window
    checks: list[Check]


class Outcome(_Model):
    """One request of a fault run's timeline; times in seconds from the fault."""

    sent_s: float
    done_s: float
    result: str  # HTTP status ("200", "503"), or "connection" / "timeout"


class WorkerKillReport(_Model):
    kind: Literal["worker-kill"] = "worker-kill"
    server: str
    url: str
    concurrency: int
    started_at: str
    machine: MachineSummary
    killed_pids: list[int]
    replacement_pids: list[int]  # workers running once answers were 200 again
    kill_at_s: float  # from the start of the load
    load_errors: dict[str, int]  # every request of the load that failed, by status / kind
    load_ok: int
    load_unfinished: int  # cancelled at the hard cap: still unanswered
    probes: list[Outcome]  # one request at a time from the kill on, until a 200
    recovery_s: float | None  # kill → the first 200 of a request sent after it
    longest_failed_s: float | None  # the slowest failed probe, sent → answered
    checks: list[Check]


class GracefulStopReport(_Model):
    kind: Literal["graceful-stop"] = "graceful-stop"
    server: str
    url: str
    concurrency: int
    started_at: str
    machine: MachineSummary
    processes_before: list[tuple[int, str]]  # (pid, role)
    stop: str | None  # "terminated" (SIGTERM sufficed) or "killed" (SIGKILL after the timeout)
    stop_s: float
    in_flight: dict[str, int]  # requests sent before the stop and answered after it started, by result
    after_stop: dict[str, int]  # requests sent once the stop had started, by result
    requests: list[Outcome]
    longest_s: float | None
    busy_ports: list[tuple[str, int]]  # the server's addresses still bound afterwards
    leftover_pids: list[int]  # processes of the server still running afterwards (zombies excluded)
    checks: list[Check]


def counts(outcomes: list[Outcome]) -> dict[str, int]:
    out: dict[str, int] = {}
    for o in outcomes:
        out[o.result] = out.get(o.result, 0) + 1
    return dict(sorted(out.items()))


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1%}"


def soak_lines(r: SoakReport) -> list[str]:
    load = f"open loop at {r.rate:g} req/s" if r.rate is not None else f"concurrency {r.concurrency}"
    roles = list(r.windows[0].rss_mb)  # the same in every window: the server's kind decides them
    lines = [
        f"soak {r.server} {r.url}: {load}, {r.minutes:g} min in windows of {r.window_s:g} s",
        "window  seconds  ok      errors  req/s   p50 ms  p99 ms  " + "  ".join(f"{role} RSS MB" for role in roles),
    ]
    for w in r.windows:
        rss = "  ".join(f"{_ms(w.rss_mb.get(role)):>{len(role) + 7}}" for role in roles)  # under "<role> RSS MB"
        lines.append(
            f"{w.index:>6}  {w.seconds:>7.1f}  {w.ok:>6}  {sum(w.errors.values()) + w.unfinished:>6}  "
            f"{w.throughput_rps:>6.1f}  {_ms(w.p50_ms):>6}  {_ms(w.p99_ms):>6}  {rss}"
            + (f"  CLIENT INVALID: {w.client_invalid}" if w.client_invalid else "")
        )
    lines.append(
        f"first → last window: worker RSS {_pct(r.rss_growth)}, p99 {_pct(r.p99_drift)}; "
        f"worker restarts {r.worker_restarts}; errors {r.errors or 'none'}"
    )
    return lines + check_lines(r.checks)


def worker_kill_lines(r: WorkerKillReport) -> list[str]:
    recovery = "never (within the probing limit)" if r.recovery_s is None else f"{r.recovery_s:.1f} s"
    return [
        f"worker kill {r.server} {r.url}: SIGKILL to worker(s) {r.killed_pids} at {r.kill_at_s:.1f} s, "
        f"concurrency {r.concurrency}",
        f"  load: {r.load_ok} ok, failed {r.load_errors or 'none'}, {r.load_unfinished} unanswered",
        f"  probes after the kill: {counts(r.probes)}; a 200 again after {recovery}; slowest failure "
        f"{_ms(r.longest_failed_s)} s",
        f"  workers now: {r.replacement_pids} (started by the server itself)",
        *check_lines(r.checks),
    ]


def graceful_stop_lines(r: GracefulStopReport) -> list[str]:
    return [
        f"graceful stop {r.server} {r.url}: concurrency {r.concurrency}; processes {r.processes_before}",
        f"  stop: {r.stop or 'nothing ran'} in {r.stop_s:.1f} s",
        f"  requests in flight at the stop: {r.in_flight or 'none'}; sent during it: {r.after_stop or 'none'}; "
        f"longest {_ms(r.longest_s)} s",
        f"  ports still bound: {r.busy_ports or 'none'}; processes left: {r.leftover_pids or 'none'}",
        *check_lines(r.checks),
    ]


def check_lines(checks: list[Check]) -> list[str]:
    return [f"  target {c.name}: {'met' if c.met else 'MISSED'} ({c.detail})" for c in checks]
