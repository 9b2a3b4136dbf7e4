"""The one ``convserve`` command: ``convserve <command> [args...]`` runs that room's CLI with the same arguments
as ``python training/train.py ...`` and friends."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    module: str  # holds ``main(argv) -> int``
    summary: str


COMMANDS: dict[str, Command] = {
    "train": Command("convserve.training.train", "train a classifier (torchrun-ready)"),
    "evaluate": Command("convserve.training.evaluate", "evaluate a checkpoint on a split"),
    "compare": Command("convserve.training.compare", "compare two checkpoints on the same images"),
    "filters": Command("convserve.training.filters", "pictures of what a CNN learned"),
    "sweep": Command("convserve.training.sweep", "run a grid of training runs"),
    "report": Command("convserve.training.report", "one HTML report of runs"),
    "profile-step": Command("convserve.training.profile_step", "where a training step's time goes"),
    "export onnx": Command("convserve.export.to_onnx", "export a checkpoint or torchvision model to ONNX"),
    "export torchscript": Command("convserve.export.to_torchscript", "export a checkpoint to TorchScript"),
    "archive": Command("convserve.serving.archive", "package an artifact folder as a TorchServe .mar"),
    "serve": Command("convserve.serving.serve", "start TorchServe on a model store"),
    "serve-v2": Command("convserve.serving.serve_v2", "serve an artifact through the Open Inference Protocol"),
    "predict": Command("convserve.serving.predict", "top-k classes for images (checkpoint, artifact or URL)"),
    "loadtest": Command("convserve.loadtest.loadtest", "load-test a prediction URL (closed or open loop)"),
    "soak": Command("convserve.loadtest.soak", "soak a running server, or break it under load"),
    "benchmark": Command("convserve.benchmarking.benchmark", "every backend and server side by side"),
    "compare-servers": Command("convserve.benchmarking.compare_servers", "TorchServe and the v2 server side by side"),
    "choose-batching": Command("convserve.benchmarking.choose_batching", "measure TorchServe batching settings"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: convserve <command> [args...]   (convserve <command> --help for its arguments)", "", "commands:"]
    lines += [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    return "\n".join(lines)


def resolve(argv: list[str]) -> tuple[str, list[str]]:
    """The command an argument list names (one word, or two for ``export onnx``) and the arguments left."""
    for words in (2, 1):
        name = " ".join(argv[:words])
        if len(argv) >= words and name in COMMANDS:
            return name, argv[words:]
    if argv and argv[0] == "export":
        formats = ", ".join(n.split()[1] for n in COMMANDS if n.startswith("export "))
        raise LookupError(f"convserve export needs a format: {formats}")
    raise LookupError(f"unknown command {argv[0]!r}; `convserve --help` lists them")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    try:
        name, rest = resolve(argv)
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from convserve.common.errors import run_cli

    sys.argv[0] = f"convserve {name}"  # argparse's prog: usage and errors name the command as typed
    run_cli(importlib.import_module(COMMANDS[name].module).main, rest)
    return 0


def cli() -> None:
    sys.exit(main())
