"""What the numbers were measured on, the one description every report uses: ``describe_machine`` in full (CPU,
cores, memory, load, library versions, thread settings, GPU) for benchmarks, ``machine_summary`` (CPU with its
notable flags, usable CPUs, load) beside load-test and soak figures.

The machine's rates (GEMM, read bandwidth) are measured with the floors, in ``convserve.benchmarking.floors``.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from convserve.common.versions import library_versions
from convserve.hardware.cpu_features import NOTABLE_FLAGS, cpu_model, notable_flags
from convserve.hardware.cpus import affinity_cpus, cgroup_cpu_limit, usable_cpus

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TORCH_NUM_THREADS")


class MachineInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hostname: str
    platform: str
    cpu_model: str
    cpu_flags: list[str] | None = None  # convserve.hardware.cpu_features.NOTABLE_FLAGS present (runs before it: None)
    logical_cpus: int
    affinity_cpus: int  # CPUs in this process's affinity mask
    cpu_quota: float | None = None  # CPUs of cgroup quota (docker --cpus, k8s limits.cpu); None: unlimited
    usable_cpus: (
        int  # affinity and quota, rounded down (convserve.hardware.cpus.usable_cpus): default threads follow it
    )
    ram_gb: float
    load_average: list[float]  # 1, 5, 15 min, when the run started
    load_average_end: list[float] | None = None
    python: str
    versions: dict[str, str]
    torch_threads: int
    torch_interop_threads: int
    thread_env: dict[str, str]
    gpu: str | None = None
    java: str | None = None


class MachineSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cpu: str  # model and the flags that decide kernels, from /proc/cpuinfo
    cpus: int  # usable: affinity and quota
    load_average_start: list[float]
    load_average_end: list[float] | None = None


def cpu_line() -> str:
    """``AMD EPYC ... (flags: avx2 avx512f ...)``: the model and the flags that decide which kernels run."""
    notable = " ".join(notable_flags()) or "none of " + "/".join(NOTABLE_FLAGS)
    return f"{cpu_model()} (flags: {notable})"


def machine_summary() -> MachineSummary:
    """The machine now, in the few facts a load figure needs beside it (set ``load_average_end`` when done)."""
    return MachineSummary(cpu=cpu_line(), cpus=usable_cpus(), load_average_start=load_average())


def ram_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def java_version() -> str | None:
    try:
        done = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[0] if lines else None


def describe_machine() -> MachineInfo:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return MachineInfo(
        hostname=platform.node(),
        platform=platform.platform(),
        cpu_model=cpu_model(),
        cpu_flags=notable_flags(),
        logical_cpus=os.cpu_count() or 1,
        affinity_cpus=affinity_cpus(),
        cpu_quota=cgroup_cpu_limit(),
        usable_cpus=usable_cpus(),
        ram_gb=ram_gb(),
        load_average=load_average(),
        python=platform.python_version(),
        versions=library_versions(),
        torch_threads=torch.get_num_threads(),
        torch_interop_threads=torch.get_num_interop_threads(),
        thread_env={k: os.environ[k] for k in THREAD_ENV if k in os.environ},
        gpu=gpu,
        java=java_version(),
    )
