"""Real images for the parity check, turned into model input the way serving turns a request into it.

- ``image_file_tensor`` / ``sample_photos``: encoded bytes (the user's ``--check-images`` files; scikit-image's
  bundled photos, colour and grayscale, various sizes, PNG-encoded) → common/images.py's decoder →
  common/preprocessing.py's ``prepare_batch``: the handler's own decode and preprocessing.
- ``held_out_batch``: a held-out batch of the checkpoint's own dataset, when its files are on this machine,
  through the same preprocessing (the dataset's loader decodes with the same decoder).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from convserve.common.errors import ConvserveError, InputError
from convserve.common.files import read_image_bytes
from convserve.common.images import decode_image
from convserve.common.preprocessing import Preprocessing, prepare_batch
from convserve.models.checkpoint import Checkpoint

log = logging.getLogger(__name__)

# bundled with scikit-image (no download): colour and grayscale, portrait and landscape, 300 to 800 px
SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins")


def served_batch(encoded: list[bytes], pre: Preprocessing) -> torch.Tensor:
    """Encoded images → the model's input batch, by the decode and preprocessing serving runs on a request."""
    return prepare_batch([decode_image(data, pre.channels, pre.max_pixels) for data in encoded], pre)


def image_file_tensor(path: Path, pre: Preprocessing) -> torch.Tensor:
    """The model's input for an image file, as serving would compute it from the file's bytes."""
    try:
        return served_batch([read_image_bytes(path)], pre)[0]
    except InputError as exc:
        raise ConvserveError(f"check image {path} cannot be decoded: {exc.message}") from None


def sample_photo_bytes(names: tuple[str, ...] = SAMPLE_PHOTOS) -> list[bytes]:
    """scikit-image's sample photos, PNG-encoded (lossless): what a client would send."""
    from skimage import data

    out = []
    for name in names:
        array = getattr(data, name)()
        buf = io.BytesIO()
        Image.fromarray(array[..., :3] if array.ndim == 3 else array).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def sample_photos(pre: Preprocessing, names: tuple[str, ...] = SAMPLE_PHOTOS) -> torch.Tensor:
    """scikit-image's sample photos, from their encoded bytes → (N, 3, S, S)."""
    return served_batch(sample_photo_bytes(names), pre)


def dataset_split(ckpt: Checkpoint, split: str):
    """The checkpoint's own ``split`` with its preprocessing; ConvserveError when it cannot be built here."""
    from convserve.training.data.registry import build_eval_split, data_config_for

    cfg, seed = data_config_for(ckpt, None, None)
    dataset, _ = build_eval_split(cfg, ckpt.arch, seed, split, ckpt.preprocessing)
    return dataset


def held_out_batch(ckpt: Checkpoint, limit: int) -> tuple[str, torch.Tensor] | None:
    """Up to ``limit`` preprocessed images of the test split (else val), or None when the data is not here."""
    problems = []
    for split in ("test", "val"):
        try:
            found = dataset_split(ckpt, split)
        except ConvserveError as exc:
            problems.append(str(exc))
            continue
        count = min(limit, len(found))
        return f"{ckpt.dataset or 'dataset'} {split} split", torch.stack([found[i][0] for i in range(count)])
    log.warning("no held-out images of the checkpoint's dataset here (%s)", problems[0])
    return None


@dataclass
class CheckImages:
    """The images a parity check runs on, with where each group came from."""

    tensors: list[torch.Tensor] = field(default_factory=list)
    sources: dict[str, int] = field(default_factory=dict)

    def add(self, source: str, batch: torch.Tensor) -> None:
        if len(batch):
            self.tensors.append(batch)
            self.sources[source] = self.sources.get(source, 0) + len(batch)

    def batch(self) -> torch.Tensor:
        return torch.cat(self.tensors)


def collect_check_images(
    ckpt: Checkpoint, files: list[Path], dataset_images: int = 64, photos: bool = True
) -> CheckImages:
    """A held-out dataset batch (test split, else val) + ``files`` + sample photos."""
    images = CheckImages()
    held_out = held_out_batch(ckpt, dataset_images) if dataset_images else None
    if held_out is not None:
        images.add(*held_out)
    if files:
        images.add("--check-images", torch.stack([image_file_tensor(p, ckpt.preprocessing) for p in files]))
    if photos:
        images.add("scikit-image sample photos", sample_photos(ckpt.preprocessing))
    return images
