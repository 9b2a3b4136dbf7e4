"""Where a training epoch's time goes: the real session's loop under torch.profiler, grouped by kind of work.

The groups answer "why is the training rate only X % of the machine's GEMM rate": dense products (mm/addmm,
the part the GEMM rate measures), convolutions, the optimizer (memory-bound: weights, gradients and moments
streamed once per step), the input pipeline (decode, resize, augmentation, collation), and the rest.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import DataLoader

from convserve.training.engine.train_loop import EpochStats, TrainStep, train_one_epoch

GROUPS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear"),
    "convolution": ("convolution",),
    "optimizer": ("adam", "sgd"),
    "dtype casts": ("aten::copy_", "aten::_to_copy"),  # autocast's low-precision weight copies, every step
    "dropout": ("bernoulli", "dropout"),
    "pooling": ("pool",),
    "input pipeline": (
        "dataloader",
        "grid_sampler",
        "affine_grid",
        "upsample",
        "resize",
        "normalize",
        "collate",
        "stack",
    ),
}


def group_of(op_name: str) -> str:
    lowered = op_name.lower()
    for group, needles in GROUPS.items():
        if any(needle in lowered for needle in needles):
            return group
    return "other"


def profile_epoch(step: TrainStep, train_loader: DataLoader, epoch: int = 1) -> dict[str, Any]:
    """Run one warm-up epoch, one timed epoch, one data-only pass and one profiled epoch; seconds per group."""

    def one(e: int) -> EpochStats:
        return train_one_epoch(step, train_loader, e, print_freq=10**9)

    one(0)
    start = time.perf_counter()
    stats = one(epoch)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    for _ in train_loader:
        pass
    data_seconds = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        one(epoch + 1)
    groups: collections.Counter[str] = collections.Counter()
    others: collections.Counter[str] = collections.Counter()
    for event in prof.key_averages():
        groups[group_of(event.key)] += event.self_cpu_time_total / 1e6
        if group_of(event.key) == "other":
            others[event.key] += event.self_cpu_time_total / 1e6
    return {
        "images": stats.count,
        "epoch_seconds": seconds,
        "images_per_s": stats.count / seconds,
        "data_only_seconds": data_seconds,
        "profiled_seconds": dict(groups.most_common()),
        "largest_other": [name for name, _ in others.most_common(3)],
        "threads": torch.get_num_threads(),
    }
