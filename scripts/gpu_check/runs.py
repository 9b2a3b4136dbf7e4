"""Running the project's CLIs for a check: in this process with their output in a log file (the training and
export runs: no second interpreter start, imports and measured machine rates shared), or as subprocesses where
a process of its own is the point (torchrun, kill -9)."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def output_to(log: Path) -> Iterator[None]:
    """stdout, stderr and the logging handlers that write to them go to ``log`` meanwhile (the CLIs narrate
    through both); handlers a CLI adds pointing at the log are removed afterwards."""
    log.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    consoles = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    moved = [h for h in root.handlers if isinstance(h, logging.StreamHandler) and h.stream in consoles]
    with open(log, "a") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        previous = [h.setStream(fh) for h in moved]
        try:
            yield
        finally:
            for handler, stream in zip(moved, previous, strict=True):
                handler.setStream(stream)
            for handler in list(root.handlers):
                if getattr(handler, "stream", None) is fh:
                    root.removeHandler(handler)


def tail(log: Path, lines: int = 3) -> str:
    """The last lines of a log but its command line, joined on one line (what a FAIL row shows of a run)."""
    try:
        text = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    return " / ".join([line for line in text if line and not line.startswith("$ ")][-lines:])


class RunFailed(Exception):
    """A CLI the check ran did not succeed; the message carries its log's last lines."""


def call_cli(main: Callable[[list[str] | None], int], argv: list[str], log: Path) -> None:
    """``main(argv)`` of a project CLI, in this process; RunFailed unless it returns 0."""
    with output_to(log):
        print(f"$ {main.__module__} {' '.join(argv)}", flush=True)
        program = sys.argv
        sys.argv = [f"{main.__module__.rpartition('.')[2]}.py", *argv]  # what its usage lines call it
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's usage errors exit; here they fail one row, not the check
            code = exc.code if isinstance(exc.code, int) else 2
        finally:
            sys.argv = program
    if code:
        raise RunFailed(f"{main.__module__} exited {code}: {tail(log)} (log {log})")


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment with the source tree first on PYTHONPATH and unbuffered output."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **extra}


def python_cmd(*args: str) -> list[str]:
    return [sys.executable, *args]


def run_logged(cmd: list[str], log: Path, timeout_s: int) -> None:
    """A subprocess in the repository root, output to ``log``; RunFailed on a non-zero exit or a timeout."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        try:
            done = subprocess.run(
                cmd, cwd=REPO, env=child_env(), stdout=fh, stderr=subprocess.STDOUT, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            raise RunFailed(f"{' '.join(cmd[:4])} ... ran past {timeout_s} s (log {log})") from None
    if done.returncode:
        raise RunFailed(f"exit {done.returncode}: {tail(log)} (log {log})")
