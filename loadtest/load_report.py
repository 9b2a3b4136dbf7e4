"""Open-loop results for people and files: summary lines, the step table, results.json / results.csv and the
latency-vs-offered-rate PNG in one output folder (each file written atomically)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from convserve.common.errors import ConvserveError
from convserve.common.files import atomic_path, write_text_atomic
from convserve.hardware.machine import machine_summary
from convserve.loadtest.capacity import CapacityResult, CapacityStep
from convserve.loadtest.open_loop import OpenLoopResult

RESULT_FILES = ("results.json", "results.csv", "latency.png")
CSV_FIELDS = [
    "offered_rate",
    "achieved_rate",
    "throughput",
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "mean_ms",
    "errors_by_status",
    "error_rate",
    "server_queue_ms",
    "server_compute_ms",
    "avg_batch_size",
    "late_sends",
    "dropped_sends",
    "max_send_lag_ms",
    "sent",
    "ok",
    "arrivals",
    "duration_s",
    "valid",
    "invalid_reason",
    "passed",
    "why",
]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def open_loop_lines(result: OpenLoopResult) -> list[str]:
    """What one run says on the terminal; an invalid run says so first, loudly."""
    lat = result.latency
    lines = []
    if not result.valid:
        lines.append(f"!! INVALID: {result.invalid_reason}")
        lines.append("!! these figures describe the load generator, not the server")
    lines += [
        f"{result.url}  open loop, {result.arrivals} arrivals: offered {result.offered_rate:.2f} req/s, "
        f"achieved {result.achieved_rate:.2f} req/s, throughput {result.throughput:.2f} req/s (2xx)",
        f"  requests: {result.scheduled} scheduled, {result.sent} sent, {result.ok} ok, "
        f"{result.error_count} errors; sends late > {result.late_ms:g} ms: {result.late_sends} "
        f"(max lag {result.max_send_lag_ms:.1f} ms), dropped at the in-flight cap: {result.dropped_sends}",
    ]
    if lat.count:
        lines.append(
            f"  latency ms from the scheduled send: p50 {lat.p50_ms:.1f}  p90 {lat.p90_ms:.1f}  "
            f"p95 {lat.p95_ms:.1f}  p99 {lat.p99_ms:.1f}  max {lat.max_ms:.1f}"
        )
    if result.errors_by_status:
        lines.append("  errors by status: " + ", ".join(f"{k}: {v}" for k, v in result.errors_by_status.items()))
    if result.server is not None:
        lines.append(
            f"  server, per request: queued {result.server.server_queue_ms:.1f} ms, in a worker "
            f"{result.server.server_compute_ms:.1f} ms ({result.server.requests} requests)"
        )
    if result.server_metrics_error:
        lines.append(f"  no server split: {result.server_metrics_error}")
    if result.avg_batch_size is not None:
        lines.append(f"  mean batch size: {result.avg_batch_size:.2f}")
    return lines


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per rate: offered, achieved, throughput, percentiles, errors, server split, verdict."""
    head = f"{'offered':>8} {'achieved':>8} {'thrput':>7} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7} "
    head += f"{'errors':>6} {'queue':>6} {'worker':>6} {'batch':>5}  verdict"
    lines = [head]
    for row in rows:
        errors = sum(row["errors_by_status"].values())
        batch = "-" if row["avg_batch_size"] is None else f"{row['avg_batch_size']:.2f}"
        verdict = row.get("why") or ("ok" if row["valid"] else "INVALID")
        lines.append(
            f"{row['offered_rate']:8.2f} {row['achieved_rate']:8.2f} {row['throughput']:7.2f} "
            f"{_ms(row['p50_ms']):>7} {_ms(row['p90_ms']):>7} {_ms(row['p99_ms']):>7} {_ms(row['max_ms']):>7} "
            f"{errors:6d} {_ms(row['server_queue_ms']):>6} {_ms(row['server_compute_ms']):>6} {batch:>5}  {verdict}"
        )
    return lines


def capacity_lines(result: CapacityResult) -> list[str]:
    head = f"capacity at p99 ≤ {result.p99_ms:g} ms, errors ≤ {result.max_error_rate:.2%}, {result.step_duration_s:g} s"
    value = "none" if result.capacity is None else f"{result.capacity:.2f} req/s"
    return [f"{head} steps: {value} ({result.note})", *table_lines(step_rows(result.steps))]


def step_rows(steps: list[CapacityStep]) -> list[dict[str, Any]]:
    return [{**step.result.row(), "passed": step.passed, "why": step.why} for step in steps]


def check_output_dir(folder: Path, force: bool) -> None:
    """Refuse, before any load is sent, a folder that already holds results (unless ``force``)."""
    taken = [name for name in RESULT_FILES if (folder / name).exists()]
    if taken and not force:
        raise ConvserveError(f"{folder} already holds {', '.join(taken)}; pass --force to overwrite")


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "errors_by_status": json.dumps(row["errors_by_status"], sort_keys=True)})
    return buf.getvalue()


def client_machine() -> dict[str, Any]:
    """The machine that generated the load (figures from another machine are not comparable)."""
    brief = machine_summary()
    return {"cpu_model": brief.cpu, "usable_cpus": brief.cpus, "load_average": brief.load_average_start}


def write_results(
    folder: Path, runs: list[OpenLoopResult], capacity: CapacityResult | None = None, plot: bool = True
) -> list[Path]:
    """results.json (every run in full, plus the flat rows), results.csv (the rows) and, when ``plot``,
    latency.png (percentiles vs offered rate); returns the paths written."""
    rows = step_rows(capacity.steps) if capacity is not None else [r.row() for r in runs]
    doc: dict[str, Any] = {"mode": "capacity" if capacity is not None else "rates", "client": client_machine()}
    if capacity is not None:
        doc.update(capacity.model_dump(mode="json", exclude={"steps"}))
    doc["rows"] = rows
    doc["runs"] = [r.model_dump(mode="json") for r in runs]
    folder.mkdir(parents=True, exist_ok=True)
    written = [
        write_text_atomic(folder / "results.json", json.dumps(doc, indent=1) + "\n"),
        write_text_atomic(folder / "results.csv", _csv_text(rows)),
    ]
    if plot and rows:
        from convserve.loadtest.latency_plot import plot_latency

        with atomic_path(folder / "latency.png") as tmp:
            plot_latency(rows, tmp, runs[0].url, capacity)
        written.append(folder / "latency.png")
    return written
