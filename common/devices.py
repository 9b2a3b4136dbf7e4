"""The one device choice: ``auto`` takes the first CUDA GPU and falls back to the CPU, saying so; an explicit
``cuda`` (or ``cuda:N``) that this machine cannot give is a one-line error, in every CLI alike."""

from __future__ import annotations

import logging

import torch

from convserve.common.errors import ConvserveError

log = logging.getLogger(__name__)


def choose_device(name: str | None = "auto") -> torch.device:
    """``auto``/None, ``cpu``, ``cuda`` or ``cuda:N`` → a torch.device this process can use."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        # the trainer's run line and the benchmark's machine line name the device; a line here would land in
        # the middle of every CLI's result (predict's table, evaluate's report)
        log.debug("device auto: no CUDA GPU visible, using the CPU")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConvserveError(f"unknown device {name!r}; choose auto, cpu, cuda or cuda:N") from None
    if device.type != "cuda":
        raise ConvserveError(f"unsupported device {name!r}; choose auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConvserveError(f"device {name} was asked for but no CUDA GPU is available (use --device auto or cpu)")
    if (device.index or 0) >= torch.cuda.device_count():
        raise ConvserveError(f"device {name} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return device if device.index is not None else torch.device("cuda", 0)
