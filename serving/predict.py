"""Top-k classes for your own photos: ``python serving/predict.py CKPT_OR_ARTIFACT IMAGE... [--topk 5] [--json]``.

CKPT_OR_ARTIFACT: a checkpoint (.pt), a run folder (its checkpoints/best.pt) or an exported artifact folder.
With ``--url http://HOST:8080/predictions/NAME`` the images go to TorchServe instead (then give only images).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from convserve.common.errors import CliParser, run_cli
from convserve.common.logs import configure_cli_logging
from convserve.serving.predictors import format_predictions, open_predictor, predict_files


def build_parser() -> CliParser:
    p = CliParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("paths", nargs="+", type=Path, help="CKPT_OR_ARTIFACT IMAGE... (only IMAGE... with --url)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--url", help="TorchServe predictions URL, e.g. http://localhost:8080/predictions/digits")
    p.add_argument(
        "--token",
        help="TorchServe inference key, sent as a Bearer header; write --token=KEY (keys may start with -)",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable results only")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.json:
        configure_cli_logging(stdout_is_data=True)
    source, images = (None, args.paths) if args.url else (str(args.paths[0]), args.paths[1:])
    if not images:
        parser.error("give at least one IMAGE after the checkpoint or artifact")
    predictions = predict_files(open_predictor(source, args.url, args.token, args.topk), images, args.topk)
    if args.json:
        print(json.dumps([p.to_dict() for p in predictions], indent=2))
    else:
        print(format_predictions(predictions))
    return 0


def cli() -> None:
    """Run as a script: ``main`` behind the one-line error edge, as ``convserve <command>`` runs it."""
    run_cli(main)


if __name__ == "__main__":
    cli()
