"""The machine probe: usable CPUs under cgroup quotas (fake cgroup trees), native bf16, measured rates."""

from __future__ import annotations

from pathlib import Path

import pytest

from convserve.hardware import cpus
from convserve.hardware.cpu_features import cpu_flags, cpu_model, cpu_native_bf16, notable_flags, onednn_isa_cap
from convserve.hardware.rates import matmul_gflops, measure_machine, read_gbs


def fake_root(tmp_path: Path, proc_cgroup: str, files: dict[str, str]) -> Path:
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "self" / "cgroup").write_text(proc_cgroup)
    for rel, text in files.items():
        path = tmp_path / "sys" / "fs" / "cgroup" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.fixture
def many_cpus(monkeypatch):
    """A 64-CPU node, as a container on a big Kubernetes node sees its affinity mask."""
    monkeypatch.setattr(cpus, "affinity_cpus", lambda: 64)


def test_v2_quota_limits_the_count(tmp_path, many_cpus):
    root = fake_root(tmp_path, "0::/\n", {"cpu.max": "200000 100000\n"})
    assert cpus.cgroup_cpu_limit(root) == 2.0
    assert cpus.usable_cpus(root) == 2


def test_v2_fractional_quota_rounds_down_but_never_below_one(tmp_path, many_cpus):
    assert cpus.usable_cpus(fake_root(tmp_path / "a", "0::/\n", {"cpu.max": "150000 100000"})) == 1
    assert cpus.usable_cpus(fake_root(tmp_path / "b", "0::/\n", {"cpu.max": "50000 100000"})) == 1
    assert cpus.usable_cpus(fake_root(tmp_path / "c", "0::/\n", {"cpu.max": "350000 100000"})) == 3


def test_v2_unlimited_leaves_the_affinity(tmp_path, many_cpus):
    assert cpus.usable_cpus(fake_root(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})) == 64


def test_v2_quota_on_a_parent_cgroup_counts(tmp_path, many_cpus):
    files = {"kubepods/cpu.max": "400000 100000", "kubepods/pod1/ctr/cpu.max": "max 100000"}
    assert cpus.usable_cpus(fake_root(tmp_path, "0::/kubepods/pod1/ctr\n", files)) == 4


def test_v1_cfs_quota(tmp_path, many_cpus):
    proc = "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n"
    files = {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000"}
    assert cpus.usable_cpus(fake_root(tmp_path, proc, files)) == 3


def test_v1_unlimited_quota_is_minus_one(tmp_path, many_cpus):
    files = {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}
    assert cpus.usable_cpus(fake_root(tmp_path, "3:cpu:/\n", files)) == 64


def test_affinity_smaller_than_quota_wins(tmp_path, monkeypatch):
    monkeypatch.setattr(cpus, "affinity_cpus", lambda: 2)
    assert cpus.usable_cpus(fake_root(tmp_path, "0::/\n", {"cpu.max": "800000 100000"})) == 2


def test_no_cgroup_files_means_affinity(tmp_path, many_cpus):
    assert cpus.usable_cpus(tmp_path) == 64


def test_this_machine_has_at_least_one_usable_cpu():
    assert 1 <= cpus.usable_cpus() <= (len(__import__("os").sched_getaffinity(0)))


def test_onednn_cap_makes_bf16_emulated():
    flags = {"avx512f", "avx512_bf16", "amx_bf16"}
    assert cpu_native_bf16(env={}, flags=flags)
    assert not cpu_native_bf16(env={"ONEDNN_MAX_CPU_ISA": "AVX2"}, flags=flags)
    assert not cpu_native_bf16(env={"DNNL_MAX_CPU_ISA": "avx512_core"}, flags=flags)
    assert cpu_native_bf16(env={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, flags=flags)
    assert cpu_native_bf16(env={"ONEDNN_MAX_CPU_ISA": "ALL"}, flags=flags)
    assert onednn_isa_cap({"ONEDNN_MAX_CPU_ISA": "default"}) is None


def test_avx2_only_flags_have_no_native_bf16():
    assert not cpu_native_bf16(env={}, flags={"avx", "avx2", "fma"})
    assert cpu_native_bf16(env={}, flags={"avx2", "avx512_bf16"})


def test_cpuinfo_is_read(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_model(info) == "Test CPU 9000"
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()
    assert notable_flags(info) == ["avx2", "avx512_bf16"]  # the ones that decide kernels, in a fixed order
    assert notable_flags(tmp_path / "missing") == []


def test_measured_rates_are_positive_and_plausible():
    """Real measurements on this machine: a 2-core CPU does between 1 and 10,000 GFLOP/s and 0.5-2,000 GB/s."""
    assert 1.0 < matmul_gflops("fp32", size=512, budget_s=0.3) < 10_000
    assert 0.5 < read_gbs(megabytes=64, budget_s=0.3) < 2_000
    rates = measure_machine("cpu")
    assert "fp32" in rates.matmul_gflops and rates.threads >= 1
    assert ("bf16" in rates.matmul_gflops) == cpu_native_bf16()


def test_malformed_cgroup_files_limit_nothing(tmp_path, many_cpus):
    assert cpus.usable_cpus(fake_root(tmp_path / "a", "0::/\n", {"cpu.max": "lots 100000"})) == 64
    files = {"cpu/cpu.cfs_quota_us": "n/a", "cpu/cpu.cfs_period_us": "100000"}
    assert cpus.usable_cpus(fake_root(tmp_path / "b", "3:cpu:/\n", files)) == 64
