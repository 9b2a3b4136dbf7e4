"""AverageMeter and the top-k hit counter, after pytorch/examples imagenet."""

from __future__ import annotations

import torch


class AverageMeter:
    def __init__(self, name: str, fmt: str = ":f"):
        self.name, self.fmt = name, fmt
        self.val = self.sum = self.avg = 0.0
        self.count = 0

    def update(self, val: float, n: int = 1) -> None:
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / max(self.count, 1)

    def set(self, val: float, total: float, count: int) -> None:
        """The running state read from sums kept elsewhere (on the device, read only when shown)."""
        self.val, self.sum, self.count = val, total, count
        self.avg = total / max(count, 1)

    def __str__(self) -> str:
        return ("{name} {val" + self.fmt + "} ({avg" + self.fmt + "})").format(**self.__dict__)


def correct_counts(output: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """Number of samples whose target is in the top k, as a float64 tensor on the outputs' device (summable
    across batches and ranks without reading it back to the host)."""
    maxk = min(max(topk), output.shape[1])
    _, pred = output.topk(maxk, 1, True, True)
    hit = pred.eq(target.view(-1, 1))
    return torch.stack([hit[:, : min(k, maxk)].any(dim=1).sum() for k in topk]).double()
