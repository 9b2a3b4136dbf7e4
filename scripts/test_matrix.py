"""Every supported Python on this machine, each in a fresh virtualenv built by the install path users run
(scripts/install.sh): the fast suite, then one end to end from the built wheel (train 1 epoch on digits -> export
ONNX -> TorchServe and the v2 server -> a top-5 answer: tests/integration/test_wheel_install.py) and the GPU
check's CPU dry run (scripts/gpu_check.sh --dry-run with that venv's Python). Prints a table and writes it to
OUT/matrix.md (and matrix.json).

    python3 scripts/test_matrix.py [--out matrix] [--only 3.12] [--keep]

Rows: python3.11, python3.12 and python3.13 with the newest torch pyproject allows, and python3.12 with the oldest
torch / torchvision pair it allows (the floor), each found by scripts/find_python.sh (a missing Python is a row
that says so). Venvs go to OUT/venv-<row>, reused when present (torch is several GB: pip's cache keeps the
download; the first run of a row downloads it, about 3 GB per Python).

Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    name: str
    python: str  # what find_python.sh is asked for
    torch_spec: str = ""  # pip requirements installed before convserve ("" = what pyproject resolves to)
    found: str = ""
    torch: str = ""
    install_s: float | None = None
    fast_suite: str = "not run"
    e2e: str = "not run"
    gpu_dry_run: str = "not run"
    note: str = ""


def floor_pins() -> str:
    """``torch==A torchvision==B``: the lower bounds of pyproject's ranges."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = []
    for name in ("torch", "torchvision"):
        (spec,) = [d for d in deps if re.match(rf"{name}\s*[><=]", d)]
        floor = re.search(r">=\s*([\w.]+)", spec).group(1)
        pins.append(f"{name}=={floor}")
    return " ".join(pins)


def default_rows() -> list[Row]:
    rows = [Row(f"py{v}", f"python{v}") for v in ("3.11", "3.12", "3.13")]
    return [*rows, Row("py3.12-floor", "python3.12", floor_pins())]


def run(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> tuple[int, float, str]:
    started = time.monotonic()
    with log.open("w") as fh:
        try:
            code = subprocess.run(
                cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, env=env
            ).returncode
        except subprocess.TimeoutExpired:
            code = 124
    tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return code, time.monotonic() - started, tail[-1] if tail else ""


def summary(code: int, seconds: float, last: str) -> str:
    counts = re.search(r"(\d+ (?:failed|passed).*?) in ", last)
    verdict = "PASS" if code == 0 else ("TIMEOUT" if code == 124 else "FAIL")
    return f"{verdict} {counts.group(1) if counts else last[:80]} ({seconds:.0f} s)"


def run_row(row: Row, out: Path) -> Row:
    found = subprocess.run(["bash", "scripts/find_python.sh", row.python], cwd=REPO, capture_output=True, text=True)
    if found.returncode != 0:
        row.note = found.stderr.strip()
        return row
    row.found = found.stdout.strip()
    venv = out / f"venv-{row.name}"
    python = venv / "bin" / "python"
    env = dict(os.environ, CONVSERVE_TORCH=row.torch_spec) if row.torch_spec else None
    code, seconds, last = run(["bash", "scripts/install.sh", row.found, str(venv)], out / f"{row.name}-install.log",
                              3600, env)  # fmt: skip
    row.install_s = round(seconds)
    if code != 0:
        row.note = f"install failed: {last}"
        return row
    row.torch = subprocess.run(
        [python, "-c", "import torch, torchvision; print(torch.__version__, '/', torchvision.__version__)"],
        capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    pytest = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    row.fast_suite = summary(*run([*pytest, "-m", "not slow"], out / f"{row.name}-fast.log", 3600))
    row.e2e = summary(*run([*pytest, "tests/integration/test_wheel_install.py"], out / f"{row.name}-e2e.log", 1800))
    dry = ["bash", "scripts/gpu_check.sh", "--dry-run", str(out / f"gpu-dry-{row.name}")]
    code, seconds, last = run(dry, out / f"{row.name}-gpu-dry.log", 1800, dict(os.environ, PYTHON=str(python)))
    row.gpu_dry_run = f"{'PASS' if code == 0 else 'FAIL'} ({seconds:.0f} s)"
    return row


def table(rows: list[Row]) -> str:
    lines = ["| row | Python | torch / torchvision | install | fast suite | e2e (wheel: train, export, both servers) "
             "| GPU check --dry-run |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        version = (
            subprocess.run([r.found, "--version"], capture_output=True, text=True).stdout.strip() if r.found else ""
        )
        install = f"{r.install_s} s" if r.install_s is not None else "-"
        cells = [r.name, version or r.note or "-", r.torch or "-", install, r.fast_suite, r.e2e, r.gpu_dry_run]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "matrix", help="venvs, logs and the table")
    p.add_argument("--only", nargs="*", default=None, help="row names or Python versions to run (default: all)")
    p.add_argument("--keep", action="store_true", help="keep the venvs (default: removed after their row)")
    p.add_argument("--table", nargs="+", type=Path, metavar="JSON", help="print the table of earlier runs' matrix.json")
    args = p.parse_args(argv)
    if args.table:
        print(table([Row(**row) for path in args.table for row in json.loads(path.read_text())]))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [r for r in default_rows() if not args.only or r.name in args.only or r.python[6:] in args.only]
    for row in rows:
        print(f"== {row.name}: {row.python} {row.torch_spec}".rstrip(), flush=True)
        run_row(row, args.out)
        print(table([row]).splitlines()[-1], flush=True)
        if not args.keep:
            shutil.rmtree(args.out / f"venv-{row.name}", ignore_errors=True)
    text = table(rows)
    (args.out / "matrix.md").write_text(text + "\n")
    (args.out / "matrix.json").write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    print(text)
    passed = [(r.fast_suite, r.e2e, r.gpu_dry_run) for r in rows]
    return 0 if all(cell.startswith("PASS") for row in passed for cell in row) else 1


if __name__ == "__main__":
    sys.exit(main())
