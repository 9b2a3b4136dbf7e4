"""How fast a run trained, against what this machine can do: FLOPs per image, GFLOP/s, share of the GEMM rate."""

from __future__ import annotations

from typing import TypedDict

import torch
from torch import nn

from convserve.hardware.cpu_features import cpu_model
from convserve.hardware.flops import flops_per_image
from convserve.hardware.rates import measure_machine, native_precisions


class TrainingRate(TypedDict):
    """The summary's speed fields (keys in this order)."""

    train_flops_per_image: float
    train_gflops_per_s: float | None
    matmul_gflops_per_s: dict[str, float]
    matmul_fraction: float | None
    matmul_fraction_basis: str  # the GEMM rate the fraction is of (fp32 where the run's is emulated)
    memory_read_gbs: float
    cpu_model: str
    threads: int


def training_rate(
    model: nn.Module, input_size: int, device: torch.device, precision: str, images_per_s: float | None
) -> TrainingRate:
    """Measured machine rates and the run's fraction of them."""
    flops = flops_per_image(model, input_size, device, backward=True, batch=2)
    wanted = native_precisions(device)
    rates = measure_machine(device, wanted)
    basis = precision if precision in rates.matmul_gflops else "fp32"
    achieved = flops * images_per_s / 1e9 if images_per_s else None
    return TrainingRate(
        train_flops_per_image=flops,
        train_gflops_per_s=achieved,
        matmul_gflops_per_s=rates.matmul_gflops,
        matmul_fraction=achieved / rates.matmul_gflops[basis] if achieved else None,
        matmul_fraction_basis=basis,
        memory_read_gbs=rates.read_gbs,
        cpu_model=cpu_model() if device.type == "cpu" else torch.cuda.get_device_name(device),
        threads=rates.threads,
    )
