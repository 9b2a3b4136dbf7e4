"""Evaluation: loss, top-1/top-5, per-class accuracy and confusion matrix, all-reduced across ranks."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn
from torch.utils.data import DataLoader

from convserve.training.engine.distributed import DistInfo, all_reduce_sum
from convserve.training.engine.meters import AverageMeter, correct_counts
from convserve.training.engine.progress import ProgressMeter


@dataclass
class EvalResult:
    loss: float
    acc1: float
    acc5: float
    count: int
    per_class_acc: dict[str, float | None]
    confusion_matrix: list[list[int]]
    # filled only when asked (single process): per-sample top-5 indices/probabilities and targets
    top5: list[list[int]] = field(default_factory=list)
    top5_prob: list[list[float]] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "loss": self.loss,
            "acc1": self.acc1,
            "acc5": self.acc5,
            "count": self.count,
            "per_class_acc": self.per_class_acc,
            "confusion_matrix": self.confusion_matrix,
        }


class _Tally:
    """A split's loss, top-1/top-5 hits and confusion matrix (summable across ranks, kept on the model's device
    and read back once), and per-sample top-5 when collected."""

    def __init__(self, class_names: list[str], collect: bool, device: torch.device):
        self.class_names, self.collect = class_names, collect
        self.criterion = nn.CrossEntropyLoss(reduction="sum")
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct@1, correct@5
        self.count = 0
        self.confusion = torch.zeros(len(class_names), len(class_names), dtype=torch.int64, device=device)
        self.top5: list[list[int]] = []
        self.top5_prob: list[list[float]] = []
        self.targets: list[int] = []

    def add(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One batch; returns its summed loss and top-1/top-5 hits (on the device, not read back)."""
        batch = torch.cat([self.criterion(output, target).double().view(1), correct_counts(output, target)])
        self.sums += batch
        self.count += target.numel()
        self.confusion.index_put_((target, output.argmax(1)), torch.ones_like(target), accumulate=True)
        if self.collect:
            prob, idx = output.softmax(1).topk(min(5, len(self.class_names)), 1)
            self.top5 += idx.tolist()
            self.top5_prob += prob.tolist()
            self.targets += target.tolist()
        return batch

    def shown(self, batch: torch.Tensor, n: int) -> dict[str, tuple[float, float, int]]:
        (loss, c1, c5), (loss_sum, c1_sum, c5_sum) = batch.tolist(), self.sums.tolist()
        return {
            "loss": (loss / n, loss_sum, self.count),
            "acc1": (100.0 * c1 / n, 100.0 * c1_sum, self.count),
            "acc5": (100.0 * c5 / n, 100.0 * c5_sum, self.count),
        }

    def result(self, info: DistInfo) -> EvalResult:
        sums = torch.cat([self.sums.cpu(), torch.tensor([self.count], dtype=torch.float64)])
        loss_sum, c1, c5, count = all_reduce_sum(sums, info).tolist()
        confusion = all_reduce_sum(self.confusion.cpu(), info).tolist()
        per_class = {
            name: (confusion[k][k] / row if (row := sum(confusion[k])) else None)
            for k, name in enumerate(self.class_names)
        }
        return EvalResult(
            loss=loss_sum / max(count, 1),
            acc1=100.0 * c1 / max(count, 1),
            acc5=100.0 * c5 / max(count, 1),
            count=int(count),
            per_class_acc=per_class,
            confusion_matrix=confusion,
            top5=self.top5,
            top5_prob=self.top5_prob,
            targets=self.targets,
        )


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    class_names: list[str],
    *,
    info: DistInfo = DistInfo(),
    autocast: contextlib.AbstractContextManager | None = None,
    prefix: str = "Test: ",
    print_freq: int = 10,
    show_progress: bool = True,
    collect: bool = False,
) -> EvalResult:
    """``collect``: keep each sample's top-5 classes and probabilities (single process)."""
    tally = _Tally(class_names, collect, device)
    progress = ProgressMeter(
        len(loader),
        prefix=prefix,
        desc=prefix.strip(": "),
        meters={
            "loss": AverageMeter("Loss", ":.4e"),
            "acc1": AverageMeter("Acc@1", ":6.2f"),
            "acc5": AverageMeter("Acc@5", ":6.2f"),
        },
        bar={"acc1": ".2f"},
        print_freq=print_freq,
        enabled=show_progress and info.is_main,
    )
    model.eval()
    with torch.inference_mode():
        for i, (images, target) in enumerate(loader, start=1):
            images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
            with autocast or contextlib.nullcontext():
                output = model(images)
            batch = tally.add(output.float(), target)
            progress.update(i, partial(tally.shown, batch, target.numel()))
    progress.close()
    return tally.result(info)
