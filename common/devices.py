"""The one device choice: ``auto`` takes this process's CUDA GPU and falls back to the CPU; an explicit ``cuda``
(or ``cuda:N``) that this machine cannot give is a one-line error, in every CLI alike.

"This process's GPU" is ``cuda:LOCAL_RANK`` under torchrun (one process per GPU of a node) and ``cuda:0`` otherwise.
"""

from __future__ import annotations

import logging
import os

import torch

from convserve.common.errors import ConvserveError

log = logging.getLogger(__name__)


def local_rank() -> int:
    """This process's index among the node's processes: torchrun's LOCAL_RANK, 0 for a lone process."""
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise ConvserveError(f"LOCAL_RANK must be an integer, got {os.environ['LOCAL_RANK']!r}") from None


def _own_gpu() -> torch.device:
    index, count = local_rank(), torch.cuda.device_count()
    if index >= count:
        raise ConvserveError(
            f"process {index} of this node (LOCAL_RANK) has no GPU: this machine has {count}; "
            f"start at most {count} processes per node (torchrun --nproc_per_node)"
        )
    return torch.device("cuda", index)


def choose_device(name: str | None = "auto") -> torch.device:
    """``auto``/None, ``cpu``, ``cuda`` or ``cuda:N`` → a torch.device this process can use."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return _own_gpu()
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
    return device if device.index is not None else _own_gpu()
