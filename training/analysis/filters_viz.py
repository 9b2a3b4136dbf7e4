"""Pictures of what the conv layers learned: filter grids per layer (layer 1 also in colour) and feature maps.

Grids are composed pixel-exactly with Pillow (no axes): ``tile`` px per filter or map, 2 px gaps, at most
8 columns, so the size of every file follows from the number of tiles (``grid_size``).
Filters of deeper layers have many input channels; their tile is the mean over input channels, on one
blue-white-red scale per layer (red positive), so tiles compare within a layer. Feature maps are each conv
layer's output (before its activation) for one image, each map scaled to its own range (viridis).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image
from torch import nn

from convserve.common.errors import ConvserveError
from convserve.common.images import decode_file
from convserve.models import model_from_checkpoint
from convserve.models.checkpoint import Checkpoint, load_checkpoint
from convserve.training.data.presets import EvalPreset

PAD = 2
MAX_COLUMNS = 8
FILTER_TILE = 48
MAP_TILE = 64


@dataclass
class ConvLayer:
    number: int  # 1-based, in model order
    name: str
    module: nn.Conv2d

    @property
    def stem(self) -> str:
        return f"{self.number:02d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', self.name)}"


def conv_layers(model: nn.Module) -> list[ConvLayer]:
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return [ConvLayer(k, n, m) for k, (n, m) in enumerate(convs, start=1)]


def select_layers(layers: list[ConvLayer], wanted: list[str] | None, arch: str) -> list[ConvLayer]:
    """``wanted`` items are 1-based layer numbers or module names (e.g. ``features.3``); None: all."""
    if not layers:
        raise ConvserveError(f"a {arch} model has no conv layers, so it has no filters to show")
    if not wanted:
        return layers
    by_name = {layer.name: layer for layer in layers}
    chosen = []
    for item in wanted:
        layer = layers[int(item) - 1] if item.isdigit() and 1 <= int(item) <= len(layers) else by_name.get(item)
        if layer is None:
            names = ", ".join(f"{x.number}={x.name}" for x in layers)
            raise ConvserveError(f"no conv layer {item!r} in this {arch}; layers: {names}")
        if layer not in chosen:
            chosen.append(layer)
    return chosen


def grid_size(tiles: int, tile: int) -> tuple[int, int]:
    """(width, height) in pixels of a grid of ``tiles`` tiles."""
    cols = min(tiles, MAX_COLUMNS)
    rows = math.ceil(tiles / cols)
    return cols * tile + (cols + 1) * PAD, rows * tile + (rows + 1) * PAD


def compose_grid(tiles: list[np.ndarray], tile: int) -> Image.Image:
    """RGB float tiles in [0, 1] (h, w, 3), scaled up with nearest neighbour so each kernel weight stays a block."""
    width, height = grid_size(len(tiles), tile)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    for k, array in enumerate(tiles):
        row, col = divmod(k, MAX_COLUMNS)
        img = Image.fromarray(np.clip(np.round(array * 255), 0, 255).astype(np.uint8)).resize(
            (tile, tile), Image.NEAREST
        )
        canvas.paste(img, (PAD + col * (tile + PAD), PAD + row * (tile + PAD)))
    return canvas


def filter_tiles(weight: torch.Tensor, n: int) -> list[np.ndarray]:
    mean = weight[:n].float().mean(dim=1).numpy()
    scale = float(np.abs(mean).max()) or 1.0
    cmap = colormaps["RdBu_r"]
    return [cmap((w / scale + 1) / 2)[..., :3] for w in mean]


def rgb_filter_tiles(weight: torch.Tensor, n: int) -> list[np.ndarray]:
    tiles = []
    for w in weight[:n].float().permute(0, 2, 3, 1).numpy():
        span = w.max() - w.min()
        tiles.append((w - w.min()) / span if span > 0 else np.full_like(w, 0.5))
    return tiles


def map_tiles(activation: torch.Tensor, n: int) -> list[np.ndarray]:
    cmap = colormaps["viridis"]
    tiles = []
    for m in activation[:n].float().numpy():
        span = m.max() - m.min()
        tiles.append(cmap((m - m.min()) / span if span > 0 else np.zeros_like(m))[..., :3])
    return tiles


def feature_maps(model: nn.Module, layers: list[ConvLayer], batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each layer's output for one image, via forward hooks; cloned because an in-place ReLU follows most convs."""
    captured: dict[str, torch.Tensor] = {}
    handles = [
        layer.module.register_forward_hook(
            lambda _m, _i, out, name=layer.name: captured.__setitem__(name, out[0].detach().clone())
        )
        for layer in layers
    ]
    try:
        with torch.inference_mode():
            model(batch)
    finally:
        for h in handles:
            h.remove()
    return captured


def default_output_dir(checkpoint: Path) -> Path:
    """RUN/filters/<checkpoint stem>-<timestamp>/: a new folder each time, so earlier pictures stay."""
    checkpoint = Path(checkpoint)
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    stem = f"{checkpoint.stem}-{datetime.now():%Y%m%d-%H%M%S}"
    path, k = run / "filters" / stem, 2
    while path.exists():
        path, k = run / "filters" / f"{stem}-{k}", k + 1
    return path


def _input_picture(batch: torch.Tensor, ckpt: Checkpoint) -> np.ndarray:
    """The model's input undone back to [0, 1]: what the network actually saw after resize and crop."""
    mean = torch.tensor(ckpt.preprocessing.mean).view(3, 1, 1)
    std = torch.tensor(ckpt.preprocessing.std).view(3, 1, 1)
    return (batch[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def plan_files(layers: list[ConvLayer], with_image: bool) -> list[str]:
    names = []
    for layer in layers:
        names.append(f"filters_{layer.stem}.png")
        if layer.number == 1 and layer.module.in_channels == 3:
            names.append(f"filters_{layer.stem}_rgb.png")
    if with_image:
        names.append("input.png")
        names += [f"maps_{layer.stem}.png" for layer in layers]
    return names


def write_filter_pictures(
    checkpoint: Path,
    image: Path | None = None,
    layers: list[str] | None = None,
    n: int = 8,
    output_dir: Path | None = None,
    force: bool = False,
) -> list[Path]:
    """Write the PNGs and return their paths; an explicit ``output_dir`` keeps existing files unless ``force``."""
    if n < 1:
        raise ConvserveError(f"--n must be at least 1, got {n}")
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt)
    chosen = select_layers(conv_layers(model), layers, ckpt.arch)
    batch = (
        EvalPreset(ckpt.preprocessing)(decode_file(image, ckpt.preprocessing.channels)).unsqueeze(0) if image else None
    )
    out = Path(output_dir) if output_dir else default_output_dir(checkpoint)
    clashes = [name for name in plan_files(chosen, batch is not None) if (out / name).exists()]
    if clashes and not force:
        raise ConvserveError(f"{out} already holds {', '.join(clashes[:3])}; pick another --output-dir or pass --force")
    out.mkdir(parents=True, exist_ok=True)
    pictures: dict[str, Image.Image] = {}
    for layer in chosen:
        weight = layer.module.weight.detach()
        pictures[f"filters_{layer.stem}.png"] = compose_grid(filter_tiles(weight, n), FILTER_TILE)
        if layer.number == 1 and layer.module.in_channels == 3:
            pictures[f"filters_{layer.stem}_rgb.png"] = compose_grid(rgb_filter_tiles(weight, n), FILTER_TILE)
    if batch is not None:
        pictures["input.png"] = compose_grid([_input_picture(batch, ckpt)], MAP_TILE * 2)
        maps = feature_maps(model, chosen, batch)
        for layer in chosen:
            pictures[f"maps_{layer.stem}.png"] = compose_grid(map_tiles(maps[layer.name], n), MAP_TILE)
    written = []
    for name, picture in pictures.items():
        picture.save(out / name)
        written.append(out / name)
    return written
