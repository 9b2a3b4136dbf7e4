"""Evaluate two checkpoints on the same images and say where, and how differently, they answer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from convserve.common.devices import choose_device
from convserve.common.errors import ConvserveError
from convserve.models import model_from_checkpoint
from convserve.models.checkpoint import Checkpoint, load_checkpoint
from convserve.training.config import DataConfig
from convserve.training.data.registry import build_eval_split, data_config_for
from convserve.training.engine.evaluation import EvalResult, evaluate


@dataclass
class ModelSide:
    checkpoint: str
    arch: str
    epoch: int  # counted from 1, as the training log prints it
    input_size: int
    acc1: float
    acc5: float
    loss: float


@dataclass
class Disagreement:
    index: int  # position in the split
    true_label: str
    top5_a: list[tuple[str, float]]
    top5_b: list[tuple[str, float]]


@dataclass
class Comparison:
    dataset: str
    split: str
    seed: int
    count: int
    a: ModelSide
    b: ModelSide
    per_class: list[dict[str, Any]]  # class, count, acc_a, acc_b (fractions, None when absent)
    disagreements: list[Disagreement]
    a_right_b_wrong: int
    b_right_a_wrong: int
    both_wrong_differently: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_same_task(a: Checkpoint, b: Checkpoint) -> None:
    if a.dataset != b.dataset:
        raise ConvserveError(
            f"the checkpoints were trained on different datasets ({a.dataset} vs {b.dataset}); "
            "compare needs two models of the same classes"
        )
    if a.class_names != b.class_names:
        raise ConvserveError(
            f"the checkpoints have different classes ({a.num_classes} vs {b.num_classes}, or in another order); "
            "compare needs two models of the same classes"
        )


def _evaluate(ckpt: Checkpoint, data_cfg: DataConfig, seed: int, split: str, device: torch.device) -> EvalResult:
    """The split rebuilt with this checkpoint's own preprocessing: same images, its input size and resize."""
    dataset, names = build_eval_split(data_cfg, ckpt.arch, seed, split, ckpt.preprocessing)
    if names != ckpt.class_names:
        raise ConvserveError(f"{data_cfg.name} now has other classes than the checkpoints were trained on")
    model = model_from_checkpoint(ckpt).to(device)
    loader = DataLoader(dataset, batch_size=128)
    return evaluate(model, loader, device, ckpt.class_names, show_progress=False, collect=True)


def _side(ckpt: Checkpoint, result: EvalResult) -> ModelSide:
    return ModelSide(
        str(ckpt.path), ckpt.arch, ckpt.epoch + 1, ckpt.preprocessing.input_size, result.acc1, result.acc5, result.loss
    )


def _notes(a: Checkpoint, b: Checkpoint, seed: int) -> list[str]:
    notes = []
    seed_b = int((b.config.get("run") or {}).get("seed", 0))
    if seed_b != seed:
        notes.append(f"B was trained with seed {seed_b}, A with {seed}: A's split may hold some of B's training images")
    data_a, data_b = a.config.get("data") or {}, b.config.get("data") or {}
    for key in ("data_dir", "limit_per_class"):
        if data_a.get(key) != data_b.get(key):
            notes.append(f"data.{key} differs: A {data_a.get(key)}, B {data_b.get(key)} (A's is used)")
    return notes


def _labelled(top: list[int], probs: list[float], names: list[str]) -> list[tuple[str, float]]:
    return [(names[i], p) for i, p in zip(top, probs, strict=True)]


def compare_checkpoints(
    path_a: Path, path_b: Path, split: str = "test", data_dir: Path | None = None, device: str = "auto"
) -> Comparison:
    a, b = load_checkpoint(path_a), load_checkpoint(path_b)
    check_same_task(a, b)
    data_cfg, seed = data_config_for(a, None, data_dir)
    dev = choose_device(device)
    ra, rb = _evaluate(a, data_cfg, seed, split, dev), _evaluate(b, data_cfg, seed, split, dev)
    if ra.targets != rb.targets:  # the same seeded split must give the same images in the same order
        raise RuntimeError("the two evaluations saw different images; the split is not deterministic")
    names = a.class_names
    disagreements, a_only, b_only, both = [], 0, 0, 0
    for i, target in enumerate(ra.targets):
        pred_a, pred_b = ra.top5[i][0], rb.top5[i][0]
        if pred_a == pred_b:
            continue
        a_only += pred_a == target
        b_only += pred_b == target
        both += pred_a != target and pred_b != target
        disagreements.append(
            Disagreement(
                i,
                names[target],
                _labelled(ra.top5[i], ra.top5_prob[i], names),
                _labelled(rb.top5[i], rb.top5_prob[i], names),
            )
        )
    per_class = [
        {
            "class": name,
            "count": sum(ra.confusion_matrix[k]),
            "acc_a": ra.per_class_acc[name],
            "acc_b": rb.per_class_acc[name],
        }
        for k, name in enumerate(names)
    ]
    return Comparison(
        data_cfg.name,
        split,
        seed,
        ra.count,
        _side(a, ra),
        _side(b, rb),
        per_class,
        disagreements,
        a_only,
        b_only,
        both,
        _notes(a, b, seed),
    )


def _pct(value: float | None) -> str:
    return "   n/a" if value is None else f"{100 * value:6.1f}"


def _top(top: list[tuple[str, float]]) -> str:
    return ", ".join(f"{label} {p:.2f}" for label, p in top)


def format_comparison(c: Comparison, show: int = 20) -> str:
    lines = [
        f"A: {c.a.checkpoint}  ({c.a.arch}, epoch {c.a.epoch}, {c.a.input_size}px)",
        f"B: {c.b.checkpoint}  ({c.b.arch}, epoch {c.b.epoch}, {c.b.input_size}px)",
        f"{c.dataset} {c.split} split (seed {c.seed}): {c.count} images",
        *(f"note: {n}" for n in c.notes),
        "",
        f"{'':8s}{'A':>9s}{'B':>9s}",
        f"{'acc@1':8s}{c.a.acc1:9.2f}{c.b.acc1:9.2f}",
        f"{'acc@5':8s}{c.a.acc5:9.2f}{c.b.acc5:9.2f}",
        f"{'loss':8s}{c.a.loss:9.4f}{c.b.loss:9.4f}",
        "",
        "per-class accuracy (%):",
    ]
    width = max(8, *(len(r["class"]) for r in c.per_class))
    lines.append(f"  {'class':<{width}s} {'n':>5s} {'A':>6s} {'B':>6s} {'B-A':>7s}")
    for r in c.per_class:
        delta = "" if r["acc_a"] is None else f"{100 * (r['acc_b'] - r['acc_a']):+7.1f}"
        lines.append(f"  {r['class']:<{width}s} {r['count']:5d} {_pct(r['acc_a'])} {_pct(r['acc_b'])} {delta}")
    lines += [
        "",
        f"disagreements (top-1 differs): {len(c.disagreements)} of {c.count} images — A right and B wrong: "
        f"{c.a_right_b_wrong}, B right and A wrong: {c.b_right_a_wrong}, both wrong: {c.both_wrong_differently}",
    ]
    for d in c.disagreements[:show]:
        lines.append(f"  #{d.index:<5d} true {d.true_label}")
        lines.append(f"      A: {_top(d.top5_a)}")
        lines.append(f"      B: {_top(d.top5_b)}")
    if len(c.disagreements) > show:
        lines.append(f"  ... {len(c.disagreements) - show} more (--show N, or --json for all)")
    return "\n".join(lines)
