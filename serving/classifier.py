"""Plain-Python image classifier over an artifact folder: decode → preprocess → batched inference → top-k.

No TorchServe here: the handler, tests and any script use the same object.

    clf = Classifier.from_artifact("artifacts/alexnet-digits", backend="onnx")
    clf.predict([open("cat.jpg", "rb").read()])   # [{"3": 0.91, "8": 0.05, ...}] top-5, descending
"""

from __future__ import annotations

from pathlib import Path

import torch

from convserve.artifact.card import ModelCard, read_card, read_index_to_name, unique_labels
from convserve.common.devices import choose_device
from convserve.common.errors import ConvserveError
from convserve.common.images import decode_image
from convserve.common.preprocessing import prepare_batch
from convserve.serving.backends import Backend, EagerBackend, load_backend, pick_model_file

TOP_K = 5


class Classifier:
    def __init__(self, card: ModelCard, labels: list[str], backend: Backend, top_k: int = TOP_K):
        if len(labels) != card.num_classes:
            raise ConvserveError(f"{len(labels)} labels in index_to_name.json for {card.num_classes} classes")
        self.card = card
        self.labels = labels
        self.backend = backend
        self.k = max(1, min(top_k, card.num_classes))

    @classmethod
    def from_artifact(
        cls,
        folder: Path | str,
        backend: str = "auto",
        device: str | None = None,
        threads: int | None = None,
        top_k: int = TOP_K,
    ) -> Classifier:
        """Load the card, the labels and one model file; ``backend``: auto|onnx|torchscript|eager|onnx-fp16|..."""
        folder = Path(folder)
        card = read_card(folder)
        model_file = pick_model_file(card, backend)
        runner = load_backend(folder, model_file, str(choose_device(device)), threads)
        return cls(card, read_index_to_name(folder), runner, top_k)

    @classmethod
    def from_checkpoint(
        cls, path: Path | str, device: str | None = None, threads: int | None = None, top_k: int = TOP_K
    ) -> Classifier:
        """A training checkpoint served by the eager backend, with the facts the checkpoint carries."""
        runner = EagerBackend(Path(path), str(choose_device(device)), threads)
        ckpt = runner.checkpoint
        card = ModelCard(
            name=Path(path).stem,
            arch=ckpt.arch,
            num_classes=ckpt.num_classes,
            class_names=ckpt.class_names,
            activation=ckpt.activation,
            preprocessing=ckpt.preprocessing,
        )
        return cls(card, unique_labels(ckpt.class_names), runner, top_k)

    def decode(self, data: bytes) -> torch.Tensor:
        """Encoded bytes → uint8 (C, H, W) with the card's channel count; raises InputError (4xx) on bad data."""
        pre = self.card.preprocessing
        return decode_image(data, channels=pre.channels, max_pixels=pre.max_pixels)

    def preprocess(self, images: list[torch.Tensor]) -> torch.Tensor:
        return prepare_batch(images, self.card.preprocessing)

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.backend(batch)
        if logits.ndim != 2 or logits.shape != (batch.shape[0], self.card.num_classes):
            raise ConvserveError(
                f"the {self.backend.name} model returned shape {tuple(logits.shape)}, "
                f"expected ({batch.shape[0]}, {self.card.num_classes})"
            )
        return torch.softmax(logits.float(), dim=1)

    def top_k(self, probs: torch.Tensor) -> list[dict[str, float]]:
        """One {label: probability} per row, the k most likely first (JSON keeps this order)."""
        values, indices = probs.topk(self.k, dim=1)
        return [
            {self.labels[i]: float(p) for p, i in zip(row_p.tolist(), row_i.tolist(), strict=True)}
            for row_p, row_i in zip(values, indices, strict=True)
        ]

    def classify(self, images: list[torch.Tensor]) -> list[dict[str, float]]:
        """Decoded images → top-k answers, one batched inference."""
        if not images:
            return []
        return self.top_k(self.probabilities(self.preprocess(images)))

    def predict(self, encoded: list[bytes]) -> list[dict[str, float]]:
        """Encoded images → top-k answers; the first bad image raises its InputError."""
        return self.classify([self.decode(data) for data in encoded])
