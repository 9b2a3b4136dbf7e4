"""A run's checkpoint policy: which epoch's weights it keeps, when last.pt and best.pt are written, resume.

``run.select``: ``last`` keeps the final epoch, ``best-val`` the one ``is_better`` prefers. Every
``checkpoint_every`` epochs and after the last one, last.pt gets everything --resume needs and best.pt the chosen
epoch. Between saves a better epoch lives in memory only: a killed run loses it with the epochs after last.pt, and
the resumed run replays them and finds it again.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from convserve.common.errors import ConvserveError
from convserve.common.versions import library_versions
from convserve.models.checkpoint import Checkpoint, link_checkpoint, load_checkpoint, save_checkpoint
from convserve.training.config import config_to_dict
from convserve.training.engine.evaluation import EvalResult
from convserve.training.results import ChosenEpoch, EpochRow
from convserve.training.session import Session

Weights = dict[str, torch.Tensor]


def is_better(val: EvalResult, best: ChosenEpoch) -> bool:
    """Higher val acc@1; on a tie, lower val loss (``select: best-val``).

    On a small val split many epochs tie on accuracy, one image being a large step, while the loss keeps
    improving as training settles: the first of the tied epochs is mostly an earlier and worse one.
    """
    if val.acc1 != best.val_acc1:
        return val.acc1 > best.val_acc1
    return val.loss < (best.val_loss if best.val_loss is not None else float("inf"))


class CheckpointKeeper:
    """Owns the choice of epoch, the writes of checkpoints/last.pt and best.pt, and resuming from last.pt."""

    def __init__(self, session: Session) -> None:
        self.s = session
        self.folder: Path = session.run_dir / "checkpoints"
        self.select = session.cfg.run.select
        self.every = session.cfg.run.checkpoint_every
        self.epochs = session.cfg.run.epochs
        self.start_epoch = 0
        self.chosen = ChosenEpoch()
        self._chosen_weights: Weights | None = None  # best-val: a copy taken when the epoch was chosen
        self._on_disk = self.chosen.epoch  # the epoch best.pt holds

    def restore(self) -> list[EpochRow]:
        """Continue from last.pt (weights, optimizer, schedule, RNG, the choice so far); returns the metrics so far."""
        s = self.s
        ckpt = load_checkpoint(self.folder / "last.pt", expected_arch=s.cfg.model.arch, with_train_state=True)
        if ckpt.class_names != s.data.class_names:
            raise ConvserveError("--resume: the dataset's classes differ from the checkpoint's")
        state = ckpt.train_state or {}
        if s.ema is not None:
            if not state.get("ema"):
                raise ConvserveError("--resume: the run's config asks for an EMA but its last.pt holds none")
            s.model_without_ddp.load_state_dict(state["ema"]["raw_model_state"])
            s.ema.load(ckpt.model_state, int(state["ema"]["steps"]))
        else:
            s.model_without_ddp.load_state_dict(ckpt.model_state)
        s.optimizer.load_state_dict(state["optimizer"])
        s.scheduler.load_state_dict(state["scheduler"])
        if s.scaler is not None and state.get("scaler"):
            s.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        self.start_epoch = ckpt.epoch + 1
        self.chosen = ChosenEpoch.from_dict(state["best"])
        self._on_disk = self.chosen.epoch  # written beside last.pt
        return [EpochRow.from_dict(row) for row in state["history"]]

    def step(self, row: EpochRow, val: EvalResult, history: list[EpochRow] | None) -> None:
        """After an epoch's validation: choose it or not, then write the checkpoints that are due.

        Every rank chooses (each tests the chosen weights at the end); the main rank alone passes ``history``
        (the metrics so far, this epoch's included) and writes.
        """
        if self.select == "last" or is_better(val, self.chosen):
            self.chosen = ChosenEpoch.of(row.epoch, val)
            if self.select == "best-val":  # "last": the weights in memory at the end are the chosen ones
                self._chosen_weights = {k: v.detach().to("cpu", copy=True) for k, v in self._weights().items()}
        done = row.epoch + 1
        if history is not None and (done % self.every == 0 or done == self.epochs):
            self._save(row, history)

    def chosen_weights(self) -> Weights:
        """The chosen epoch's weights, from memory, or from best.pt when this run trained no epoch better."""
        if self.select == "last" and self.start_epoch < self.epochs:
            return self._weights()
        if self._chosen_weights is not None:
            return self._chosen_weights
        if self.s.info.enabled:
            torch.distributed.barrier()
        return load_checkpoint(self.folder / "best.pt", expected_arch=self.s.cfg.model.arch).model_state

    def _weights(self) -> Weights:
        return self.s.eval_model.state_dict()

    def _save(self, row: EpochRow, history: list[EpochRow]) -> None:
        last, best = self.folder / "last.pt", self.folder / "best.pt"
        save_checkpoint(self._checkpoint(row, self._train_state(history)), last)
        if self.chosen.epoch == row.epoch:  # the same bytes: a hard link instead of writing them twice
            link_checkpoint(last, best)
        elif self.chosen.epoch != self._on_disk and self._chosen_weights is not None:
            chosen_row = next(r for r in history if r.epoch == self.chosen.epoch)
            save_checkpoint(self._checkpoint(chosen_row, None, self._chosen_weights), best)
        self._on_disk = self.chosen.epoch

    def _checkpoint(
        self, row: EpochRow, train_state: dict[str, Any] | None, weights: Weights | None = None
    ) -> Checkpoint:
        """``weights``: a remembered epoch's, stored instead of the current ones."""
        s = self.s
        if weights is None:
            weights = {k: v.detach().cpu() for k, v in self._weights().items()}
        return Checkpoint(
            arch=s.cfg.model.arch,
            num_classes=len(s.data.class_names),
            class_names=s.data.class_names,
            preprocessing=s.data.preprocessing,
            activation=s.cfg.model.activation,
            model_options=s.model_options,
            model_state=weights,
            config=config_to_dict(s.cfg),
            metrics=row.to_dict(),
            epoch=row.epoch,
            dataset=s.cfg.data.name,
            versions=library_versions(),
            train_state=train_state,
        )

    def _train_state(self, history: list[EpochRow]) -> dict[str, Any]:
        s, ema = self.s, None
        if s.ema is not None:  # model_state holds the average; the raw weights training continues from live here
            raw = {k: v.detach().cpu() for k, v in s.model_without_ddp.state_dict().items()}
            ema = {"raw_model_state": raw, "steps": s.ema.steps}
        return {
            "ema": ema,
            "optimizer": s.optimizer.state_dict(),
            "scheduler": s.scheduler.state_dict(),
            "scaler": s.scaler.state_dict() if s.scaler else None,
            "best": self.chosen.to_dict(),
            "history": [r.to_dict() for r in history],
            "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])},
        }
