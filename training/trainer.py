"""Orchestrates a training run: data, model, optimiser, epochs, checkpoints, test evaluation, summary."""

from __future__ import annotations

import logging
import math
import os
import random
import resource
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from convserve.common.devices import choose_device
from convserve.common.errors import ConvserveError
from convserve.common.host_memory import retain_freed_memory
from convserve.hardware.cpus import usable_cpus
from convserve.models import build_model
from convserve.training.analysis.plots import write_run_plots
from convserve.training.checkpoint_keeper import CheckpointKeeper
from convserve.training.config import TrainConfig, build_config, dump_config
from convserve.training.data import DataBundle, build_datasets
from convserve.training.data.presets import BatchCollate
from convserve.training.data.resident import BatchTrainPreset, ResidentLoader, stack_split
from convserve.training.engine.distributed import (
    DistInfo,
    ShardSampler,
    broadcast_object,
    init_distributed,
    shutdown_distributed,
)
from convserve.training.engine.ema import WeightAverage
from convserve.training.engine.evaluation import EvalResult, evaluate
from convserve.training.engine.precision import resolve_precision
from convserve.training.engine.throughput import TrainingRate, training_rate
from convserve.training.engine.train_loop import train_one_epoch
from convserve.training.records import RunRecorder, claim_run_dir, new_run_dir
from convserve.training.results import ChosenEpoch, EpochRow, RunSummary
from convserve.training.session import Session

log = logging.getLogger(__name__)


def set_training_threads(info: DistInfo) -> None:
    """Intra-op threads from the CPUs this process may really use (cgroup quota included), split between the
    processes torchrun started on this node; an explicit OMP_NUM_THREADS (torchrun sets one) is kept."""
    if "OMP_NUM_THREADS" not in os.environ:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, usable_cpus() // max(1, local)))


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused kernels: on a CPU the per-tensor loop costs several times the step
    if o.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.momentum > 0, fused=True)
    if o.optimizer == "adam":
        return torch.optim.Adam(groups, lr=o.lr, fused=True)
    return torch.optim.AdamW(groups, lr=o.lr, fused=True)


def make_scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LR: linear warmup, then cosine to zero, step decay, or constant."""
    o, total = cfg.optim, cfg.run.epochs * steps_per_epoch
    warmup = min(o.warmup_epochs * steps_per_epoch, max(total - 1, 0))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if o.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
        if o.schedule == "step":
            return o.gamma ** ((step // steps_per_epoch) // o.step_size)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_loaders(
    cfg: TrainConfig, data: DataBundle, info: DistInfo, device: torch.device
) -> tuple[DataLoader | ResidentLoader, DataLoader | None, DataLoader | None]:
    """The training loader, then the validation and test ones."""
    per_rank = math.ceil(len(data.train) / info.world_size)
    kw = _loader_options(cfg, device)
    return train_loader(cfg, data, info, device, kw, per_rank > cfg.run.batch_size), *eval_loaders(
        cfg, data, info, device
    )


def _loader_options(cfg: TrainConfig, device: torch.device) -> dict:
    kw = {"batch_size": cfg.run.batch_size, "num_workers": cfg.run.workers, "pin_memory": device.type == "cuda"}
    if cfg.run.workers > 0:
        kw["persistent_workers"] = True
    return kw


def eval_loaders(
    cfg: TrainConfig, data: DataBundle, info: DistInfo, device: torch.device
) -> tuple[DataLoader, DataLoader | None]:
    """Validation and test loaders: every sample once across ranks (ShardSampler)."""
    kw = _loader_options(cfg, device)

    def loader(ds: Dataset | None) -> DataLoader | None:
        return DataLoader(ds, sampler=ShardSampler(len(ds), info), **kw) if ds is not None else None

    return loader(data.val), loader(data.test)


def train_loader(
    cfg: TrainConfig, data: DataBundle, info: DistInfo, device: torch.device, kw: dict, drop_last: bool
) -> DataLoader | ResidentLoader:
    """Small datasets live on the device with whole batches augmented there; the others stream through a
    DataLoader (its workers decode and augment image by image)."""
    if data.resident:
        images, labels = stack_split(data.train_raw())
        preset = BatchTrainPreset(data.preprocessing, data.facts.policy, device)
        return ResidentLoader(images, labels, cfg.run.batch_size, preset, device, info, drop_last)
    if info.enabled:
        sampler = DistributedSampler(data.train, info.world_size, info.rank, shuffle=True, seed=cfg.run.seed)
    else:
        sampler = RandomSampler(data.train, generator=torch.Generator())
    collate = BatchCollate(data.train_batch_transform) if data.train_batch_transform else None
    return DataLoader(data.train, sampler=sampler, drop_last=drop_last, collate_fn=collate, **kw)


def set_epoch_seed(cfg: TrainConfig, loader: DataLoader | ResidentLoader, epoch: int, info: DistInfo) -> None:
    """Seed each epoch from (seed, epoch, rank) so a resumed run replays exactly what it would have done."""
    torch.manual_seed(cfg.run.seed * 100_003 + epoch * 101 + info.rank)
    if isinstance(loader, ResidentLoader):
        loader.set_epoch(cfg.run.seed * 100_003 + epoch)
        return
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)
    elif isinstance(sampler, RandomSampler):
        sampler.generator.manual_seed(cfg.run.seed * 100_003 + epoch)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_gpu_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _prepare_run_dir(cfg: TrainConfig, resume: bool, info: DistInfo) -> Path:
    path = None
    if info.is_main:
        if resume and cfg.run.output_dir is None:
            raise ConvserveError("--resume needs --output-dir RUN_DIR (the run to continue)")
        root = Path("runs")
        path = (
            Path(cfg.run.output_dir)
            if cfg.run.output_dir
            else new_run_dir(root, cfg.model.arch, cfg.data.name, cfg.run.name)
        )
        claim_run_dir(path, resume)
    return Path(broadcast_object(str(path) if path else None, info))


def steps_per_epoch(cfg: TrainConfig, data: DataBundle, info: DistInfo) -> int:
    per_rank = math.ceil(len(data.train) / info.world_size)
    return per_rank // cfg.run.batch_size if per_rank > cfg.run.batch_size else 1  # as the loader's drop_last


def build_network(cfg: TrainConfig, data: DataBundle, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The model on ``device`` (channels-last if asked), and the options that rebuild it from a checkpoint."""
    m = cfg.model
    model, options = build_model(
        m.arch,
        len(data.class_names),
        data.preprocessing.input_size,
        activation=m.activation,
        small_input_stem=m.small_input_stem,
        dropout=m.dropout,
        pretrained=m.pretrained,
        init=m.init,
    )
    model.to(device)
    if cfg.run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, options


def build_session(cfg: TrainConfig, info: DistInfo, device: torch.device, run_dir: Path) -> Session:
    data = build_datasets(cfg.data, cfg.model.arch, cfg.run.seed)
    net, options = build_network(cfg, data, device)
    model = net
    if info.enabled:
        model = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(cfg, net)
    precision = resolve_precision(cfg.run.precision, device)
    # after the DDP wrap, which gives every rank rank 0's weights: the average starts from those
    ema = WeightAverage(net, cfg.optim.ema_decay, cfg.optim.ema_every) if cfg.optim.ema_decay else None
    return Session(
        cfg=cfg,
        info=info,
        device=device,
        data=data,
        model=model,
        model_without_ddp=net,
        model_options=options,
        optimizer=optimizer,
        scheduler=make_scheduler(cfg, optimizer, steps_per_epoch(cfg, data, info)),
        scaler=precision.scaler(device),
        precision=precision,
        run_dir=run_dir,
        ema=ema,
    )


def _log(info: DistInfo, message: str) -> None:
    if info.is_main:  # one narrative per run, not one per torchrun rank
        log.info(message)


def _stop_if_diverged(loss: float, epoch: int, cfg: TrainConfig) -> None:
    """A NaN/inf loss never recovers: stop before this epoch's weights reach a checkpoint."""
    if not math.isfinite(loss):
        raise ConvserveError(
            f"training diverged: the training loss is {loss} in epoch {epoch + 1} (peak lr {cfg.optim.lr:g}, "
            f"{cfg.optim.optimizer}); lower --lr. Checkpoints of earlier epochs are kept"
        )


def _epoch_line(row: EpochRow, epochs: int) -> str:
    return (
        f"epoch {row.epoch + 1}/{epochs}  train loss {row.train_loss:.4f} acc@1 {row.train_acc1:.2f}  "
        f"val loss {row.val_loss:.4f} acc@1 {row.val_acc1:.2f} acc@5 {row.val_acc5:.2f}  {row.epoch_seconds:.1f}s"
    )


def _evaluate_fp32(s: Session, model: nn.Module, loader: DataLoader, prefix: str) -> EvalResult:
    """In fp32, as the exported model serves: best-val picks, and the summary reports, the accuracy users get
    (autocast can score the same weights differently)."""
    return evaluate(
        model, loader, s.device, s.data.class_names, info=s.info, autocast=None, prefix=prefix, show_progress=False
    )


@dataclass
class FitResult:
    chosen: ChosenEpoch
    weights: dict[str, torch.Tensor]  # the chosen epoch's, for the final test
    top_val_acc1: float  # the highest of any epoch (the main rank's record; on the others the chosen one's)
    train_seconds: float
    images: int


def fit(s: Session, resume: bool) -> FitResult:
    """Train the epochs left; ``CheckpointKeeper`` chooses the epoch to keep and writes the checkpoints."""
    cfg, info = s.cfg, s.info
    keeper = CheckpointKeeper(s)
    history = keeper.restore() if resume else []
    recorder = RunRecorder(s.run_dir, history) if info.is_main else None
    train_loader, val_loader, _ = make_loaders(cfg, s.data, info, s.device)
    step = s.train_step()
    seconds, images = 0.0, 0
    for epoch in range(keeper.start_epoch, cfg.run.epochs):
        set_epoch_seed(cfg, train_loader, epoch, info)
        stats = train_one_epoch(step, train_loader, epoch, print_freq=cfg.run.print_freq)
        seconds, images = seconds + stats.seconds, images + stats.count
        _stop_if_diverged(stats.loss, epoch, cfg)
        val = _evaluate_fp32(s, s.eval_model, val_loader, prefix="Val: ")
        row = EpochRow.measured(epoch, stats, val, s.optimizer.param_groups[0]["lr"])
        _log(info, _epoch_line(row, cfg.run.epochs))
        if recorder is not None:
            recorder.log_epoch(row)
        keeper.step(row, val, recorder.history if recorder is not None else None)
    top = keeper.chosen.val_acc1
    if recorder is not None:
        recorder.close()
        top = max((r.val_acc1 for r in recorder.history), default=top)
    return FitResult(keeper.chosen, keeper.chosen_weights(), top, seconds, images)


def final_test(s: Session, weights: dict[str, torch.Tensor]) -> tuple[EvalResult, str]:
    """Evaluate ``weights`` on the test split (val when the dataset has none, as the summary says)."""
    s.model_without_ddp.load_state_dict(weights)
    val_loader, test_loader = eval_loaders(s.cfg, s.data, s.info, s.device)
    split = "test" if test_loader is not None else "val"
    return _evaluate_fp32(s, s.model_without_ddp, test_loader or val_loader, prefix="Test: "), split


def summarize(s: Session, test: EvalResult, split: str, fitted: FitResult, wall: float) -> RunSummary:
    images_per_s = fitted.images / fitted.train_seconds if fitted.train_seconds > 0 else None
    summary = RunSummary(
        arch=s.cfg.model.arch,
        dataset=s.cfg.data.name,
        test_split=split,
        test_acc1=test.acc1,
        test_acc5=test.acc5,
        test_loss=test.loss,
        test_count=test.count,
        per_class_acc=test.per_class_acc,
        confusion_matrix=test.confusion_matrix,
        class_names=s.data.class_names,
        best_epoch=fitted.chosen.epoch,
        best_val_acc1=fitted.top_val_acc1,
        selected_by=s.cfg.run.select,
        selected_val_acc1=fitted.chosen.val_acc1,
        epochs=s.cfg.run.epochs,
        wall_time_s=wall,
        train_time_s=fitted.train_seconds,
        images_per_s=images_per_s,
        precision=s.precision.precision,
        precision_reason=s.precision.reason,
        peak_rss_mb=peak_rss_mb(),
        peak_gpu_mem_mb=peak_gpu_mb(s.device),
        device=str(s.device),
        world_size=s.info.world_size,
        input_size=s.data.preprocessing.input_size,
        num_params=sum(p.numel() for p in s.model_without_ddp.parameters()),
    )
    if not s.info.is_main:  # one rank measures the machine: the others would share it
        return summary
    # measured after the peak memory is read: the measurement's buffers are not the run's
    return replace(summary, rate=rate_fields(s, images_per_s))


def rate_fields(s: Session, images_per_s: float | None) -> TrainingRate:
    return training_rate(
        s.model_without_ddp, s.data.preprocessing.input_size, s.device, s.precision.precision, images_per_s
    )


def rate_line(summary: RunSummary) -> str:
    rate = summary.rate
    if not rate or not rate["train_gflops_per_s"]:
        return " *   training rate not measured"
    basis = rate["matmul_fraction_basis"]
    return (
        f" *   training {summary.images_per_s:.1f} img/s x {rate['train_flops_per_image'] / 1e9:.3f} GFLOP = "
        f"{rate['train_gflops_per_s']:.1f} GFLOP/s in {summary.precision}: "
        f"{100 * rate['matmul_fraction']:.0f} % of this machine's {basis} matmul rate "
        f"({rate['matmul_gflops_per_s'][basis]:.0f} GFLOP/s, {rate['threads']} threads)"
    )


def load_resume_config(run_dir: Path, overrides: dict[str, Any]) -> TrainConfig:
    """On --resume the run's own config.yaml is the base; flags given now (e.g. more epochs) override it."""
    from convserve.training.config import read_yaml

    return build_config(read_yaml(run_dir / "config.yaml"), overrides)


def _start_run(cfg: TrainConfig, resume: bool, info: DistInfo, device: torch.device) -> Session:
    """Seed, claim the run folder, build the session; the main rank writes config.yaml and the run's first line."""
    seed_everything(cfg.run.seed + info.rank, cfg.run.deterministic)
    run_dir = _prepare_run_dir(cfg, resume, info)
    cfg.run.output_dir = run_dir
    s = build_session(cfg, info, device, run_dir)
    cfg.run.precision = s.precision.precision  # config.yaml and checkpoints say what ran, not "auto"
    if info.is_main:
        dump_config(cfg, run_dir / "config.yaml")
        if s.precision.warning:
            log.warning(s.precision.warning)
        log.info(
            f"run folder {run_dir}  ({cfg.model.arch} on {cfg.data.name}, {len(s.data.train)} train / "
            f"{len(s.data.val)} val images, {s.data.preprocessing.input_size}px, {device}, "
            f"{s.precision.precision} ({s.precision.reason}), {torch.get_num_threads()} threads, "
            f"world {info.world_size})"
        )
    return s


def _finish_run(run_dir: Path, summary: RunSummary) -> None:
    """The main rank's end of a run: summary.json, plots/ (curves, confusion matrix, per-class accuracy), log."""
    RunRecorder.write_summary_to(run_dir, summary)
    write_run_plots(run_dir)
    log.info(
        f" *   {summary.test_split} Acc@1 {summary.test_acc1:.3f} Acc@5 {summary.test_acc5:.3f}  "
        f"({summary.test_count} images, best epoch {summary.best_epoch + 1}, {summary.wall_time_s:.1f}s wall)"
    )
    log.info(rate_line(summary))


def run_training(cfg: TrainConfig, resume: bool = False) -> RunSummary:
    wall_start = time.perf_counter()
    retain_freed_memory()  # before the first big tensor: steps then reuse freed memory (see host_memory)
    device = choose_device(cfg.run.device)
    info = init_distributed(device)
    set_training_threads(info)
    try:
        s = _start_run(cfg, resume, info, device)
        fitted = fit(s, resume)
        test, split = final_test(s, fitted.weights)
        summary = summarize(s, test, split, fitted, time.perf_counter() - wall_start)
        if info.is_main:
            _finish_run(s.run_dir, summary)
        return summary
    finally:
        shutdown_distributed(info)
