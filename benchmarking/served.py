"""Through TorchServe: per archive kind and batching setting, its own server: cold start, latency at
concurrency 1, throughput at each concurrency, and the frontend's and workers' memory read from /proc.

Kinds: ``onnx``, ``torchscript``, ``eager`` (convserve's handler, serving/handler.py) and ``stock`` (TorchServe's
built-in image_classifier handler, see stock.py). Servers run one at a time, so they never compete for CPUs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from convserve.artifact.card import read_card
from convserve.benchmarking.results import Batching, LoadCpu, ServedResult, ServedSkip
from convserve.benchmarking.stock import build_stock_archive, stock_unsupported
from convserve.common.errors import ConvserveError, first_line
from convserve.hardware.procfs import cpu_by_role, torchserve_memory, torchserve_processes
from convserve.loadtest.loadgen import LoadPlan, LoadResult, Payload, run_load_sync
from convserve.serving.archive_builder import build_archive
from convserve.serving.archive_settings import ArchiveSettings, HandlerSettings
from convserve.serving.torchserve_process import ServerSettings, TorchServeProcess

STOCK = "stock"


def default_batching() -> Batching:
    """The batching every archive gets unless told otherwise (convserve.serving.archive_settings.ArchiveSettings)."""
    settings = ArchiveSettings()
    return Batching(batch_size=settings.batch_size, max_batch_delay_ms=settings.max_batch_delay_ms)


@dataclass
class ServedPlan:
    artifact: Path
    payloads: list[Payload]
    work_dir: Path
    kinds: list[str] = field(default_factory=lambda: ["onnx", "torchscript", "eager", STOCK])
    # the archive's default first (what a user gets), no batching for reference
    batchings: list[Batching] = field(
        default_factory=lambda: [default_batching(), Batching(batch_size=1, max_batch_delay_ms=0)]
    )
    concurrencies: list[int] = field(default_factory=lambda: [1, 4, 16])
    latency_requests: int = 300
    load_duration_s: float = 20.0
    warmup: int = 10
    workers: int = 1
    threads: int | None = None
    startup_timeout_s: float = 300.0


def archive_name(kind: str, batching: Batching) -> str:
    """Unique per kind and batching, so several settings can share one model store (and one server)."""
    return f"{kind}-b{batching.batch_size}-d{batching.max_batch_delay_ms}"


def build(plan: ServedPlan, kind: str, batching: Batching, store: Path) -> Path:
    name = archive_name(kind, batching)
    if kind == STOCK:
        return build_stock_archive(plan.artifact, name, store, batching, plan.workers, force=True)
    settings = ArchiveSettings(
        batch_size=batching.batch_size,
        max_batch_delay_ms=batching.max_batch_delay_ms,
        min_workers=plan.workers,
        max_workers=plan.workers,
        handler=HandlerSettings(threads=plan.threads),
    )
    return build_archive(plan.artifact, name, store, backend=kind, force=True, settings=settings)


def _loads(plan: ServedPlan, url: str, launcher_pid: int) -> tuple[list[LoadResult], list[LoadCpu]]:
    """Concurrency 1 bounded by count (latency), the others by time (throughput); each capped in time.
    The server's CPU time is read around each load."""
    out, cpu = [], []
    processes = torchserve_processes(launcher_pid)
    for concurrency in plan.concurrencies:
        if concurrency == 1:
            load = LoadPlan(url, plan.payloads, 1, requests=plan.latency_requests, duration_s=plan.load_duration_s * 3)
        else:
            load = LoadPlan(url, plan.payloads, concurrency, duration_s=plan.load_duration_s)
        load.warmup = max(plan.warmup, 2 * concurrency)
        load.timeout_s = 120.0
        load.max_duration_s = plan.load_duration_s * 3 + 120.0
        before = cpu_by_role(processes)
        result = run_load_sync(load)
        out.append(result)
        cpu.append(_cpu_per_request(before, cpu_by_role(processes), result, load.warmup))
    return out, cpu


def _cpu_per_request(before: dict, after: dict, result: LoadResult, warmup: int) -> LoadCpu:
    requests = result.completed + warmup

    def per(role: str) -> float | None:
        if role not in before or role not in after or not requests:
            return None
        return (after[role] - before[role]) * 1e3 / requests

    return LoadCpu(
        concurrency=result.concurrency,
        requests=requests,
        worker_ms_per_request=per("worker"),
        frontend_ms_per_request=per("frontend"),
    )


def serve_one(plan: ServedPlan, kind: str, batching: Batching, archive: Path) -> ServedResult:
    name = archive.stem
    settings = ServerSettings.one_archive(archive, plan.work_dir / "servers" / name, plan.startup_timeout_s)
    with TorchServeProcess(settings) as server:
        loads, cpu = _loads(plan, server.predictions_url(name), server.proc.pid)
        memory = torchserve_memory(server.proc.pid)
        cold_start = server.startup_seconds
    errors: Counter = Counter()
    for load in loads:
        errors.update(load.errors)
    c1 = next((r for r in loads if r.concurrency == 1), loads[0])
    return ServedResult(
        kind=kind,
        handler="stock image_classifier" if kind == STOCK else "convserve",
        batching=batching,
        workers=plan.workers,
        archive_mb=archive.stat().st_size / 2**20,
        cold_start_s=cold_start,
        latency_c1=c1,
        loads=loads,
        memory=memory,
        cpu=cpu,
        errors=dict(sorted(errors.items())),
    )


def measure_served(plan: ServedPlan, say: Callable[[str], None] = print) -> tuple[list[ServedResult], list[ServedSkip]]:
    store = plan.work_dir / "model_store"
    results: list[ServedResult] = []
    skipped: list[ServedSkip] = []
    for kind in plan.kinds:
        if kind == STOCK and (reason := stock_unsupported(read_card(plan.artifact))):
            say(f"served {kind}: skipped: {reason}")
            skipped.append(ServedSkip(kind=kind, reason=reason))
            continue
        for batching in plan.batchings:
            label = f"{kind} ({batching.label})"
            try:
                archive = build(plan, kind, batching, store)
                say(f"served {label}: starting TorchServe")
                result = serve_one(plan, kind, batching, archive)
            except ConvserveError as exc:  # ServerStartError included: the reason comes from the server's log
                say(f"served {label}: skipped: {exc}")
                skipped.append(ServedSkip(kind=kind, batching=batching, reason=first_line(exc)))
                continue
            say(f"served {label}: {_summary(result)}")
            results.append(result)
    return results, skipped


def _summary(result: ServedResult) -> str:
    lat = result.latency_c1.latency
    rates = ", ".join(f"c{r.concurrency} {r.throughput_rps:.1f}/s" for r in result.loads)
    rss = result.worker_rss_mb
    p50 = f"p50 {lat.p50_ms:.1f} ms" if lat.count else "no successful answer"
    mem = f", worker RSS {rss:.0f} MB" if rss is not None else ""
    return f"cold start {result.cold_start_s:.1f} s, {p50}, {rates}{mem}, errors {result.errors or 'none'}"
