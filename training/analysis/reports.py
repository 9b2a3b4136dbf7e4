"""One self-contained HTML page about runs: summary numbers, the run plots (embedded PNGs), per-class table."""

from __future__ import annotations

import base64
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

from convserve.common.errors import ConvserveError
from convserve.common.files import write_text_atomic
from convserve.training.analysis.figures import png_bytes
from convserve.training.analysis.plots import PLOTS_DIR, read_history, read_summary, run_figures

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
section { border-top: 2px solid #444; margin-top: 2em; }
pre { background: #f7f7f7; padding: 0.5em; overflow-x: auto; }
"""
SUMMARY_FIELDS = [
    ("arch", "model"),
    ("dataset", "dataset"),
    ("epochs", "epochs"),
    ("best_epoch", "best epoch"),
    ("best_val_acc1", "best val acc@1 (%)"),
    ("test_split", "test split"),
    ("test_acc1", "test acc@1 (%)"),
    ("test_acc5", "test acc@5 (%)"),
    ("test_loss", "test loss"),
    ("test_count", "test images"),
    ("num_params", "parameters"),
    ("input_size", "input size (px)"),
    ("wall_time_s", "wall time (s)"),
    ("images_per_s", "train images/s"),
    ("peak_rss_mb", "peak RSS (MB)"),
    ("peak_gpu_mem_mb", "peak GPU memory (MB)"),
    ("device", "device"),
]


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def run_pictures(run_dir: Path) -> dict[str, bytes]:
    """The run's plots/ PNGs when the trainer wrote them, else drawn now in memory (the run folder is untouched)."""
    stems = ("curves", "confusion_matrix", "per_class_acc")
    files = {s: Path(run_dir) / PLOTS_DIR / f"{s}.png" for s in stems}
    if all(p.is_file() for p in files.values()):
        return {s: p.read_bytes() for s, p in files.items()}
    return {s: png_bytes(fig) for s, fig in run_figures(run_dir).items()}


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _per_class_table(summary: dict[str, Any]) -> str:
    matrix = summary["confusion_matrix"]
    rows = []
    for k, name in enumerate(summary["class_names"]):
        count, correct = sum(matrix[k]), matrix[k][k]
        acc = summary["per_class_acc"].get(name)
        rows.append([name, str(count), str(correct), "–" if acc is None else f"{100 * acc:.1f}"])
    return _table(["class", "images", "correct", "accuracy (%)"], rows)


def _section(run_dir: Path, summary: dict[str, Any]) -> str:
    pictures = run_pictures(run_dir)
    config = Path(run_dir) / "config.yaml"
    parts = [
        f'<section><h2 id="{escape(str(run_dir))}">{escape(str(run_dir))}</h2>',
        _table(["", "value"], [[label, _fmt(summary.get(key))] for key, label in SUMMARY_FIELDS]),
        *(f'<img alt="{escape(stem)}" src="{_data_uri(png)}">' for stem, png in pictures.items()),
        f"<h3>Per-class accuracy ({escape(str(summary.get('test_split', 'test')))})</h3>",
        _per_class_table(summary),
    ]
    if config.is_file():
        parts.append(f"<details><summary>config.yaml</summary><pre>{escape(config.read_text())}</pre></details>")
    return "\n".join(parts) + "</section>"


def build_report(run_dirs: list[Path]) -> str:
    runs = []
    for run_dir in run_dirs:
        read_history(run_dir)  # a clear error now for a folder that is not a run
        runs.append((Path(run_dir), read_summary(run_dir)))
    overview = _table(
        ["run", "model", "dataset", "epochs", "best val acc@1", "test acc@1", "test acc@5", "wall time (s)"],
        [
            [str(d), s.get("arch", "?"), s.get("dataset", "?")]
            + [_fmt(s.get(k)) for k in ("epochs", "best_val_acc1", "test_acc1", "test_acc5", "wall_time_s")]
            for d, s in runs
        ],
    )
    body = "\n".join(_section(d, s) for d, s in runs)
    stamp = f"{datetime.now():%Y-%m-%d %H:%M}"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>convserve report</title>'
        f"<style>{STYLE}</style></head><body><h1>convserve runs</h1><p>{len(runs)} run(s), written {stamp}.</p>"
        f"{overview}\n{body}\n</body></html>\n"
    )


def write_report(run_dirs: list[Path], output: Path | None = None, force: bool = False) -> Path:
    if not run_dirs:
        raise ConvserveError("give at least one run folder")
    if output is None:
        if len(run_dirs) > 1:
            raise ConvserveError("several runs: say where the report goes with --output FILE.html")
        output = Path(run_dirs[0]) / "report.html"
    output = Path(output)
    html = build_report(run_dirs)  # first: a folder that is not a run is the error worth reporting
    if output.exists() and not force:
        raise ConvserveError(f"{output} already exists; pick another --output or pass --force")
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output, html)
    return output
