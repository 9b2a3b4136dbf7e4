"""Latency percentiles against offered rate, as a PNG (a bare matplotlib Figure: Agg, never a window).

matplotlib is imported when a plot is drawn: the slim serving image leaves it out (the image built with
WITH_TRAINING=1, where load tests run, has it), and the load test writes its JSON and CSV without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from convserve.common.errors import ConvserveError
from convserve.loadtest.capacity import CapacityResult

PERCENTILES = (("p50_ms", "p50"), ("p90_ms", "p90"), ("p95_ms", "p95"), ("p99_ms", "p99"), ("max_ms", "max"))


def plot_latency(rows: list[dict[str, Any]], path: Path, title: str, capacity: CapacityResult | None = None) -> None:
    """One line per percentile over the valid rows sorted by offered rate; an invalid run is only a cross at its
    p99; a capacity search adds its p99 bound and the capacity found."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter
    except ImportError:
        raise ConvserveError("the latency plot needs matplotlib (pip install matplotlib); pass --no-plot") from None
    rows = sorted((r for r in rows if r["p50_ms"] is not None), key=lambda r: r["offered_rate"])
    valid = [r for r in rows if r["valid"]]
    invalid = [r for r in rows if not r["valid"]]
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for key, label in PERCENTILES:
        ax.plot([r["offered_rate"] for r in valid], [r[key] for r in valid], marker="o", label=label)
    if invalid:
        ax.scatter([r["offered_rate"] for r in invalid], [r["p99_ms"] for r in invalid], marker="x", s=90,
                   color="red", zorder=3, label="client could not keep up")  # fmt: skip
    if capacity is not None:
        ax.axhline(capacity.p99_ms, color="grey", linestyle="--", label=f"p99 bound {capacity.p99_ms:g} ms")
        if capacity.capacity is not None:
            ax.axvline(capacity.capacity, color="green", linestyle=":", label=f"capacity {capacity.capacity:.1f}/s")
    ax.set_xlabel("offered rate (requests/s, open loop)")
    ax.set_ylabel("latency from scheduled send (ms)")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, format="png", dpi=110)
