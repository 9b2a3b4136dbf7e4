"""The GPU check's wheel decision: which modules this Python lacks -> which distributions get installed from
--wheels, with --no-deps so that nothing the machine has is shadowed (scripts/gpu_check/wheels.py)."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gpu_check_wheels", REPO / "scripts" / "gpu_check" / "wheels.py")
wheels = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wheels)

GPU_IMAGE_LACKS = {"pydantic", "pydantic_core", "annotated_types", "typing_inspection", "onnxslim"}


def finds_all_but(absent: set[str]):
    return lambda module: None if module in absent else object()


def touch_wheels(folder: Path, *names: str) -> Path:
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def test_nothing_missing_installs_nothing():
    missing = wheels.missing_modules(find_spec=finds_all_but(set()), version_of=lambda module: "2.14.4")
    assert missing == []
    assert wheels.plan_install(missing, None) == []


def test_the_gpu_image_without_pydantic_and_onnxslim_gets_exactly_their_wheels(tmp_path):
    folder = touch_wheels(
        tmp_path,
        "pydantic-2.14.4-py3-none-any.whl",
        "pydantic_core-2.50.5-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "annotated_types-0.8.0-py3-none-any.whl",
        "typing_inspection-0.4.5-py3-none-any.whl",
        "onnxslim-0.1.98-py3-none-any.whl",
        "numpy-2.2.6-cp312-cp312-manylinux_2_17_x86_64.whl",  # in the folder, present on the machine: left alone
        "typing_extensions-4.16.0-py3-none-any.whl",
    )
    missing = wheels.missing_modules(find_spec=finds_all_but(GPU_IMAGE_LACKS), version_of=lambda module: None)
    assert missing == ["onnxslim", "pydantic", "pydantic_core", "annotated_types", "typing_inspection"]
    planned = wheels.plan_install(missing, folder)
    assert planned == ["onnxslim", "pydantic", "pydantic-core", "annotated-types", "typing-inspection"]
    command = wheels.install_command(folder, tmp_path / "target", planned, python="python3")
    assert command[:3] == ["python3", "-m", "pip"] and command[-len(planned) :] == planned
    assert {"--no-index", "--no-deps"} <= set(command)
    assert command[command.index("--find-links") + 1] == str(folder)
    assert command[command.index("--target") + 1] == str(tmp_path / "target")


def test_pydantic_1_counts_as_missing_and_pydantic_2_does_not():
    def missing_with(found: str) -> list[str]:
        return wheels.missing_modules(find_spec=finds_all_but(set()), version_of=lambda module: found)

    assert missing_with("1.10.13") == ["pydantic"]
    assert missing_with("2.7.0") == []


def test_wheel_file_names_are_read_as_normalised_distribution_names(tmp_path):
    touch_wheels(tmp_path, "Pydantic_Core-2.50.5-cp312-cp312-manylinux2014_x86_64.whl", "PyYAML-6.0.2-cp312.whl")
    (tmp_path / "notes.txt").write_text("not a wheel")
    assert wheels.wheels_in(tmp_path) == {"pydantic-core", "pyyaml"}


def test_what_cannot_be_installed_is_one_line_naming_it(tmp_path):
    with pytest.raises(wheels.WheelError, match="lacks pydantic .*give --wheels DIR"):
        wheels.plan_install(["pydantic"], None)
    with pytest.raises(wheels.WheelError, match="is not a folder"):
        wheels.plan_install(["pydantic"], tmp_path / "absent")
    touch_wheels(tmp_path, "pydantic-2.14.4-py3-none-any.whl")
    with pytest.raises(wheels.WheelError, match=r"no wheel for pydantic-core \(this Python lacks pydantic_core\)$"):
        wheels.plan_install(["pydantic", "pydantic_core"], tmp_path)


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(folder: Path) -> Path:
    """A one-module wheel whose dependency no index could satisfy: installing it proves --no-deps."""
    files = {
        "convserve_wheel_probe/__init__.py": b"VALUE = 42\n",
        "convserve_wheel_probe-1.0.dist-info/METADATA": (
            b"Metadata-Version: 2.1\nName: convserve-wheel-probe\nVersion: 1.0\nRequires-Dist: numpy>=999\n"
        ),
        "convserve_wheel_probe-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = "convserve_wheel_probe-1.0.dist-info/RECORD"
    lines = [_record_line(name, data) for name, data in files.items()] + [f"{record},,"]
    path = folder / "convserve_wheel_probe-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(record, "\n".join(lines) + "\n")
    return path


def test_install_command_really_installs_only_the_named_wheel_offline(tmp_path):
    folder, target = tmp_path / "wheels", tmp_path / "target"
    folder.mkdir()
    build_wheel(folder)
    done = subprocess.run(
        wheels.install_command(folder, target, ["convserve-wheel-probe"]), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert not list(target.glob("numpy*"))  # its unsatisfiable dependency was not even looked for
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = subprocess.run([sys.executable, "-c", "import convserve_wheel_probe as m; print(m.VALUE)"],
                           capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert probe.stdout.strip() == "42", probe.stderr


def test_a_module_that_is_found_but_does_not_import_counts_as_missing(tmp_path, monkeypatch):
    """find_spec finds a wheel for another Python or one whose shared library is absent; importing it fails."""
    (tmp_path / "broken_wheel_module.py").write_text("raise ImportError('built for another Python')\n")
    (tmp_path / "fine_wheel_module.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    modules = ["fine_wheel_module", "broken_wheel_module"]
    assert wheels.missing_modules(modules, version_of=lambda m: None) == []  # found: the old check passed both
    assert wheels.missing_modules(modules, version_of=lambda m: None, importable=wheels.unimportable) == [
        "broken_wheel_module"
    ]
