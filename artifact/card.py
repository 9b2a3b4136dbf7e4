"""The artifact folder contract (export writes it, serving reads it).

DIR/model.onnx | model.ts.pt | model.int8.onnx | model.fp16.onnx | model.pt   (one or more)
DIR/model_card.json      ModelCard below: every preprocessing fact the server needs
DIR/index_to_name.json   TorchServe's {"0": "label", ...}, labels unique

One folder holds the exports of ONE source model: ``source_identity`` (the checkpoint's sha256, or for
torchvision weights the sha256 of their tensors) decides whether an exporter may add its file to a folder.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from convserve.common.errors import ConvserveError, validation_message
from convserve.common.files import sha256_file, write_text_atomic
from convserve.common.preprocessing import Preprocessing

CARD_SCHEMA = "convserve.model_card/v1"
CARD_FILE = "model_card.json"
INDEX_FILE = "index_to_name.json"
ModelFormat = Literal["onnx", "torchscript", "onnx-int8", "onnx-fp16", "eager"]
FILE_NAMES: dict[str, str] = {
    "onnx": "model.onnx",
    "onnx-int8": "model.int8.onnx",
    "onnx-fp16": "model.fp16.onnx",
    "torchscript": "model.ts.pt",
    "eager": "model.pt",
}


class _Card(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParityReport(_Card):
    reference: str = "eager"
    images: int
    batch_sizes: list[int]
    max_abs_prob_diff: float  # softmax probabilities, exported vs eager, over all images and batch sizes
    max_abs_logit_diff: float | None = None  # the same for logits: telling where probabilities are near-uniform
    # fraction in [0, 1]; an image agrees when the exported top class is the eager one, or when the eager
    # probabilities of the two classes tie within 1e-6 (1e-3 for fp16): float noise may order exact ties
    top1_agreement: float
    top5_agreement: float  # fraction of images with the same set of top-5 classes
    passed: bool
    tolerance: float = 1e-4  # max_abs_prob_diff allowed; 1.0 (int8): not judged, top-1 agreement decides
    min_top1_agreement: float = 1.0
    runtime: str | None = None  # e.g. "onnxruntime 1.31.1 CPUExecutionProvider", "torch.jit 2.14.1 cpu"
    sources: dict[str, int] = {}  # where the images came from: {"digits test split": 64, "sample photos": 6}


def inside_folder(path: str) -> str:
    """A card's file path, refused unless it names a file inside the artifact folder: artifacts travel between
    machines, and a card must not make an archive pack, or a server open, a file of the host it lands on."""
    pure = PurePosixPath(path)
    if not path or "\\" in path or pure.is_absolute() or PureWindowsPath(path).drive or ".." in pure.parts:
        raise ValueError(f"file path {path!r} is not inside the artifact folder (relative, no '..', '/' separators)")
    return path


class ModelFile(_Card):
    path: Annotated[str, AfterValidator(inside_folder)]  # relative to the artifact folder
    format: ModelFormat
    sha256: str
    size_bytes: int
    opset: int | None = None
    dynamic_batch: bool = True
    parity: ParityReport | None = None
    test_acc1: float | None = None  # percent (as training's metrics) on the checkpoint's test split, when measured
    export_seconds: float | None = None
    notes: list[str] = []


class SourceCard(_Card):
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    dataset: str | None = None
    epoch: int | None = None
    metrics: dict[str, float | int | None] = {}
    torchvision_weights: str | None = None
    random_weights: bool = False  # exported with --random-weights: a seeded untrained model (first note says so)
    weights_sha256: str | None = None  # of the model's tensors (names, dtypes, shapes, bytes), any source


class ModelCard(_Card):
    schema_version: Literal["convserve.model_card/v1"] = CARD_SCHEMA
    name: str
    arch: str
    num_classes: int = Field(ge=1)
    class_names: list[str]
    activation: str = "relu"
    model_options: dict[str, int | float | bool | str | None] = {}
    preprocessing: Preprocessing
    files: list[ModelFile] = []
    source: SourceCard = SourceCard()
    versions: dict[str, str] = {}
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    notes: list[str] = []  # warnings a reader must see (random weights, CPU-only checks)

    def file(self, fmt: ModelFormat) -> ModelFile | None:
        return next((f for f in self.files if f.format == fmt), None)

    def with_file(self, entry: ModelFile) -> ModelCard:
        """A copy listing ``entry`` in place of any earlier file of the same format."""
        files = [f for f in self.files if f.format != entry.format] + [entry]
        return self.model_copy(update={"files": sorted(files, key=lambda f: FILE_ORDER.index(f.format))})


FILE_ORDER = list(FILE_NAMES)


def source_identity(card: ModelCard) -> str | None:
    """What makes two exports "of the same model": the checkpoint file's sha256, else the weights' sha256."""
    return card.source.checkpoint_sha256 or card.source.weights_sha256


def describe_file(folder: Path, path: str, fmt: ModelFormat, **fields) -> ModelFile:
    """A ModelFile entry for ``folder/path`` with its sha256 and size measured from the file itself."""
    full = Path(folder) / path
    return ModelFile(path=path, format=fmt, sha256=sha256_file(full), size_bytes=full.stat().st_size, **fields)


def unique_labels(names: list[str]) -> list[str]:
    """Disambiguate repeated labels (TorchServe's stock ImageNet file has e.g. two 'crane') as 'crane (134)'."""
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return [f"{n} ({i})" if counts[n] > 1 else n for i, n in enumerate(names)]


def write_index_to_name(folder: Path, class_names: list[str]) -> Path:
    labels = unique_labels(class_names)
    return write_text_atomic(
        Path(folder) / INDEX_FILE, json.dumps({str(i): n for i, n in enumerate(labels)}, indent=1) + "\n"
    )


def write_card(folder: Path, card: ModelCard) -> Path:
    return write_text_atomic(Path(folder) / CARD_FILE, card.model_dump_json(indent=2) + "\n")


def read_card(folder: Path) -> ModelCard:
    path = Path(folder) / CARD_FILE
    try:
        return ModelCard.model_validate_json(path.read_text())
    except OSError as exc:
        raise ConvserveError(f"{folder} is not an artifact folder: cannot read {CARD_FILE} ({exc.strerror})") from None
    except ValidationError as exc:
        raise ConvserveError(f"{path} is invalid: {validation_message(exc, 'card')}") from None


def read_index_to_name(folder: Path) -> list[str]:
    path = Path(folder) / INDEX_FILE
    try:
        mapping = json.loads(path.read_text())
        return [mapping[str(i)] for i in range(len(mapping))]
    except (OSError, ValueError, KeyError) as exc:
        raise ConvserveError(f"cannot read {path}: {exc}") from None
