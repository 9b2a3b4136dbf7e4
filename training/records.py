"""The run folder: resolved config, metrics.csv, summary.json, TensorBoard events, checkpoints/."""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

from convserve.common.errors import ConvserveError
from convserve.common.files import atomic_file, write_json_atomic
from convserve.training.results import METRIC_COLUMNS, EpochRow, RunSummary

RUN_MARKERS = ("config.yaml", "metrics.csv", "summary.json", "checkpoints")


def holds_run(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in RUN_MARKERS)


def new_run_dir(root: Path, arch: str, dataset: str, name: str | None) -> Path:
    """A fresh folder under ``root``; timestamped names get a numeric suffix instead of clobbering."""
    if name:
        return root / name
    stem = f"{datetime.now():%Y%m%d-%H%M%S}-{arch}-{dataset}"
    path, k = root / stem, 2
    while path.exists():
        path, k = root / f"{stem}-{k}", k + 1
    return path


def claim_run_dir(path: Path, resume: bool) -> Path:
    """Check the run folder may be used: a new run never writes into a folder that holds one."""
    if resume:
        if not (path / "checkpoints" / "last.pt").is_file():
            raise ConvserveError(f"--resume: {path} holds no checkpoints/last.pt to resume from")
        return path
    if holds_run(path):
        raise ConvserveError(f"{path} already holds a run; pick another --output-dir or pass --resume")
    if path.exists() and not path.is_dir():
        raise ConvserveError(f"--output-dir {path} exists and is not a folder")
    try:
        (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConvserveError(f"cannot create run folder {path}: {exc.strerror or exc}") from None
    return path


class RunRecorder:
    """Writes metrics.csv (rewritten from history on resume), TensorBoard scalars and summary.json."""

    def __init__(self, path: Path, history: list[EpochRow] | None = None):
        self.path = path
        self.history: list[EpochRow] = list(history or [])
        self._write_csv()
        from torch.utils.tensorboard import SummaryWriter

        start = self.history[-1].epoch + 1 if self.history else 0
        self.tb = SummaryWriter(log_dir=str(path / "tensorboard"), purge_step=start or None)

    def _write_csv(self) -> None:
        with atomic_file(self.path / "metrics.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(row.to_dict() for row in self.history)

    def log_epoch(self, row: EpochRow) -> None:
        self.history.append(row)
        self._write_csv()
        step = row.epoch
        self.tb.add_scalars("loss", {"train": row.train_loss, "val": row.val_loss}, step)
        self.tb.add_scalars("acc1", {"train": row.train_acc1, "val": row.val_acc1}, step)
        self.tb.add_scalars("acc5", {"train": row.train_acc5, "val": row.val_acc5}, step)
        self.tb.add_scalar("lr", row.lr, step)
        self.tb.flush()

    @staticmethod
    def write_summary_to(path: Path, summary: RunSummary) -> None:
        write_json_atomic(path / "summary.json", summary.to_dict())

    def close(self) -> None:
        self.tb.close()


def read_metrics(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
