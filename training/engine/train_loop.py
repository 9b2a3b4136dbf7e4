"""One training epoch: forward/backward with optional AMP and grad scaling, top-k meters, per-step LR."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.utils.data import DataLoader

from convserve.training.engine.distributed import DistInfo, all_reduce_sum
from convserve.training.engine.ema import WeightAverage
from convserve.training.engine.meters import AverageMeter, correct_counts
from convserve.training.engine.progress import ProgressMeter


@dataclass
class EpochStats:
    loss: float
    acc1: float
    acc5: float
    count: int
    seconds: float


@dataclass(frozen=True)
class TrainStep:
    """Everything one optimisation step uses, the same for every step of a run."""

    model: nn.Module  # DDP-wrapped under torchrun
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    info: DistInfo = DistInfo()
    autocast: contextlib.AbstractContextManager | None = None
    scaler: torch.amp.GradScaler | None = None
    channels_last: bool = False
    ema: WeightAverage | None = None

    def run(self, images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, backward, optimizer, LR and weight-average step on one batch; returns (output, loss)."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self.autocast or contextlib.nullcontext():
            output = self.model(images)
            loss = self.criterion(output, target)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.step()
        return output, loss


def train_one_epoch(step: TrainStep, loader: DataLoader, epoch: int, print_freq: int = 20) -> EpochStats:
    step.model.train()
    # loss x n, correct@1, correct@5 summed where the model runs: read back once per epoch (and when a progress
    # line is due), never once per step, which would stall a GPU's queue
    sums = torch.zeros(3, dtype=torch.float64, device=step.device)
    count = 0
    progress = ProgressMeter(
        len(loader),
        prefix=f"Epoch: [{epoch}]",
        desc=f"epoch {epoch}",
        meters={"loss": AverageMeter("Loss", ":.4e"), "acc1": AverageMeter("Acc@1", ":6.2f")},
        bar={"loss": ".3f", "acc1": ".1f"},
        print_freq=print_freq,
        enabled=step.info.is_main,
    )
    start = time.perf_counter()
    for i, (images, target) in enumerate(loader, start=1):
        images, target = images.to(step.device, non_blocking=True), target.to(step.device, non_blocking=True)
        output, loss = step.run(images, target)
        n = target.numel()  # from the shape: known on the host
        batch = torch.cat([loss.detach().double().view(1), correct_counts(output.detach().float(), target)])
        sums[0] += batch[0] * n
        sums[1:] += batch[1:]
        count += n
        progress.update(i, partial(_shown, batch, sums, n, count))
    progress.close()
    loss_sum, c1, c5, count = all_reduce_sum(torch.cat([sums.cpu(), torch.tensor([count], dtype=torch.float64)]),
                                             step.info).tolist()  # fmt: skip
    return EpochStats(loss_sum / count, 100.0 * c1 / count, 100.0 * c5 / count, int(count), time.perf_counter() - start)


def _shown(batch: torch.Tensor, sums: torch.Tensor, n: int, count: int) -> dict[str, tuple[float, float, int]]:
    (loss, c1, _), (loss_sum, c1_sum, _) = batch.tolist(), sums.tolist()
    return {"loss": (loss, loss_sum, count), "acc1": (100.0 * c1 / n, 100.0 * c1_sum, count)}
