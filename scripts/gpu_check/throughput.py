"""Training-step throughput on a CIFAR-10-shaped set of 50,000 synthetic images: AlexNet at 224 px and ResNet18
at 32 px, fed by the trainer's own resident input path (training/data/resident.py: uint8 images on the device,
whole batches augmented there), channels-last, autocast, optionally torch.compile; images/s, seconds per
50,000-image epoch and the share of the GEMM rate measured in the same command."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from convserve.common.devices import choose_device
from convserve.training.data.resident import BatchTrainPreset, ResidentLoader
from gpu_check.context import Context
from gpu_check.plan import EPOCH_IMAGES, Plan, ThroughputCase
from gpu_check.report import Row, verdict
from gpu_check.synthetic_cifar import write_synthetic_cifar10


@dataclass(frozen=True)
class CifarSet:
    images: torch.Tensor  # uint8 (N, 3, 32, 32): the loader's train and val splits together
    labels: torch.Tensor


def synthetic_cifar(ctx: Context) -> CifarSet:
    """Written once in the real format, read back by training/data's CIFAR-10 loader."""

    def make() -> CifarSet:
        from convserve.training.data.torchvision_sets import load_cifar10

        root = ctx.work / "cifar10"
        write_synthetic_cifar10(root, ctx.plan.cifar_per_batch)
        raw = load_cifar10(root, download=False, seed=0)
        images = torch.cat([raw.train.images, raw.val.images])
        return CifarSet(images, torch.cat([raw.train.labels, raw.val.labels]))

    return ctx.once("the synthetic CIFAR-10 set", make)


def endless(loader: ResidentLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The trainer's resident batches, epoch after epoch (each epoch a new seeded permutation)."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


@contextlib.contextmanager
def cudnn_autotune() -> Iterator[None]:
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class TrainingStep:
    model: nn.Module  # uncompiled: FLOPs are counted on it
    precision: str
    run: Callable[[], torch.Tensor]  # one step on the next batch; returns the loss (no host sync)
    warmup_s: float = 0.0  # the warm-up steps (with torch.compile: its compilation), reported apart from the rate


def training_step(plan: Plan, case: ThroughputCase, data: CifarSet, device: torch.device) -> TrainingStep:
    """The model with its recipe's optimizer and loss, autocast, channels-last, fed by the device pipeline."""
    from convserve.models import build_model
    from convserve.training.config import build_config
    from convserve.training.data.facts import FACTS
    from convserve.training.data.registry import preprocessing_for
    from convserve.training.engine.precision import resolve_precision
    from convserve.training.trainer import make_optimizer

    cfg = build_config({}, {"model": case.arch, "dataset": "cifar10", "input_size": case.input_size})
    pre = preprocessing_for(FACTS["cifar10"], case.arch, case.input_size)
    m = cfg.model
    model, _ = build_model(m.arch, 10, pre.input_size, m.activation, m.small_input_stem, m.dropout, False, m.init)
    model = model.to(device).to(memory_format=torch.channels_last).train()
    optimizer = make_optimizer(cfg, model)  # the trainer's: fused AdamW with the model's recipe
    precision = resolve_precision("auto", device)
    scaler = precision.scaler(device)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
    forward = torch.compile(model) if plan.compile else model
    batches = endless(ResidentLoader(data.images, data.labels, plan.throughput_batch,
                                     BatchTrainPreset(pre, "small", device), device, drop_last=True))  # fmt: skip

    def run() -> torch.Tensor:
        images, target = next(batches)
        with precision.autocast(device) or contextlib.nullcontext():
            loss = criterion(forward(images.contiguous(memory_format=torch.channels_last)), target)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return loss

    return TrainingStep(model, precision.precision, run)


def time_steps(step: TrainingStep, plan: Plan, per_epoch: int, device: torch.device) -> tuple[int, float, float]:
    """Warm-up steps, then steps until one epoch or the time budget, between two device syncs:
    (steps, seconds, last loss)."""
    with cudnn_autotune():
        began = time.perf_counter()
        for _ in range(plan.warmup_steps):
            step.run()
        _sync(device)
        step.warmup_s = time.perf_counter() - began  # torch.compile's compilation lands here, not in the rate
        steps, start = 0, time.perf_counter()
        # no sync inside the loop: the host runs ahead of the device by the launch queue and no further
        while steps < per_epoch and time.perf_counter() - start < plan.timed_budget_s:
            loss = step.run()
            steps += 1
        _sync(device)
        seconds = time.perf_counter() - start
    return steps, seconds, float(loss.detach())


def what_is_timed(plan: Plan, case: ThroughputCase, steps: int, images: int, precision: str) -> str:
    return (
        f"Timed: {steps} training steps after {plan.warmup_steps} warm-up steps, between two device syncs "
        f"(cuDNN autotuning on). Each step: the next {plan.throughput_batch} indices of a permutation made on the "
        f"device; a gather of those uint8 32 px images, which stay resident on the device ({images:,} "
        "synthetic images in the CIFAR-10 python format, read by training/data's loader: train and val splits); "
        f"on the device, TrainPreset's small policy (resize to {case.input_size} px, pad-crop by "
        f"{max(1, case.input_size // 8)} px, flip, normalise), channels-last; forward and label-smoothed "
        f"cross-entropy under {precision} autocast{', torch.compile' if plan.compile else ''}; backward; the "
        "trainer's fused AdamW step (convserve.training.trainer.make_optimizer with the model's recipe)"
        + (" and the GradScaler" if precision == "fp16" else "")
        + ". Not timed: the trainer's per-step loss.item() and accuracy meters (host syncs) and its DataLoader "
        "(the trainer has no device-resident input path). FLOPs per image from torch's FlopCounterMode "
        "(convserve.hardware.flops); the GEMM rate is torch.mm measured in this command (convserve.hardware.rates)."
    )


def check_throughput(ctx: Context, case: ThroughputCase) -> Row:
    from convserve.training.engine.throughput import training_rate

    plan, device = ctx.plan, choose_device(ctx.plan.device)  # cuda:0, as the trainer names it (rates cached)
    data = synthetic_cifar(ctx)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step = training_step(plan, case, data, device)
    steps, seconds, loss = time_steps(step, plan, len(data.images) // plan.throughput_batch, device)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    images_per_s = steps * plan.throughput_batch / seconds
    epoch_s = EPOCH_IMAGES / images_per_s
    speed = training_rate(step.model, case.input_size, device, step.precision, images_per_s)
    basis, fraction = speed["matmul_fraction_basis"], speed["matmul_fraction"]
    ok = math.isfinite(loss) and steps > 0 and (plan.dry_run or epoch_s <= case.target_s_per_epoch)
    return Row(
        f"throughput-{case.arch}",
        verdict(ok),
        f"{case.arch} {case.input_size} px, batch {plan.throughput_batch}, {step.precision}"
        f"{', torch.compile' if plan.compile else ''}: {images_per_s:,.0f} img/s = {epoch_s:.2f} s per "
        f"{EPOCH_IMAGES:,}-image epoch (synthetic pixels); {speed['train_gflops_per_s'] / 1e3:.1f} TFLOP/s = "
        f"{100 * fraction:.1f} % of the {basis} GEMM rate ({speed['matmul_gflops_per_s'][basis] / 1e3:.1f} "
        f"TFLOP/s)"
        + (f"; peak GPU {peak:.0f} MB" if peak else "")
        + f"; warm-up {step.warmup_s:.1f} s{' (compilation included)' if plan.compile else ''}, not in the rate",
        plan.target(f"≤ {case.target_s_per_epoch:g} s per {EPOCH_IMAGES:,}-image epoch"),
        what_is_timed(plan, case, steps, len(data.images), step.precision),
        {
            "images_per_s": images_per_s,
            "seconds_per_epoch": epoch_s,
            "epoch_images": EPOCH_IMAGES,
            "steps": steps,
            "batch": plan.throughput_batch,
            "precision": step.precision,
            "compile": plan.compile,
            "warmup_s": step.warmup_s,
            "loss": loss,
            "peak_gpu_mem_mb": peak,
            "synthetic_data": True,
            **{k: speed[k] for k in ("train_flops_per_image", "train_gflops_per_s", "matmul_gflops_per_s")},
            "matmul_fraction": fraction,
            "matmul_fraction_basis": basis,
        },
    )
