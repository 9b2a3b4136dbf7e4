"""Train a classifier: ``python training/train.py [--config FILE.yaml] [--model ...] [--dataset ...] ...``

Works unchanged under ``torchrun --nproc_per_node N training/train.py ...`` (DistributedDataParallel).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.errors import CliParser, run_cli
from training.config import ARCHS, DATASETS, load_config
from training.engine.precision import PRECISIONS
from training.trainer import load_resume_config, run_training


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", type=Path, help="YAML config; flags given here override it")
    p.add_argument("--model", choices=ARCHS)
    p.add_argument("--activation", choices=["relu", "sigmoid", "tanh", "gelu"])
    p.add_argument("--pretrained", action="store_true", default=None, help="start from torchvision ImageNet weights")
    p.add_argument("--dataset", choices=DATASETS)
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--input-size", type=int)
    p.add_argument("--mean", type=float, nargs="+", help="normalisation mean (1 or 3 values; default: the data's)")
    p.add_argument("--std", type=float, nargs="+", help="normalisation std (1 or 3 values; default: the data's)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", choices=["cosine", "step", "constant"])
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--ema-decay", type=float, help="average the weights (e.g. 0.99); 0: off")
    p.add_argument("--seed", type=int)
    p.add_argument("--deterministic", action="store_true", default=None)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="auto (default): bf16 where the device has it natively, else fp32 on CPU / fp16 on CUDA",
    )
    p.add_argument(
        "--amp",
        dest="precision",
        action="store_const",
        const="amp",
        help="autocast even where emulated: bf16 on CPU, bf16 or fp16 on CUDA (= --precision amp)",
    )
    p.add_argument("--channels-last", action="store_true", default=None)
    p.add_argument("--workers", type=int)
    p.add_argument("--checkpoint-every", type=int, help="write last.pt every N epochs (and after the last one)")
    p.add_argument("--output-dir", type=Path, help="the run folder (default runs/<timestamp>-<model>-<dataset>)")
    p.add_argument("--name", help="run folder name under runs/")
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir from checkpoints/last.pt")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("config", "resume")}
    if args.resume and args.output_dir is not None and args.config is None:
        cfg = load_resume_config(args.output_dir, overrides)
    else:
        cfg = load_config(args.config, overrides)
    run_training(cfg, resume=args.resume)
    return 0


if __name__ == "__main__":
    run_cli(main)
