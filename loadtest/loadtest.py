"""Load-test one prediction URL with real images: closed loop (C requests in flight) or open loop (a rate).

Closed loop, C requests kept in flight (the client waits for the server, so it hides queueing):
python loadtest/loadtest.py --url http://127.0.0.1:8080/predictions/alexnet --images cat.jpg dog.jpg \\
    --concurrency 16 --duration 30 --warmup 20 --output results.json

Open loop, requests sent on schedule at each rate whatever the server does, timed from their scheduled send:
python loadtest/loadtest.py --url ... --images cat.jpg --rate 5,10,20 --duration 20 --output-dir load/

Capacity: the highest rate that holds p99 <= 250 ms and <= 1 % errors for a full step (doubling, then bisecting):
python loadtest/loadtest.py --url ... --images cat.jpg --find-capacity --p99-ms 250 --output-dir load/

Stops by itself: closed loop after --requests measured answers or --duration seconds (whichever first); open
loop after --duration seconds of arrivals (--step-duration per capacity step, at most --max-steps) and the
answers still due; never later than --max-duration seconds for the whole run. Warm-up requests are not counted.
An open-loop run whose client could not send on time (or hit --max-in-flight) is marked INVALID: its figures
describe the client, not the server. TorchServe's metrics page (--metrics-url; default: from --run-dir, else the
URL's host on port 8082) is read before and after each open-loop run to split the server's time into queue and
worker time.
--output-dir writes results.json, results.csv and latency.png (percentiles vs offered rate).
The token (TorchServe's inference key) can also come from $CONVSERVE_TOKEN or the --run-dir's key file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from convserve.common.errors import CliParser, ConvserveError, run_cli
from convserve.common.files import write_text_atomic
from convserve.loadtest.capacity import find_capacity
from convserve.loadtest.load_report import capacity_lines, check_output_dir, open_loop_lines, table_lines, write_results
from convserve.loadtest.loadgen import LoadPlan, read_payloads, run_load_sync, summary_lines
from convserve.loadtest.open_loop import OpenLoopPlan, run_open_loop_sync
from convserve.loadtest.recorded_server import RecordedServer
from convserve.loadtest.server_metrics import default_metrics_url, recorded_metrics_url

# flags that only an open-loop run or a capacity search reads
OPEN_LOOP_ONLY = ("arrivals", "max_in_flight", "late_ms", "metrics_url", "output_dir", "seed")
CAPACITY_ONLY = ("p99_ms", "max_error_rate", "start_rate", "max_rate", "step_duration", "max_steps")


def rates(text: str) -> list[float]:
    """``5,10,20`` → [5.0, 10.0, 20.0]; each a positive number of requests per second."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes positive numbers separated by commas, got {text!r}") from None
    if not all(v > 0 and math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"every rate must be a positive number of requests per second, got {text!r}")
    return values


def build_parser() -> CliParser:
    p = CliParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="the prediction URL, e.g. http://127.0.0.1:8080/predictions/alexnet")
    p.add_argument("--images", type=Path, nargs="+", required=True, help="image files sent as bodies, cycled")
    p.add_argument("--concurrency", type=int, default=None, help="closed loop: requests kept in flight (default 1)")
    p.add_argument("--requests", type=int, default=None, help="closed loop: measured requests (default 100)")
    p.add_argument("--duration", type=float, default=None, help="seconds of measurement (open loop: per rate, 10)")
    p.add_argument(
        "--warmup", type=int, default=None, help="requests first, not counted (default 10; open loop: 1 s of arrivals)"
    )
    p.add_argument(
        "--token",
        default=os.environ.get("CONVSERVE_TOKEN"),
        help="bearer token (inference key); write --token=KEY, keys may start with '-'",
    )
    p.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="the server's run folder (serve.py --run-dir): its metrics page, and its inference key without --token",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--max-duration", type=float, default=600.0, help="hard cap in seconds on the whole run")
    p.add_argument("--output", type=Path, default=None, help="write the result as JSON here")
    p.add_argument("--force", action="store_true", help="overwrite --output / --output-dir results")
    o = p.add_argument_group("open loop")
    o.add_argument("--rate", type=rates, default=None, help="requests per second, or several: 5,10,20")
    o.add_argument("--arrivals", choices=["constant", "poisson"], default=None, help="arrival times (constant)")
    o.add_argument("--max-in-flight", type=int, default=None, help="more waiting answers invalidate a run (512)")
    o.add_argument("--late-ms", type=float, default=None, help="a send later than this past its due time is late (25)")
    o.add_argument("--metrics-url", default=None, help="TorchServe's metrics page (URL host, port 8082); 'none': off")
    o.add_argument("--seed", type=int, default=None, help="poisson arrivals' seed (0)")
    o.add_argument("--output-dir", type=Path, default=None, help="write results.json, results.csv, latency.png")
    o.add_argument("--no-plot", action="store_true", help="no latency.png in --output-dir")
    c = p.add_argument_group("capacity search")
    c.add_argument("--find-capacity", action="store_true", help="search the highest rate within the bounds")
    c.add_argument("--p99-ms", type=float, default=None, help="p99 bound (ms) a step must hold")
    c.add_argument("--max-error-rate", type=float, default=None, help="error fraction a step may have (0.01)")
    c.add_argument("--start-rate", type=float, default=None, help="first step's rate (1 req/s)")
    c.add_argument("--max-rate", type=float, default=None, help="highest rate tried (1000 req/s)")
    c.add_argument("--step-duration", type=float, default=None, help="seconds of arrivals per step (10)")
    c.add_argument("--max-steps", type=int, default=None, help="at most this many steps (12)")
    return p


def check_modes(p: CliParser, args: argparse.Namespace) -> None:
    """Flag combinations that mean nothing are one-line usage errors (exit 2)."""
    given = {name for name in OPEN_LOOP_ONLY + CAPACITY_ONLY if getattr(args, name) is not None}
    open_loop = args.rate is not None or args.find_capacity
    if args.find_capacity and args.rate is not None:
        p.error("--find-capacity chooses the rates itself: give --start-rate / --max-rate instead of --rate")
    if args.find_capacity and args.p99_ms is None:
        p.error("--find-capacity needs --p99-ms, the p99 latency bound a rate must hold")
    if open_loop and (args.concurrency is not None or args.requests is not None):
        p.error("--concurrency and --requests are closed-loop flags; an open loop is set by --rate and --duration")
    if not args.find_capacity and given & set(CAPACITY_ONLY):
        p.error(f"--{sorted(given & set(CAPACITY_ONLY))[0].replace('_', '-')} needs --find-capacity")
    if not open_loop and given:
        p.error(f"--{sorted(given)[0].replace('_', '-')} needs --rate or --find-capacity (open loop)")
    if args.find_capacity and args.duration is not None:
        p.error("--find-capacity runs --step-duration seconds per step; --duration does not apply")


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    check_modes(p, args)
    if args.output is not None and args.output.exists() and not args.force:
        raise ConvserveError(f"{args.output} exists; pass --force to overwrite it")
    if args.output_dir is not None:
        check_output_dir(args.output_dir, args.force)
    if args.run_dir is not None:
        server = RecordedServer.read(args.run_dir)
        args.token = args.token or server.inference_key()
        args.metrics_url = args.metrics_url or recorded_metrics_url(server)
    if args.find_capacity:
        return _capacity(args)
    if args.rate is not None:
        return _rates(args)
    return _closed_loop(args)


def _closed_loop(args: argparse.Namespace) -> int:
    plan = LoadPlan(
        url=args.url,
        payloads=read_payloads(args.images),
        concurrency=1 if args.concurrency is None else args.concurrency,
        requests=args.requests,
        duration_s=args.duration,
        warmup=10 if args.warmup is None else args.warmup,
        token=args.token,
        timeout_s=args.timeout,
        max_duration_s=args.max_duration,
    )
    result = run_load_sync(plan)
    print("\n".join(summary_lines(result)))
    _write_json(args, result.model_dump(mode="json"))
    return 0 if result.ok else 1


def _given(**values: object) -> dict[str, object]:
    """The flags a user gave; the rest keep the library's defaults (one place for each default)."""
    return {key: value for key, value in values.items() if value is not None}


def _open_plan(args: argparse.Namespace, rate: float) -> OpenLoopPlan:
    metrics = args.metrics_url or default_metrics_url(args.url)
    return OpenLoopPlan(
        url=args.url,
        payloads=read_payloads(args.images),
        rate=rate,
        warmup=math.ceil(rate) if args.warmup is None else args.warmup,  # one second of arrivals
        token=args.token,
        timeout_s=args.timeout,
        max_duration_s=args.max_duration,
        metrics_url=None if metrics.lower() == "none" else metrics,
        **_given(
            duration_s=args.duration,
            arrivals=args.arrivals,
            max_in_flight=args.max_in_flight,
            late_ms=args.late_ms,
            seed=args.seed,
        ),
    ).check()


def _rates(args: argparse.Namespace) -> int:
    results = []
    for rate in args.rate:
        result = run_open_loop_sync(_open_plan(args, rate))
        print("\n".join(open_loop_lines(result)), flush=True)
        results.append(result)
    if len(results) > 1:
        print("\n".join(table_lines([r.row() for r in results])))
    _write_json(args, [r.model_dump(mode="json") for r in results])
    if args.output_dir is not None:
        _say_written(write_results(args.output_dir, results, plot=not args.no_plot))
    return 0 if all(r.valid and r.ok for r in results) else 1


def _capacity(args: argparse.Namespace) -> int:
    bounds = _given(
        max_error_rate=args.max_error_rate,
        start_rate=args.start_rate,
        max_rate=args.max_rate,
        step_duration_s=args.step_duration,
        max_steps=args.max_steps,
    )
    result = find_capacity(
        _open_plan(args, bounds.get("start_rate", 1.0)),  # its rate and duration are set per step
        p99_ms=args.p99_ms,
        max_total_s=args.max_duration,
        warmup_s=1.0 if args.warmup is None else None,
        on_step=lambda step: print("\n".join(open_loop_lines(step.result) + [f"  step: {step.why}"]), flush=True),
        **bounds,
    )
    print("\n".join(capacity_lines(result)))
    _write_json(args, result.model_dump(mode="json"))
    if args.output_dir is not None:
        runs = [step.result for step in result.steps]
        _say_written(write_results(args.output_dir, runs, capacity=result, plot=not args.no_plot and bool(runs)))
    return 0 if result.capacity is not None and result.stopped_by != "client" else 1


def _write_json(args: argparse.Namespace, data: object) -> None:
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.output, json.dumps(data, indent=1) + "\n")
        print(f"wrote {args.output}")


def _say_written(paths: list[Path]) -> None:
    print("wrote " + ", ".join(str(p) for p in paths))


def cli() -> None:
    """Run as a script: ``main`` behind the one-line error edge, as ``convserve <command>`` runs it."""
    run_cli(main)


if __name__ == "__main__":
    cli()
