"""What an export starts from: a convserve checkpoint file, or one of torchvision's ImageNet models.

Either way the result is a ``Checkpoint`` object (so the eager copy, model.pt, is our own format) plus the
facts for the card's ``source`` section and the artifact's default name.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from convserve.artifact.card import SourceCard
from convserve.common.errors import ConvserveError
from convserve.common.files import sha256_file
from convserve.common.preprocessing import Preprocessing
from convserve.models.builders import load_pretrained
from convserve.models.checkpoint import Checkpoint, load_checkpoint

log = logging.getLogger(__name__)

TORCHVISION_ARCHS = ("alexnet", "resnet18", "resnet34")
RANDOM_SEED = 0  # random weights are seeded, so to_onnx and to_torchscript export the same model
RANDOM_WEIGHTS = "RANDOM WEIGHTS"  # how every note about an untrained model starts (cards, benchmark tables)
# what the error for weights that cannot be loaded offers instead of placing the file
RANDOM_INSTEAD = "pass --random-weights to export a seeded untrained model (for timings only)"


@dataclass
class ExportSource:
    ckpt: Checkpoint
    name: str  # the artifact's default folder name under artifacts/
    card: SourceCard

    @property
    def identity(self) -> str:
        return self.card.checkpoint_sha256 or self.card.weights_sha256 or ""

    @property
    def has_dataset(self) -> bool:
        return self.card.torchvision_weights is None and not self.card.random_weights


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """A digest of the tensors themselves (names, dtypes, shapes, bytes), independent of any file format."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def default_name(path: Path) -> str:
    """runs/<name>/checkpoints/best.pt → <name>; any other file → its stem (or its folder's name for model.pt)."""
    path = Path(path).resolve()
    if path.parent.name == "checkpoints" and path.parent.parent.name:
        return path.parent.parent.name
    return path.parent.name if path.stem in ("model", "best", "last") and path.parent.name else path.stem


def checkpoint_source(path: Path) -> ExportSource:
    ckpt = load_checkpoint(path)
    metrics = {k: v for k, v in ckpt.metrics.items() if isinstance(v, int | float) or v is None}
    card = SourceCard(
        checkpoint=str(Path(path).resolve()),
        checkpoint_sha256=sha256_file(path),
        dataset=ckpt.dataset or None,
        epoch=ckpt.epoch,
        metrics=metrics,
        weights_sha256=weights_sha256(ckpt.model_state),
    )
    return ExportSource(ckpt=ckpt, name=default_name(path), card=card)


def torchvision_source(arch: str, weights_name: str = "IMAGENET1K_V1", random_weights: bool = False) -> ExportSource:
    """torchvision's ImageNet model with its trained weights; weights it cannot load are a one-line error.

    ``random_weights`` (--random-weights): a seeded, untrained model instead, with the weight set's classes and
    preprocessing, and nothing downloaded; for measurements that do not depend on the weights' values (timings,
    sizes). The card says so first thing (``random_weights_note``).
    """
    import torchvision

    if arch not in TORCHVISION_ARCHS:
        raise ConvserveError(f"--torchvision {arch!r}: choose one of {', '.join(TORCHVISION_ARCHS)}")
    try:
        weights = torchvision.models.get_model_weights(arch)[weights_name]
    except KeyError:
        known = ", ".join(w.name for w in torchvision.models.get_model_weights(arch))
        raise ConvserveError(f"--weights {weights_name!r} is not a {arch} weight set ({known})") from None
    model = _random_model(arch, weights) if random_weights else load_pretrained(arch, weights, RANDOM_INSTEAD)
    categories = list(weights.meta["categories"])
    transforms = weights.transforms()
    pre = Preprocessing(
        input_size=int(transforms.crop_size[0]),
        resize_size=int(transforms.resize_size[0]),
        mean=[float(v) for v in transforms.mean],
        std=[float(v) for v in transforms.std],
        channels=3,
        interpolation=transforms.interpolation.value,
    )
    options = {"input_size": pre.input_size, "dropout": 0.5}
    if arch.startswith("resnet"):
        options["small_input_stem"] = False
    metrics = {f"imagenet_{k.lower().replace('@', '')}": float(v) for k, v in _imagenet_metrics(weights).items()}
    ckpt = Checkpoint(
        arch=arch,
        num_classes=len(categories),
        class_names=categories,
        preprocessing=pre,
        activation="relu",
        model_options=options,
        model_state=model.eval().state_dict(),
        metrics={} if random_weights else metrics,  # torchvision's accuracy is its trained weights', not these
        dataset="imagenet",
    )
    card = SourceCard(
        dataset="imagenet",
        metrics=ckpt.metrics,
        torchvision_weights=f"{arch}:{weights.name}",
        random_weights=random_weights,
        weights_sha256=weights_sha256(ckpt.model_state),
    )
    name = f"{arch}-imagenet" + ("-random" if random_weights else "")
    if random_weights:
        log.warning("%s", random_weights_note(card))
    return ExportSource(ckpt=ckpt, name=name, card=card)


def random_weights_note(card: SourceCard) -> str:
    """The line that leads the notes of a model card (and the benchmark tables) of an untrained model."""
    return (
        f"{RANDOM_WEIGHTS} (--random-weights): seeded random, not trained; torchvision's {card.torchvision_weights} "
        "weights were not used, so predictions are meaningless (timings and sizes are not)"
    )


def _imagenet_metrics(weights) -> dict[str, float]:
    return dict(weights.meta.get("_metrics", {}).get("ImageNet-1K", {}))


def _random_model(arch: str, weights) -> torch.nn.Module:
    import torchvision

    with torch.random.fork_rng():
        torch.manual_seed(RANDOM_SEED)
        return torchvision.models.get_model(arch, weights=None, num_classes=len(weights.meta["categories"]))
