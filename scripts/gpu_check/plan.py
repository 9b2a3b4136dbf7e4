"""What the check runs: the GPU sizes, or tiny ones on the CPU for ``--dry-run`` (the same code, seconds).

Targets are ours (docs/benchmarks/gpu/README.md); on a dry run the thresholds that only mean something on a
GPU are reported as "n/a on dry run", never judged on CPU figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEMO_CONFIG = Path("training/configs/demo.yaml")
BUDGET_S = 480  # the whole check on a GPU, wheels to table: 8 minutes; over it the check FAILs
DRY_BUDGET_S = 600  # the dry run on a small shared CPU (its figures mean nothing; its time still may not run away)
CHECK_LIMIT_S = 240  # any one check (an in-process one is interrupted, a subprocess killed)
EPOCH_IMAGES = 50_000  # CIFAR-10's training set: "seconds per epoch" is per 50,000 images
# digits test top-1 on the GPU, in each precision: an absolute floor (the test split is 270 images: seed-to-seed
# noise is a point or more, so "within 1 point of the CPU run" would fail runs that are fine)
ACC_FLOOR_PCT = 98.0
BF16_CAPABILITY = (8, 0)  # Ampere and later compute bf16 natively; before it autocast takes fp16 + GradScaler
NA_DRY = "n/a on dry run"
DRY_NOTE = (
    "Dry run: the GPU checks on the CPU with tiny sizes and one intra-op thread (OMP_NUM_THREADS=1: tiny steps "
    "on a shared machine's cores otherwise wait on each other); its figures say only that every path runs."
)


@dataclass(frozen=True)
class ThroughputCase:
    arch: str
    input_size: int
    target_s_per_epoch: float  # ours: seconds per 50,000-image epoch on the GPU


@dataclass(frozen=True)
class Plan:
    dry_run: bool
    device: str  # "cuda", or "cpu" on a dry run
    train_args: tuple[str, ...]  # every digits run: the demo preset (tiny on a dry run)
    kill_args: tuple[str, ...]  # the kill -9 run: enough batches per epoch to land inside one
    kill_epochs: int
    nproc: int  # torchrun processes
    cifar_per_batch: int  # images in each of data_batch_1..5 and in test_batch
    throughput: tuple[ThroughputCase, ...]
    throughput_batch: int
    warmup_steps: int
    timed_budget_s: float  # timing stops after the first sync past this (or after one epoch)
    compile: bool
    check_images: int  # digits test images sent to the Classifier (plus the sample photos)
    latency_repeats: int
    batch_repeats: int
    serve_batch: int = 64
    serve_threads: int | None = None  # intra-op threads of the serving backends (None: serving's default)
    # checks started at once beside the others (subprocesses only): on a dry run their interpreter starts
    # overlap the in-process checks; on the GPU everything runs alone, so that no timing shares the machine
    background: tuple[str, ...] = ()
    timeout_s: int = 300  # any one subprocess
    budget_s: int = BUDGET_S
    check_limit_s: int = CHECK_LIMIT_S
    gpus: int = 0  # CUDA devices torch sees
    notes: list[str] = field(default_factory=list)

    @property
    def mode(self) -> str:
        return "dry-run" if self.dry_run else "gpu"

    def target(self, text: str) -> str:
        """A GPU-only threshold as the report shows it."""
        return NA_DRY if self.dry_run else text


def gpu_plan(nproc: int, epochs: int | None, compile_model: bool, gpus: int) -> Plan:
    extra = ("--epochs", str(epochs)) if epochs else ()
    return Plan(
        dry_run=False,
        device="cuda",
        gpus=gpus,
        train_args=("--config", str(DEMO_CONFIG), *extra),
        kill_args=("--config", str(DEMO_CONFIG)),
        kill_epochs=3,
        nproc=nproc,
        cifar_per_batch=10_000,
        throughput=(ThroughputCase("alexnet", 224, 5.0), ThroughputCase("resnet18", 32, 3.0)),
        throughput_batch=256,
        warmup_steps=15,
        timed_budget_s=15.0,
        compile=compile_model,
        check_images=64,
        latency_repeats=50,
        batch_repeats=10,
    )


def dry_plan(nproc: int, compile_model: bool) -> Plan:
    tiny = ("--config", str(DEMO_CONFIG), "--model", "mlp", "--input-size", "16")
    # the demo's AlexNet at its smallest input: training, torchrun, every export (fp16 included) and serving run
    # the model the GPU check runs, at a size a CPU trains in seconds
    small_alexnet = ("--config", str(DEMO_CONFIG), "--model", "alexnet", "--input-size", "64")
    return Plan(
        dry_run=True,
        device="cpu",
        train_args=(*small_alexnet, "--limit-per-class", "3", "--batch-size", "8", "--epochs", "1"),
        # 30 images a class, batch 3: 100 steps an epoch, so the kill lands inside one even when this process
        # reads the progress line late on a busy machine (20 steps once let the run finish first)
        kill_args=(*tiny, "--limit-per-class", "30", "--batch-size", "3"),
        kill_epochs=2,
        nproc=nproc,
        cifar_per_batch=40,
        throughput=(ThroughputCase("alexnet", 64, 5.0), ThroughputCase("resnet18", 16, 3.0)),
        throughput_batch=4,
        warmup_steps=1,
        timed_budget_s=1.0,
        compile=compile_model,
        check_images=10,
        latency_repeats=5,
        batch_repeats=2,
        serve_threads=1,
        background=("kill9-resume", "torchrun-eval-count"),
        budget_s=DRY_BUDGET_S,
        check_limit_s=300,
        notes=[DRY_NOTE],
    )


def make_plan(dry_run: bool, nproc: int | None, epochs: int | None, compile_model: bool) -> Plan:
    """The dry-run plan, or the GPU plan where torch sees a CUDA GPU (ConvserveError where it does not)."""
    import torch

    from convserve.common.errors import ConvserveError

    if dry_run:
        return dry_plan(nproc or 2, compile_model)
    if not torch.cuda.is_available():
        raise ConvserveError("no CUDA GPU visible to torch here; --dry-run runs the same checks on the CPU")
    gpus = torch.cuda.device_count()
    if nproc is not None and nproc > gpus:
        raise ConvserveError(f"--nproc {nproc}: NCCL needs one GPU per rank and torch sees {gpus}")
    return gpu_plan(nproc or min(2, gpus), epochs, compile_model, gpus)
