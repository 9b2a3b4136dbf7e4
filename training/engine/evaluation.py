"""Evaluation: loss, top-1/top-5, per-class accuracy and confusion matrix, all-reduced across ranks."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader

from convserve.training.engine.distributed import DistInfo, all_reduce_sum
from convserve.training.engine.meters import AverageMeter, ProgressMeter, accuracy, correct_counts
from convserve.training.engine.progress import Progress


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


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    class_names: list[str],
    info: DistInfo = DistInfo(),
    autocast: contextlib.AbstractContextManager | None = None,
    prefix: str = "Test: ",
    print_freq: int = 10,
    show_progress: bool = True,
    collect: bool = False,
) -> EvalResult:
    n = len(class_names)
    criterion = nn.CrossEntropyLoss(reduction="sum")
    sums = torch.zeros(4, dtype=torch.float64)  # loss, correct@1, correct@5, count
    confusion = torch.zeros(n, n, dtype=torch.int64)
    batch_time, losses = AverageMeter("Time", ":6.3f"), AverageMeter("Loss", ":.4e")
    top1, top5 = AverageMeter("Acc@1", ":6.2f"), AverageMeter("Acc@5", ":6.2f")
    meter = ProgressMeter(len(loader), [batch_time, losses, top1, top5], prefix=prefix)
    progress = Progress(len(loader), prefix.strip(": "), print_freq, enabled=show_progress and info.is_main)
    result_top5, result_prob, result_targets = [], [], []
    model.eval()
    end = time.perf_counter()
    with torch.inference_mode():
        for i, (images, target) in enumerate(loader, start=1):
            images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
            with autocast or contextlib.nullcontext():
                output = model(images)
            output = output.float()
            loss = criterion(output, target)
            c1, c5 = correct_counts(output, target)
            sums += torch.tensor([loss.item(), c1, c5, target.numel()], dtype=torch.float64)
            pred = output.argmax(1)
            confusion.index_put_((target.cpu(), pred.cpu()), torch.ones_like(target.cpu()), accumulate=True)
            if collect:
                prob, idx = output.softmax(1).topk(min(5, n), 1)
                result_top5 += idx.tolist()
                result_prob += prob.tolist()
                result_targets += target.tolist()
            a1, a5 = accuracy(output, target, (1, 5))
            losses.update(loss.item() / target.numel(), target.numel())
            top1.update(a1, target.numel())
            top5.update(a5, target.numel())
            batch_time.update(time.perf_counter() - end)
            end = time.perf_counter()
            progress.update(i, lambda i=i: meter.line(i), {"acc1": f"{top1.avg:.2f}"})
    progress.close()
    all_reduce_sum(sums, info)
    all_reduce_sum(confusion, info)
    loss_sum, c1, c5, count = sums.tolist()
    per_class = {
        name: (confusion[k, k].item() / row if (row := confusion[k].sum().item()) else None)
        for k, name in enumerate(class_names)
    }
    return EvalResult(
        loss=loss_sum / max(count, 1),
        acc1=100.0 * c1 / max(count, 1),
        acc5=100.0 * c5 / max(count, 1),
        count=int(count),
        per_class_acc=per_class,
        confusion_matrix=confusion.tolist(),
        top5=result_top5,
        top5_prob=result_prob,
        targets=result_targets,
    )
