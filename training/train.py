"""Train a classifier: ``python training/train.py [--config FILE.yaml] [--model ...] [--dataset ...] ...``

Works unchanged under ``torchrun --nproc_per_node N training/train.py ...`` (DistributedDataParallel).
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Mapping
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from convserve.common.errors import CliParser, run_cli
from convserve.training.config import FLAG_SHORTCUTS, TrainConfig, config_flags, load_config, recipe_sets


class ConfigHelpFormatter(argparse.HelpFormatter):
    """Shows each config flag's model default (argparse's own default stays None: "not given, YAML decides")."""

    def __init__(self, prog: str, shown: Mapping[str, str]) -> None:
        super().__init__(prog)
        self._shown = shown

    def _get_help_string(self, action: argparse.Action) -> str | None:
        shown = self._shown.get(action.option_strings[0]) if action.option_strings else None
        return action.help if shown is None else f"{action.help} (default: {shown})"


def value_type(annotation: Any) -> tuple[Any, bool]:
    """A field's annotation without ``| None``, and whether it is a list (``list[float]`` -> float, True)."""
    if get_origin(annotation) in (Union, types.UnionType):
        (annotation,) = [arg for arg in get_args(annotation) if arg is not type(None)]
    if get_origin(annotation) is list:
        return get_args(annotation)[0], True
    return annotation, False


def flag_arguments(dest: str, annotation: Any, description: str) -> dict[str, Any]:
    """argparse keywords for one config field: type, choices (a Literal's or an enum's values) and nargs."""
    kind, many = value_type(annotation)
    # default None: only flags the user gives override the YAML file and the model's recipe
    kwargs: dict[str, Any] = {"dest": dest, "default": None, "help": description.replace("%", "%%")}
    if kind is bool:
        return {**kwargs, "action": argparse.BooleanOptionalAction}
    if get_origin(kind) is Literal:
        kwargs["choices"] = list(get_args(kind))
    elif isinstance(kind, type) and issubclass(kind, Enum):
        kwargs["choices"] = [member.value for member in kind]
    if "choices" in kwargs:
        kind = type(kwargs["choices"][0])
    return {**kwargs, "type": kind, **({"nargs": "+"} if many else {})}


def shown_default(path: str, default: Any) -> str:
    """The default --help shows: where a recipe picks the field, the value depends on --model."""
    text = str(default).replace("%", "%%")
    return f"model's recipe, else {text}" if recipe_sets(path) else text


def build_parser() -> argparse.ArgumentParser:
    """train.py's flags, one per TrainConfig field (training/config.py: config_flags), grouped by section."""
    shown: dict[str, str] = {}
    p = CliParser(description=__doc__.splitlines()[0], formatter_class=partial(ConfigHelpFormatter, shown=shown))
    p.add_argument("--config", type=Path, help="YAML config; flags given here override it")
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir from checkpoints/last.pt")
    groups = {section: p.add_argument_group(f"{section} (YAML {section}:)") for section in TrainConfig.model_fields}
    options = {}
    for flag in config_flags():
        description = flag.field.description
        if not description:
            raise TypeError(f"{flag.path} has no Field(description=...) for its --help")
        section = flag.path.partition(".")[0]
        groups[section].add_argument(flag.option, **flag_arguments(flag.dest, flag.field.annotation, description))
        shown[flag.option] = shown_default(flag.path, flag.field.default)
        options[flag.path] = flag
    for name, (path, value) in FLAG_SHORTCUTS.items():
        target = options[path]
        group = groups[path.partition(".")[0]]
        group.add_argument(f"--{name}", dest=target.dest, action="store_const", const=value,
                           help=f"short for {target.option} {value}")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # imported here: --help and a bad flag answer without the seconds torchvision and the data pipeline take
    from convserve.training.trainer import load_resume_config, run_training

    overrides = {k: v for k, v in vars(args).items() if k not in ("config", "resume")}
    if args.resume and args.output_dir is not None and args.config is None:
        cfg = load_resume_config(args.output_dir, overrides)
    else:
        cfg = load_config(args.config, overrides)
    run_training(cfg, resume=args.resume)
    return 0


def cli() -> None:
    """Run as a script: ``main`` behind the one-line error edge, as ``convserve <command>`` runs it."""
    run_cli(main)


if __name__ == "__main__":
    cli()
