"""``bash scripts/gpu_check.sh [--dry-run] [--wheels DIR] [--compile] [--nproc N] [--epochs N] [OUT]``:
every GPU check in one command; gpu_report.json and gpu_report.md in OUT (default gpu-report/).

Exit 0: every row passed; 1: a row failed (the report says which); 2: the check could not start (one line).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from convserve.common.errors import CliParser, ConvserveError, run_cli
from gpu_check import wheels
from gpu_check.runs import REPO


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="gpu_check.sh", description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", type=Path, default=Path("gpu-report"), help="report folder (default gpu-report)")
    p.add_argument("--dry-run", action="store_true", help="the same checks on the CPU with tiny sizes (seconds)")
    p.add_argument("--wheels", type=Path, help="folder of wheels to install missing modules from (no internet)")
    p.add_argument(
        "--download-wheels", type=Path, metavar="DIR", help="fetch those wheels into DIR for a Python 3.12 x86_64 "
        "machine (needs internet), then stop"
    )  # fmt: skip
    p.add_argument("--compile", action="store_true", help="torch.compile the throughput models")
    p.add_argument("--nproc", type=int, help="torchrun processes (default: min(2, GPUs); 2 with gloo on a dry run)")
    p.add_argument("--epochs", type=int, help="digits epochs on the GPU (default: the demo preset's)")
    p.add_argument("--work-dir", type=Path, help="run folders and logs (kept; default: a temporary folder)")
    return p


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = build_parser().parse_args(argv)
    for name in ("out", "wheels", "download_wheels", "work_dir"):  # as given from where it was run
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).resolve())
    os.chdir(REPO)  # the project's relative paths (training/configs/...) and CLIs run from its root
    if args.work_dir and args.work_dir.is_dir() and any(args.work_dir.iterdir()):
        raise ConvserveError(f"--work-dir {args.work_dir} is not empty: the runs it would hold exist (pick another)")
    if args.download_wheels:
        return subprocess.run(wheels.download_command(args.download_wheels)).returncode
    try:
        installed = wheels.ensure(args.wheels)
    except wheels.WheelError as exc:
        raise ConvserveError(str(exc)) from None
    if args.compile and not (shutil.which("cc") or shutil.which("gcc")):
        raise ConvserveError("--compile needs a C compiler (torch.compile builds its kernels with one): install gcc, "
                             "or leave --compile out")  # fmt: skip
    if args.dry_run:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch starts its pool (plan.DRY_NOTE says why)
    # only now: these import pydantic, torch, onnx, ... which the wheels may have just provided
    from gpu_check.plan import make_plan
    from gpu_check.suite import Options, run_all

    plan = make_plan(args.dry_run, args.nproc, args.epochs, args.compile)
    work = (args.work_dir or Path(tempfile.mkdtemp(prefix="gpu-check-"))).resolve()
    command = shlex.join(["bash", "scripts/gpu_check.sh", *(argv if argv is not None else sys.argv[1:])])
    return run_all(Options(plan, args.out, work, args.work_dir is not None, command, installed, started))


if __name__ == "__main__":
    run_cli(main)
