"""The checkpoint contract: plain tensors and primitives, written atomically, read with weights_only=True.

This is the one checkpoint loader of the project; export and serving call it too.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from convserve.common.errors import ConvserveError, first_line, validation_message
from convserve.common.files import atomic_file, atomic_path
from convserve.common.preprocessing import Preprocessing
from convserve.common.versions import library_versions

CHECKPOINT_FORMAT = "convserve.checkpoint/v1"


@dataclass
class Checkpoint:
    arch: str
    num_classes: int
    class_names: list[str]
    preprocessing: Preprocessing
    activation: str
    model_options: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    dataset: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    train_state: dict[str, Any] | None = None
    path: Path | None = None

    def to_payload(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "dataset": self.dataset,
            "input_size": self.preprocessing.input_size,
            "preprocessing": self.preprocessing.to_dict(),
            "mean": list(self.preprocessing.mean),
            "std": list(self.preprocessing.std),
            "activation": self.activation,
            "model_options": dict(self.model_options),
            "config": self.config,
            "metrics": self.metrics,
            "epoch": self.epoch,
            "versions": {k: str(v) for k, v in (self.versions or library_versions()).items()},
            "model_state": self.model_state,
            "train_state": self.train_state,
        }


def save_checkpoint(ckpt: Checkpoint, path: Path, durable: bool = False) -> None:
    """Write atomically: a temp file in the same folder, then rename over the target.

    A killed process never leaves a partial file behind the name; ``durable`` adds an fsync for power loss
    (slow for AlexNet-sized files, so per-epoch saves skip it).
    """
    path = Path(path)
    try:
        with atomic_file(path, "wb", durable=durable) as fh:
            torch.save(ckpt.to_payload(), fh)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError from its zip writer
        free = shutil.disk_usage(path.parent).free / 2**20
        raise ConvserveError(
            f"cannot write checkpoint {path} ({free:.0f} MB free there): {first_line(exc)}; "
            "the previous file under that name is intact"
        ) from None


def link_checkpoint(source: Path, target: Path) -> None:
    """Make ``target`` name the same file as ``source``, atomically (link to a temp name, then rename)."""
    with atomic_path(target, durable=False) as tmp:
        tmp.unlink()  # a fresh unique name, free for the link
        try:
            os.link(source, tmp)
        except OSError:  # filesystems without hard links
            shutil.copyfile(source, tmp)


_REQUIRED = ("arch", "num_classes", "class_names", "preprocessing", "activation", "model_state")


def _read_payload(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConvserveError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise ConvserveError(f"{path} is not a PyTorch checkpoint (not a torch.save zip archive)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f"it references {found.group(1)}" if found else "it is not plain tensors and primitives"
        raise ConvserveError(f"{path} holds pickled Python objects and was refused, never unpickled ({what})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ConvserveError(f"{path} is not a readable checkpoint: {first_line(exc)}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ConvserveError(f"{path} is not a convserve checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise ConvserveError(f"checkpoint {path} lacks {', '.join(missing)}")
    return payload


def _preprocessing(path: Path, facts: Any) -> Preprocessing:
    try:
        return Preprocessing.model_validate(facts)
    except ValidationError as exc:
        raise ConvserveError(f"checkpoint {path} has invalid preprocessing facts: {validation_message(exc)}") from None


def load_checkpoint(path: Path | str, expected_arch: str | None = None, with_train_state: bool = False) -> Checkpoint:
    """Load and validate a convserve checkpoint; refuse pickles, foreign files and other architectures."""
    path = Path(path)
    payload = _read_payload(path)
    if expected_arch is not None and payload["arch"] != expected_arch:
        raise ConvserveError(f"checkpoint {path} is a {payload['arch']} model, not {expected_arch}")
    names = payload["class_names"]
    if len(names) != payload["num_classes"]:
        raise ConvserveError(f"checkpoint {path} has {len(names)} class names for {payload['num_classes']} classes")
    return Checkpoint(
        arch=payload["arch"],
        num_classes=int(payload["num_classes"]),
        class_names=list(names),
        preprocessing=_preprocessing(path, payload["preprocessing"]),
        activation=payload["activation"],
        model_options=dict(payload.get("model_options") or {}),
        model_state=payload["model_state"],
        config=payload.get("config") or {},
        metrics=payload.get("metrics") or {},
        epoch=int(payload.get("epoch", 0)),
        dataset=payload.get("dataset", ""),
        versions=payload.get("versions") or {},
        train_state=payload.get("train_state") if with_train_state else None,
        path=path,
    )
