"""Capacity of the default deployment, per model file: what a user gets from serving/archive.py without flags
(serving.archive_settings.ArchiveSettings: its batching, and the workers and intra-op threads TorchServe and the
handler derive from the CPUs), served by TorchServe one kind at a time on this machine's CPUs.

Kinds: a model file of the artifact under convserve's handler (``onnx``, ``onnx-int8``, ``torchscript``,
``eager``, ...) or ``stock``: TorchServe's own image_classifier handler on the eager weights (benchmarking/stock.py),
archived with the same batching and worker count. Per kind: a short closed loop at concurrency 1 places the first
step, then the open-loop search of loadtest/capacity.py; the figures of the step that held at the capacity are kept
(p50/p99, TorchServe's queue/worker split from its metrics page, the mean batch size our handler reports).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from convserve.artifact.card import read_card
from convserve.benchmarking.server_comparison import (
    SHIPPED,
    ComparisonPlan,
    closed_load,
    search_capacity,
    torchserve_target,
)
from convserve.benchmarking.stock import build_stock_archive, stock_unsupported
from convserve.common.errors import ConvserveError, first_line
from convserve.export.sources import RANDOM_WEIGHTS
from convserve.hardware.cpu_share import default_threads, default_workers
from convserve.hardware.machine import MachineInfo
from convserve.loadtest.capacity import CapacityResult
from convserve.loadtest.open_loop import OpenLoopResult
from convserve.serving.archive_builder import build_archive

STOCK = "stock"
KINDS = ("onnx", "onnx-int8", "onnx-fp16", "torchscript", "eager", STOCK)
PROBE_REQUESTS = 30  # concurrency 1, to place the first step of the search


class KindCapacity(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str
    handler: str
    settings: str  # the deployment in words: batching, workers, threads
    cold_start_s: float
    c1_rps: float  # the probe's closed-loop rate (the search starts at half of it)
    capacity_rps: float | None
    at_capacity: OpenLoopResult | None  # the step that held at the capacity
    search: CapacityResult


class KindSkipped(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str
    reason: str


class CapacityResults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: str
    artifact: str
    model: str
    random_weights: bool
    images: list[str]
    machine: MachineInfo
    cpu_flags: list[str]
    p99_ms: float
    step_duration_s: float
    kinds: list[KindCapacity]
    skipped: list[KindSkipped]


def default_archive(plan: ComparisonPlan, kind: str) -> tuple[Path, str, str]:
    """The archive of ``kind`` as a user gets it, its handler, and its settings in words."""
    store, name, workers = plan.work_dir / "model_store", f"default-{kind}", default_workers()
    batching = f"batch {SHIPPED.batch_size} / {SHIPPED.max_batch_delay_ms} ms, {workers} worker"
    if kind == STOCK:
        reason = stock_unsupported(read_card(plan.artifact))
        if reason:
            raise ConvserveError(reason)
        # the stock archive names its workers: the count TorchServe starts for an archive that names none
        archive = build_stock_archive(plan.artifact, name, store, SHIPPED, workers, force=True)
        return archive, "stock image_classifier", f"{batching}, torch's own thread count"
    archive = build_archive(plan.artifact, name, store, backend=kind, force=True)
    return archive, "convserve", f"{batching} × {default_threads(workers)} intra-op threads"


def measure_kind(plan: ComparisonPlan, kind: str, say: Callable[[str], None]) -> KindCapacity:
    archive, handler, settings = default_archive(plan, kind)
    say(f"{kind} ({settings}): starting TorchServe")
    with torchserve_target(plan, archive) as (target, cold_start_s):
        c1 = closed_load(target, 1, plan, requests=PROBE_REQUESTS, duration_s=plan.load_duration_s)
        search = search_capacity(target, plan, c1, kind, say)
    held = [step for step in search.steps if step.passed and step.rate == search.capacity]
    say(f"{kind}: {search.note}")
    return KindCapacity(
        kind=kind,
        handler=handler,
        settings=settings,
        cold_start_s=cold_start_s,
        c1_rps=c1.throughput_rps,
        capacity_rps=search.capacity,
        at_capacity=held[-1].result if held else None,
        search=search,
    )


def measure_kinds(
    plan: ComparisonPlan, kinds: list[str], say: Callable[[str], None] = print
) -> tuple[list[KindCapacity], list[KindSkipped]]:
    """One kind after another (never two servers at once: they would share the CPUs); a kind the artifact
    cannot serve is skipped with its reason."""
    measured, skipped = [], []
    for kind in kinds:
        try:
            measured.append(measure_kind(plan, kind, say))
        except ConvserveError as exc:  # no such model file, stock unsupported, a server that did not start
            say(f"{kind}: skipped: {first_line(exc)}")
            skipped.append(KindSkipped(kind=kind, reason=first_line(exc)))
    return measured, skipped


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def capacity_table(results: CapacityResults) -> str:
    """Markdown: the model (random weights said first), the machine and load, a row per kind."""
    m = results.machine
    weights = f"{RANDOM_WEIGHTS} (seeded, untrained: timings only), " if results.random_weights else ""
    lines = [
        f"{results.model}, {weights}TorchServe's default deployment per kind; capacity: the highest open-loop rate "
        f"holding p99 ≤ {results.p99_ms:g} ms and ≤ 1 % errors for a full {results.step_duration_s:g} s step; "
        f"{m.cpu_model}, {m.usable_cpus} usable CPUs ({', '.join(results.cpu_flags) or 'no AVX2'}), load average "
        f"{m.load_average[0]:.2f} at the start, {(m.load_average_end or [float('nan')])[0]:.2f} at the end; "
        "client and server on the same CPUs",
        "",
        f"| kind | handler | settings | capacity at p99 ≤ {results.p99_ms:g} ms | p50 | p99 | server queue | "
        "server compute | mean batch | search ended | steps |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k in results.kinds:
        step, split = k.at_capacity, k.at_capacity.server if k.at_capacity else None
        capacity = "none held" if k.capacity_rps is None else f"{k.capacity_rps:.1f} req/s"
        batch = "–" if step is None or step.avg_batch_size is None else f"{step.avg_batch_size:.2f}"
        lines.append(
            f"| {k.kind} | {k.handler} | {k.settings} | {capacity} "
            f"| {_ms(step.latency.p50_ms if step else None)} ms | {_ms(step.latency.p99_ms if step else None)} ms "
            f"| {_ms(split.server_queue_ms if split else None)} ms "
            f"| {_ms(split.server_compute_ms if split else None)} ms | {batch} "
            f"| {k.search.stopped_by}: {k.search.note} | {len(k.search.steps)} |"
        )
    lines += [
        "",
        "p50 and p99 from each request's scheduled send to its answer; server queue and compute: TorchServe's "
        "counters over the step, per request (queue: until a worker takes it, the batch's wait included; compute: "
        "the worker's time); mean batch: what convserve's handler reports per answer (the stock handler reports "
        "none); steps: of the search, each one rate held for a full step or not.",
        *[f"- {s.kind}: not measured: {s.reason}" for s in results.skipped],
    ]
    return "\n".join(lines).rstrip() + "\n"
