"""Evaluate a checkpoint: ``python training/evaluate.py CKPT [--dataset ...] [--split test|val] [--json]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from torch.utils.data import DataLoader

from convserve.common.devices import choose_device
from convserve.common.errors import CliParser, ConvserveError, run_cli
from convserve.common.logs import configure_cli_logging
from convserve.models import model_from_checkpoint
from convserve.models.checkpoint import load_checkpoint
from convserve.training.config import DATASETS
from convserve.training.data.registry import build_eval_split, data_config_for
from convserve.training.engine.evaluation import evaluate


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--dataset", choices=DATASETS, help="default: the checkpoint's dataset")
    p.add_argument("--data-dir", type=Path, help="default: the checkpoint's data folder")
    p.add_argument("--split", choices=["test", "val", "train"], default="test")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--print-freq", type=int, default=10)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--json", action="store_true", help="print machine-readable results only")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.json:
        configure_cli_logging(stdout_is_data=True)
    ckpt = load_checkpoint(args.checkpoint)
    data_cfg, seed = data_config_for(ckpt, args.dataset, args.data_dir)
    dataset, class_names = build_eval_split(data_cfg, ckpt.arch, seed, args.split, ckpt.preprocessing)
    if len(class_names) != ckpt.num_classes:
        raise ConvserveError(f"{data_cfg.name} has {len(class_names)} classes, the checkpoint {ckpt.num_classes}")
    device = choose_device(args.device)
    model = model_from_checkpoint(ckpt).to(device)
    loader = DataLoader(dataset, batch_size=args.batch_size)
    result = evaluate(model, loader, device, ckpt.class_names, print_freq=args.print_freq, show_progress=not args.json)
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "split": args.split, **result.to_dict()}, indent=2))
        return 0
    print(f" *   Acc@1 {result.acc1:.3f} Acc@5 {result.acc5:.3f}")
    print(f"per-class accuracy ({args.split}, {result.count} images):")
    for name, acc in result.per_class_acc.items():
        print(f"  {name:>20s}  {'n/a' if acc is None else f'{100 * acc:6.2f}%'}")
    return 0


def cli() -> None:
    """Run as a script: ``main`` behind the one-line error edge, as ``convserve <command>`` runs it."""
    run_cli(main)


if __name__ == "__main__":
    cli()
