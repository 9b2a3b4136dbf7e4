"""Package an artifact folder as a TorchServe model archive.

python serving/archive.py artifacts/alexnet-digits --model-name alexnet --export-path model_store --backend onnx
"""

from __future__ import annotations

import argparse
from pathlib import Path

from convserve.common.errors import run_cli
from convserve.serving.archive_builder import ARCHIVE_FORMATS, build_archive
from convserve.serving.archive_settings import ArchiveSettings, HandlerSettings
from convserve.serving.backends import BACKENDS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact_dir", type=Path, help="folder with model_card.json, index_to_name.json, model files")
    p.add_argument("--model-name", default="alexnet", help="the name in /predictions/<name>")
    p.add_argument("--export-path", type=Path, default=Path("model_store"), help="the model store folder")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="model file to ship (auto: onnx first)")
    p.add_argument("--force", action="store_true", help="overwrite an existing archive")
    p.add_argument("--archive-format", choices=ARCHIVE_FORMATS, default="zip-store")
    defaults = ArchiveSettings()  # the one place the defaults live (docs/benchmarks: "Batching default")
    p.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help="TorchServe dynamic batching: max requests per batch (1: none; default %(default)s)",
    )
    p.add_argument(
        "--max-batch-delay",
        type=int,
        default=defaults.max_batch_delay_ms,
        help="ms to wait for a batch to fill (default %(default)s); under light load every request waits it",
    )
    workers_help = "default: chosen when serving, from the usable CPUs (affinity and cgroup quota)"
    p.add_argument("--min-workers", type=int, default=None, help=workers_help)
    p.add_argument("--max-workers", type=int, default=None, help=workers_help)
    p.add_argument(
        "--response-timeout",
        type=int,
        default=defaults.response_timeout_s,
        help="seconds before TorchServe gives up on a batch",
    )
    p.add_argument("--threads", type=int, default=None, help="intra-op threads per worker (default: CPUs/workers)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    low = args.min_workers or args.max_workers  # one given: the other follows it
    settings = ArchiveSettings(
        batch_size=args.batch_size,
        max_batch_delay_ms=args.max_batch_delay,
        min_workers=low,
        max_workers=max(low, args.max_workers or 0) if low else None,
        response_timeout_s=args.response_timeout,
        handler=HandlerSettings(threads=args.threads),
    )
    path = build_archive(
        args.artifact_dir, args.model_name, args.export_path, args.backend, args.force, settings, args.archive_format
    )
    print(f"wrote {path}")
    return 0


def cli() -> None:
    """Run as a script: ``main`` behind the one-line error edge, as ``convserve <command>`` runs it."""
    run_cli(main)


if __name__ == "__main__":
    cli()
