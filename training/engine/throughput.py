"""How fast a run trained, against what this machine can do: FLOPs per image, GFLOP/s, share of the GEMM rate."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from convserve.hardware.cpu_features import cpu_model
from convserve.hardware.flops import flops_per_image
from convserve.hardware.rates import measure_machine, native_precisions


def training_rate(
    model: nn.Module, input_size: int, device: torch.device, precision: str, images_per_s: float | None
) -> dict[str, Any]:
    """The summary's speed fields: measured machine rates and the run's fraction of them."""
    flops = flops_per_image(model, input_size, device, backward=True, batch=2)
    wanted = native_precisions(device)
    rates = measure_machine(device, wanted)
    basis = precision if precision in rates.matmul_gflops else "fp32"
    achieved = flops * images_per_s / 1e9 if images_per_s else None
    return {
        "train_flops_per_image": flops,
        "train_gflops_per_s": achieved,
        "matmul_gflops_per_s": rates.matmul_gflops,
        "matmul_fraction": achieved / rates.matmul_gflops[basis] if achieved else None,
        "matmul_fraction_basis": basis,  # the GEMM rate the fraction is of (fp32 where the run's is emulated)
        "memory_read_gbs": rates.read_gbs,
        "cpu_model": cpu_model() if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": rates.threads,
    }
