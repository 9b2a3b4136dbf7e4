"""Which model file of an artifact serves, checked against its card, and the backend that runs it.

- ONNX and TorchScript files run on artifact/runtimes.py's backends (the ones export's parity check measured).
- ``EagerBackend``: model.pt (our checkpoint) rebuilt with training's builders; needs the ``training``
  package importable (the archive ships it when built with ``--backend eager``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from convserve.artifact.card import ModelCard, ModelFile
from convserve.artifact.runtimes import Backend, OnnxBackend, TorchModuleBackend, TorchScriptBackend
from convserve.common.errors import ConvserveError
from convserve.common.files import sha256_file

__all__ = ["AUTO_ORDER", "BACKENDS", "Backend", "EagerBackend", "load_backend", "pick_model_file", "share_cores"]

# auto picks the first format the card lists, in this order
AUTO_ORDER = ("onnx", "torchscript", "eager", "onnx-fp16", "onnx-int8")
BACKENDS = ("auto", *AUTO_ORDER)


class EagerBackend(TorchModuleBackend):
    name = "eager"

    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None):
        try:
            from convserve.models import model_from_checkpoint
            from convserve.models.checkpoint import load_checkpoint
        except ImportError as exc:
            raise ConvserveError(f"the eager backend needs the convserve training package: {exc}") from None
        self.checkpoint = load_checkpoint(path)  # its facts (classes, preprocessing) serve checkpoints directly
        super().__init__(model_from_checkpoint(self.checkpoint), device, threads)


def share_cores(backend: Backend) -> None:
    """Process-wide thread policy for a process that serves ``backend`` (a worker, a benchmark child).

    With ONNX Runtime on the CPU, torch only preprocesses (one image at a time): its own pool would fight
    ONNX Runtime's for the same cores, so it gets one thread. Not for shared processes (tests, notebooks).
    """
    if backend.name == "onnx" and backend.device == "cpu":
        torch.set_num_threads(1)


def pick_model_file(card: ModelCard, backend: str) -> ModelFile:
    if backend not in BACKENDS:
        raise ConvserveError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    wanted = AUTO_ORDER if backend == "auto" else (backend,)
    for fmt in wanted:
        found = card.file(fmt)
        if found is not None:
            return found
    listed = ", ".join(f.format for f in card.files) or "none"
    raise ConvserveError(f"artifact {card.name!r} has no {backend} model file (formats listed: {listed})")


def verify_model_file(folder: Path, model_file: ModelFile) -> Path:
    """The file the card describes, byte for byte (a stale or damaged file is refused, not served)."""
    path = Path(folder) / model_file.path
    if not path.resolve().is_relative_to(Path(folder).resolve()):  # the card's path is checked; a link is not
        raise ConvserveError(f"model file {path} leads outside the artifact folder {folder}; refused")
    if not path.is_file():
        raise ConvserveError(f"model file {path} listed in the card is missing")
    if path.stat().st_size != model_file.size_bytes:
        raise ConvserveError(f"{path} is {path.stat().st_size} bytes, the card says {model_file.size_bytes}")
    if sha256_file(path) != model_file.sha256:
        raise ConvserveError(f"{path} does not match the sha256 in the card (file changed after export?)")
    return path


def load_backend(folder: Path, model_file: ModelFile, device: str, threads: int | None = None) -> Backend:
    path = verify_model_file(folder, model_file)
    if model_file.format.startswith("onnx"):
        return OnnxBackend(path, device, threads)
    if model_file.format == "torchscript":
        return TorchScriptBackend(path, device, threads)
    return EagerBackend(path, device, threads)
