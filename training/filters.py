"""See what a CNN learned: ``python training/filters.py CKPT [--image IMG] [--layers 1 2|features.0] [--n 8]``.

Writes PNG grids of each conv layer's first N filters (layer 1 also in colour) and, with --image, the feature
maps that image produces. Default output: RUN/filters/<checkpoint>-<timestamp>/ (a new folder each time);
an explicit --output-dir never has files overwritten unless --force.
"""

from __future__ import annotations

from pathlib import Path

from convserve.common.errors import CliParser, run_cli
from convserve.training.analysis.filters_viz import write_filter_pictures


def build_parser() -> CliParser:
    p = CliParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--image", type=Path, help="also draw the feature maps this image produces")
    p.add_argument("--layers", nargs="+", help="conv layers by number (1 = first) or module name; default all")
    p.add_argument("--n", type=int, default=8, help="filters / maps per layer")
    p.add_argument("--output-dir", type=Path)
    p.add_argument("--force", action="store_true", help="overwrite same-named PNGs in --output-dir")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    written = write_filter_pictures(args.checkpoint, args.image, args.layers, args.n, args.output_dir, args.force)
    print(f"wrote {len(written)} PNGs to {written[0].parent}")
    for path in written:
        print(f"  {path.name}")
    return 0


def cli() -> None:
    """Run as a script: ``main`` behind the one-line error edge, as ``convserve <command>`` runs it."""
    run_cli(main)


if __name__ == "__main__":
    cli()
