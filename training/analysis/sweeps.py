"""A sweep end to end: load and validate the config, run the points not finished yet, write table and plots."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from convserve.training.analysis.sweep_config import load_sweep
from convserve.training.analysis.sweep_results import write_results
from convserve.training.analysis.sweep_runner import PointOutcome, run_points, say


def default_sweep_dir(name: str) -> Path:
    return Path("runs") / "sweeps" / name


def run_sweep(
    config: Path,
    output_dir: Path | None = None,
    slots: list[str | None] | None = None,
    echo: Callable[[str], None] | None = None,
) -> tuple[list[PointOutcome], dict[str, Path]]:
    echo = echo or say
    sweep = load_sweep(config)
    root = Path(output_dir) if output_dir else default_sweep_dir(sweep.name)
    root.mkdir(parents=True, exist_ok=True)
    echo(f"sweep {sweep.name}: {len(sweep.points)} points in {root}")
    outcomes = run_points(sweep, root, slots, echo)
    paths = write_results(root, sweep, outcomes)
    failed = sum(o.status == "failed" for o in outcomes)
    echo(f"sweep {sweep.name}: {len(outcomes) - failed} done, {failed} failed; table {paths['markdown']}")
    return outcomes, paths
