"""A model card names files inside its artifact folder only: export, archive and serving refuse one that does not.

The attack: a card whose file entry says ``../secret.onnx`` with that host file's real sha256 and size, so
every integrity check passes and only the path gives it away.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from convserve.artifact.card import CARD_FILE, read_card
from convserve.common.errors import ConvserveError
from convserve.serving.archive_builder import build_archive
from convserve.serving.classifier import Classifier
from tests.serving_helpers import build_artifact, random_run

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return random_run(tmp_path_factory.mktemp("run") / "run")


def escaping_artifact(run_dir: Path, root: Path, path: str) -> Path:
    """A real ONNX artifact whose card now names ``path`` (relative to the folder) for its model file."""
    folder = build_artifact(run_dir, root / "art", formats=("onnx",))
    target = (folder / path) if not Path(path).is_absolute() else Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(folder / "model.onnx", target)
    card = json.loads((folder / CARD_FILE).read_text())
    card["files"][0]["path"] = path  # sha256 and size still match the moved file
    (folder / CARD_FILE).write_text(json.dumps(card))
    return folder


@pytest.mark.parametrize("path", ["../secret.onnx", "sub/../../secret.onnx"])
def test_the_card_refuses_a_path_that_leaves_its_folder(run_dir, tmp_path, path):
    folder = escaping_artifact(run_dir, tmp_path, path)
    with pytest.raises(ConvserveError, match=r"is not inside the artifact folder") as err:
        read_card(folder)
    assert "\n" not in str(err.value) and path in str(err.value)


def test_an_absolute_path_is_refused(run_dir, tmp_path):
    folder = escaping_artifact(run_dir, tmp_path, str(tmp_path / "elsewhere" / "secret.onnx"))
    with pytest.raises(ConvserveError, match=r"files\.0\.path: .*is not inside the artifact folder"):
        read_card(folder)


def test_serving_refuses_to_open_it(run_dir, tmp_path):
    folder = escaping_artifact(run_dir, tmp_path, "../secret.onnx")
    with pytest.raises(ConvserveError, match="is not inside the artifact folder"):
        Classifier.from_artifact(folder, backend="onnx")


def test_serving_refuses_a_model_file_that_links_outside(run_dir, tmp_path):
    folder = build_artifact(run_dir, tmp_path / "art", formats=("onnx",))
    os.replace(folder / "model.onnx", tmp_path / "secret.onnx")
    (folder / "model.onnx").symlink_to(tmp_path / "secret.onnx")
    with pytest.raises(ConvserveError, match="leads outside the artifact folder"):
        Classifier.from_artifact(folder, backend="onnx")


def test_the_archive_refuses_to_pack_it(run_dir, tmp_path):
    folder = escaping_artifact(run_dir, tmp_path, "../secret.onnx")
    store = tmp_path / "store"
    with pytest.raises(ConvserveError, match="is not inside the artifact folder"):
        build_archive(folder, "digits", store)
    assert not (store / "digits.mar").exists()


def test_export_refuses_to_add_to_its_folder_and_touches_nothing(run_dir, tmp_path):
    folder = escaping_artifact(run_dir, tmp_path, "../secret.onnx")
    before = {p.name: p.read_bytes() for p in [*folder.iterdir(), tmp_path / "secret.onnx"]}
    ckpt = run_dir / "checkpoints" / "best.pt"
    cmd = [sys.executable, "export/to_torchscript.py", str(ckpt), "--output-dir", str(folder)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]  # (warnings: a random run)
    assert len(errors) == 1 and "'../secret.onnx' is not inside the artifact folder" in errors[0], proc.stderr
    assert {p.name: p.read_bytes() for p in [*folder.iterdir(), tmp_path / "secret.onnx"]} == before
