"""The built wheel holds one top-level import package, ``convserve``, with every room and every file read at run
time; pyproject's package list is the tree's."""

from __future__ import annotations

import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.wheel_helpers import REPO, build_wheel

SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    return zipfile.ZipFile(build_wheel(tmp_path_factory.mktemp("wheel")))


@pytest.fixture(scope="module")
def names(wheel) -> list[str]:
    return wheel.namelist()


def test_the_wheel_puts_only_convserve_into_site_packages(names):
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"convserve"}
    (info,) = [t for t in top if t.endswith(".dist-info")]
    assert [n for n in names if n == f"{info}/top_level.txt"]


def test_every_package_of_the_tree_is_in_the_wheel(names):
    """Every folder of a room with an __init__.py is listed in pyproject and lands in the wheel with its modules."""
    folders = {package: Path(REPO / folder) for package, folder in SETUPTOOLS["package-dir"].items()}
    expected = set()
    for package, folder in folders.items():
        for init in folder.rglob("__init__.py"):
            expected.add(".".join([package, *init.parent.relative_to(folder).parts]))
    assert set(SETUPTOOLS["packages"]) == expected
    for package, folder in folders.items():
        for module in folder.rglob("*.py"):
            inside = "/".join([*package.split("."), *module.relative_to(folder).parts])
            assert inside in names, f"{module.relative_to(REPO)} is not in the wheel"


def test_files_read_at_run_time_ship_as_package_data(names):
    data = {n for n in names if not n.endswith(".py") and ".dist-info/" not in n}
    presets = {p.relative_to(REPO / "training").as_posix() for p in (REPO / "training" / "configs").rglob("*.yaml")}
    assert data == {"convserve/serving/config.properties"} | {f"convserve/training/{p}" for p in presets}


def test_the_wheel_installs_the_one_command(wheel, names):
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    lines = [line.strip() for line in wheel.read(entry_points).decode().splitlines() if line.strip()]
    assert lines == ["[console_scripts]", "convserve = convserve.cli:cli"]
