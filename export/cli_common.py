"""What both exporter CLIs share: the source arguments, logging, and the exit codes.

Exit codes: 0 exported; 2 bad input (one ``error: ...`` line: not a checkpoint, a pickled checkpoint, an
unwritable or foreign output folder, an unreadable check image, torchvision weights that cannot be loaded and
no --random-weights); 1 the export itself failed (parity check or an exporter limitation), also one
``error: ...`` line, and nothing was written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from convserve.common.errors import CliParser
from convserve.common.logs import configure_cli_logging
from convserve.export.onnx_conversion import ExportFailed
from convserve.export.parity import ParityError
from convserve.export.pipeline import ExportRequest, run_export
from convserve.export.sources import TORCHVISION_ARCHS, ExportSource, checkpoint_source, torchvision_source


def build_parser(description: str) -> CliParser:
    p = CliParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument(
        "checkpoint", nargs="?", type=Path, help="a convserve checkpoint (e.g. runs/NAME/checkpoints/best.pt)"
    )
    p.add_argument("--torchvision", choices=TORCHVISION_ARCHS, help="export torchvision's ImageNet model instead")
    p.add_argument("--weights", default="IMAGENET1K_V1", help="torchvision weight set (with --torchvision)")
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="with --torchvision: a seeded UNTRAINED model instead of the weights (no download; for timings only)",
    )
    p.add_argument(
        "--output-dir", type=Path, help="artifact folder (default: artifacts/<run folder name> in the current folder)"
    )
    p.add_argument("--check-images", nargs="+", type=Path, default=[], metavar="IMG", help="extra parity images")
    p.add_argument("--force", action="store_true", help="replace existing files / a folder that is not this model's")
    p.add_argument("--no-test-accuracy", action="store_true", help="skip measuring test_acc1 per file")
    return p


def open_source(parser: CliParser, args: argparse.Namespace) -> ExportSource:
    if (args.checkpoint is None) == (args.torchvision is None):
        parser.error("give either a CHECKPOINT or --torchvision ARCH")
    if args.random_weights and not args.torchvision:
        parser.error("--random-weights goes with --torchvision (a checkpoint has its own weights)")
    configure_cli_logging()
    if args.torchvision:
        return torchvision_source(args.torchvision, args.weights, random_weights=args.random_weights)
    return checkpoint_source(args.checkpoint)


def export_and_report(source: ExportSource, request: ExportRequest) -> int:
    try:
        result = run_export(source, request)
    except (ParityError, ExportFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(result.lines))
    formats = ", ".join(f.format for f in result.card.files)
    print(f"artifact {result.folder}: {formats}; model_card.json and index_to_name.json written")
    return 0


def base_request(args: argparse.Namespace, formats: list[str]) -> ExportRequest:
    return ExportRequest(
        formats=formats,
        output_dir=args.output_dir,
        force=args.force,
        check_images=list(args.check_images),
        test_accuracy=not args.no_test_accuracy,
    )
