"""TorchServe and the v2 server (KServe's ModelServer, serving/serve_v2.py) side by side on one artifact: one server at
a time, on the CPUs this process may use, with the same backend, intra-op threads and images.

Per server: cold start (launch → model loaded and a real prediction answered), latency at concurrency 1 (closed
loop, counted requests), throughput at concurrency C (closed loop, timed), the server's RSS and its CPU time per
request at C (all of its processes, from /proc), and the capacity: the highest open-loop rate whose p99 stays
within a bound (loadtest/capacity.py). Each request carries one image: its raw bytes to TorchServe, the binary
data extension (the same bytes behind a small JSON header) to the v2 server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from convserve.benchmarking.results import Batching
from convserve.hardware.cpu_share import default_threads, worker_split
from convserve.hardware.machine import MachineInfo
from convserve.hardware.procfs import cpu_seconds, process_memory, torchserve_processes, v2_processes
from convserve.loadtest.capacity import CapacityResult, find_capacity
from convserve.loadtest.latency_stats import LatencyStats
from convserve.loadtest.loadgen import LoadPlan, LoadResult, Payload, run_load_sync
from convserve.loadtest.open_loop import OpenLoopPlan
from convserve.serving.archive_builder import build_archive
from convserve.serving.archive_settings import ArchiveSettings, HandlerSettings
from convserve.serving.kserve_process import KServeProcess, V2ServerSettings
from convserve.serving.server_lifecycle import free_port
from convserve.serving.torchserve_process import ServerSettings, TorchServeProcess
from convserve.serving.v2_protocol import binary_request

MODEL = "model"
SHIPPED = Batching(batch_size=ArchiveSettings().batch_size, max_batch_delay_ms=ArchiveSettings().max_batch_delay_ms)


@dataclass
class ComparisonPlan:
    artifact: Path
    images: list[tuple[str, bytes, str]]  # (name, encoded bytes, content type)
    work_dir: Path
    backend: str = "onnx"
    threads: int | None = None  # None: default_threads() for one worker
    # no batching, then the archive's default (what serving/archive.py ships)
    torchserve_batchings: list[Batching] = field(
        default_factory=lambda: [Batching(batch_size=1, max_batch_delay_ms=0), SHIPPED]
    )
    v2_workers: list[int | None] = field(default_factory=lambda: [None])  # None: the v2 server's default split
    v2_routes: list[str] = field(default_factory=lambda: ["infer"])  # of V2_ROUTES
    latency_requests: int = 300
    concurrency: int = 16
    load_duration_s: float = 20.0
    warmup: int = 20
    p99_ms: float = 100.0
    capacity_step_s: float = 8.0
    capacity_max_s: float = 150.0
    startup_timeout_s: float = 300.0

    @property
    def intra_op_threads(self) -> int:
        return self.threads or default_threads(workers=1)


class ServerFigures(BaseModel):
    model_config = ConfigDict(extra="forbid")

    server: str
    request_form: str
    processes: str
    cold_start_s: float
    latency_c1: LatencyStats
    concurrency: int
    throughput_rps: float
    latency_loaded: LatencyStats
    rss_mb: float | None  # all the server's processes, after the loads
    rss_by_role_mb: dict[str, float]
    cpu_ms_per_request: float | None  # server CPU time (all processes) per answered request at `concurrency`
    capacity_rps: float | None
    capacity_note: str
    errors: dict[str, int]


@dataclass
class Target:
    """A running server as the measurements see it: where to send what, and which processes are its own."""

    url: str
    payloads: list[Payload]
    headers: dict[str, str]
    processes: Callable[[], list[tuple[int, str]]]  # (pid, role)
    metrics_url: str | None = None  # TorchServe's Prometheus page: the capacity steps split queue and worker time


def torchserve_payloads(plan: ComparisonPlan) -> tuple[list[Payload], dict[str, str]]:
    return [Payload(name, data, kind) for name, data, kind in plan.images], {}


def v2_payloads(plan: ComparisonPlan) -> tuple[list[Payload], dict[str, str]]:
    """Binary-extension bodies whose JSON parts are padded to one length, so one header fits them all."""
    longest = max(int(binary_request([data])[1]["Inference-Header-Content-Length"]) for _, data, _ in plan.images)
    bodies = [(name, *binary_request([data], header_length=longest)) for name, data, _ in plan.images]
    headers = {k: v for k, v in bodies[0][2].items() if k != "Content-Type"}
    return [Payload(name, body, "application/octet-stream") for name, body, _ in bodies], headers


def closed_load(target: Target, concurrency: int, plan: ComparisonPlan, **bounds) -> LoadResult:
    load = LoadPlan(target.url, target.payloads, concurrency, headers=target.headers, **bounds)
    load.warmup = max(plan.warmup, 2 * concurrency)
    load.timeout_s = 120.0
    load.max_duration_s = plan.load_duration_s * 3 + 120.0
    return run_load_sync(load)


def _cpu(processes: list[tuple[int, str]]) -> float:
    return sum(cpu_seconds(pid) or 0.0 for pid, _ in processes)


def search_capacity(target: Target, plan: ComparisonPlan, c1: LoadResult, server: str, say) -> CapacityResult:
    """The open-loop capacity search, starting at half the closed-loop rate at concurrency 1 (``c1``)."""
    return find_capacity(
        OpenLoopPlan(
            target.url,
            target.payloads,
            rate=1.0,
            headers=target.headers,
            timeout_s=10.0,
            metrics_url=target.metrics_url,
        ),
        p99_ms=plan.p99_ms,
        start_rate=max(1.0, round(c1.throughput_rps / 2)),
        step_duration_s=plan.capacity_step_s,
        max_total_s=plan.capacity_max_s,
        resolution=0.1,
        on_step=lambda step: say(f"  {server}: {step.rate:.1f} req/s {'holds' if step.passed else step.why}"),
    )


def measure(target: Target, plan: ComparisonPlan, server: str, form: str, cold_start_s: float, say) -> ServerFigures:
    c1 = closed_load(target, 1, plan, requests=plan.latency_requests, duration_s=plan.load_duration_s * 3)
    say(f"  {server}: c1 p50 {c1.latency.p50_ms:.1f} ms, p99 {c1.latency.p99_ms:.1f} ms")
    processes = target.processes()
    before = _cpu(processes)
    loaded = closed_load(target, plan.concurrency, plan, duration_s=plan.load_duration_s)
    answered = loaded.completed + max(plan.warmup, 2 * plan.concurrency)
    cpu_ms = (_cpu(processes) - before) * 1e3 / answered if answered else None
    say(f"  {server}: c{plan.concurrency} {loaded.throughput_rps:.1f} req/s")
    memory = [m for m in (process_memory(pid, role) for pid, role in processes) if m is not None]
    by_role: dict[str, float] = {}
    for m in memory:
        by_role[m.role] = by_role.get(m.role, 0.0) + (m.rss_mb or 0.0)
    capacity = search_capacity(target, plan, c1, server, say)
    errors: dict[str, int] = {}
    for load in (c1, loaded):
        for status, n in load.errors.items():
            errors[status] = errors.get(status, 0) + n
    return ServerFigures(
        server=server,
        request_form=form,
        processes=" + ".join(sorted({role for _, role in processes})),
        cold_start_s=cold_start_s,
        latency_c1=c1.latency,
        concurrency=plan.concurrency,
        throughput_rps=loaded.throughput_rps,
        latency_loaded=loaded.latency,
        rss_mb=sum(by_role.values()) if by_role else None,
        rss_by_role_mb={role: round(mb, 1) for role, mb in sorted(by_role.items())},
        cpu_ms_per_request=cpu_ms,
        capacity_rps=capacity.capacity,
        capacity_note=capacity.note,
        errors=errors,
    )


def measure_torchserve(plan: ComparisonPlan, batching: Batching, say) -> ServerFigures:
    settings = ArchiveSettings(
        batch_size=batching.batch_size,
        max_batch_delay_ms=batching.max_batch_delay_ms,
        min_workers=1,
        max_workers=1,
        handler=HandlerSettings(threads=plan.intra_op_threads),
    )
    name = f"{MODEL}-b{batching.batch_size}"
    archive = build_archive(plan.artifact, name, plan.work_dir / "model_store", plan.backend, True, settings)
    label = f"TorchServe ({batching.label})"
    say(f"{label}: starting")
    with torchserve_target(plan, archive) as (target, cold_start_s):
        return measure(target, plan, label, "raw image body", cold_start_s, say)


@contextmanager
def torchserve_target(plan: ComparisonPlan, archive: Path) -> Iterator[tuple[Target, float]]:
    """TorchServe serving one archive (its file name is the model's) from its own run folder, as a target, with
    its cold start in seconds; stopped on leaving."""
    name = archive.stem
    settings = ServerSettings.one_archive(archive, plan.work_dir / "servers" / name, plan.startup_timeout_s)
    with TorchServeProcess(settings) as server:
        payloads, headers = torchserve_payloads(plan)
        processes = partial(torchserve_processes, server.proc.pid)
        url = server.predictions_url(name)
        yield Target(url, payloads, headers, processes, f"{server.metrics_url}/metrics"), server.startup_seconds


V2_ROUTES = {"infer": "v2 binary extension", "predictions": "raw image body, TorchServe's route"}


def measure_v2(plan: ComparisonPlan, workers: int | None, route: str, say) -> ServerFigures:
    """The v2 server with ``workers`` processes (None: its default split of the CPUs), each with its share of
    threads unless --threads fixes them; requests to the protocol's ``infer`` or TorchServe's ``predictions``."""
    count, threads = worker_split(workers, plan.threads)
    settings = V2ServerSettings(
        artifact=plan.artifact, model_name=MODEL, port=free_port(), backend=plan.backend, workers=count,
        threads=threads,
    )  # fmt: skip
    label = (
        f"v2 server, KServe ModelServer ({count} worker{'s' * (count > 1)} × {threads} thread{'s' * (threads > 1)}, "
        f"batch {settings.batch_size} / {settings.max_batch_delay_ms:g} ms)"
    )
    say(f"{label}, {route}: starting")
    run_dir = plan.work_dir / "servers" / f"v2-{count}x{threads}-{route}"
    with KServeProcess(settings, run_dir, startup_timeout=plan.startup_timeout_s) as server:
        processes = partial(v2_processes, server.proc.pid)
        if route == "infer":
            target = Target(server.infer_url, *v2_payloads(plan), processes)
        else:
            target = Target(f"{server.url}/predictions/{MODEL}", *torchserve_payloads(plan), processes)
        return measure(target, plan, label, V2_ROUTES[route], server.startup_seconds, say)


def compare_servers(plan: ComparisonPlan, say: Callable[[str], None] = print) -> list[ServerFigures]:
    """The servers one after another (never two at once: they would share the CPUs)."""
    results = [measure_torchserve(plan, batching, say) for batching in plan.torchserve_batchings]
    results.extend(measure_v2(plan, w, route, say) for w in plan.v2_workers for route in plan.v2_routes)
    return results


class ComparisonResults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: str
    artifact: str
    model: str
    backend: str
    intra_op_threads: int
    images: list[str]
    machine: MachineInfo
    cpu_flags: list[str]  # of note for inference: AVX2, AVX-512, bf16, AMX
    servers: list[ServerFigures]


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def comparison_table(results: ComparisonResults, p99_ms: float) -> str:
    """The side-by-side table (markdown), with the machine and load it was measured under."""
    m = results.machine
    c = results.servers[0].concurrency if results.servers else 16
    lines = [
        f"{results.model} ({results.backend}, {results.intra_op_threads} intra-op threads), one image per request; "
        f"{m.cpu_model}, {m.usable_cpus} usable CPUs ({', '.join(results.cpu_flags) or 'no AVX2'}), load average "
        f"{m.load_average[0]:.2f} at the start, {(m.load_average_end or [float('nan')])[0]:.2f} at the end; "
        "client and server on the same CPUs",
        "",
        f"| server | request | cold start | c=1 p50 | c=1 p99 | c={c} throughput | server RSS | server CPU / request "
        f"| capacity at p99 ≤ {p99_ms:g} ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in results.servers:
        capacity = "none passed" if s.capacity_rps is None else f"{s.capacity_rps:.1f} req/s"
        lines.append(
            f"| {s.server} | {s.request_form} | {s.cold_start_s:.1f} s | {_ms(s.latency_c1.p50_ms)} ms "
            f"| {_ms(s.latency_c1.p99_ms)} ms | {s.throughput_rps:.1f} req/s | {_ms(s.rss_mb)} MB ({s.processes}) "
            f"| {_ms(s.cpu_ms_per_request)} ms | {capacity} |"
        )
    lines.append("")
    for s in results.servers:
        memory = ", ".join(f"{role} {mb:.0f} MB" for role, mb in s.rss_by_role_mb.items())
        lines.append(f"- {s.server}: RSS {memory}; capacity search: {s.capacity_note}")
    errors = {s.server: s.errors for s in results.servers if s.errors}
    lines += ["", f"Errors: {errors or 'none'}."]
    return "\n".join(lines) + "\n"
