"""Profile training steps: ``python training/profile_step.py [--config FILE.yaml] [train.py flags ...]``

Builds the run exactly as train.py would (same config, recipe and precision choice), trains three epochs
without writing a run folder, and prints where the time goes next to the machine's measured GEMM rate.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from convserve.common.devices import choose_device
from convserve.common.errors import run_cli
from convserve.common.host_memory import retain_freed_memory
from convserve.training.config import load_config
from convserve.training.engine.distributed import DistInfo
from convserve.training.engine.step_profile import profile_epoch
from convserve.training.engine.throughput import training_rate
from convserve.training.train import build_parser
from convserve.training.trainer import build_session, make_loaders, set_training_threads


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("config", "resume", "output_dir")}
    cfg = load_config(args.config, overrides)
    retain_freed_memory()
    info, device = DistInfo(), choose_device(cfg.run.device)
    set_training_threads(info)
    with tempfile.TemporaryDirectory() as scratch:
        s = build_session(cfg, info, device, Path(scratch))
        train_loader, _, _ = make_loaders(cfg, s.data, info, device)
        result = profile_epoch(s.train_step(), train_loader)
    size = s.data.preprocessing.input_size
    rate = training_rate(s.model_without_ddp, size, device, s.precision.precision, result["images_per_s"])
    basis = rate["matmul_fraction_basis"]
    print(
        f"{cfg.model.arch} {size}px batch {cfg.run.batch_size} {s.precision.precision}, {torch.get_num_threads()} "
        f"threads: {result['images_per_s']:.1f} img/s x {rate['train_flops_per_image'] / 1e9:.3f} GFLOP = "
        f"{rate['train_gflops_per_s']:.1f} GFLOP/s = {100 * rate['matmul_fraction']:.0f} % of the measured "
        f"{basis} matmul rate ({rate['matmul_gflops_per_s'][basis]:.0f} GFLOP/s; "
        f"read {rate['memory_read_gbs']:.1f} GB/s)"
    )
    total = sum(result["profiled_seconds"].values())
    print(f"one epoch, {result['images']} images, {result['epoch_seconds']:.2f} s; the input pipeline alone "
          f"{result['data_only_seconds']:.2f} s")  # fmt: skip
    for group, seconds in result["profiled_seconds"].items():
        print(f"  {group:<15} {seconds:7.3f} s  {100 * seconds / total:5.1f} %")
    print(f"(other: mostly {', '.join(result['largest_other'])})")
    return 0


def cli() -> None:
    """Run as a script: ``main`` behind the one-line error edge, as ``convserve <command>`` runs it."""
    run_cli(main)


if __name__ == "__main__":
    cli()
