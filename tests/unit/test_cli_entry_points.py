"""The installed commands (pyproject's [project.scripts]) are the same CLIs as ``python <stage>/<cli>.py``."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
PACKAGES = ("training", "export", "serving", "benchmarking")


def _installed(name: str) -> Path:
    path = Path(sys.executable).parent / name
    assert path.is_file(), f"{path} is missing: reinstall with pip install -e . --no-deps (make install does)"
    return path


def _cli_modules() -> dict[str, Path]:
    """The command-line programs: modules ending in ``if __name__ == "__main__": cli()`` (or ``run_cli(main)``).

    A helper run as a child process (``python -m convserve.benchmarking.inprocess``) ends otherwise and is no command.
    """
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            body = ast.parse(path.read_text()).body
            last = body[-1] if body else None
            if (
                isinstance(last, ast.If)
                and ast.unparse(last.test) == "__name__ == '__main__'"
                and ast.unparse(last.body[-1]) in ("cli()", "run_cli(main)")
            ):
                found[".".join(path.relative_to(REPO).with_suffix("").parts)] = path
    return found


def test_every_cli_module_has_an_entry_point_to_its_cli():
    targets = {target.partition(":")[0]: target for target in SCRIPTS.values()}
    for module, path in _cli_modules().items():
        assert targets.get(module) == f"{module}:cli", f"{module} has no [project.scripts] entry at {module}:cli"
        tree = ast.parse(path.read_text())
        assert any(isinstance(node, ast.FunctionDef) and node.name == "cli" for node in tree.body), module
    assert len(_cli_modules()) == len(SCRIPTS)  # and no command without its module
    assert all(name.startswith("convserve-") for name in SCRIPTS)


@pytest.mark.parametrize("name", ["convserve-train", "convserve-predict"])
def test_installed_commands_answer_help(name):
    proc = subprocess.run([_installed(name), "--help"], capture_output=True, text=True, timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {name} ")


def test_a_bad_argument_is_one_line_and_exit_2():
    proc = subprocess.run(
        [_installed("convserve-train"), "--optimizer", "rmsprop"], capture_output=True, text=True, timeout=120, cwd="/"
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "invalid choice: 'rmsprop'" in lines[0], proc.stderr
