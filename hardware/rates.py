"""This machine's own limits, measured in a few seconds: matrix-multiply rate and memory read bandwidth.

Speed figures elsewhere are fractions of these (training GFLOP/s over the GEMM rate at the run's precision, a
weight-read floor from the bandwidth), so they stay meaningful on whatever CPU or GPU the code lands on.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch

from convserve.hardware.cpu_features import cpu_native_bf16

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # the project's precision names


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(fn, device: torch.device, repeats: int, budget_s: float) -> float:
    fn()  # warm-up: first-call packing, allocator, oneDNN/cuBLAS kernel choice
    _sync(device)
    best, deadline = float("inf"), time.perf_counter() + budget_s
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
        if time.perf_counter() > deadline:
            break
    return best


def matmul_gflops(
    precision: str = "fp32", device: str | torch.device = "cpu", size: int | None = None, budget_s: float = 1.5
) -> float:
    """Best-of-N rate of a square matrix product (2·n³ FLOPs) on the threads torch will use, in GFLOP/s."""
    device = torch.device(device)
    n = size or (8192 if device.type == "cuda" else 2048)
    dtype = DTYPES[precision]
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    seconds = _best_seconds(lambda: torch.mm(a, b), device, repeats=20, budget_s=budget_s)
    return 2 * n**3 / seconds / 1e9


def read_gbs(device: str | torch.device = "cpu", megabytes: int = 256, budget_s: float = 1.0) -> float:
    """Best-of-N read bandwidth of a reduction over a buffer larger than any cache (all threads), in GB/s."""
    device = torch.device(device)
    buf = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32, device=device)
    seconds = _best_seconds(lambda: torch.sum(buf), device, repeats=10, budget_s=budget_s)
    return buf.numel() * 4 / seconds / 1e9


@dataclass
class MachineRates:
    device: str
    threads: int
    matmul_gflops: dict[str, float]  # precision -> GFLOP/s; low precisions only where the device has them natively
    read_gbs: float


def native_precisions(device: torch.device) -> list[str]:
    if device.type == "cuda":
        out = ["fp32", "fp16"]
        return out + ["bf16"] if torch.cuda.is_bf16_supported() else out
    return ["fp32", "bf16"] if cpu_native_bf16() else ["fp32"]


def measure_machine(device: str | torch.device = "cpu", precisions: list[str] | None = None) -> MachineRates:
    """The GEMM rate at each native precision (or those asked for) and the read bandwidth, on ``device``.

    Measured once per process for each (device, precisions, thread count): a second run in the same process
    (tests, sweeps) reuses the figures instead of spending seconds on them again.
    """
    device = torch.device(device)
    wanted = tuple(precisions or native_precisions(device))
    return _measure(str(device), wanted, torch.get_num_threads())


@functools.cache
def _measure(device: str, precisions: tuple[str, ...], threads: int) -> MachineRates:
    rates = {p: round(matmul_gflops(p, device), 1) for p in precisions}
    return MachineRates(device, threads, rates, round(read_gbs(device), 2))
