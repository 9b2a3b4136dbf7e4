"""torchrun: the same digits preset under ``torchrun --standalone --nproc_per_node N`` must evaluate exactly the
test images a plain run evaluates (ShardSampler: every index once across ranks, no padding)."""

from __future__ import annotations

import json

from gpu_check.context import Context
from gpu_check.report import Row, verdict
from gpu_check.runs import python_cmd, run_logged
from gpu_check.training_checks import autocast_run


def process_group(device: str, nproc: int) -> str:
    """The backend convserve.training.engine.distributed picks: none for one process (it forms no group then)."""
    if nproc <= 1:
        return "no process group: one process"
    return "nccl" if device == "cuda" else "gloo"


def check_torchrun(ctx: Context) -> Row:
    plan = ctx.plan
    plain = autocast_run(ctx).summary
    folder = ctx.work / "torchrun"
    cmd = python_cmd(
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(plan.nproc), "training/train.py",
        *plan.train_args, "--device", plan.device, "--epochs", "1", "--print-freq", "1000",
        "--output-dir", str(folder),
    )  # fmt: skip
    run_logged(cmd, ctx.log("torchrun"), plan.timeout_s)
    ddp = json.loads((folder / "summary.json").read_text())
    confusion_total = sum(map(sum, ddp["confusion_matrix"]))
    ok = ddp["world_size"] == plan.nproc and ddp["test_count"] == plain["test_count"] == confusion_total
    backend = process_group(plan.device, plan.nproc)
    return Row(
        "torchrun-eval-count",
        verdict(ok),
        f"world size {ddp['world_size']}, {backend}: {ddp['test_count']} {ddp['test_split']} images evaluated, "
        f"confusion matrix holds {confusion_total}; plain run {plain['test_count']}",
        "the same sample count as the plain run",
        f"`python -m torch.distributed.run --standalone --nproc_per_node {plan.nproc} training/train.py "
        f"{' '.join(plan.train_args)} --device {plan.device} --epochs 1` against the plain train-autocast run's "
        "summary.json (same data, same split seed). "
        + (
            "With one process the trainer forms no process group, so no collective runs; --nproc 2 (one GPU per "
            "rank for NCCL) all-reduces across ranks."
            if plan.nproc <= 1
            else f"The ranks shard the test split (ShardSampler) and all-reduce their counts over {backend}."
        ),
        {
            "world_size": ddp["world_size"],
            "backend": backend,
            "test_count": ddp["test_count"],
            "confusion_total": confusion_total,
            "plain_test_count": plain["test_count"],
        },  # fmt: skip
    )
