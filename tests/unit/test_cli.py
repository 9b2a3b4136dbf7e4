"""The one installed command, ``convserve <command>``, runs the same CLIs as ``python <room>/<cli>.py``."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from convserve.cli import COMMANDS, resolve

REPO = Path(__file__).resolve().parents[2]
ROOMS = ("training", "export", "serving", "loadtest", "benchmarking")


def _installed() -> Path:
    path = Path(sys.executable).parent / "convserve"
    assert path.is_file(), f"{path} is missing: reinstall with pip install -e . --no-deps (make install does)"
    return path


def _cli_modules() -> set[str]:
    """The command-line programs: modules ending in ``if __name__ == "__main__": cli()`` (or ``run_cli(main)``).

    A helper run as a child process (``python -m convserve.benchmarking.inprocess``) ends otherwise.
    """
    found = set()
    for room in ROOMS:
        for path in (REPO / room).rglob("*.py"):
            body = ast.parse(path.read_text()).body
            last = body[-1] if body else None
            if (
                isinstance(last, ast.If)
                and ast.unparse(last.test) == "__name__ == '__main__'"
                and ast.unparse(last.body[-1]) in ("cli()", "run_cli(main)")
            ):
                found.add("convserve." + ".".join(path.relative_to(REPO).with_suffix("").parts))
    return found


def test_every_cli_module_is_a_command_and_every_command_a_cli_module():
    assert {command.module for command in COMMANDS.values()} == _cli_modules()
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"convserve": "convserve.cli:cli"}


def test_help_lists_every_command_on_one_line():
    proc = subprocess.run([_installed(), "--help"], capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr
    listed = [line.split("  ")[1].strip() for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(COMMANDS)
    assert "export onnx" in proc.stdout and "serve-v2" in proc.stdout


@pytest.mark.parametrize(
    ("argv", "prog"), [(["train"], "convserve train"), (["export", "onnx"], "convserve export onnx")]
)
def test_a_command_answers_help_under_its_own_name(argv, prog):
    proc = subprocess.run([_installed(), *argv, "--help"], capture_output=True, text=True, timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {prog} ")


def test_python_dash_m_convserve_is_the_same_command():
    proc = subprocess.run([sys.executable, "-m", "convserve", "predict", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: convserve predict "), proc.stderr


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
        (["serve-v3"], "unknown command 'serve-v3'"),
        (["export"], "convserve export needs a format: onnx, torchscript"),
        ([], "usage: convserve <command>"),
    ],
)
def test_a_bad_command_line_is_one_line_and_exit_2(argv, needle):
    proc = subprocess.run([_installed(), *argv], capture_output=True, text=True, timeout=120, cwd="/")
    assert proc.returncode == 2
    if argv:
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], proc.stderr
    else:
        assert proc.stdout.startswith(needle)


def test_resolve_prefers_the_two_word_command():
    assert resolve(["export", "torchscript", "ckpt.pt"]) == ("export torchscript", ["ckpt.pt"])
    assert resolve(["serve", "--stop"]) == ("serve", ["--stop"])
