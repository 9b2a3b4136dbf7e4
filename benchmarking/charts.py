"""PNG charts of a benchmark run (matplotlib Agg: files only, never a window)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from convserve.benchmarking.comparisons import model_memory_mb  # noqa: E402
from convserve.benchmarking.results import BenchmarkResults  # noqa: E402

CHART_FILES = ("latency_by_backend.png", "throughput_vs_concurrency.png", "throughput_vs_batch.png", "memory.png")


def _short(r) -> str:
    """A served configuration's bar label: kind, and the batching when there is any."""
    b = r.batching
    return r.kind if b.batch_size == 1 else f"{r.kind}\nb{b.batch_size}/{b.max_batch_delay_ms}ms"


def _not_measured(ax, what: str) -> None:
    ax.set_title(f"{what}: not measured", fontsize=10)
    ax.set_axis_off()


def _bars(ax, labels: list[str], series: dict[str, list[float | None]], ylabel: str, title: str) -> None:
    if not labels:
        _not_measured(ax, title)
        return
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [j + i * width for j in range(len(labels))]
        ax.bar(xs, [v if v is not None else 0 for v in values], width, label=name)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(labels))], labels, rotation=35, ha="right")
    ax.tick_params(axis="x", labelsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def latency_chart(res: BenchmarkResults, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [2, 3]})
    names = [r.backend for r in res.inprocess]
    _bars(
        left,
        names,
        {
            "model p50": [r.model_b1.p50_ms for r in res.inprocess],
            "model p99": [r.model_b1.p99_ms for r in res.inprocess],
            "end-to-end p50": [r.end_to_end_b1.p50_ms for r in res.inprocess],
        },
        "ms",
        "In-process latency at batch 1",
    )
    if res.floors and res.inprocess:
        fl = res.floors
        left.axhline(fl.fp32_read_ms, color="k", ls="--", lw=1, label=f"fp32 weight read at {fl.read_gbs:.1f} GB/s")
        if "fp32" in fl.compute_ms:
            rate = fl.matmul_gflops["fp32"]
            left.axhline(fl.compute_ms["fp32"], color="k", ls=":", lw=1, label=f"fp32 compute at {rate:.0f} GFLOP/s")
        left.legend(fontsize=8)
    labels = [_short(r) for r in res.served]
    _bars(
        right,
        labels,
        {
            "p50": [r.latency_c1.latency.p50_ms for r in res.served],
            "p99": [r.latency_c1.latency.p99_ms for r in res.served],
        },
        "ms",
        "Through TorchServe, concurrency 1",
    )
    _save(fig, path, res)


def throughput_concurrency_chart(res: BenchmarkResults, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    if not res.served:
        _not_measured(ax, "Through TorchServe")
        _save(fig, path, res)
        return
    for r in res.served:
        points = sorted((x.concurrency, x.throughput_rps) for x in r.loads)
        style = "--" if r.kind == "stock" else "-"
        ax.plot(
            [c for c, _ in points], [t for _, t in points], style, marker="o", label=f"{r.kind}, {r.batching.label}"
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(res.settings.concurrencies, [str(c) for c in res.settings.concurrencies])
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("requests/s (2xx)")
    ax.set_title("Throughput through TorchServe", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path, res)


def throughput_batch_chart(res: BenchmarkResults, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    if not res.inprocess:
        _not_measured(ax, "In-process")
        _save(fig, path, res)
        return
    for r in res.inprocess:
        points = [(1, 1000.0 / r.model_b1.p50_ms if r.model_b1.p50_ms else None)]
        points += [(p.batch_size, p.images_per_s) for p in r.throughput]
        points = [(b, t) for b, t in points if t]
        ax.plot([b for b, _ in points], [t for _, t in points], marker="o", label=r.backend)
    ax.set_xscale("log", base=2)
    sizes = [1, *res.settings.batch_sizes]
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.set_xlabel("batch size (batch 1: 1 / p50)")
    ax.set_ylabel("images/s (model only)")
    ax.set_title("In-process throughput", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path, res)


def memory_chart(res: BenchmarkResults, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [2, 3]})
    _bars(
        left,
        [r.backend for r in res.inprocess],
        {
            "peak RSS": [r.peak_rss_mb for r in res.inprocess],
            "private (RssAnon)": [r.anon_rss_mb for r in res.inprocess],
            "model (peak − before load)": [model_memory_mb(r) for r in res.inprocess],
        },
        "MB",
        "In-process memory (one process per backend)",
    )
    _bars(
        right,
        [_short(r) for r in res.served],
        {
            "worker RSS": [r.worker_rss_mb for r in res.served],
            "worker peak": [r.worker_peak_rss_mb for r in res.served],
        },
        "MB",
        "TorchServe worker memory",
    )
    _save(fig, path, res)


def _save(fig, path: Path, res: BenchmarkResults) -> None:
    fig.suptitle(f"{res.model.name} — {res.machine.cpu_model}, {res.machine.usable_cpus} CPUs", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_charts(res: BenchmarkResults, folder: Path) -> list[Path]:
    folder = Path(folder)
    makers = (latency_chart, throughput_concurrency_chart, throughput_batch_chart, memory_chart)
    paths = []
    for make, name in zip(makers, CHART_FILES, strict=True):
        make(res, folder / name)
        paths.append(folder / name)
    return paths
