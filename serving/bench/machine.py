"""What the numbers were measured on: CPU, cores, memory, load, library versions, thread settings, GPU."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TORCH_NUM_THREADS")


class MachineInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hostname: str
    platform: str
    cpu_model: str
    logical_cpus: int
    usable_cpus: int  # this process's CPU affinity
    ram_gb: float
    load_average: list[float]  # 1, 5, 15 min, when the run started
    load_average_end: list[float] | None = None
    memory_read_gbs: float | None = None  # measured (torch.sum over 256 MB); the weight-read floor uses it
    python: str
    versions: dict[str, str]
    torch_threads: int
    torch_interop_threads: int
    thread_env: dict[str, str]
    gpu: str | None = None
    java: str | None = None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("torch", "torchvision", "onnxruntime-gpu", "onnxruntime", "onnx", "torchserve", "aiohttp", "numpy"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def java_version() -> str | None:
    try:
        done = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[0] if lines else None


def memory_read_gbs(megabytes: int = 256, repeats: int = 5) -> float:
    """Best-of-N read bandwidth of a torch reduction over a buffer larger than any cache (all threads)."""
    import torch

    buf = torch.ones(megabytes * 1024 * 1024 // 4, dtype=torch.float32)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.sum(buf)
        best = min(best, time.perf_counter() - start)
    return buf.numel() * 4 / best / 1e9


def describe_machine(measure_bandwidth: bool = True) -> MachineInfo:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return MachineInfo(
        hostname=platform.node(),
        platform=platform.platform(),
        cpu_model=cpu_model(),
        logical_cpus=os.cpu_count() or 1,
        usable_cpus=len(os.sched_getaffinity(0)),
        ram_gb=ram_gb(),
        load_average=load_average(),
        memory_read_gbs=round(memory_read_gbs(), 2) if measure_bandwidth else None,
        python=platform.python_version(),
        versions=library_versions(),
        torch_threads=torch.get_num_threads(),
        torch_interop_threads=torch.get_num_interop_threads(),
        thread_env={k: os.environ[k] for k in THREAD_ENV if k in os.environ},
        gpu=gpu,
        java=java_version(),
    )
