"""A run's plots from its own files: curves (metrics.csv), confusion matrix and per-class accuracy (summary.json)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from convserve.common.errors import ConvserveError
from convserve.training.analysis.figures import Figure, new_figure, save_png
from convserve.training.records import read_metrics

PLOTS_DIR = "plots"
CURVES = ("loss", "acc1", "acc5")
CURVE_TITLES = {"loss": "loss", "acc1": "accuracy@1 (%)", "acc5": "accuracy@5 (%)"}


def curves_figure(history: list[dict[str, float]], title: str = "") -> Figure:
    """Train and val loss / acc@1 / acc@5 per epoch (epochs counted from 1, as the training log prints them)."""
    fig, axes = new_figure(13, 3.6, ncols=len(CURVES))
    epochs = [int(row["epoch"]) + 1 for row in history]
    marker = "o" if len(epochs) < 30 else None
    for ax, key in zip(axes, CURVES, strict=True):
        for split in ("train", "val"):
            ax.plot(epochs, [row[f"{split}_{key}"] for row in history], marker=marker, markersize=3, label=split)
        ax.set_title(CURVE_TITLES[key])
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_figure(matrix: list[list[int]], class_names: list[str], title: str = "") -> Figure:
    """Rows are true classes, columns predictions; colour is the row-normalised rate, small matrices show counts."""
    counts = np.asarray(matrix, dtype=np.int64)
    n = len(class_names)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(max(4.5, 0.45 * n + 2), 30)
    fig, (ax,) = new_figure(side + 1, side)
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    labelled = n <= 40
    ticks = range(n) if labelled else []
    ax.set_xticks(list(ticks), [class_names[i] for i in ticks], rotation=90 if n > 10 else 0)
    ax.set_yticks(list(ticks), [class_names[i] for i in ticks])
    if n <= 20:  # counts stay readable up to ~20 classes
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    colour = "white" if rates[i, j] > 0.5 else "black"
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8, color=colour)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    return fig


def per_class_figure(per_class_acc: dict[str, float | None], title: str = "") -> Figure:
    """Accuracy per class in percent; classes absent from the split are marked n/a."""
    names = list(per_class_acc)
    values = [math.nan if v is None else 100.0 * v for v in per_class_acc.values()]
    n = len(names)
    if n <= 20:
        fig, (ax,) = new_figure(max(5.0, 0.5 * n + 1.5), 3.8)
        ax.bar(range(n), [0 if math.isnan(v) else v for v in values], color="tab:blue")
        ax.set_xticks(range(n), names, rotation=90 if max(map(len, names)) > 3 else 0)
        ax.set_ylim(0, 105)
        ax.set_ylabel("accuracy (%)")
        for i, v in enumerate(values):
            ax.text(i, (0 if math.isnan(v) else v) + 1, "n/a" if math.isnan(v) else f"{v:.0f}", ha="center", fontsize=7)
    else:  # many classes: horizontal bars, one row each, readable names
        fig, (ax,) = new_figure(7, min(0.18 * n + 1.5, 60))
        ax.barh(range(n), [0 if math.isnan(v) else v for v in values], color="tab:blue")
        ax.set_yticks(range(n), names, fontsize=6)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("accuracy (%)")
    ax.grid(alpha=0.3, axis="y" if n <= 20 else "x")
    ax.set_title(title or "per-class accuracy")
    fig.tight_layout()
    return fig


def read_summary(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "summary.json"
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise ConvserveError(f"{run_dir} holds no finished run: cannot read summary.json ({exc.strerror})") from None
    except ValueError as exc:
        raise ConvserveError(f"{path} is not valid JSON: {exc}") from None


def read_history(run_dir: Path) -> list[dict[str, float]]:
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise ConvserveError(f"{run_dir} holds no metrics.csv")
    return read_metrics(path)


def run_figures(run_dir: Path) -> dict[str, Figure]:
    """The run's figures by file stem, built from metrics.csv and summary.json only."""
    summary, history = read_summary(run_dir), read_history(run_dir)
    label = f"{summary.get('arch', '?')} on {summary.get('dataset', '?')}"
    split = summary.get("test_split", "test")
    return {
        "curves": curves_figure(history, label),
        "confusion_matrix": confusion_figure(
            summary["confusion_matrix"], summary["class_names"], f"{label}: confusion ({split})"
        ),
        "per_class_acc": per_class_figure(summary["per_class_acc"], f"{label}: per-class accuracy ({split})"),
    }


def write_run_plots(run_dir: Path) -> list[Path]:
    """Write RUN/plots/{curves,confusion_matrix,per_class_acc}.png.

    These files are derived from the run's own metrics.csv/summary.json, so rewriting them (e.g. after a resume)
    replaces stale pictures of the same run and nothing else.
    """
    out = Path(run_dir) / PLOTS_DIR
    return [save_png(fig, out / f"{stem}.png") for stem, fig in run_figures(run_dir).items()]
