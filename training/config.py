"""Training configuration: pydantic models, loaded from YAML, overridden from the CLI, dumped per run."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from convserve.common.errors import ConvserveError, first_line, validation_message
from convserve.common.files import write_text_atomic
from convserve.training.engine.precision import PRECISIONS

ARCHS = ("alexnet", "resnet18", "resnet34", "mlp")
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "caltech101", "imagefolder", "tiny-imagenet")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    name: Literal[DATASETS] = Field("digits", description="the dataset to train, validate and test on")  # type: ignore[valid-type]
    data_dir: Path | None = Field(None, description="where the dataset is (or downloads to); None: data/<dataset>")
    input_size: int | None = Field(
        None, ge=8, le=1024, description="image side in px; None: the larger of the dataset's and the model's"
    )
    mean: list[float] | None = Field(
        None, min_length=1, max_length=3, description="normalisation mean (1 or 3 values); None: the data's own"
    )
    std: list[float] | None = Field(
        None, min_length=1, max_length=3, description="normalisation std (1 or 3 values); None: the data's own"
    )
    download: bool = Field(True, description="download torchvision datasets that are missing (where there is internet)")
    augment: bool = Field(True, description="augment training images with the dataset's policy")
    limit_per_class: int | None = Field(None, ge=1, description="cap images per class (quick experiments)")

    @field_validator("std")
    @classmethod
    def _positive_std(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and min(value) <= 0:
            raise ValueError("every std must be > 0")
        return value


class ModelConfig(_Strict):
    arch: Literal[ARCHS] = Field("alexnet", description="the architecture (each has its recipe)")  # type: ignore[valid-type]
    activation: Literal["relu", "sigmoid", "tanh", "gelu"] = Field("relu", description="the hidden layers' activation")
    pretrained: bool = Field(False, description="start from torchvision ImageNet weights")
    small_input_stem: bool | None = Field(
        None, description="ResNet 3x3 stem without max-pool; None: when input <= 64 px"
    )
    dropout: float = Field(
        0.5, ge=0.0, lt=1.0, description="dropout probability (AlexNet's classifier and the MLP; ResNets have none)"
    )
    # "kaiming": He-normal conv/linear weights; torchvision's AlexNet keeps PyTorch's default init, whose
    # signal shrinks layer by layer and leaves AlexNet near chance for the first epochs on small data.
    init: Literal["default", "kaiming"] = Field(
        "default", description="weight init: PyTorch's default or He-normal (kaiming)"
    )


class OptimConfig(_Strict):
    optimizer: Literal["sgd", "adam", "adamw"] = Field("adamw", description="the optimizer")
    lr: float = Field(1e-3, gt=0.0, le=10.0, description="peak learning rate (after warmup)")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum (Nesterov when > 0)")
    weight_decay: float = Field(0.05, ge=0.0, description="weight decay (not on biases and norms)")
    schedule: Literal["cosine", "step", "constant"] = Field("cosine", description="learning-rate schedule after warmup")
    warmup_epochs: int = Field(1, ge=0, description="epochs of linear learning-rate warmup")
    step_size: int = Field(10, ge=1, description="epochs between decays of the step schedule")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="learning-rate factor at each decay of the step schedule")
    # 0.1: fp32 AlexNet digits 98.89 / 98.15 % -> 99.26 / 99.26 / 99.63 % (seeds 0-2); ResNet34 98.89 -> 99.26 %
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0, description="cross-entropy label smoothing")
    ema_decay: float = Field(
        0.0, ge=0.0, lt=1.0, description="average the weights (e.g. 0.99) for validation, best.pt and export; 0: off"
    )
    ema_every: int = Field(1, ge=1, description="optimizer steps between EMA updates")


class RunConfig(_Strict):
    epochs: int = Field(10, ge=1, le=10_000, description="training epochs")
    batch_size: int = Field(64, ge=1, le=65_536, description="images per step (per process under torchrun)")
    seed: int = Field(0, description="seeds the split, the initialisation and each epoch's shuffling")
    deterministic: bool = Field(False, description="deterministic algorithms where PyTorch has them (slower)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA where there is a GPU")
    # config.yaml of a run holds the precision it really used, never auto or amp.
    precision: Literal[PRECISIONS] = Field(  # type: ignore[valid-type]
        "auto",
        description="auto: bf16 where the device has it natively, else fp32 on CPU / fp16 on CUDA; "
        "amp: the device's low precision even where emulated",
    )
    channels_last: bool = Field(False, description="channels-last memory format for the model and the batches")
    workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes")
    output_dir: Path | None = Field(None, description="the run folder; None: runs/<timestamp>-<arch>-<dataset>")
    name: str | None = Field(None, description="run folder name under runs/ (instead of the timestamped one)")
    print_freq: int = Field(20, ge=1, description="batches between progress lines (without a terminal)")
    # last.pt carries the optimizer state (for AlexNet + AdamW several times the weights): writing it every
    # epoch costs CPU time a short run notices
    checkpoint_every: int = Field(1, ge=1, description="write last.pt every N epochs and after the last one")
    # On a small val split the best-scoring epoch is mostly noise (one image moves the score by a visible step),
    # while the cosine schedule's end is where the weights settle (docs/benchmarks: how the two compared).
    select: Literal["last", "best-val"] = Field(
        "last",
        description="the epoch best.pt holds and the test measures: the last, or the best validation acc@1",
    )

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
# with PyTorch's default init left AlexNet at chance.
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    # kaiming: PyTorch's default init shrinks AlexNet's signal layer by layer. Batch 64: its dense layers are
    # products with one row per image, which a CPU runs faster the more rows they have (README, Training).
    "alexnet": {
        "model": {"init": "kaiming"},
        "optim": {"lr": 5e-4},
        "run": {"batch_size": 64, "epochs": 12, "checkpoint_every": 6},
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


# The command line is generated from the models above (train.py's build_parser): every field is a flag named
# after it (``run.batch_size`` -> ``--batch-size``), its description the help text, so a new field is a new
# flag without a second list to keep in step. These two tables are the only exceptions.
FLAG_NAMES: dict[str, str] = {"data.name": "dataset", "model.arch": "model"}  # where the field's name says too little
NOT_FLAGS: frozenset[str] = frozenset()  # fields set in YAML only (none today)
# Flags that stand for one value of a field: --amp is --precision amp.
FLAG_SHORTCUTS: dict[str, tuple[str, Any]] = {"amp": ("run.precision", "amp")}


@dataclass(frozen=True)
class ConfigFlag:
    """One field of TrainConfig as a command-line flag."""

    dest: str  # argparse's dest and the key of CLI_OVERRIDES: "batch_size"
    path: str  # the dotted field: "run.batch_size"
    field: FieldInfo

    @property
    def option(self) -> str:
        return "--" + self.dest.replace("_", "-")


def config_flags() -> list[ConfigFlag]:
    """Every TrainConfig field that is a flag, in the models' order; one flag per field, no two alike."""
    flags: dict[str, ConfigFlag] = {}
    for section, info in TrainConfig.model_fields.items():
        for leaf, field in info.annotation.model_fields.items():
            path = f"{section}.{leaf}"
            if path in NOT_FLAGS:
                continue
            dest = FLAG_NAMES.get(path, leaf)
            if dest in flags or dest in FLAG_SHORTCUTS:
                raise TypeError(f"{path} would be --{dest}, a flag taken already: rename it in FLAG_NAMES")
            flags[dest] = ConfigFlag(dest, path, field)
    return list(flags.values())


def recipe_sets(path: str) -> bool:
    """Whether some model's recipe picks this dotted field (then its default depends on --model)."""
    section, _, leaf = path.partition(".")
    return any(leaf in recipe.get(section, {}) for recipe in RECIPES.values())


# flag dest -> dotted path in TrainConfig (build_config's overrides, sweep grid keys)
CLI_OVERRIDES: dict[str, str] = {flag.dest: flag.path for flag in config_flags()}


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConvserveError(f"invalid config: {key} must be a mapping")
    node[leaf] = value


def preset_folder() -> Path:
    """The presets shipped with convserve (package data: a checkout's training/configs, or the installed copy)."""
    return Path(str(resources.files("convserve.training") / "configs"))


def presets() -> list[str]:
    folder = preset_folder()
    return sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml"))


def find_config(path: Path | str) -> Path:
    """``path`` itself when it is a file; else the shipped preset it names (``demo``, ``sweeps/activations``, or the
    checkout path ``training/configs/demo.yaml`` from any folder), so an installed convserve finds its presets."""
    given = Path(path)
    if given.is_file():
        return given
    name = given.as_posix().removeprefix("training/configs/").removesuffix(".yaml")
    if name in presets():
        return preset_folder() / f"{name}.yaml"
    raise ConvserveError(
        f"cannot read config {path}: no such file, and no preset of that name ({', '.join(presets())})"
    )


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
        raise ConvserveError("invalid config: " + validation_message(exc, "config")) from None


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    return build_config(read_yaml(find_config(path)) if path else {}, overrides)


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain JSON/YAML-safe dict (paths as strings) — what checkpoints and config.yaml store."""
    return cfg.model_dump(mode="json")


def dump_config(cfg: TrainConfig, path: Path) -> None:
    write_text_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
