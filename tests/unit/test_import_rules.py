"""The stages depend one way: common ← training ← export ← serving ← benchmarking (hardware beside common).

Read statically (every import statement of every product module, at any depth), so a lazy import inside a
function counts as much as one at the top.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
OURS = ("common", "hardware", "training", "export", "serving", "benchmarking")
ALLOWED = {
    "common": {"common"},
    "hardware": {"hardware", "common"},
    "training": {"training", "common", "hardware"},
    "export": {"export", "training", "common", "hardware"},
    "serving": {"serving", "export", "common", "hardware"},
    "benchmarking": set(OURS),
}
# the eager backend rebuilds a model from a checkpoint with training's builders: the one way into training
SERVING_TO_TRAINING = {"serving/backends.py"}


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(OURS)


def product_modules():
    for package in OURS:
        yield from sorted((ROOT / package).rglob("*.py"))


def test_every_package_imports_only_the_stages_before_it():
    broken = []
    for path in product_modules():
        rel = path.relative_to(ROOT).as_posix()
        package = rel.split("/")[0]
        allowed = ALLOWED[package] | ({"training"} if rel in SERVING_TO_TRAINING else set())
        extra = imported_packages(path) - allowed
        if extra:
            broken.append(f"{rel} imports {', '.join(sorted(extra))}")
    assert not broken, "\n".join(broken)


def test_the_rules_see_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "def f():\n    from convserve.serving.classifier import Classifier\n    import convserve.artifact.card\n"
    )
    assert imported_packages(bad) == {"serving", "export"}


@pytest.mark.parametrize("backend", ["onnx", "torchscript"])
def test_the_onnx_and_torchscript_serving_paths_import_no_training_module(tmp_path, backend):
    from tests.serving_helpers import build_artifact, random_run

    folder = build_artifact(random_run(tmp_path / "run"), tmp_path / "art", formats=(backend,))
    code = (
        "import io, sys\n"
        "from PIL import Image\n"
        "from convserve.serving.classifier import Classifier\n"
        f"clf = Classifier.from_artifact({str(folder)!r}, backend={backend!r})\n"
        "buf = io.BytesIO(); Image.new('RGB', (40, 30), (200, 10, 10)).save(buf, 'PNG')\n"
        "assert len(clf.predict([buf.getvalue()])[0]) == 5\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'training', 'export', 'benchmarking'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "['export']"  # the card schema only
