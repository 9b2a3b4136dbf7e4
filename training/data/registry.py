"""Dataset registry: name -> loader, plus the transforms and preprocessing facts for a model."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from convserve.common.errors import ConvserveError, first_line
from convserve.common.preprocessing import Preprocessing
from convserve.models import resolve_input_size
from convserve.training.config import DataConfig
from convserve.training.data.facts import FACTS, MEASURED, DatasetFacts, describe, measure_facts
from convserve.training.data.presets import EvalPreset, TrainPreset, eval_resize_size
from convserve.training.data.resident import POLICIES, RESIDENT
from convserve.training.data.splits import RawSplits, Transformed, limit_per_class

log = logging.getLogger(__name__)


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    test: Dataset | None
    class_names: list[str]
    facts: DatasetFacts
    preprocessing: Preprocessing
    train_batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None  # on collated train batches
    name: str = ""  # the dataset's registry name
    augment: bool = True

    @property
    def resident(self) -> bool:
        """Whether training keeps this split on the device and augments whole batches there."""
        return self.name in RESIDENT and self.augment and self.facts.policy in POLICIES

    def train_raw(self) -> Dataset:
        """The training split's (uint8 image, label) pairs before any transform."""
        return self.train.base


def default_data_dir(name: str) -> Path:
    return Path("data") / name


def load_raw(cfg: DataConfig, seed: int) -> RawSplits:
    """Dispatch to the loader of ``cfg.name``; every loader reads real on-disk formats."""
    from convserve.training.data import digits, folders, torchvision_sets

    root = Path(cfg.data_dir) if cfg.data_dir else default_data_dir(cfg.name)
    if cfg.name == "digits":
        return RawSplits(*digits.load_digit_splits(seed))
    if cfg.name in ("mnist", "fashion-mnist"):
        return torchvision_sets.load_mnist(root, cfg.download, seed, fashion=cfg.name == "fashion-mnist")
    if cfg.name == "cifar10":
        return torchvision_sets.load_cifar10(root, cfg.download, seed)
    if cfg.name == "caltech101":
        return folders.load_caltech101(root, seed)
    if cfg.name == "imagefolder":
        return folders.load_imagefolder(root, seed)
    if cfg.name == "tiny-imagenet":
        return folders.load_tiny_imagenet(root, seed)
    raise ConvserveError(f"unknown dataset {cfg.name!r}")


def _limited(ds: Dataset | None, limit: int | None) -> Dataset | None:
    if ds is None or limit is None:
        return ds
    labels = [ds[i][1] for i in range(len(ds))] if not hasattr(ds, "targets") else list(ds.targets())
    return Subset(ds, limit_per_class(labels, limit))


def preprocessing_for(
    facts: DatasetFacts,
    arch: str,
    requested_size: int | None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Preprocessing:
    """The checkpoint's preprocessing from the facts; a requested size, mean or std (1 or 3 values) overrides."""
    size = resolve_input_size(arch, facts.native_size, requested_size)
    return Preprocessing(
        input_size=size,
        resize_size=eval_resize_size(facts.policy, size),
        mean=_per_channel(mean, "mean") if mean is not None else list(facts.mean),
        std=_per_channel(std, "std") if std is not None else list(facts.std),
        channels=facts.channels,
    )


def _per_channel(values: Sequence[float], what: str) -> list[float]:
    values = [float(v) for v in values]
    if len(values) not in (1, 3) or (what == "std" and min(values) <= 0):
        raise ConvserveError(f"data.{what} takes 1 or 3 values{' above 0' if what == 'std' else ''}, got {values}")
    return values * 3 if len(values) == 1 else values


def dataset_facts(cfg: DataConfig, raw: RawSplits, seed: int) -> DatasetFacts:
    """Fixed facts, or for folders of arbitrary images (MEASURED) facts measured on the training split."""
    return measure_facts(cfg.name, raw.train, seed) if cfg.name in MEASURED else FACTS[cfg.name]


def _is_main_process() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


def build_datasets(cfg: DataConfig, arch: str, seed: int) -> DataBundle:
    raw = load_raw(cfg, seed)
    if len(raw.train) == 0 or len(raw.val) == 0:
        raise ConvserveError(f"dataset {cfg.name} has an empty train or val split")
    facts = dataset_facts(cfg, raw, seed)
    if facts.measured_on and _is_main_process():
        log.info(describe(facts))
    # --mean / --std (data.mean / data.std) override the dataset's own
    pre = preprocessing_for(facts, arch, cfg.input_size, cfg.mean, cfg.std)
    train_tf, eval_tf = TrainPreset(pre, facts.policy, cfg.augment), EvalPreset(pre)
    test = _limited(raw.test, cfg.limit_per_class)
    return DataBundle(
        train=Transformed(_limited(raw.train, cfg.limit_per_class), train_tf),
        val=Transformed(_limited(raw.val, cfg.limit_per_class), eval_tf),
        test=Transformed(test, eval_tf) if test is not None else None,
        class_names=raw.class_names,
        facts=facts,
        preprocessing=pre,
        train_batch_transform=train_tf.batch_transform,
        name=cfg.name,
        augment=cfg.augment,
    )


def build_eval_split(
    cfg: DataConfig, arch: str, seed: int, split: str, pre: Preprocessing
) -> tuple[Dataset, list[str]]:
    """One split transformed with a checkpoint's own preprocessing (for evaluate / compare)."""
    raw = load_raw(cfg, seed)
    base = {"train": raw.train, "val": raw.val, "test": raw.test}[split]
    if base is None:
        raise ConvserveError(f"dataset {cfg.name} has no {split} split")
    return Transformed(_limited(base, cfg.limit_per_class), EvalPreset(pre)), raw.class_names


def data_config_for(ckpt, dataset: str | None, data_dir: Path | None) -> tuple[DataConfig, int]:
    """The checkpoint's own data settings (and seed, which fixes the split), with explicit flags winning."""
    saved = dict(ckpt.config.get("data") or {"name": ckpt.dataset})
    if dataset is not None and dataset != saved.get("name"):
        saved = {"name": dataset}
    if data_dir is not None:
        saved["data_dir"] = str(data_dir)
    saved["download"] = False
    seed = int((ckpt.config.get("run") or {}).get("seed", 0))
    try:
        return DataConfig.model_validate(saved), seed
    except ValueError as exc:
        raise ConvserveError(f"checkpoint data settings are invalid: {first_line(exc)}") from None
