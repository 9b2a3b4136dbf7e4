"""The stock TorchServe path, for reference: the eager model under TorchServe's built-in ``image_classifier``.

The archive is what TorchServe's own examples ship (examples/image_classifier/alexnet): ``model.py`` with ONE
class building the architecture, the weights as a plain state_dict (``model.pth``), ``index_to_name.json``,
and ``--handler image_classifier``. That handler always resizes to 256, centre-crops 224 and normalises with
ImageNet statistics in PIL + torchvision transforms, one image at a time, so the reference is only meaningful
(and only built) for a model whose card says exactly that.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from convserve.artifact.card import INDEX_FILE, ModelCard, read_card
from convserve.benchmarking.results import Batching
from convserve.common.errors import ConvserveError
from convserve.models.checkpoint import load_checkpoint
from convserve.serving.backends import pick_model_file, verify_model_file

STOCK_HANDLER = "image_classifier"
STOCK_PREPROCESSING = {
    "input_size": 224,
    "resize_size": 256,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "channels": 3,
}
RESNET_LAYERS = {"resnet18": ("BasicBlock", [2, 2, 2, 2]), "resnet34": ("BasicBlock", [3, 4, 6, 3])}


def stock_unsupported(card: ModelCard) -> str | None:
    """Why the stock handler cannot stand in for this model, or None when it can."""
    pre = card.preprocessing.model_dump()
    differs = [
        k
        for k, v in STOCK_PREPROCESSING.items()
        if (pre[k] != v if not isinstance(v, list) else any(abs(a - b) > 1e-6 for a, b in zip(pre[k], v, strict=True)))
    ]
    if differs or card.preprocessing.interpolation != "bilinear":
        return (
            "the stock image_classifier handler always feeds 224 px ImageNet-normalised RGB (resize 256, crop 224); "
            f"this model's card differs in {', '.join(differs) or 'interpolation'}"
        )
    if card.activation != "relu":
        return f"the stock model.py builds torchvision's architecture with ReLU; this model uses {card.activation}"
    if card.arch == "alexnet":
        return None
    if card.arch in RESNET_LAYERS and not card.model_options.get("small_input_stem"):
        return None
    return f"no stock model.py for {card.arch} (alexnet, resnet18, resnet34 with the ImageNet stem only)"


def model_source(card: ModelCard) -> str:
    """model.py: one class, no constructor arguments, torchvision's architecture (TorchServe's own examples)."""
    if card.arch == "alexnet":
        dropout = float(card.model_options.get("dropout", 0.5))
        return (
            "from torchvision.models.alexnet import AlexNet\n\n\n"
            "class ImageClassifier(AlexNet):\n"
            "    def __init__(self):\n"
            f"        super().__init__(num_classes={card.num_classes}, dropout={dropout})\n"
        )
    block, layers = RESNET_LAYERS[card.arch]
    return (
        f"from torchvision.models.resnet import {block}, ResNet\n\n\n"
        "class ImageClassifier(ResNet):\n"
        "    def __init__(self):\n"
        f"        super().__init__({block}, {layers}, num_classes={card.num_classes})\n"
    )


def build_stock_archive(
    artifact_dir: Path, model_name: str, store: Path, batching: Batching, workers: int = 1, force: bool = False
) -> Path:
    """STORE/MODEL_NAME.mar for the stock handler from the artifact's eager weights (model.pt)."""
    artifact_dir = Path(artifact_dir)
    card = read_card(artifact_dir)
    reason = stock_unsupported(card)
    if reason:
        raise ConvserveError(f"stock reference not built: {reason}")
    weights = verify_model_file(artifact_dir, pick_model_file(card, "eager"))
    target = Path(store) / f"{model_name}.mar"
    if target.exists() and not force:
        raise ConvserveError(f"{target} exists; pass force to overwrite it")
    Path(store).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="convserve-stock-") as tmp:
        stage = Path(tmp)
        (stage / "model.py").write_text(model_source(card))
        torch.save(load_checkpoint(weights).model_state, stage / "model.pth")
        config = {
            "minWorkers": workers,
            "maxWorkers": workers,
            "batchSize": batching.batch_size,
            "maxBatchDelay": batching.max_batch_delay_ms,
            "responseTimeout": 120,
        }
        (stage / "model-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        cmd = [str(Path(sys.executable).with_name("torch-model-archiver")), "--model-name", model_name]
        cmd += ["--version", "1.0", "--handler", STOCK_HANDLER, "--model-file", str(stage / "model.py")]
        cmd += ["--serialized-file", str(stage / "model.pth"), "--extra-files", str(artifact_dir / INDEX_FILE)]
        cmd += ["--config-file", str(stage / "model-config.yaml"), "--export-path", str(store)]
        cmd += ["--archive-format", "zip-store", "--force"]
        # the archiver stages in $TMPDIR/<model-name>: keep concurrent archivers apart
        done = subprocess.run(cmd, env=dict(os.environ, TMPDIR=tmp), capture_output=True, text=True)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            raise ConvserveError(f"torch-model-archiver failed: {lines[-1] if lines else done.returncode}")
    return target
