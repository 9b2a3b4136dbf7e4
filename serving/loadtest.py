"""Load-test one prediction URL: C requests in flight with real images, bounded in count and time.

python serving/loadtest.py --url http://127.0.0.1:8080/predictions/alexnet --images cat.jpg dog.jpg \\
    --concurrency 16 --duration 30 --warmup 20 --output results.json

Stops by itself: after --requests measured answers or --duration seconds (whichever first), and never later
than --max-duration seconds for the whole run. Warm-up answers are not counted. Reports throughput (2xx per
second), latency percentiles (ms) of 2xx answers, and errors by HTTP status (or connection / timeout).
The token (TorchServe's inference key) can also come from $CONVSERVE_TOKEN.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from common.errors import CliParser, ConvserveError, run_cli
from common.files import write_text_atomic
from serving.loadgen import LoadPlan, read_payloads, run_load_sync, summary_lines


def build_parser() -> CliParser:
    p = CliParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="the prediction URL, e.g. http://127.0.0.1:8080/predictions/alexnet")
    p.add_argument("--images", type=Path, nargs="+", required=True, help="image files sent as bodies, cycled")
    p.add_argument("--concurrency", type=int, default=1, help="requests kept in flight")
    p.add_argument("--requests", type=int, default=None, help="measured requests (default 100 without --duration)")
    p.add_argument("--duration", type=float, default=None, help="seconds of measurement")
    p.add_argument("--warmup", type=int, default=10, help="requests sent first and not counted")
    p.add_argument(
        "--token",
        default=os.environ.get("CONVSERVE_TOKEN"),
        help="bearer token (inference key); write --token=KEY, keys may start with '-'",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--max-duration", type=float, default=600.0, help="hard cap in seconds on the whole run")
    p.add_argument("--output", type=Path, default=None, help="write the result as JSON here")
    p.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.output is not None and args.output.exists() and not args.force:
        raise ConvserveError(f"{args.output} exists; pass --force to overwrite it")
    plan = LoadPlan(
        url=args.url,
        payloads=read_payloads(args.images),
        concurrency=args.concurrency,
        requests=args.requests,
        duration_s=args.duration,
        warmup=args.warmup,
        token=args.token,
        timeout_s=args.timeout,
        max_duration_s=args.max_duration,
    )
    result = run_load_sync(plan)
    print("\n".join(summary_lines(result)))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.output, json.dumps(result.model_dump(mode="json"), indent=1) + "\n")
        print(f"wrote {args.output}")
    return 0 if result.ok else 1


def cli() -> None:
    """The ``convserve-loadtest`` entry point: ``main`` behind the one-line error edge."""
    run_cli(main)


if __name__ == "__main__":
    cli()
