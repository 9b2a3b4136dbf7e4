"""Which arithmetic a run trains in: the fastest one the device really has, unless the user says otherwise.

``auto`` (the default): bf16 autocast on a CPU with native bf16 (AVX512-BF16 or AMX) and fp32 on one
without, where bf16 is only emulated and a step many times slower; bf16 on a CUDA GPU that has it, fp16 with a
GradScaler on one that does not. ``amp`` (``--amp``): the device's low precision even where it is emulated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from convserve.hardware.cpu_features import cpu_native_bf16
from convserve.hardware.rates import DTYPES

PRECISIONS = ("auto", "amp", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # "fp32" | "bf16" | "fp16": what the run computes in
    reason: str  # one phrase for the start-of-run line
    warning: str | None = None  # emulated or unsupported arithmetic the user forced

    @property
    def uses_scaler(self) -> bool:
        return self.precision == "fp16"

    def autocast(self, device: torch.device) -> Any:
        if self.precision == "fp32":
            return None
        return torch.autocast(device.type, dtype=DTYPES[self.precision])

    def scaler(self, device: torch.device) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(device.type) if self.uses_scaler else None


def device_low_precision(device_type: str, native_bf16: bool) -> str:
    if device_type == "cuda":
        return "bf16" if native_bf16 else "fp16"
    return "bf16"


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        # without including_emulation=False, pre-Ampere GPUs (T4, V100) answer True: bf16 there is emulated
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    return cpu_native_bf16()


def choose_precision(requested: str, device_type: str, native_bf16: bool) -> PrecisionChoice:
    """The precision for ``requested`` on a device of ``device_type`` whose bf16 is native or not (pure logic)."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}")
    where = "this GPU" if device_type == "cuda" else "this CPU"
    if requested == "auto":
        if native_bf16:
            return PrecisionChoice("bf16", f"auto: {where} has native bf16")
        if device_type == "cuda":
            return PrecisionChoice("fp16", f"auto: {where} has no bf16, fp16 with loss scaling")
        return PrecisionChoice("fp32", f"auto: {where} has no native bf16 (it would only be emulated)")
    chosen = device_low_precision(device_type, native_bf16) if requested == "amp" else requested
    warning = None
    if chosen == "bf16" and not native_bf16:
        warning = (
            f"bf16 was forced but {where} has no native bf16: it is emulated and can be 20x slower than fp32 "
            "(use --precision auto)"
        )
    elif chosen == "fp16" and device_type == "cpu":
        warning = "fp16 autocast on a CPU is emulated on most CPUs and slow (use --precision auto)"
    return PrecisionChoice(chosen, f"{requested} as asked", warning)


def resolve_precision(requested: str, device: torch.device) -> PrecisionChoice:
    return choose_precision(requested, device.type, native_bf16(device))
