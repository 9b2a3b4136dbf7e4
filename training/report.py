"""One self-contained HTML report of runs: ``python training/report.py RUN_DIR... [--output FILE.html]``.

Summary numbers, the run plots embedded as PNG data URIs, and a per-class table for each run.
Default output for one run: RUN_DIR/report.html; an existing file is kept unless --force.
"""

from __future__ import annotations

from pathlib import Path

from convserve.common.errors import CliParser, run_cli
from convserve.training.analysis.reports import write_report


def build_parser() -> CliParser:
    p = CliParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    p.add_argument("--output", type=Path, help="the HTML file (needed for several runs)")
    p.add_argument("--force", action="store_true", help="overwrite an existing report")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = write_report(args.run_dirs, args.output, args.force)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
    return 0


def cli() -> None:
    """Run as a script: ``main`` behind the one-line error edge, as ``convserve <command>`` runs it."""
    run_cli(main)


if __name__ == "__main__":
    cli()
