"""Soak a running server (TorchServe or the v2 server) for minutes, or break it under load and watch it come back.

python serving/serve.py --model-store model_store --run-dir logs/torchserve            # TorchServe, in the background
python loadtest/soak.py --url http://127.0.0.1:8080/predictions/alexnet --run-dir logs/torchserve \\
    --images cat.jpg dog.jpg --concurrency 4 --minutes 10 --output soak.json
python loadtest/soak.py ... --fault worker-kill      # SIGKILL every worker under load; time until a 200 again
python loadtest/soak.py ... --fault graceful-stop    # serve.py --stop with requests in flight; ports, processes

python serving/serve_v2.py artifacts/alexnet --model-name alexnet --port 8090 --workers 2 --run-dir logs/kserve
python loadtest/soak.py --url http://127.0.0.1:8090/predictions/alexnet --run-dir logs/kserve \\
    --images cat.jpg dog.jpg --concurrency 4 --minutes 10 --output soak-v2.json
python loadtest/soak.py ... --fault worker-kill      # the same faults; graceful-stop stops it with serve_v2.py --stop

The load is the closed loop of loadtest/loadtest.py (C requests in flight, real image bodies), or for a soak
--rate R, open-loop arrivals at R per second (loadtest/open_loop.py). The v2 server answers TorchServe's
/predictions route, so the same load runs against either. The run folder (serve.py or serve_v2.py --run-dir)
tells which server runs and which processes are its own, read from /proc: TorchServe's launcher, java frontend
and workers; the v2 server's supervisor and workers.
Soak: per window (--window seconds, default 60), answers, errors, p50/p99 and the RSS of the workers and of
TorchServe's frontend or the v2 server's supervisor, and the first window against the last. --minutes takes
fractions (0.2: a short check). Exit code 1 when a target is missed. The token comes from --token,
$CONVSERVE_TOKEN or (TorchServe) the run folder's key file; the v2 server keeps its token out of the run folder.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from convserve.common.errors import CliParser, ConvserveError, run_cli
from convserve.common.files import write_text_atomic
from convserve.loadtest.loadgen import read_payloads
from convserve.loadtest.recorded_server import RecordedServer
from convserve.loadtest.soak_results import graceful_stop_lines, soak_lines, worker_kill_lines
from convserve.loadtest.soak_runs import FAULTS, SoakPlan, run_graceful_stop, run_soak, run_worker_kill


def build_parser() -> CliParser:
    p = CliParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="the prediction URL, e.g. http://127.0.0.1:8080/predictions/alexnet")
    p.add_argument("--run-dir", type=Path, required=True, help="the run folder serve.py or serve_v2.py was given")
    p.add_argument("--images", type=Path, nargs="+", required=True, help="image files sent as bodies, cycled")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=int, default=4, help="closed loop: requests kept in flight")
    load.add_argument("--rate", type=float, default=None, help="soak: open loop at this many arrivals per second")
    p.add_argument("--minutes", type=float, default=None, help="length of the run (default: soak 10, fault 1)")
    p.add_argument("--window", type=float, default=60.0, help="soak: seconds per reading")
    p.add_argument("--fault", choices=FAULTS, default=None, help="break the server under load instead of soaking")
    p.add_argument("--fault-at", type=float, default=None, help="seconds of load before the fault (default: 1/4)")
    p.add_argument("--token", default=os.environ.get("CONVSERVE_TOKEN"), help="bearer token; write --token=KEY")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request (TorchServe's response timeout)")
    p.add_argument("--output", type=Path, default=None, help="write the report as JSON here")
    p.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.output is not None and args.output.exists() and not args.force:
        raise ConvserveError(f"{args.output} exists; pass --force to overwrite it")
    if args.rate is not None and args.fault:
        raise ConvserveError("--rate is for a soak; a fault run keeps --concurrency requests in flight")
    plan = SoakPlan(
        url=args.url,
        payloads=read_payloads(args.images),
        run_dir=args.run_dir,
        concurrency=args.concurrency,
        rate=args.rate,
        minutes=args.minutes if args.minutes is not None else (1.0 if args.fault else 10.0),
        window_s=args.window,
        token=args.token or RecordedServer.read(args.run_dir).inference_key(),
        timeout_s=args.timeout,
        fault_at_s=args.fault_at,
    )
    if args.fault == "worker-kill":
        report = run_worker_kill(plan)
        lines = worker_kill_lines(report)
    elif args.fault == "graceful-stop":
        report = run_graceful_stop(plan)
        lines = graceful_stop_lines(report)
    else:
        report = run_soak(plan)
        lines = soak_lines(report)
    print("\n".join(lines))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.output, json.dumps(report.model_dump(mode="json"), indent=1) + "\n")
        print(f"wrote {args.output}")
    return 0 if all(c.met for c in report.checks) else 1


def cli() -> None:
    """Run as a script: ``main`` behind the one-line error edge, as ``convserve <command>`` runs it."""
    run_cli(main)


if __name__ == "__main__":
    cli()
