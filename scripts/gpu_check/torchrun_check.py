"""torchrun: the same digits preset under ``torchrun --standalone --nproc_per_node N`` (N >= 2: NCCL, one GPU per
rank; gloo on a dry run) must evaluate exactly the test images a plain run evaluates (ShardSampler: every index
once across ranks, no padding), and its all-reduced test accuracy must be what one process measures on the same
weights. One GPU cannot hold two NCCL ranks: the row is then "n/a: 1 GPU", not a pass that proves nothing."""

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


def single_process_acc1(ctx: Context, folder) -> float:
    """``training/evaluate.py`` on the torchrun run's own best.pt, as a process of its own on the plan's device (this
    check may run in a background thread: an in-process CLI would redirect the whole process's stdout)."""
    log = ctx.log("torchrun-evaluate")
    cmd = python_cmd("training/evaluate.py", str(folder / "checkpoints" / "best.pt"), "--device", ctx.plan.device,
                     "--json")  # fmt: skip
    run_logged(cmd, log, ctx.plan.timeout_s)
    text = log.read_text()
    result, _ = json.JSONDecoder().raw_decode(text[text.index("\n{") + 1 :])  # --json: the result, after "$ ..."
    return result["acc1"]


def one_gpu_row(plan) -> Row:
    return Row(
        "torchrun-eval-count",
        "n/a: 1 GPU",
        "not run: NCCL needs a GPU per rank and this machine has 1",
        "2+ GPUs: 2 NCCL ranks evaluate the plain run's sample count and its accuracy",
        "A single process forms no process group, so no collective would run and nothing could fail; the dry run "
        "(2 gloo ranks on the CPU) and the CPU tests cover the collectives.",
        {"gpus": plan.gpus},
    )


def check_torchrun(ctx: Context) -> Row:
    plan = ctx.plan
    if not plan.dry_run and plan.nproc < 2:
        return one_gpu_row(plan)
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
    alone = single_process_acc1(ctx, folder)
    same_acc = abs(alone - ddp["test_acc1"]) < 1e-6
    ok = ddp["world_size"] == plan.nproc and ddp["test_count"] == plain["test_count"] == confusion_total and same_acc
    backend = process_group(plan.device, plan.nproc)
    return Row(
        "torchrun-eval-count",
        verdict(ok),
        f"world size {ddp['world_size']}, {backend}: {ddp['test_count']} {ddp['test_split']} images evaluated, "
        f"confusion matrix holds {confusion_total}; plain run {plain['test_count']}; all-reduced test top-1 "
        f"{ddp['test_acc1']:.2f} %, one process on the same best.pt {alone:.2f} %",
        "the plain run's sample count; the accuracy one process measures on the same weights",
        f"`python -m torch.distributed.run --standalone --nproc_per_node {plan.nproc} training/train.py "
        f"{' '.join(plan.train_args)} --device {plan.device} --epochs 1` against the plain train-autocast run's "
        "summary.json (same data, same split seed). "
        + f"The ranks shard the test split (ShardSampler) and all-reduce their counts over {backend}; "
        "`training/evaluate.py` then measures the run's best.pt in one process.",
        {
            "world_size": ddp["world_size"],
            "backend": backend,
            "test_count": ddp["test_count"],
            "confusion_total": confusion_total,
            "plain_test_count": plain["test_count"],
            "single_process_acc1": alone,
            "test_acc1": ddp["test_acc1"],
        },  # fmt: skip
    )
