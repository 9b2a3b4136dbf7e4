"""Compare two checkpoints on the same images: ``python training/compare.py CKPT_A CKPT_B [--split test] [--json]``.

Both are evaluated on A's dataset split (same seed, same images), each with its own preprocessing; prints overall
and per-class accuracy side by side and the images where their top-1 answers differ.
"""

from __future__ import annotations

import json
from pathlib import Path

from convserve.common.errors import CliParser, run_cli
from convserve.common.logs import configure_cli_logging
from convserve.training.analysis.compare_models import compare_checkpoints, format_comparison


def build_parser() -> CliParser:
    p = CliParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint_a", type=Path)
    p.add_argument("checkpoint_b", type=Path)
    p.add_argument("--split", choices=["test", "val", "train"], default="test")
    p.add_argument("--data-dir", type=Path, help="default: the data folder A was trained on")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--show", type=int, default=20, help="disagreements to list (text output)")
    p.add_argument("--json", action="store_true", help="print machine-readable results only (all disagreements)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.json:
        configure_cli_logging(stdout_is_data=True)
    result = compare_checkpoints(args.checkpoint_a, args.checkpoint_b, args.split, args.data_dir, args.device)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_comparison(result, args.show))
    return 0


def cli() -> None:
    """Run as a script: ``main`` behind the one-line error edge, as ``convserve <command>`` runs it."""
    run_cli(main)


if __name__ == "__main__":
    cli()
