"""Build a TorchServe model archive (.mar) from an artifact folder with torch-model-archiver.

Inside the archive (unpacked into the worker's model directory, which TorchServe puts on PYTHONPATH):
    handler.py              serving/handler.py
    convserve/              the modules of convserve the handler imports (serving, artifact, common, hardware),
                            found by following its imports, so the worker needs no install of convserve;
                            models/ only in archives of the eager backend, which rebuilds the model with them
    artifact/               model_card.json, index_to_name.json and the ONE model file the backend loads
    model-config.yaml       batching, workers, timeouts, and the handler's settings (section ``handler``)
"""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

import yaml

import convserve
from convserve.artifact.card import CARD_FILE, INDEX_FILE, read_card
from convserve.common.errors import ConvserveError
from convserve.serving.archive_settings import ArchiveSettings
from convserve.serving.backends import pick_model_file, verify_model_file

HANDLER = Path(__file__).with_name("handler.py")
ARCHIVE_FORMATS = ("zip-store", "default", "no-archive")


@cache
def _room_folder(room: str) -> Path | None:
    """Where ``convserve.<room>`` lives (installed, or a checkout's top-level folder), found without importing it."""
    spec = importlib.util.find_spec(f"convserve.{room}")
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] != "convserve":
        return None
    if len(parts) == 1:
        return Path(convserve.__file__)
    folder = _room_folder(parts[1])
    if folder is None:
        return None
    base = folder.joinpath(*parts[2:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py") if len(parts) > 2 else (base / "__init__.py",):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return names


def module_closure(entry: Path, skip: tuple[str, ...] = ()) -> dict[str, Path]:
    """Every file of convserve that ``entry`` imports, directly or not, with the packages' __init__.py, keyed by
    its path inside the package (``convserve/serving/classifier.py``); imports of the packages in ``skip``
    (``convserve.models``) are not followed."""
    found: dict[str, Path] = {}
    todo = [entry]
    while todo:
        path = todo.pop()
        for name in _imported_names(path):
            if any(name == s or name.startswith(f"{s}.") for s in skip):
                continue
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                source = _module_file(".".join(parts[:depth]))
                if source is None or source == entry:
                    continue
                inside = "/".join(parts[:depth]) + ("/__init__.py" if source.name == "__init__.py" else ".py")
                if inside not in found:
                    found[inside] = source
                    todo.append(source)
    return dict(sorted(found.items()))


def _stage(artifact_dir: Path, stage: Path, backend: str) -> str:
    """Copy the artifact files the backend needs and the handler's modules; returns the concrete format."""
    card = read_card(artifact_dir)
    model_file = pick_model_file(card, backend)
    verify_model_file(artifact_dir, model_file)
    target = stage / "artifact"
    target.mkdir(parents=True)
    for name in (CARD_FILE, INDEX_FILE, model_file.path):
        if not (artifact_dir / name).is_file():
            raise ConvserveError(f"{artifact_dir / name} is missing")
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(artifact_dir / name, target / name)
    # the model builders (and torchvision) are what the eager backend rebuilds a model with: only its archives
    # carry them
    skip = () if model_file.format == "eager" else ("convserve.models",)
    for inside, source in module_closure(HANDLER, skip=skip).items():
        dest = stage / inside
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest)
    return model_file.format


def archive_path(export_path: Path, model_name: str, archive_format: str) -> Path:
    return Path(export_path) / (model_name if archive_format == "no-archive" else f"{model_name}.mar")


def build_archive(
    artifact_dir: Path,
    model_name: str,
    export_path: Path,
    backend: str = "auto",
    force: bool = False,
    settings: ArchiveSettings | None = None,
    archive_format: str = "zip-store",
) -> Path:
    """Write EXPORT_PATH/MODEL_NAME.mar (no-archive: a folder); refuses to overwrite unless ``force``.

    ``zip-store`` (the default) is a normal .mar without deflate: model weights barely compress, and
    deflating hundreds of MB costs much more time than it saves bytes.
    """
    settings = settings or ArchiveSettings()
    if archive_format not in ARCHIVE_FORMATS:
        raise ConvserveError(f"unknown archive format {archive_format!r}; choose one of {', '.join(ARCHIVE_FORMATS)}")
    artifact_dir, export_path = Path(artifact_dir), Path(export_path)
    target = archive_path(export_path, model_name, archive_format)
    if target.exists() and not force:
        raise ConvserveError(f"{target} exists; pass --force to overwrite it")
    export_path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="convserve-mar-") as tmp:
        stage = Path(tmp) / "stage"
        fmt = _stage(artifact_dir, stage, backend)
        config = Path(tmp) / "model-config.yaml"
        config.write_text(yaml.safe_dump(settings.model_config(fmt), sort_keys=False))
        _run_archiver(model_name, stage, config, export_path, archive_format, force)
    return target


def _run_archiver(model_name: str, stage: Path, config: Path, export_path: Path, fmt: str, force: bool) -> None:
    archiver = Path(sys.executable).with_name("torch-model-archiver")
    cmd = [str(archiver), "--model-name", model_name, "--version", "1.0", "--handler", str(HANDLER)]
    cmd += ["--extra-files", str(stage), "--config-file", str(config)]
    cmd += ["--export-path", str(export_path), "--archive-format", fmt]
    if force:
        cmd.append("--force")
    # the archiver copies into $TMPDIR/<model-name>, which a concurrent archiver of the same name would clobber
    env = dict(os.environ, TMPDIR=str(config.parent))
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise ConvserveError(f"torch-model-archiver failed: {lines[-1] if lines else result.returncode}")
