"""The parts of one training run, built once (``trainer.build_session``) and shared by its epochs and checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convserve.training.config import TrainConfig
from convserve.training.data import DataBundle
from convserve.training.engine.distributed import DistInfo
from convserve.training.engine.ema import WeightAverage
from convserve.training.engine.precision import PrecisionChoice
from convserve.training.engine.train_loop import TrainStep


@dataclass
class Session:
    cfg: TrainConfig
    info: DistInfo
    device: torch.device
    data: DataBundle
    model: nn.Module  # DDP-wrapped under torchrun: what the training step calls
    model_without_ddp: nn.Module
    model_options: dict[str, Any]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    precision: PrecisionChoice
    run_dir: Path
    ema: WeightAverage | None = None

    @property
    def autocast(self) -> Any:
        return self.precision.autocast(self.device)

    @property
    def eval_model(self) -> nn.Module:
        """What validation, checkpoints and export see: the weight average when there is one."""
        return self.ema.model if self.ema is not None else self.model_without_ddp

    def train_step(self) -> TrainStep:
        return TrainStep(
            model=self.model,
            criterion=nn.CrossEntropyLoss(label_smoothing=self.cfg.optim.label_smoothing),
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            device=self.device,
            info=self.info,
            autocast=self.autocast,
            scaler=self.scaler,
            channels_last=self.cfg.run.channels_last,
            ema=self.ema,
        )
