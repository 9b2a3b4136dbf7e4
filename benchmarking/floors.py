"""Lower bounds on one batch-1 forward pass, from rates measured in the same run on this machine.

- weight-read floor: the weights read once at the read bandwidth measured in this run
  (``convserve.hardware.rates.read_gbs``): MB / (GB/s) = ms. For the fp32 weights (parameters x 4 bytes) and for each
  model file of the artifact (its bytes: an int8 file reads a quarter of the fp32 weights).
- compute floor: the model's FLOPs per image (forward pass only, counted with torch's ``FlopCounterMode``) at
  the matrix-multiply rate measured in this run (``convserve.hardware.rates.matmul_gflops``), at fp32 and at each lower
  precision the device computes natively (bf16 on CPUs with AVX512-BF16 or AMX, fp16/bf16 on GPUs).

Nothing here is a constant: every run measures the rates again, on the threads its backends use, so the
floors and the latencies divided by them describe the same machine at the same time.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict

from convserve.hardware.flops import flops_per_image
from convserve.hardware.rates import MachineRates, measure_machine

# the arithmetic each exported format runs at; int8 has no measured GEMM rate, so only its read floor exists
PRECISION = {"eager": "fp32", "torchscript": "fp32", "onnx": "fp32", "onnx-fp16": "fp16", "onnx-int8": "int8"}
FP32 = "fp32"


class Floors(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str
    threads: int  # torch threads the rates were measured with (the backends' intra-op threads)
    read_gbs: float  # measured in this run
    matmul_gflops: dict[str, float]  # precision -> GFLOP/s measured in this run
    flops_per_image: float | None  # forward pass at batch 1 (multiply and add counted as 2)
    weight_mb: dict[str, float]  # "fp32": parameters x 4 bytes; each model file by format (1 MB = 1e6 bytes)
    weight_read_ms: dict[str, float]  # same keys as weight_mb: bytes / read_gbs
    compute_ms: dict[str, float]  # precision -> flops_per_image / matmul_gflops

    @property
    def fp32_read_ms(self) -> float:
        return self.weight_read_ms[FP32]

    @property
    def fp32_ms(self) -> float:
        """The fp32 model's floor: the slower of reading its weights and computing its FLOPs."""
        return max(self.fp32_read_ms, self.compute_ms.get(FP32, 0.0))

    def backend_ms(self, fmt: str) -> float | None:
        """A backend's own floor: its model file read once, or its FLOPs at its precision, whichever is slower."""
        read = self.weight_read_ms.get(fmt)
        compute = self.compute_ms.get(PRECISION.get(fmt, FP32))
        known = [v for v in (read, compute) if v is not None]
        return max(known) if known else None


def compute_floors(rates: MachineRates, flops_per_image: float | None, weight_bytes: dict[str, int]) -> Floors:
    """The floors from measured ``rates``; ``weight_bytes`` holds "fp32" and each model file by format."""
    if rates.read_gbs <= 0:
        raise ValueError(f"a read bandwidth of {rates.read_gbs} GB/s cannot give a floor")
    weight_mb = {name: size / 1e6 for name, size in weight_bytes.items()}
    compute = {}
    if flops_per_image:
        compute = {p: flops_per_image / 1e9 / gflops * 1e3 for p, gflops in rates.matmul_gflops.items() if gflops > 0}
    return Floors(
        device=rates.device,
        threads=rates.threads,
        read_gbs=rates.read_gbs,
        matmul_gflops=dict(rates.matmul_gflops),
        flops_per_image=flops_per_image,
        weight_mb=weight_mb,
        weight_read_ms={name: mb / rates.read_gbs for name, mb in weight_mb.items()},  # MB / (GB/s) = ms
        compute_ms=compute,
    )


def forward_flops(model: torch.nn.Module, input_size: int, device: str = "cpu") -> float:
    """FLOPs of one batch-1 forward pass (inference: no backward), as torch's FlopCounterMode counts them."""
    return flops_per_image(model.to(device), input_size, device)


def measure_rates(device: str, threads: int) -> MachineRates:
    """``hardware.rates.measure_machine`` on ``device`` with ``threads`` torch threads (restored afterwards)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return measure_machine(device)
    finally:
        torch.set_num_threads(previous)
