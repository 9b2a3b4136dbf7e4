"""Eager vs exported on the same real images: softmax differences, top-1 / top-5 agreement, test accuracy.

A ``Runner`` is anything that maps a float32 (N, 3, S, S) batch to (N, classes) logits: the eager model, or an
exported file loaded by serving's own backend (artifact/runtimes.py: the same session options and threads).
Parity runs every image at batch size 1 and in batches of ``batch`` (the dynamic axis, as a server batches
requests), and compares each to the eager model's probabilities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from convserve.artifact.card import ParityReport
from convserve.artifact.runtimes import OnnxBackend, TorchScriptBackend

Runner = Callable[[torch.Tensor], torch.Tensor]

FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 1e-2  # fp16 weights and activations: ~1e-3 differences are normal
INT8_MIN_TOP1 = 0.9  # int8 changes some answers by design; its test accuracy is the real measure


class ParityError(Exception):
    """The exported model does not reproduce the eager one (our bug or the exporter's, not the user's)."""


@dataclass(frozen=True)
class Criteria:
    tolerance: float = FP32_TOLERANCE  # max abs softmax difference allowed (when judge_prob_diff)
    min_top1_agreement: float = 1.0
    judge_prob_diff: bool = True
    # eager probabilities this close count as a tie for top-1 agreement: float32 noise (~1e-7) can reorder
    # them; kept far below the tolerance so a near-uniform (random-weight) model cannot agree by default
    tie: float = 1e-6


FP32 = Criteria()
FP16 = Criteria(tolerance=FP16_TOLERANCE, min_top1_agreement=0.98, tie=1e-3)
INT8 = Criteria(tolerance=1.0, min_top1_agreement=INT8_MIN_TOP1, judge_prob_diff=False)


def eager_runner(model: torch.nn.Module) -> Runner:
    model = model.eval()

    @torch.inference_mode()
    def run(batch: torch.Tensor) -> torch.Tensor:
        return model(batch).float()

    return run


def file_runner(fmt: str, path: Path) -> tuple[Runner, str]:
    """The exported file as serving runs it: the same backend, session options and thread count
    (artifact/runtimes.py), on the CPU. Returns the runner and its runtime settings, for the card."""
    backend = TorchScriptBackend(path) if fmt == "torchscript" else OnnxBackend(path)
    return backend, backend.runtime


def run_batched(runner: Runner, images: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([runner(images[i : i + batch]) for i in range(0, len(images), batch)])


def compare(
    reference: torch.Tensor,
    runner: Runner,
    images: torch.Tensor,
    batch_sizes: list[int],
    criteria: Criteria,
    reference_logits: torch.Tensor | None = None,
) -> ParityReport:
    """``reference``: eager probabilities for ``images`` (and their logits, reported when given); runs
    ``runner`` at each batch size and compares."""
    ref_top1 = reference.argmax(1)
    ref_max = reference.max(1).values
    k = min(5, reference.shape[1])
    ref_top5 = reference.topk(k, dim=1).indices.sort(1).values
    worst, worst_logit, top1, top5 = 0.0, 0.0, 1.0, 1.0
    for size in batch_sizes:
        logits = run_batched(runner, images, size)
        probs = logits.softmax(1)
        worst = max(worst, float((probs - reference).abs().max()))
        if reference_logits is not None:
            worst_logit = max(worst_logit, float((logits - reference_logits).abs().max()))
        picked = probs.argmax(1)
        # a different top class still agrees when the eager model ranks it equal within the tolerance (ties)
        gap = ref_max - reference.gather(1, picked[:, None])[:, 0]
        agree = (picked == ref_top1) | (gap <= criteria.tie)
        top1 = min(top1, float(agree.float().mean()))
        same5 = (probs.topk(k, dim=1).indices.sort(1).values == ref_top5).all(1)
        top5 = min(top5, float(same5.float().mean()))
    passed = top1 >= criteria.min_top1_agreement and (not criteria.judge_prob_diff or worst <= criteria.tolerance)
    return ParityReport(
        images=len(images),
        batch_sizes=batch_sizes,
        max_abs_prob_diff=worst,
        max_abs_logit_diff=worst_logit if reference_logits is not None else None,
        top1_agreement=top1,
        top5_agreement=top5,
        passed=passed,
        tolerance=criteria.tolerance,
        min_top1_agreement=criteria.min_top1_agreement,
    )


def format_report(label: str, report: ParityReport) -> str:
    verdict = "PASS" if report.passed else "FAIL"
    sources = ", ".join(f"{n} {src}" for src, n in report.sources.items())
    judged = f"tolerance {report.tolerance:g}" if report.tolerance < 1 else "not judged"
    logit = "" if report.max_abs_logit_diff is None else f", |Δlogit| {report.max_abs_logit_diff:.2e}"
    return (
        f"parity {label}: {verdict}  max |Δp| {report.max_abs_prob_diff:.2e} ({judged}{logit})  "
        f"top-1 {100 * report.top1_agreement:.1f}%  top-5 {100 * report.top5_agreement:.1f}%  "
        f"{report.images} images ({sources}) at batch sizes {report.batch_sizes}  [{report.runtime}]"
    )


@torch.inference_mode()
def accuracy(runner: Runner, dataset, batch: int = 64, fixed_batch: bool = False) -> float:
    """Top-1 accuracy in percent of ``runner`` on a (tensor, label) dataset.

    ``fixed_batch``: the model takes exactly ``batch`` images per call, so the last chunk is padded (with
    repeats of its first image) and the padding's answers dropped.
    """
    correct = total = 0
    for start in range(0, len(dataset), batch):
        items = [dataset[i] for i in range(start, min(start + batch, len(dataset)))]
        images = torch.stack([x for x, _ in items])
        labels = torch.tensor([y for _, y in items])
        if fixed_batch and len(items) < batch:
            images = torch.cat([images, images[:1].expand(batch - len(items), -1, -1, -1)])
        correct += int((runner(images)[: len(items)].argmax(1) == labels).sum())
        total += len(items)
    return 100.0 * correct / max(total, 1)
