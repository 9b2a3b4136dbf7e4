"""Serving test helpers: small artifact folders, eager reference predictions, free ports.

The integration tests serve what export/to_onnx.py and to_torchscript.py write. The unit tests use
``build_artifact``, which writes the same folder contract (artifact/card.py) straight from a checkpoint in
seconds, also for untrained models the exporter's parity checks have no dataset for; its ONNX input is named
"pixels" (the exporter's is "input"), so serving's reading of the name from the session is exercised.
"""

from __future__ import annotations

import hashlib
import io
import socket
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from convserve.artifact.card import ModelCard, ModelFile, write_card, write_index_to_name
from convserve.common.preprocessing import Preprocessing
from convserve.models import model_from_checkpoint
from convserve.models.builders import build_model
from convserve.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from convserve.training.data.presets import EvalPreset

FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.ts.pt", "eager": "model.pt"}


def _model_file(folder: Path, name: str, fmt: str) -> ModelFile:
    data = (folder / name).read_bytes()
    return ModelFile(path=name, format=fmt, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def _write_model(fmt: str, model: torch.nn.Module, ckpt, path: Path) -> None:
    size = ckpt.preprocessing.input_size
    example = torch.randn(2, 3, size, size)
    if fmt == "onnx":
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["pixels"],  # not "input": serving must read the name from the session
            output_names=["logits"],
            dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    elif fmt == "torchscript":
        with torch.no_grad():
            torch.jit.trace(model, example).save(str(path))
    else:
        save_checkpoint(ckpt, path)


def random_run(run_dir: Path, num_classes: int = 10, channels: int = 1, input_size: int = 16) -> Path:
    """A run folder whose best.pt holds an untrained MLP: real checkpoint, real files, no training time."""
    torch.manual_seed(0)
    model, options = build_model("mlp", num_classes, input_size)
    gray = channels == 1
    ckpt = Checkpoint(
        arch="mlp",
        num_classes=num_classes,
        class_names=[f"class-{i}" for i in range(num_classes)],
        preprocessing=Preprocessing(
            input_size=input_size,
            resize_size=input_size + 2,
            mean=[0.3] * 3 if gray else [0.485, 0.456, 0.406],
            std=[0.35] * 3 if gray else [0.229, 0.224, 0.225],
            channels=channels,
        ),
        activation="relu",
        model_options=options,
        model_state=model.state_dict(),
        dataset="random",
    )
    save_checkpoint(ckpt, Path(run_dir) / "checkpoints" / "best.pt")
    return Path(run_dir)


def build_artifact(run_dir: Path, folder: Path, formats: tuple[str, ...] = ("onnx", "torchscript", "eager")) -> Path:
    """Write model files, model_card.json and index_to_name.json for the run's best checkpoint."""
    ckpt = load_checkpoint(Path(run_dir) / "checkpoints" / "best.pt")
    model = model_from_checkpoint(ckpt)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for fmt in formats:
        _write_model(fmt, model, ckpt, folder / FILE_NAMES[fmt])
        files.append(_model_file(folder, FILE_NAMES[fmt], fmt))
    card = ModelCard(
        name=f"{ckpt.arch}-{ckpt.dataset or 'digits'}",
        arch=ckpt.arch,
        num_classes=ckpt.num_classes,
        class_names=ckpt.class_names,
        activation=ckpt.activation,
        model_options=ckpt.model_options,
        preprocessing=ckpt.preprocessing,
        files=files,
    )
    write_card(folder, card)
    write_index_to_name(folder, ckpt.class_names)
    return folder


class EagerReference:
    """The training-side truth: checkpoint model + EvalPreset on Pillow-decoded images."""

    def __init__(self, run_dir: Path):
        self.ckpt = load_checkpoint(Path(run_dir) / "checkpoints" / "best.pt")
        self.model = model_from_checkpoint(self.ckpt)
        self.preset = EvalPreset(self.ckpt.preprocessing)

    def tensor(self, data: bytes) -> torch.Tensor:
        mode = "L" if self.ckpt.preprocessing.channels == 1 else "RGB"
        img = Image.open(io.BytesIO(data)).convert(mode)
        array = torch.from_numpy(np.asarray(img).copy())
        return array.unsqueeze(0) if array.ndim == 2 else array.permute(2, 0, 1)

    @torch.inference_mode()
    def probabilities(self, data: bytes) -> torch.Tensor:
        batch = self.preset(self.tensor(data)).unsqueeze(0)
        return torch.softmax(self.model(batch), dim=1)[0]

    def top1(self, data: bytes) -> tuple[str, float]:
        """Eager top-1 label and its margin over the runner-up (near-ties are not a disagreement)."""
        probs = self.probabilities(data)
        top = probs.topk(2)
        return self.ckpt.class_names[int(top.indices[0])], float(top.values[0] - top.values[1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
