"""A sweep's comparison table (Markdown + CSV) and overlay plots, from each point's run folder."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from matplotlib.ticker import MaxNLocator

from convserve.common.files import write_json_atomic, write_text_atomic
from convserve.training.analysis.figures import Figure, new_figure, save_png
from convserve.training.analysis.sweep_config import Sweep
from convserve.training.analysis.sweep_runner import PointOutcome
from convserve.training.records import read_metrics

METRIC_COLUMNS = [
    "final_val_acc1",
    "final_val_acc5",
    "best_val_acc1",
    "best_val_acc5",
    "test_acc1",
    "test_acc5",
    "epochs_done",
    "wall_time_s",
    "peak_rss_mb",
    "peak_gpu_mem_mb",
]
OVERLAYS = {"val_acc1": "val accuracy@1 (%)", "train_loss": "train loss"}


def _history(run: Path) -> list[dict[str, float]]:
    path = run / "metrics.csv"
    return read_metrics(path) if path.is_file() else []


def point_row(root: Path, outcome: PointOutcome, keys: list[str]) -> dict[str, Any]:
    """One table row: params, status, and the numbers the point's run folder holds (None where it has none).

    Final = the last epoch's val metrics; best = the highest val value over epochs (each metric on its own);
    wall time and peak memory come from the run's summary.json (a resumed run counts its last session only).
    """
    run = root / outcome.point.name
    history = _history(run)
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    row: dict[str, Any] = {"point": outcome.point.name, **{k: outcome.point.params[k] for k in keys}}
    row["status"] = outcome.status
    last = history[-1] if history else {}
    row["final_val_acc1"], row["final_val_acc5"] = last.get("val_acc1"), last.get("val_acc5")
    row["best_val_acc1"] = max((h["val_acc1"] for h in history), default=None)
    row["best_val_acc5"] = max((h["val_acc5"] for h in history), default=None)
    row["test_acc1"], row["test_acc5"] = summary.get("test_acc1"), summary.get("test_acc5")
    row["epochs_done"] = len(history)
    row["wall_time_s"] = summary.get("wall_time_s", outcome.seconds if outcome.status == "failed" else None)
    row["peak_rss_mb"], row["peak_gpu_mem_mb"] = summary.get("peak_rss_mb"), summary.get("peak_gpu_mem_mb")
    row["action"], row["note"] = outcome.action, outcome.reason
    return row


def _cell(value: Any, digits: int | None = 2) -> str:
    """Metrics with fixed decimals; parameters (``digits`` None) as written, e.g. 0.0005, not 0.00."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:g}" if digits is None else f"{value:.{digits}f}"
    return str(value).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def markdown_table(sweep: Sweep, rows: list[dict[str, Any]]) -> str:
    header = ["point", *sweep.keys, "status", *METRIC_COLUMNS, "action", "note"]
    lines = [f"# Sweep {sweep.name}", ""]
    if sweep.description:
        lines += [sweep.description.strip(), ""]
    lines += [
        f"Config: `{sweep.source}`. Accuracies in %, val = validation split, test = the run's test split "
        "(the run's best.pt: its run.select); best = highest value over epochs.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    digits = {col: None for col in sweep.keys} | {col: 1 for col in METRIC_COLUMNS if col.endswith("_mb")}
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(col), digits.get(col, 2)) for col in header) + " |")
    return "\n".join(lines) + "\n"


def csv_table(sweep: Sweep, rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["point", *sweep.keys, "status", *METRIC_COLUMNS, "action", "note"])
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def overlay_figure(root: Path, sweep: Sweep, rows: list[dict[str, Any]], metric: str) -> Figure:
    fig, (ax,) = new_figure(7.5, 4.5)
    for row in rows:
        history = _history(root / row["point"])
        if history:
            label = row["point"] + ("" if row["status"] == "done" else f" ({row['status']})")
            ax.plot([int(h["epoch"]) + 1 for h in history], [h[metric] for h in history], marker="o", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(OVERLAYS[metric])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.set_title(f"{sweep.name}: {OVERLAYS[metric]}")
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_results(root: Path, sweep: Sweep, outcomes: list[PointOutcome]) -> dict[str, Path]:
    """results.md, results.csv, sweep.json and plots/<metric>.png in the sweep folder (rewritten each run)."""
    rows = [point_row(root, o, sweep.keys) for o in outcomes]
    paths = {"markdown": root / "results.md", "csv": root / "results.csv", "state": root / "sweep.json"}
    write_text_atomic(paths["markdown"], markdown_table(sweep, rows))
    write_text_atomic(paths["csv"], csv_table(sweep, rows))
    state = {"name": sweep.name, "config": str(sweep.source), "keys": sweep.keys, "rows": rows}
    write_json_atomic(paths["state"], json.loads(json.dumps(state, default=str).replace("NaN", "null")))
    for metric in OVERLAYS:
        paths[metric] = save_png(overlay_figure(root, sweep, rows, metric), root / "plots" / f"{metric}.png")
    return paths
