"""A run's results, typed: one epoch's row (metrics.csv), the chosen epoch, the run's summary (summary.json)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from convserve.training.engine.evaluation import EvalResult
from convserve.training.engine.throughput import TrainingRate
from convserve.training.engine.train_loop import EpochStats


@dataclass(frozen=True)
class EpochRow:
    """One epoch as metrics.csv and a checkpoint's ``metrics`` record it (columns in this order)."""

    epoch: int
    train_loss: float
    train_acc1: float
    train_acc5: float
    val_loss: float
    val_acc1: float
    val_acc5: float
    lr: float
    epoch_seconds: float

    @classmethod
    def measured(cls, epoch: int, train: EpochStats, val: EvalResult, lr: float) -> EpochRow:
        return cls(
            epoch=epoch,
            train_loss=train.loss,
            train_acc1=train.acc1,
            train_acc5=train.acc5,
            val_loss=val.loss,
            val_acc1=val.acc1,
            val_acc5=val.acc5,
            lr=lr,
            epoch_seconds=train.seconds,
        )

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> EpochRow:
        return cls(**row)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


METRIC_COLUMNS = [f.name for f in fields(EpochRow)]


@dataclass(frozen=True)
class ChosenEpoch:
    """The epoch whose weights best.pt holds and the final test measures, chosen as ``run.select`` says.

    The defaults stand for "none yet": any validated epoch beats them.
    """

    epoch: int = -1
    val_acc1: float = -1.0
    val_acc5: float | None = None
    val_loss: float | None = None  # None in checkpoints written before the loss broke accuracy ties

    @classmethod
    def of(cls, epoch: int, val: EvalResult) -> ChosenEpoch:
        return cls(epoch=epoch, val_acc1=val.acc1, val_acc5=val.acc5, val_loss=val.loss)

    @classmethod
    def from_dict(cls, best: Mapping[str, Any]) -> ChosenEpoch:
        return cls(best["epoch"], best["val_acc1"], best.get("val_acc5"), best.get("val_loss"))

    def to_dict(self) -> dict[str, Any]:
        """As ``train_state["best"]`` has always held it: these keys in this order, an unknown value left out."""
        full = {"val_acc1": self.val_acc1, "val_acc5": self.val_acc5, "val_loss": self.val_loss, "epoch": self.epoch}
        return {key: value for key, value in full.items() if value is not None}


@dataclass(frozen=True)
class RunSummary:
    """summary.json: the final test of the chosen weights and how the run went (keys in field order)."""

    arch: str
    dataset: str
    test_split: str  # "val" where the dataset has no test split
    test_acc1: float
    test_acc5: float
    test_loss: float
    test_count: int
    per_class_acc: dict[str, float | None]
    confusion_matrix: list[list[int]]
    class_names: list[str]
    best_epoch: int  # the epoch best.pt holds, chosen as ``selected_by`` says
    best_val_acc1: float  # the highest of any epoch
    selected_by: str
    selected_val_acc1: float
    epochs: int
    wall_time_s: float
    train_time_s: float
    images_per_s: float | None
    precision: str
    precision_reason: str
    peak_rss_mb: float
    peak_gpu_mem_mb: float | None
    device: str
    world_size: int
    input_size: int
    num_params: int
    rate: TrainingRate | None = None  # flattened into the summary's keys; None on all but the main rank

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "rate"}
        return {**out, **(self.rate or {})}
