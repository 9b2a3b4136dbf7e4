"""Benchmark a model side by side: eager PyTorch (the baseline), TorchScript, ONNX Runtime (int8/fp16 too when
exported) in-process, and through TorchServe (convserve's handler per artifact kind, with and without dynamic
batching, and TorchServe's stock image_classifier for reference), on the same real JPEG photos.

python benchmarking/benchmark.py --torchvision alexnet --output-dir docs/benchmarks --work-dir /tmp/bench-alexnet
python benchmarking/benchmark.py --checkpoint runs/X/checkpoints/best.pt --output-dir bench-out --quick

--torchvision needs torchvision's trained weights (downloaded, or placed in $TORCH_HOME/hub/checkpoints);
--random-weights measures a seeded untrained model instead (timings do not depend on the weights' values), and
every table of such a run says so in its first line.

Writes OUTPUT_DIR/results.json, results.md (tables, ratios to eager, targets, machine, load average) and PNG
charts. The served rows use the archive's default batching (what `serving/archive.py` ships) and no batching
beside it. --quick: a few iterations and the default batching alone, for smoke checks (numbers meaningless).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from convserve.benchmarking.results import Batching
from convserve.benchmarking.served import STOCK
from convserve.benchmarking.suite import STAGES, BenchmarkOptions, run_benchmark, write_results
from convserve.common.errors import CliParser, run_cli
from convserve.serving.backends import AUTO_ORDER

SERVED_KINDS = ("onnx", "torchscript", "eager", "onnx-int8", "onnx-fp16", STOCK)


def batching(text: str) -> Batching:
    """BATCH[:DELAY_MS], e.g. 1 or 8:5."""
    size, _, delay = text.partition(":")
    if not size.isdigit() or int(size) < 1 or (delay and not delay.isdigit()):
        raise ValueError(text)
    return Batching(batch_size=int(size), max_batch_delay_ms=int(delay or 0))


batching.__name__ = "BATCH[:DELAY_MS]"


def build_parser() -> CliParser:
    p = CliParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="a convserve checkpoint, exported here first")
    src.add_argument("--torchvision", choices=("alexnet", "resnet18", "resnet34"), help="torchvision's model, 224 px")
    src.add_argument("--artifact", type=Path, help="an existing artifact folder (no export)")
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="with --torchvision: a seeded UNTRAINED model instead of torchvision's weights (no download); every "
        "table says so",
    )
    p.add_argument("--output-dir", type=Path, default=Path("bench-results"), help="results.json, results.md, PNGs")
    p.add_argument("--work-dir", type=Path, help="keep exports, archives and server logs here (default: temporary)")
    p.add_argument("--quick", action="store_true", help="a small, fast run (few iterations)")
    p.add_argument("--force", action="store_true", help="overwrite results in --output-dir")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] for the in-process stage")
    p.add_argument("--threads", type=int, help="intra-op threads per backend / worker (default: the CPUs)")
    p.add_argument(
        "--formats",
        nargs="+",
        choices=("onnx", "torchscript", "onnx-int8", "onnx-fp16"),
        help="formats to export (default: onnx torchscript onnx-int8, + onnx-fp16 on a GPU)",
    )
    p.add_argument("--backends", nargs="+", choices=AUTO_ORDER, help="in-process backends (default: all exported)")
    p.add_argument("--served-kinds", nargs="+", choices=SERVED_KINDS, default=["onnx", "torchscript", "eager", STOCK])
    p.add_argument(
        "--server-batching",
        nargs="+",
        type=batching,
        help="TorchServe batchSize[:maxBatchDelay ms] settings (default: the archive's default, then 1; quick: the "
        "default alone)",
    )
    p.add_argument("--concurrency", nargs="+", type=int, help="client concurrencies (default 1 4 16; quick: 1 4)")
    p.add_argument("--iterations", type=int, help="in-process iterations at batch 1 (default 200; quick: 10)")
    p.add_argument("--latency-requests", type=int, help="requests at concurrency 1 (default 300; quick: 10)")
    p.add_argument("--load-duration", type=float, help="seconds per other concurrency (default 20; quick: 1.5)")
    p.add_argument("--workers", type=int, default=1, help="TorchServe workers per model")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    opts = BenchmarkOptions(
        output_dir=args.output_dir,
        checkpoint=args.checkpoint,
        torchvision=args.torchvision,
        random_weights=args.random_weights,
        artifact=args.artifact,
        work_dir=args.work_dir,
        quick=args.quick,
        force=args.force,
        device=args.device,
        threads=args.threads,
        formats=args.formats,
        backends=args.backends,
        served_kinds=args.served_kinds,
        batchings=args.server_batching,
        concurrencies=args.concurrency,
        iterations=args.iterations,
        load_duration_s=args.load_duration,
        latency_requests=args.latency_requests,
        workers=args.workers,
        stages=tuple(args.stages),
        command=shlex.join(["python", "benchmarking/benchmark.py", *(sys.argv[1:] if argv is None else argv)]),
    )
    results = run_benchmark(opts)
    for path in write_results(results, args.output_dir):
        print(f"wrote {path}")
    for t in results.targets:
        verdict = "not measured" if t.met is None else ("met" if t.met else "MISSED")
        measured = "–" if t.measured is None else f"{t.measured:.2f}"
        print(f"target {t.name}: {verdict} ({measured} vs {t.threshold:g})")
    return 0


def cli() -> None:
    """Run as a script: ``main`` behind the one-line error edge, as ``convserve <command>`` runs it."""
    run_cli(main)


if __name__ == "__main__":
    cli()
