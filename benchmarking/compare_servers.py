"""Serve one artifact through TorchServe (no batching, then the archive's default batching) and through the v2
server (KServe's ModelServer), one at a time on this machine's CPUs, and write the side-by-side figures.

python benchmarking/compare_servers.py --artifact artifacts/X --output-dir docs/benchmarks/servers
python benchmarking/compare_servers.py --artifact artifacts/X --output-dir /tmp/servers --quick     # smoke check

Writes OUTPUT_DIR/results.json and results.md: cold start, latency at concurrency 1, throughput at --concurrency,
server RSS and CPU per request, capacity at p99 <= --p99-ms (open loop), with the machine and its load average.

--capacity KIND...: instead, the capacity at p99 <= --p99-ms of TorchServe's default deployment of each KIND (the
archive's default batching, workers and threads; stock: TorchServe's own image_classifier handler on the eager
weights), one server at a time; writes OUTPUT_DIR/capacity.json and capacity.md (p50/p99, the server's queue and
worker time and the mean batch at the capacity, how each search ended). For AlexNet, ~3 min a kind on 2 CPUs:
python export/to_onnx.py --torchvision alexnet --random-weights --quantize int8 --output-dir /tmp/alexnet-224
python benchmarking/compare_servers.py --artifact /tmp/alexnet-224 --output-dir D --capacity onnx onnx-int8 stock
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

from convserve.artifact.card import ModelCard, read_card
from convserve.benchmarking.default_capacity import KINDS, CapacityResults, capacity_table, measure_kinds
from convserve.benchmarking.server_comparison import (
    V2_ROUTES,
    ComparisonPlan,
    ComparisonResults,
    compare_servers,
    comparison_table,
)
from convserve.benchmarking.suite import write_photos
from convserve.common.errors import CliParser, ConvserveError, run_cli
from convserve.common.files import read_image_bytes, write_text_atomic
from convserve.hardware.cpu_features import notable_flags
from convserve.hardware.machine import describe_machine, load_average

QUICK = {"latency_requests": 10, "load_duration_s": 1.5, "warmup": 2, "capacity_step_s": 1.5, "capacity_max_s": 25.0}


def build_parser() -> CliParser:
    p = CliParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, required=True, help="the artifact folder both servers serve")
    p.add_argument("--output-dir", type=Path, required=True, help="results.json and results.md")
    p.add_argument("--images", type=Path, nargs="+", help="request images (default: scikit-image's photos as JPEG)")
    p.add_argument("--backend", default="onnx", help="the artifact's model file both servers run")
    p.add_argument(
        "--threads", type=int, help="intra-op threads of each server process (default: its share of the usable CPUs)"
    )
    p.add_argument(
        "--v2-workers", type=int, nargs="+", metavar="N",
        help="measure the v2 server with each of these worker counts (default: its own default split)",
    )  # fmt: skip
    p.add_argument(
        "--v2-routes", nargs="+", choices=V2_ROUTES, default=["infer"],
        help="the v2 server's routes to load: the protocol's infer (binary extension) and/or TorchServe's predictions",
    )  # fmt: skip
    p.add_argument("--no-unbatched", action="store_true", help="skip TorchServe without batching")
    p.add_argument("--concurrency", type=int, default=16, help="clients of the throughput load")
    p.add_argument("--load-duration", type=float, default=20.0, help="seconds of the throughput load")
    p.add_argument("--latency-requests", type=int, default=300, help="requests at concurrency 1")
    p.add_argument("--p99-ms", type=float, default=100.0, help="the latency bound of the capacity search")
    p.add_argument("--work-dir", type=Path, help="keep archives and server logs here (default: temporary)")
    p.add_argument(
        "--capacity",
        nargs="+",
        choices=KINDS,
        metavar="KIND",
        help=f"only the capacity of the default deployment of each KIND ({', '.join(KINDS)})",
    )
    p.add_argument("--quick", action="store_true", help="a few requests and seconds each (figures meaningless)")
    p.add_argument("--force", action="store_true", help="overwrite results in --output-dir")
    return p


def request_images(paths: list[Path] | None, work: Path) -> list[tuple[str, bytes, str]]:
    if not paths:
        paths, _ = write_photos(work / "images")
    kinds = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
    return [(p.name, read_image_bytes(p), kinds.get(p.suffix.lower(), "application/octet-stream")) for p in paths]


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.capacity and args.threads is not None:
        p.error("--threads does not apply to --capacity: the default deployment chooses its own threads")
    stem = "capacity" if args.capacity else "results"
    outputs = [args.output_dir / f"{stem}.json", args.output_dir / f"{stem}.md"]
    if not args.force and any(path.exists() for path in outputs):
        raise ConvserveError(f"{args.output_dir} holds {stem} already; pass --force to overwrite them")
    card = read_card(args.artifact)
    machine = describe_machine()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="convserve-servers-"))
    command = shlex.join(["python", "benchmarking/compare_servers.py", *(sys.argv[1:] if argv is None else argv)])
    plan = ComparisonPlan(
        artifact=args.artifact.resolve(),
        images=request_images(args.images, work),
        work_dir=work,
        backend=args.backend,
        threads=args.threads,
        v2_workers=args.v2_workers or [None],
        v2_routes=args.v2_routes,
        latency_requests=args.latency_requests,
        concurrency=args.concurrency,
        load_duration_s=args.load_duration,
        p99_ms=args.p99_ms,
    )
    if args.no_unbatched:
        plan.torchserve_batchings = plan.torchserve_batchings[1:]
    if args.quick:
        plan.torchserve_batchings = plan.torchserve_batchings[:1]
        for key, value in QUICK.items():
            setattr(plan, key, value)
    if args.capacity:
        return _capacity(args, card, plan, machine, command, outputs)
    servers = compare_servers(plan)
    machine.load_average_end = load_average()
    results = ComparisonResults(
        command=command,
        artifact=str(args.artifact),
        model=f"{card.name} ({card.arch}, {card.preprocessing.input_size} px)",
        backend=args.backend,
        intra_op_threads=plan.intra_op_threads,
        images=[name for name, _, _ in plan.images],
        machine=machine,
        cpu_flags=notable_flags(),
        servers=servers,
    )
    _write(outputs, results.model_dump_json(indent=1), command, comparison_table(results, args.p99_ms))
    return 0


def _capacity(args, card: ModelCard, plan: ComparisonPlan, machine, command: str, outputs: list[Path]) -> int:
    measured, skipped = measure_kinds(plan, args.capacity)
    machine.load_average_end = load_average()
    results = CapacityResults(
        command=command,
        artifact=str(args.artifact),
        model=f"{card.name} ({card.arch}, {card.preprocessing.input_size} px)",
        random_weights=card.source.random_weights,
        images=[name for name, _, _ in plan.images],
        machine=machine,
        cpu_flags=notable_flags(),
        p99_ms=args.p99_ms,
        step_duration_s=plan.capacity_step_s,
        kinds=measured,
        skipped=skipped,
    )
    _write(outputs, results.model_dump_json(indent=1), command, capacity_table(results))
    return 0 if measured and all(k.capacity_rps is not None for k in measured) else 1


def _write(outputs: list[Path], data: str, command: str, table: str) -> None:
    outputs[0].parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(outputs[0], data + "\n")
    write_text_atomic(outputs[1], f"`{command}`\n\n{table}")
    print(table)
    for path in outputs:
        print(f"wrote {path}")


def cli() -> None:
    """Run as a script: ``main`` behind the one-line error edge, as ``convserve <command>`` runs it."""
    run_cli(main)


if __name__ == "__main__":
    cli()
