"""Real images for the parity check, preprocessed exactly as training's EvalPreset does.

- ``image_file_tensor``: an image file → normalised (3, S, S) float tensor from a checkpoint's Preprocessing
  (Pillow decode with EXIF orientation, transparency on white, grayscale when the model was trained on it;
  torchvision.io's decoders are deprecated since torchvision 0.29).
- ``sample_photos``: scikit-image's bundled photos (colour and grayscale, various sizes), always available.
- ``dataset_batch``: a held-out batch of the checkpoint's own dataset, when its files are on this machine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from common.errors import ConvserveError, first_line
from common.preprocessing import Preprocessing
from training.checkpoint import Checkpoint
from training.data.presets import EvalPreset

log = logging.getLogger(__name__)

# bundled with scikit-image (no download): colour and grayscale, portrait and landscape, 300 to 800 px
SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins")


def pil_to_tensor(img: Image.Image, channels: int) -> torch.Tensor:
    """A decoded Pillow image → uint8 (channels, H, W); RGB for 3-channel models, L for grayscale ones."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    array = np.array(img.convert("L" if channels == 1 else "RGB"))
    tensor = torch.from_numpy(array)
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def image_file_tensor(path: Path, pre: Preprocessing) -> torch.Tensor:
    """Decode ``path`` and preprocess it with EvalPreset(pre): the model's input for that file."""
    try:
        with Image.open(path) as img:
            img.load()
            raw = pil_to_tensor(img, pre.channels)
    except FileNotFoundError:
        raise ConvserveError(f"check image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = first_line(exc)
        raise ConvserveError(f"check image {path} cannot be decoded: {reason}") from None
    return EvalPreset(pre)(raw)


def sample_photos(pre: Preprocessing, names: tuple[str, ...] = SAMPLE_PHOTOS) -> torch.Tensor:
    """scikit-image's sample photos, preprocessed → (N, 3, S, S)."""
    from skimage import data

    preset = EvalPreset(pre)
    out = []
    for name in names:
        array = getattr(data, name)()
        img = Image.fromarray(array[..., :3] if array.ndim == 3 else array)
        out.append(preset(pil_to_tensor(img, pre.channels)))
    return torch.stack(out)


def dataset_split(ckpt: Checkpoint, split: str):
    """The checkpoint's own ``split`` with its preprocessing; ConvserveError when it cannot be built here."""
    from training.data.registry import build_eval_split
    from training.evaluate import data_config_for

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
