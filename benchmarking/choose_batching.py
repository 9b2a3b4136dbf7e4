"""Measure batching settings side by side on one ONNX artifact and print the table our default comes from.

python benchmarking/choose_batching.py --artifact artifacts/alexnet --output docs/benchmarks/batching.md
python benchmarking/choose_batching.py --artifact A --candidates 1 4:50 8:2 8:5 --rounds 12
python benchmarking/choose_batching.py --artifact A --server v2       # the v2 server's dynamic batching

One TorchServe serves the artifact once per setting (one model and one worker each, the archive's other settings
as a user gets them), or with --server v2 one v2 server per setting (its default workers); each round gives every
setting a turn (--latency-requests at concurrency 1, then --duration seconds at the high concurrency: closed loop,
the load generator of loadtest/loadtest.py), in alternating order. Prints a markdown table (c1 p50 against no
batching, c16 throughput against the best setting), the setting our rule picks on this machine, and whether the
shipped default meets the rule.
An artifact: export/to_onnx.py CKPT, or export/to_onnx.py --torchvision alexnet --random-weights (no download).
Memory: one worker per setting holds the model (AlexNet fp32: ~0.8 GB each).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from convserve.artifact.card import ModelCard, read_card
from convserve.benchmarking.batching import CANDIDATES, SweepPlan, sweep, table_lines, verdict_lines
from convserve.benchmarking.benchmark import batching
from convserve.benchmarking.suite import write_photos
from convserve.common.errors import CliParser, ConvserveError, run_cli
from convserve.common.files import write_text_atomic
from convserve.hardware.machine import load_average, machine_summary
from convserve.loadtest.loadgen import read_payloads


def build_parser() -> CliParser:
    p = CliParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, required=True, help="an artifact folder with an ONNX model file")
    default = " ".join(f"{b.batch_size}:{b.max_batch_delay_ms}" for b in CANDIDATES)
    p.add_argument("--candidates", nargs="+", type=batching, help=f"BATCH[:DELAY_MS] settings (default {default})")
    p.add_argument("--server", choices=("torchserve", "v2"), default="torchserve", help="whose batching to measure")
    p.add_argument("--concurrency", type=int, default=16, help="the high concurrency for throughput")
    p.add_argument("--latency-requests", type=int, default=40, help="requests at concurrency 1, per turn")
    p.add_argument("--duration", type=float, default=5.0, help="seconds at the high concurrency, per turn")
    p.add_argument("--rounds", type=int, default=8, help="turns each setting gets")
    p.add_argument("--work-dir", type=Path, help="archives and server logs (default: a temporary folder)")
    p.add_argument("--output", type=Path, help="also write the table as markdown here")
    p.add_argument("--force", action="store_true", help="overwrite --output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    if args.output is not None and args.output.exists() and not args.force:
        raise ConvserveError(f"{args.output} exists; pass --force to overwrite it")
    if args.rounds < 1 or args.concurrency < 2:
        raise ConvserveError("--rounds must be at least 1 and --concurrency at least 2")
    card = read_card(args.artifact)
    if card.file("onnx") is None:
        raise ConvserveError(f"{args.artifact} has no ONNX model file (export one with export/to_onnx.py)")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="convserve-batching-"))
    try:
        lines = _run(args, card, work)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.output is not None:
        write_text_atomic(args.output, text)
        print(f"wrote {args.output}")
    return 0


def _run(args: argparse.Namespace, card: ModelCard, work: Path) -> list[str]:
    images, _ = write_photos(work / "images")
    plan = SweepPlan(
        artifact=args.artifact,
        payloads=read_payloads(images),
        work_dir=work,
        candidates=args.candidates or list(CANDIDATES),
        high_concurrency=args.concurrency,
        latency_requests=args.latency_requests,
        load_duration_s=args.duration,
        rounds=args.rounds,
    )
    machine = machine_summary()
    rows = sweep(plan, args.server)
    command = shlex.join(["python", "benchmarking/choose_batching.py", *args.argv])
    return [
        f"command: `{command}`",
        f"model: {card.name} ({card.arch}, {card.preprocessing.input_size} px), ONNX fp32, "
        f"{'RANDOM WEIGHTS, ' if card.source.random_weights else ''}{_served_by(args.server)}; images: "
        + ", ".join(p.name for p in images),
        f"machine: {machine.cpu}, {machine.cpus} CPUs; load average (1, 5, 15 min) at the start "
        f"{machine.load_average_start}, at the end {load_average()}",
        "",
        *table_lines(rows, args.concurrency),
        "",
        *verdict_lines(rows, args.concurrency),
    ]


def _served_by(server: str) -> str:
    return "TorchServe, one worker per setting" if server == "torchserve" else "one v2 server per setting"


def cli() -> None:
    """Run as a script: ``main`` behind the one-line error edge, as ``convserve <command>`` runs it."""
    run_cli(main)


if __name__ == "__main__":
    cli()
