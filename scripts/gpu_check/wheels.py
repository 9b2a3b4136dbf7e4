"""Which third-party modules the GPU check imports, which of them this Python lacks, and installing only those
from a folder of wheels (the GPU machine has no internet and its own torch, numpy, onnx, ... that must stay).

Standard library only: it runs before anything it may have to install is importable.

``pip install --no-index --find-links DIR --target TMP --no-deps DIST...``: ``--target`` makes pip ignore what
is installed, so without ``--no-deps`` it would put a second numpy, onnx, typing-extensions, ... in front of the
machine's own on PYTHONPATH. Only the distributions of missing (or too old) modules go in.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# module imported by the code the check runs -> the distribution that provides it
REQUIRED: dict[str, str] = {
    "torch": "torch",
    "torchvision": "torchvision",
    "numpy": "numpy",
    "PIL": "pillow",
    "yaml": "PyYAML",
    "tqdm": "tqdm",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "matplotlib": "matplotlib",
    "tensorboard": "tensorboard",
    "onnx": "onnx",
    "onnxscript": "onnxscript",
    "onnxruntime": "onnxruntime",
    "onnxslim": "onnxslim",
    "pydantic": "pydantic",
    "pydantic_core": "pydantic-core",
    "annotated_types": "annotated-types",
    "typing_inspection": "typing-inspection",
    "typing_extensions": "typing-extensions",
}
# present but older than this counts as missing (pydantic 1 has another API)
MINIMUM: dict[str, tuple[int, ...]] = {"pydantic": (2, 7)}
# what `--download-wheels` fetches (with its dependencies) on a machine with internet: what the GPU images we
# target lack; `ensure` still installs whatever else turns out missing if its wheel is in the folder
DOWNLOAD = ("pydantic", "onnxslim")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _installed_version(module: str) -> str | None:
    try:
        return version(REQUIRED[module])
    except PackageNotFoundError:
        return None


IMPORT_EACH = """
import importlib, json, sys
failed = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as exc:  # a wheel for another Python or ABI fails here, not at find_spec
        failed.append(name)
print(json.dumps(failed))
"""


def unimportable(modules: Iterable[str], python: str = sys.executable) -> set[str]:
    """The modules a fresh interpreter fails to import (a module can be found and still not load: a wheel
    built for another Python, a missing shared library, a dependency of its own that is absent)."""
    names = list(modules)
    done = subprocess.run([python, "-c", IMPORT_EACH, *names], capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        return set(names)
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def missing_modules(
    modules: Iterable[str] = REQUIRED,
    find_spec: Callable[[str], object] = importlib.util.find_spec,
    version_of: Callable[[str], str | None] = _installed_version,
    importable: Callable[[Iterable[str]], set[str]] | None = None,
) -> list[str]:
    """Modules this Python cannot find, finds older than ``MINIMUM``, or (``importable``: after installing) cannot
    import in a fresh interpreter, in the order given."""
    modules = list(modules)
    broken = importable(m for m in modules if find_spec(m) is not None) if importable else set()
    out = []
    for module in modules:
        if find_spec(module) is None or module in broken:
            out.append(module)
        elif module in MINIMUM:
            found = version_of(module)
            if found is not None and _version_tuple(found) < MINIMUM[module]:
                out.append(module)
    return out


def distributions_for(modules: Iterable[str]) -> list[str]:
    """The distributions to install for ``modules`` (each once, in order)."""
    return list(dict.fromkeys(REQUIRED[m] for m in modules))


def normalize(name: str) -> str:
    """PEP 503 name: ``Pydantic_Core`` and ``pydantic-core`` are the same distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheels_in(folder: Path) -> set[str]:
    """Normalised distribution names of the ``*.whl`` files in ``folder``."""
    return {normalize(p.name.split("-")[0]) for p in Path(folder).glob("*.whl")}


def install_command(folder: Path, target: Path, distributions: list[str], python: str = sys.executable) -> list[str]:
    return [
        python, "-m", "pip", "install", "--no-index", "--find-links", str(folder), "--target", str(target),
        "--no-deps", "--disable-pip-version-check", "--quiet", *distributions,
    ]  # fmt: skip


class WheelError(Exception):
    """The modules the check needs cannot be made importable from what was given."""


def plan_install(missing: list[str], folder: Path | None) -> list[str]:
    """Distributions to install for ``missing`` from ``folder``; WheelError naming what cannot be had."""
    if not missing:
        return []
    wanted = distributions_for(missing)
    if folder is None:
        raise WheelError(
            f"this Python lacks {', '.join(missing)} ({', '.join(wanted)}): give --wheels DIR with their wheels "
            "(bash scripts/gpu_check.sh --download-wheels DIR on a machine with internet)"
        )
    if not Path(folder).is_dir():
        raise WheelError(f"--wheels {folder} is not a folder")
    found = wheels_in(folder)
    absent = [m for m in missing if normalize(REQUIRED[m]) not in found]
    if absent:
        raise WheelError(
            f"--wheels {folder} has no wheel for {', '.join(distributions_for(absent))} "
            f"(this Python lacks {', '.join(absent)})"
        )
    return wanted


def ensure(folder: Path | None, target: Path | None = None) -> list[str]:
    """Install what is missing into ``target`` (default: a new temporary folder) and put it first on sys.path
    and PYTHONPATH (for the subprocesses the check starts); returns the distributions installed."""
    wanted = plan_install(missing_modules(importable=unimportable), folder)
    if not wanted:
        return []
    target = target or Path(tempfile.mkdtemp(prefix="gpu-check-wheels-"))
    done = subprocess.run(install_command(folder, target, wanted), capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise WheelError(f"pip could not install {', '.join(wanted)} from {folder}: {lines[-1] if lines else ''}")
    sys.path.insert(0, str(target))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH")) if p)
    importlib.invalidate_caches()
    still = missing_modules(importable=unimportable)  # imported for real, in a subprocess with the new PYTHONPATH
    if still:
        raise WheelError(f"installed {', '.join(wanted)} but a fresh Python cannot import {', '.join(still)}")
    return wanted


def download_command(
    folder: Path, python_version: str = "3.12", platform: str = "manylinux2014_x86_64", python: str = sys.executable
) -> list[str]:
    """pip download of ``DOWNLOAD`` and their dependencies as wheels for the GPU machine's Python."""
    return [
        python, "-m", "pip", "download", "--only-binary=:all:", "--python-version", python_version,
        "--platform", platform, "--dest", str(folder), "--disable-pip-version-check", *DOWNLOAD,
    ]  # fmt: skip
