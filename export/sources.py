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

from common.errors import ConvserveError, first_line
from common.files import sha256_file
from common.preprocessing import Preprocessing
from export.artifact import SourceCard
from training.checkpoint import Checkpoint, load_checkpoint

log = logging.getLogger(__name__)

TORCHVISION_ARCHS = ("alexnet", "resnet18", "resnet34")
RANDOM_SEED = 0  # random weights are seeded, so to_onnx and to_torchscript export the same model


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


def torchvision_source(arch: str, weights_name: str = "IMAGENET1K_V1") -> ExportSource:
    """torchvision's ImageNet model; without its weights file (no internet) a seeded random model, said loudly."""
    import torchvision

    if arch not in TORCHVISION_ARCHS:
        raise ConvserveError(f"--torchvision {arch!r}: choose one of {', '.join(TORCHVISION_ARCHS)}")
    try:
        weights = torchvision.models.get_model_weights(arch)[weights_name]
    except KeyError:
        known = ", ".join(w.name for w in torchvision.models.get_model_weights(arch))
        raise ConvserveError(f"--weights {weights_name!r} is not a {arch} weight set ({known})") from None
    model, random_weights, reason = _load_weights(arch, weights)
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
        model_state=model.state_dict(),
        metrics={} if random_weights else metrics,
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
        log.warning(
            "RANDOM WEIGHTS: torchvision's %s weights could not be loaded (%s); exporting a seeded random %s "
            "whose predictions are meaningless (the card says source.random_weights = true)",
            weights.name,
            reason,
            arch,
        )
    return ExportSource(ckpt=ckpt, name=name, card=card)


def _imagenet_metrics(weights) -> dict[str, float]:
    return dict(weights.meta.get("_metrics", {}).get("ImageNet-1K", {}))


def _load_weights(arch: str, weights) -> tuple[torch.nn.Module, bool, str]:
    import torchvision

    try:
        return torchvision.models.get_model(arch, weights=weights).eval(), False, ""
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a damaged file a RuntimeError
        reason = first_line(exc)
    with torch.random.fork_rng():
        torch.manual_seed(RANDOM_SEED)
        model = torchvision.models.get_model(arch, weights=None, num_classes=len(weights.meta["categories"]))
    return model.eval(), True, reason
