"""One export run: source model → model file(s) checked against the eager model → the artifact folder.

Order: check images (bad files fail before anything is written) → claim the folder → export each format
to a hidden temporary file → parity (every format) and test accuracy → only when all passed: rename into
place, copy the eager weights (model.pt) if the folder lacks them, rewrite model_card.json and
index_to_name.json. A failed parity check raises ``ParityError`` and leaves the folder as it was.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import torch

from convserve.artifact.card import (
    FILE_NAMES,
    ModelCard,
    ModelFile,
    describe_file,
    unique_labels,
    write_card,
    write_index_to_name,
)
from convserve.common.errors import ConvserveError
from convserve.export.check_images import CheckImages, collect_check_images, dataset_split
from convserve.export.destination import Claim, claim_folder
from convserve.export.onnx_conversion import export_onnx, file_opset, quantize_int8
from convserve.export.parity import (
    FP16,
    FP32,
    INT8,
    ParityError,
    Runner,
    accuracy,
    compare,
    eager_runner,
    file_runner,
    format_report,
    run_batched,
)
from convserve.export.sources import RANDOM_WEIGHTS, ExportSource, random_weights_note
from convserve.export.torchscript_conversion import export_torchscript
from convserve.models import model_from_checkpoint
from convserve.models.checkpoint import save_checkpoint

log = logging.getLogger(__name__)

ARTIFACTS_ROOT = Path("artifacts")
PARITY_BATCH = 16  # the "> 1" batch size, as a server batches requests
CALIBRATION_IMAGES = 256
CRITERIA = {"onnx": FP32, "torchscript": FP32, "onnx-fp16": FP16, "onnx-int8": INT8}
FP16_NOTE = (
    "fp16 pays on GPUs (CUDAExecutionProvider); its parity and accuracy here were measured with onnxruntime's "
    "CPU provider, against a looser tolerance ({tol:g}) than fp32"
)


@dataclass
class ExportRequest:
    formats: list[str]  # "onnx", "onnx-int8", "onnx-fp16", "torchscript"; int8 needs onnx before it
    output_dir: Path | None = None
    force: bool = False
    check_images: list[Path] = field(default_factory=list)
    opset: int | None = None
    batch: int | None = None  # None: dynamic batch axis
    legacy: bool = False
    dataset_images: int = 64  # held-out images for parity, when the checkpoint's dataset is here
    test_accuracy: bool = True  # measure test_acc1 per file on the checkpoint's test split


@dataclass
class ExportResult:
    folder: Path
    card: ModelCard
    lines: list[str]


def default_folder(source: ExportSource) -> Path:
    return ARTIFACTS_ROOT / source.name


def run_export(source: ExportSource, request: ExportRequest) -> ExportResult:
    folder = Path(request.output_dir) if request.output_dir else default_folder(source)
    images = collect_check_images(
        source.ckpt, request.check_images, request.dataset_images if source.has_dataset else 0
    )
    job = _Job(source, request, images)  # the eager model first: a checkpoint that cannot build touches no folder
    targets = [FILE_NAMES[f] for f in request.formats]
    with claim_folder(folder, source.identity, targets, request.force) as claim:
        job.claim = claim
        entries = [job.export(fmt) for fmt in request.formats]
        failed = [e for e in entries if e.parity is not None and not e.parity.passed]
        if failed:
            what = "; ".join(_failure(e) for e in failed)
            raise ParityError(f"parity check failed: {what}; nothing was written to {folder}")
        eager = job.eager_copy()
        card = job.card([*entries, *([eager] if eager else [])])
        claim.commit()
        write_index_to_name(folder, card.class_names)
        write_card(folder, card)
    return ExportResult(folder, card, job.lines)


def _failure(entry: ModelFile) -> str:
    p = entry.parity
    return (
        f"{entry.format} max |Δp| {p.max_abs_prob_diff:.2e} (tolerance {p.tolerance:g}), "
        f"top-1 agreement {100 * p.top1_agreement:.1f}% (needs {100 * p.min_top1_agreement:.0f}%)"
    )


class _Job:
    claim: Claim
    calibration_note = ""

    def __init__(self, source: ExportSource, request: ExportRequest, images: CheckImages):
        self.source, self.request = source, request
        self.model = model_from_checkpoint(source.ckpt)
        self.eager = eager_runner(self.model)
        self.images = images.batch()
        self.sources = images.sources
        self.reference_logits = run_batched(self.eager, self.images, PARITY_BATCH)
        self.reference = self.reference_logits.softmax(1)
        self.test_split = self._test_split()
        self.lines: list[str] = []

    def _test_split(self):
        if not (self.request.test_accuracy and self.source.has_dataset):
            return None
        try:
            return dataset_split(self.source.ckpt, "test")
        except ConvserveError as exc:
            log.warning("test accuracy not measured: %s", exc)
            return None

    def export(self, fmt: str) -> ModelFile:
        """Write ``fmt`` to its temporary file, then measure it: parity, test accuracy, sha256, size."""
        name = FILE_NAMES[fmt]
        tmp = self.claim.stage(name)
        batch = None if fmt == "torchscript" else self.request.batch
        log.info("exporting %s ...", name)
        start = time.perf_counter()
        opset = self._write(fmt, tmp, batch)
        seconds = time.perf_counter() - start
        runner, runtime = file_runner(fmt, tmp)
        report = self._parity(fmt, runner, batch).model_copy(update={"runtime": runtime})
        acc = None
        if self.test_split is not None:
            acc = accuracy(runner, self.test_split, batch or 64, fixed_batch=batch is not None)
        notes = {"onnx-fp16": [FP16_NOTE.format(tol=report.tolerance)], "onnx-int8": [self.calibration_note]}
        entry = describe_file(self.claim.folder, tmp.name, fmt, opset=opset, dynamic_batch=batch is None)
        entry = entry.model_copy(
            update={
                "path": name,
                "parity": report,
                "test_acc1": acc,
                "export_seconds": round(seconds, 2),
                "notes": notes.get(fmt, []),
            }
        )
        self._say(f"{name}: {entry.size_bytes / 1e6:.1f} MB, exported in {seconds:.1f} s{_acc(acc)}")
        self._say(format_report(fmt, report))
        return entry

    def _write(self, fmt: str, tmp: Path, batch: int | None) -> int | None:
        """The conversion itself; returns the ONNX opset (None for TorchScript)."""
        size = self.source.ckpt.preprocessing.input_size
        if fmt in ("onnx", "onnx-fp16"):
            request = self.request
            return export_onnx(self.model, size, tmp, request.opset, batch, request.legacy, fp16=fmt == "onnx-fp16")
        if fmt == "onnx-int8":
            calibration = self._calibration()
            if batch:  # a fixed batch axis: calibration batches of exactly that size
                calibration = calibration[torch.arange(-(-len(calibration) // batch) * batch) % len(calibration)]
            quantize_int8(self.claim.staged[FILE_NAMES["onnx"]], tmp, calibration, batch or 32)
            return file_opset(tmp)
        export_torchscript(self.model, size, tmp)
        return None

    def _parity(self, fmt: str, runner: Runner, static_batch: int | None):
        images, reference, logits = self.images, self.reference, self.reference_logits
        sizes = [1, min(PARITY_BATCH, len(images))]
        if static_batch:  # a fixed batch axis takes exactly that many images per call: tile to a multiple
            reps = -(-max(len(images), static_batch) // static_batch) * static_batch
            index = torch.arange(reps) % len(images)
            images, reference, logits, sizes = images[index], reference[index], logits[index], [static_batch]
        report = compare(reference, runner, images, sizes, CRITERIA[fmt], logits)
        return report.model_copy(update={"sources": dict(self.sources)})

    def _calibration(self) -> torch.Tensor:
        train = None
        if self.source.has_dataset:
            try:
                train = dataset_split(self.source.ckpt, "train")
            except ConvserveError as exc:
                log.warning("int8 calibration cannot use training images: %s", exc)
        if train is None:
            self.calibration_note = f"static QDQ int8, calibrated on the {len(self.images)} parity images"
            return self.images
        count = min(CALIBRATION_IMAGES, len(train))
        step = max(1, len(train) // count)  # spread over the split rather than its first classes
        picked = torch.stack([train[i][0] for i in range(0, step * count, step)])
        self.calibration_note = f"static QDQ int8 for CPU, calibrated on {count} training images"
        return picked

    def eager_copy(self) -> ModelFile | None:
        """model.pt (our checkpoint format without train_state), unless the folder already has this one."""
        name = FILE_NAMES["eager"]
        existing = self.claim.card.file("eager") if self.claim.card else None
        if existing is not None and (self.claim.folder / name).is_file() and not self.request.force:
            return None
        tmp = self.claim.stage(name)
        save_checkpoint(replace(self.source.ckpt, train_state=None, path=None), tmp)
        acc = accuracy(self.eager, self.test_split) if self.test_split is not None else None
        entry = describe_file(self.claim.folder, tmp.name, "eager")
        self._say(f"{name}: {entry.size_bytes / 1e6:.1f} MB (eager weights){_acc(acc)}")
        return entry.model_copy(update={"path": name, "test_acc1": acc})

    def card(self, entries: list[ModelFile]) -> ModelCard:
        ckpt, source = self.source.ckpt, self.source
        # an earlier export's random-weights note went with its weights; an untrained model's note comes first
        notes = [n for n in (self.claim.card.notes if self.claim.card else []) if not n.startswith(RANDOM_WEIGHTS)]
        if source.card.random_weights:
            notes.insert(0, random_weights_note(source.card))
        fields = dict(
            name=self.claim.folder.resolve().name,
            arch=ckpt.arch,
            num_classes=ckpt.num_classes,
            class_names=unique_labels(ckpt.class_names),
            activation=ckpt.activation,
            model_options=ckpt.model_options,
            preprocessing=ckpt.preprocessing,
            source=source.card,
            versions={**(self.claim.card.versions if self.claim.card else {}), **export_versions(ckpt.versions)},
            notes=notes,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        card = self.claim.card.model_copy(update=fields) if self.claim.card else ModelCard(**fields)
        for entry in entries:
            card = card.with_file(entry)
        return ModelCard.model_validate(card.model_dump())

    def _say(self, line: str) -> None:
        self.lines.append(line)  # the CLI prints them: they are the export's result


def _acc(acc: float | None) -> str:
    return "" if acc is None else f", test acc@1 {acc:.2f}%"


def export_versions(trained_with: dict[str, str]) -> dict[str, str]:
    import onnx
    import onnxruntime
    import onnxscript
    import onnxslim
    import torchvision

    versions = {
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxscript": onnxscript.__version__,
        "onnxslim": onnxslim.__version__,
        "python": platform.python_version(),
    }
    if trained_with.get("torch"):
        versions["trained_with_torch"] = str(trained_with["torch"])
    return versions
