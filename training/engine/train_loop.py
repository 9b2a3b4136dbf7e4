"""One training epoch: forward/backward with optional AMP and grad scaling, top-k meters, per-step LR."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from convserve.training.engine.distributed import DistInfo, all_reduce_sum
from convserve.training.engine.ema import WeightAverage
from convserve.training.engine.meters import AverageMeter, ProgressMeter, correct_counts
from convserve.training.engine.progress import Progress


@dataclass
class EpochStats:
    loss: float
    acc1: float
    acc5: float
    count: int
    seconds: float


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    epoch: int,
    info: DistInfo,
    autocast: contextlib.AbstractContextManager | None = None,
    scaler: torch.amp.GradScaler | None = None,
    channels_last: bool = False,
    print_freq: int = 20,
    ema: WeightAverage | None = None,
) -> EpochStats:
    model.train()
    sums = torch.zeros(4, dtype=torch.float64)  # loss*n, correct@1, correct@5, n
    batch_time, losses = AverageMeter("Time", ":6.3f"), AverageMeter("Loss", ":.4e")
    top1 = AverageMeter("Acc@1", ":6.2f")
    meter = ProgressMeter(len(loader), [batch_time, losses, top1], prefix=f"Epoch: [{epoch}]")
    progress = Progress(len(loader), f"epoch {epoch}", print_freq, enabled=info.is_main)
    start = end = time.perf_counter()
    for i, (images, target) in enumerate(loader, start=1):
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast or contextlib.nullcontext():
            output = model(images)
            loss = criterion(output, target)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.step()
        n = target.numel()
        c1, c5 = correct_counts(output.detach().float(), target)
        sums += torch.tensor([loss.item() * n, c1, c5, n], dtype=torch.float64)
        losses.update(loss.item(), n)
        top1.update(100.0 * c1 / n, n)
        batch_time.update(time.perf_counter() - end)
        end = time.perf_counter()
        progress.update(i, lambda i=i: meter.line(i), {"loss": f"{losses.avg:.3f}", "acc1": f"{top1.avg:.1f}"})
    progress.close()
    all_reduce_sum(sums, info)
    loss_sum, c1, c5, count = sums.tolist()
    return EpochStats(loss_sum / count, 100.0 * c1 / count, 100.0 * c5 / count, int(count), time.perf_counter() - start)
