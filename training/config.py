"""Training configuration: pydantic models, loaded from YAML, overridden from the CLI, dumped per run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from common.errors import ConvserveError, first_line
from common.files import write_text_atomic
from training.engine.precision import PRECISIONS

ARCHS = ("alexnet", "resnet18", "resnet34", "mlp")
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "caltech101", "imagefolder", "tiny-imagenet")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    name: Literal[DATASETS] = "digits"  # type: ignore[valid-type]
    data_dir: Path | None = None
    input_size: int | None = Field(None, ge=8, le=1024, description="None: the larger of the dataset's and the model's")
    # None: the dataset's own (measured on a sample of a folder's training images); 1 value or 1 per channel
    mean: list[float] | None = Field(None, min_length=1, max_length=3)
    std: list[float] | None = Field(None, min_length=1, max_length=3)
    download: bool = True
    augment: bool = True
    limit_per_class: int | None = Field(None, ge=1, description="cap images per class (quick experiments)")

    @field_validator("std")
    @classmethod
    def _positive_std(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and min(value) <= 0:
            raise ValueError("every std must be > 0")
        return value


class ModelConfig(_Strict):
    arch: Literal[ARCHS] = "alexnet"  # type: ignore[valid-type]
    activation: Literal["relu", "sigmoid", "tanh", "gelu"] = "relu"
    pretrained: bool = False
    small_input_stem: bool | None = Field(
        None, description="ResNet 3x3 stem without max-pool; None: when input <= 64 px"
    )
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    # "kaiming": He-normal conv/linear weights; torchvision's AlexNet keeps PyTorch's default init, whose
    # signal shrinks layer by layer and leaves AlexNet near chance for the first epochs on small data.
    init: Literal["default", "kaiming"] = "default"  # each model's recipe (RECIPES) picks its own


class OptimConfig(_Strict):
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0.0, le=10.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.05, ge=0.0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: int = Field(1, ge=0)
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    # 0.1: fp32 AlexNet digits 98.89 / 98.15 % -> 99.26 / 99.26 / 99.63 % (seeds 0-2); ResNet34 98.89 -> 99.26 %
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    # 0 = off; else validation, best.pt and export use an exponential moving average of the weights
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)
    ema_every: int = Field(1, ge=1, description="optimizer steps between EMA updates")


class RunConfig(_Strict):
    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    seed: int = 0
    deterministic: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 where the device computes it natively, else fp32 (CPU) or fp16 + loss scaling (CUDA);
    # amp: the device's low precision even where emulated. config.yaml of a run holds what it really used.
    precision: Literal[PRECISIONS] = "auto"  # type: ignore[valid-type]
    channels_last: bool = False
    workers: int = Field(0, ge=0, le=64)
    output_dir: Path | None = Field(None, description="the run folder; None: runs/<timestamp>-<arch>-<dataset>")
    name: str | None = None
    print_freq: int = Field(20, ge=1)
    # last.pt carries the optimizer state (AlexNet + AdamW: 684 MB, ~1 s of CPU to write on this machine)
    checkpoint_every: int = Field(1, ge=1, description="write last.pt every N epochs and after the last one")

    @model_validator(mode="before")
    @classmethod
    def _legacy_amp(cls, data: Any) -> Any:
        """``amp: true|false|on|off|auto`` (older configs and run folders) means a precision choice."""
        if not isinstance(data, dict) or "amp" not in data:
            return data
        data = dict(data)
        amp = data.pop("amp")
        meaning = {True: "amp", "on": "amp", False: "fp32", "off": "fp32", "auto": "auto"}
        if not isinstance(amp, bool | str) or amp not in meaning:
            raise ValueError(f"amp must be auto, on or off (got {amp!r})")
        if "precision" in data and data["precision"] != meaning[amp]:
            raise ValueError("give run.precision or the older run.amp, not both")
        data["precision"] = meaning[amp]
        return data

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or "/" in value or value.startswith(".")):
            raise ValueError("must be a plain folder name")
        return value


class TrainConfig(_Strict):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    run: RunConfig = RunConfig()


# What each model trains with where neither the YAML file nor a flag says otherwise; fields not named here take
# the defaults above. Each recipe is measured to converge on the default dataset (README, Training): SGD at 0.01
# with PyTorch's default init left AlexNet at chance (13 % test top-1 after 12 epochs on digits).
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    # kaiming: PyTorch's default init shrinks AlexNet's signal layer by layer; last.pt holds 684 MB: every 5th
    "alexnet": {
        "model": {"init": "kaiming"},
        "optim": {"lr": 3e-4},
        "run": {"batch_size": 32, "checkpoint_every": 5},
    },
    "resnet18": {},
    "resnet34": {},
    "mlp": {"model": {"dropout": 0.2}, "run": {"epochs": 30}},
}


def with_recipe(tree: dict[str, Any]) -> dict[str, Any]:
    """``tree`` over its model's recipe: what the user wrote wins, field by field."""
    model = tree.get("model")
    arch = model.get("arch", ModelConfig().arch) if isinstance(model, dict) else ModelConfig().arch
    merged = dict(tree)
    for section, fields in RECIPES.get(arch, {}).items():
        given = tree.get(section, {})
        if isinstance(given, dict):
            merged[section] = {**fields, **given}
    return merged


# CLI flag -> dotted path in TrainConfig; the parser in train.py is built from this table.
CLI_OVERRIDES: dict[str, str] = {
    "model": "model.arch",
    "activation": "model.activation",
    "pretrained": "model.pretrained",
    "dataset": "data.name",
    "data_dir": "data.data_dir",
    "input_size": "data.input_size",
    "mean": "data.mean",
    "std": "data.std",
    "epochs": "run.epochs",
    "batch_size": "run.batch_size",
    "lr": "optim.lr",
    "optimizer": "optim.optimizer",
    "weight_decay": "optim.weight_decay",
    "schedule": "optim.schedule",
    "label_smoothing": "optim.label_smoothing",
    "ema_decay": "optim.ema_decay",
    "seed": "run.seed",
    "deterministic": "run.deterministic",
    "device": "run.device",
    "precision": "run.precision",
    "channels_last": "run.channels_last",
    "checkpoint_every": "run.checkpoint_every",
    "workers": "run.workers",
    "output_dir": "run.output_dir",
    "name": "run.name",
}


def format_validation_error(exc: ValidationError) -> str:
    """One line naming every bad field, e.g. ``optim.lr: Input should be greater than 0 (got -1.0)``."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        parts.append(f"{where}: {err['msg']}{shown}")
    return "invalid config: " + "; ".join(parts)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConvserveError(f"invalid config: {key} must be a mapping")
    node[leaf] = value


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping with safe_load; a clear error for a missing or malformed file."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConvserveError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConvserveError(f"config {path} is not valid YAML: {first_line(exc)}") from exc
    if not isinstance(tree, dict):
        raise ConvserveError(f"config {path} must hold a mapping at the top level")
    return tree


def build_config(base: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Validate ``base`` (a YAML tree) with CLI ``overrides`` (flag name -> value, None = not given)."""
    tree = dict(base or {})
    for flag, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(tree, CLI_OVERRIDES[flag], value)
    try:
        return TrainConfig.model_validate(with_recipe(tree))
    except ValidationError as exc:
        raise ConvserveError(format_validation_error(exc)) from None


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    return build_config(read_yaml(path) if path else {}, overrides)


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain JSON/YAML-safe dict (paths as strings) — what checkpoints and config.yaml store."""
    return cfg.model_dump(mode="json")


def dump_config(cfg: TrainConfig, path: Path) -> None:
    write_text_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
