"""Serving's thread counts start from hardware.cpus.usable_cpus (affinity AND cgroup quota), the one count for the
whole project; the TorchServe archive ships the hardware package the handler's imports reach."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

import convserve.hardware.cpu_share as cpu_share
from convserve.hardware.cpus import usable_cpus
from convserve.hardware.machine import describe_machine
from convserve.serving.archive_builder import HANDLER, module_closure
from convserve.serving.handler import ConvserveHandler

ROOT = Path(cpu_share.__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("cpus", "workers", "threads"),
    [(2, 1, 2), (1, 1, 1), (64, 1, cpu_share.MAX_THREADS), (12, 4, 3), (2, 4, 1), (64, 4, cpu_share.MAX_THREADS)],
)
def test_default_threads_split_the_usable_cpus(monkeypatch, cpus, workers, threads):
    monkeypatch.setattr(cpu_share, "usable_cpus", lambda: cpus)
    assert cpu_share.default_threads(workers) == threads


@pytest.mark.parametrize(("cpus", "workers"), [(1, 1), (2, 1), (8, 1), (9, 2), (16, 2), (64, 8)])
def test_default_workers_use_every_usable_cpu_at_most_max_threads_each(monkeypatch, cpus, workers):
    monkeypatch.setattr(cpu_share, "usable_cpus", lambda: cpus)
    assert cpu_share.default_workers() == workers


def test_archives_name_no_worker_count_unless_asked_and_the_server_fills_it_in(monkeypatch):
    """The serving machine's CPUs decide, not those of the machine that built the archive."""
    from convserve.serving.archive_settings import ArchiveSettings
    from convserve.serving.torchserve_process import ServerSettings, render_config

    assert "minWorkers" not in ArchiveSettings().model_config("onnx")
    assert ArchiveSettings(min_workers=2, max_workers=3).model_config("onnx")["maxWorkers"] == 3
    monkeypatch.setattr(cpu_share, "usable_cpus", lambda: 16)
    text = render_config(ServerSettings(model_store="model_store", models={"m": "m.mar"}), (7070, 7071))
    assert "default_workers_per_model=2" in text.splitlines()


def test_default_threads_follow_the_cgroup_quota_not_the_affinity(monkeypatch, tmp_path):
    """A 2-CPU quota (docker --cpus 2) on a machine whose affinity shows more: 2 threads."""
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "self" / "cgroup").write_text("0::/box\n")
    (tmp_path / "sys" / "fs" / "cgroup" / "box").mkdir(parents=True)
    (tmp_path / "sys" / "fs" / "cgroup" / "box" / "cpu.max").write_text("150000 100000\n")
    monkeypatch.setattr(cpu_share, "usable_cpus", lambda: usable_cpus(root=tmp_path))
    assert cpu_share.default_threads() == 1  # 1.5 CPUs of quota, rounded down


def test_the_handler_splits_the_usable_cpus_between_its_workers(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu_share, "usable_cpus", lambda: 6)
    seen = {}

    def fake_from_artifact(folder, backend, device, threads, top_k):
        seen["threads"] = threads
        return SimpleNamespace(backend=SimpleNamespace(name="torchscript", device="cpu"))

    monkeypatch.setattr("convserve.serving.handler.Classifier.from_artifact", fake_from_artifact)
    for config, threads in (({"maxWorkers": 3}, 2), ({"maxWorkers": 1}, 6), ({"handler": {"threads": 5}}, 5)):
        context = SimpleNamespace(system_properties={"model_dir": str(tmp_path)}, model_yaml_config=config)
        ConvserveHandler().initialize(context)
        assert seen["threads"] == threads, config


def test_serving_counts_cpus_only_through_hardware():
    """No second implementation: only hardware/cpus.py reads the affinity or the CPU count to size a pool."""
    for path in (p for pkg in ("common", "serving", "export", "benchmarking") for p in (ROOT / pkg).rglob("*.py")):
        text = path.read_text()
        assert "sched_getaffinity" not in text, path
        if path.name != "machine.py":  # reports os.cpu_count() as 'logical CPUs', next to the usable count
            assert not re.search(r"\bcpu_count\(", text), path


def test_machine_info_reports_the_usable_count_of_hardware():
    info = describe_machine()
    assert info.usable_cpus == usable_cpus() <= info.affinity_cpus <= info.logical_cpus


def test_the_archive_ships_hardware_because_the_handler_reaches_it():
    shipped = set(module_closure(HANDLER, skip=("convserve.models",)))  # what an ONNX archive carries
    wanted = {"hardware/__init__.py", "hardware/cpus.py", "serving/backends.py", "hardware/cpu_share.py"}
    assert {f"convserve/{name}" for name in wanted} | {"convserve/__init__.py"} <= shipped
    assert not [name for name in shipped if name.startswith(("convserve/models/", "convserve/training/"))]
