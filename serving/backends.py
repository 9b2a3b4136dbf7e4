"""Inference backends behind one small interface: float32 (N, 3, S, S) batch in, (N, classes) logits out.

- ``OnnxBackend``: ONNX Runtime; CUDA provider when a GPU is visible and asked for, else CPU. The input
  name and dtype are read from the session (exporters name inputs differently; fp16 models take float16).
- ``TorchScriptBackend``: ``torch.jit.load`` of model.ts.pt.
- ``EagerBackend``: model.pt (our checkpoint) rebuilt with training's builders; needs the ``training``
  package importable (the archive ships it when built with ``--backend eager``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from common.errors import ConvserveError, first_line
from common.files import sha256_file
from common.host_memory import trim_heap
from export.artifact import ModelCard, ModelFile
from serving.cpu_share import default_threads

# auto picks the first format the card lists, in this order
AUTO_ORDER = ("onnx", "torchscript", "eager", "onnx-fp16", "onnx-int8")
BACKENDS = ("auto", *AUTO_ORDER)


class Backend(Protocol):
    name: str
    device: str

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...


class OnnxBackend:
    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning pool threads burn the cores that decode, preprocessing and TorchServe's frontend need
        # between calls: with spinning off (and one torch thread, share_cores) served int8 AlexNet p50 went
        # from 20.0 to 12.0 ms and fp32 from 117 to 23 ms on 2 cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        # No CPU arena: it keeps the largest batch's activations for good (int8 AlexNet worker: -30 MB RSS) and
        # measured no slower at batch 1 or 8.
        options.enable_cpu_mem_arena = False
        providers: list = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            index = int(device.split(":")[1]) if ":" in device else 0
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise ConvserveError(f"ONNX Runtime cannot load {path}: {first_line(exc)}") from None
        trim_heap()  # parsing the model file left its bytes as free heap: return them (-15 to -30 MB RSS)
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.input_dtype = np.float16 if first.type == "tensor(float16)" else np.float32
        self.name = "onnx"
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        feed = batch.detach().cpu().numpy().astype(self.input_dtype, copy=False)
        (logits,) = self.session.run(None, {self.input_name: feed})[:1]
        return torch.from_numpy(np.asarray(logits, dtype=np.float32))


class _TorchBackend:
    name = "torch"

    def __init__(self, model: torch.nn.Module, device: str, threads: int | None):
        torch.set_num_threads(threads or default_threads())
        self.device = device
        self.model = model.to(device).eval()

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch.to(self.device)).float().cpu()


class TorchScriptBackend(_TorchBackend):
    name = "torchscript"

    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None):
        try:
            model = torch.jit.load(str(path), map_location=device)
        except (RuntimeError, ValueError, OSError) as exc:
            raise ConvserveError(f"cannot load TorchScript model {path}: {first_line(exc)}") from None
        super().__init__(model, device, threads)


class EagerBackend(_TorchBackend):
    name = "eager"

    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None):
        try:
            from training.checkpoint import load_checkpoint
            from training.models import model_from_checkpoint
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
