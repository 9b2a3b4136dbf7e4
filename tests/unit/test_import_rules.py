"""Imports point down the layers only (the README's architecture section draws them):

    benchmarking/                      orchestrated experiments
    loadtest/                          the client side of a server
    training/   export/   serving/     the three stages: serving imports neither export nor training
    artifact/   models/                contracts two stages share
    common/     hardware/              what every room needs

Read statically (every import statement of every product module, at any depth), so a lazy import inside a
function counts as much as one at the top. No file has an exception.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
BASE = {"common", "hardware"}
CONTRACTS = BASE | {"artifact", "models"}
ALLOWED = {
    "convserve": {"convserve", "common"},  # the root package and the one command
    "common": {"common"},
    "hardware": BASE,
    "artifact": BASE | {"artifact"},
    "models": BASE | {"models"},
    "training": CONTRACTS | {"training"},
    "export": CONTRACTS | {"training", "export"},  # the checkpoint's own held-out images check the export
    "serving": CONTRACTS | {"serving"},
    "loadtest": BASE | {"loadtest", "serving"},
    "benchmarking": CONTRACTS | {"training", "export", "serving", "loadtest", "benchmarking"},
}
ROOMS = tuple(ALLOWED)


def imported_rooms(path: Path) -> set[str]:
    """The rooms of convserve a module imports (``convserve.serving.x`` -> serving; bare ``convserve``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "convserve":
            names = [f"convserve.{alias.name}" for alias in node.names]  # from convserve import training
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "convserve":
                found.add(parts[1] if len(parts) > 1 and parts[1] in ROOMS else "convserve")
            elif parts[0] in ROOMS:  # a room imported by its folder name bypasses the namespace
                found.add(f"bare {parts[0]}")
    return found


def product_modules():
    for room in ROOMS:
        yield from sorted((ROOT / room).rglob("*.py"))


def test_every_room_imports_only_the_layers_below_it():
    broken = []
    for path in product_modules():
        rel = path.relative_to(ROOT).as_posix()
        # the root package (an __init__ that imports nothing) is where any room may look for convserve's files
        extra = imported_rooms(path) - ALLOWED[rel.split("/")[0]] - {"convserve"}
        if extra:
            broken.append(f"{rel} imports {', '.join(sorted(extra))}")
    assert not broken, "\n".join(broken)


def test_the_rules_see_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "def f():\n    from convserve.serving.classifier import Classifier\n    import convserve.export.pipeline\n"
        "    from convserve import training\n    import common.files\n"
    )
    assert imported_rooms(bad) == {"serving", "export", "training", "bare common"}


@pytest.mark.parametrize("backend", ["onnx", "torchscript"])
def test_the_onnx_and_torchscript_serving_paths_import_no_stage_but_serving(tmp_path, backend):
    from tests.serving_helpers import build_artifact, random_run

    folder = build_artifact(random_run(tmp_path / "run"), tmp_path / "art", formats=(backend,))
    code = (
        "import io, sys\n"
        "from PIL import Image\n"
        "from convserve.serving.classifier import Classifier\n"
        f"clf = Classifier.from_artifact({str(folder)!r}, backend={backend!r})\n"
        "buf = io.BytesIO(); Image.new('RGB', (40, 30), (200, 10, 10)).save(buf, 'PNG')\n"
        "assert len(clf.predict([buf.getvalue()])[0]) == 5\n"
        "rooms = {m.split('.')[1] for m in sys.modules if m.startswith('convserve.')}\n"
        "print(sorted(rooms), 'torchvision' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "['artifact', 'common', 'hardware', 'serving'] False"
