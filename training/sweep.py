"""Run a grid of training runs: ``python training/sweep.py --config SWEEP.yaml [--output-dir DIR]``.

Each point trains in its own subprocess and run folder; finished points are skipped and interrupted ones resumed
on a rerun; failed points are recorded and the sweep goes on. Writes results.md / results.csv and overlay plots.
Exit code 0 when every point finished, 1 when some failed, 2 for a bad sweep config.
"""

from __future__ import annotations

from pathlib import Path

from convserve.common.errors import CliParser, run_cli
from convserve.training.analysis.sweeps import run_sweep


def build_parser() -> CliParser:
    p = CliParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, required=True, help="sweep YAML (base: + grid:)")
    p.add_argument("--output-dir", type=Path, help="sweep folder (default runs/sweeps/<name>)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    outcomes, _ = run_sweep(args.config, args.output_dir)
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def cli() -> None:
    """Run as a script: ``main`` behind the one-line error edge, as ``convserve <command>`` runs it."""
    run_cli(main)


if __name__ == "__main__":
    cli()
