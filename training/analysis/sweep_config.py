"""Sweep configs: a ``base`` TrainConfig tree and a ``grid`` of keys → values; their points, validated up front.

```yaml
name: activations            # optional; default: the file's stem (also the default output folder name)
description: ReLU vs sigmoid vs tanh on digits
base: {model: {arch: alexnet}, run: {epochs: 4}}
grid:
  model.activation: [relu, sigmoid, tanh]   # a dotted TrainConfig path ...
  lr: [0.01, 0.001]                          # ... or a train.py flag name (epochs, batch_size, optimizer, ...)
```
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from convserve.common.errors import ConvserveError
from convserve.training.config import CLI_OVERRIDES, TrainConfig, build_config, find_config, read_yaml

SET_BY_SWEEP = ("run.output_dir", "run.name")
# Point names use the key's last part, except where that part says nothing alone ("name").
NAME_LABELS = {"data.name": "dataset"}


def resolve_key(key: str) -> str:
    """A grid key as a dotted TrainConfig path; flag names (``batch_size`` or ``batch-size``) are translated."""
    flag = key.replace("-", "_")
    if flag in CLI_OVERRIDES:
        return CLI_OVERRIDES[flag]
    section, _, leaf = key.partition(".")
    fields = TrainConfig.model_fields
    if section in fields and leaf in fields[section].annotation.model_fields:
        return key
    raise ValueError(f"unknown grid key {key!r} (use a dotted path such as optim.lr or a flag such as lr)")


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    base: dict[str, Any] = {}
    grid: dict[str, list[Any]] = Field(min_length=1)

    @field_validator("grid")
    @classmethod
    def _known_keys(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        dotted = {}
        for key, values in grid.items():
            path = resolve_key(key)
            if path in SET_BY_SWEEP:
                raise ValueError(f"{key!r} is set by the sweep (each point gets its own run folder)")
            if not values:
                raise ValueError(f"{key!r} has no values")
            if path in dotted:
                raise ValueError(f"{key!r} and another key both set {path}")
            dotted[path] = values
        return dotted


@dataclass
class SweepPoint:
    name: str  # the point's folder name, e.g. "arch-mlp_epochs-2"
    params: dict[str, Any]  # dotted key -> value
    tree: dict[str, Any]  # base + params: what the point's YAML holds


@dataclass
class Sweep:
    name: str
    description: str
    source: Path
    keys: list[str]
    points: list[SweepPoint]


def _value_text(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9.+]+", "-", text).strip("-") or "none"


def _point_name(params: dict[str, Any]) -> str:
    leaves = [NAME_LABELS.get(key, key.rsplit(".", 1)[-1]) for key in params]
    labels = [key if leaves.count(leaf) > 1 else leaf for key, leaf in zip(params, leaves, strict=True)]
    return "_".join(f"{label}-{_value_text(v)}" for label, v in zip(labels, params.values(), strict=True))


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    section, leaf = dotted.split(".")
    node = tree.setdefault(section, {})
    if not isinstance(node, dict):
        raise ConvserveError(f"invalid sweep base: {section} must be a mapping")
    node[leaf] = value


def _one_line(exc: ValidationError, source: Path) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return f"invalid sweep config {source}: " + "; ".join(parts)


def expand_points(cfg: SweepConfig, source: Path) -> list[SweepPoint]:
    """Every combination of the grid, each validated as a TrainConfig now, before anything runs."""
    for key in SET_BY_SWEEP:
        section, leaf = key.split(".")
        if leaf in (cfg.base.get(section) or {}):
            raise ConvserveError(f"invalid sweep config {source}: base.{key} is set by the sweep; remove it")
    points = []
    for values in itertools.product(*cfg.grid.values()):
        params = dict(zip(cfg.grid, values, strict=True))
        tree = copy.deepcopy(cfg.base)
        for key, value in params.items():
            _set(tree, key, value)
        name = _point_name(params)
        try:
            build_config(tree)
        except ConvserveError as exc:
            raise ConvserveError(f"sweep config {source}, point {name}: {exc}") from None
        points.append(SweepPoint(name, params, tree))
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise ConvserveError(f"invalid sweep config {source}: grid values give repeated point names {names}")
    return points


def load_sweep(path: Path) -> Sweep:
    path = find_config(path)
    try:
        cfg = SweepConfig.model_validate(read_yaml(path))
    except ValidationError as exc:
        raise ConvserveError(_one_line(exc, path)) from None
    return Sweep(cfg.name or path.stem, cfg.description, path, list(cfg.grid), expand_points(cfg, path))
