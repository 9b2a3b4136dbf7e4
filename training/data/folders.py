"""Folder datasets read as they ship: Caltech101, ImageNet-style folders, Tiny-ImageNet-200.

Only paths and labels are read up front; images are decoded when a split is indexed (see ``image_files``, which
also says what counts as an image: hidden files and non-image extensions are ignored; an image file that cannot be
decoded raises a one-line ``ConvserveError`` naming it). Missing or empty folders raise a ``ConvserveError``
naming the path and the layout expected.

- caltech101: ``101_ObjectCategories/<class>/*.jpg``, seeded stratified 8:1:1 train/val/test split. Like
  torchvision's ``Caltech101`` we leave out ``BACKGROUND_Google`` (clutter, not an object category), so the
  real data set has 101 classes. Grayscale JPEGs are decoded to RGB.
- imagefolder: ``train/<class>/``, ``val/<class>/`` and optionally ``test/<class>/``; classes come from train/.
- tiny-imagenet: the Tiny-ImageNet-200 zip as extracted. The official val set (labelled by
  ``val/val_annotations.txt``) is our test split; val is a seeded stratified 10% of train; ``test/`` is
  unlabelled and ignored. Class order is the sorted wnids; names are the first synonym in ``words.txt``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from convserve.common.errors import ConvserveError
from convserve.training.data.image_files import ImageFiles, class_folders, list_images
from convserve.training.data.splits import RawSplits, stratified_split

CALTECH_FOLDER = "101_ObjectCategories"
CALTECH_BACKGROUND = "BACKGROUND_Google"
CALTECH_LAYOUT = (
    f"{CALTECH_FOLDER}/<class>/*.jpg (root may be {CALTECH_FOLDER} itself, the folder holding it, "
    f"or torchvision's caltech101/{CALTECH_FOLDER})"
)
IMAGEFOLDER_LAYOUT = "train/<class>/*.jpg and val/<class>/*.jpg, optionally test/<class>/*.jpg"
TINY_LAYOUT = (
    "wnids.txt, words.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt "
    "(root may be tiny-imagenet-200 itself or the folder holding it)"
)


def _split_files(files: ImageFiles, fractions: tuple[float, ...], seed: int) -> list[ImageFiles]:
    return [files.subset(part) for part in stratified_split(files.targets(), fractions, seed)]


def _class_images(folder: Path, what: str) -> list[Path]:
    images = list_images(folder)
    if not images:
        raise ConvserveError(f"{what} folder {folder} holds no images (.jpg, .jpeg, .png, ...)")
    return images


# --- Caltech101 -------------------------------------------------------------------------------------------


def _caltech_root(root: Path) -> Path:
    candidates = [root] if root.name == CALTECH_FOLDER else []
    candidates += [root / CALTECH_FOLDER, root / "caltech101" / CALTECH_FOLDER]
    for folder in candidates:
        if folder.is_dir():
            return folder
    raise ConvserveError(f"Caltech101 not found under {root}: expected {CALTECH_LAYOUT}")


def load_caltech101(root: Path, seed: int) -> RawSplits:
    folder = _caltech_root(root)
    classes = [d for d in class_folders(folder) if d.name != CALTECH_BACKGROUND]
    if not classes:
        raise ConvserveError(f"no class folders in {folder}: expected {CALTECH_LAYOUT}")
    paths, labels = [], []
    for label, class_dir in enumerate(classes):
        images = _class_images(class_dir, "class")
        paths += images
        labels += [label] * len(images)
    train, val, test = _split_files(ImageFiles(paths, labels), (0.8, 0.1, 0.1), seed)
    return RawSplits(train, val, test, [d.name for d in classes])


# --- ImageNet-style folders -------------------------------------------------------------------------------


def _labelled_split(split_dir: Path, class_names: list[str], every_class: bool = False) -> ImageFiles:
    folders = class_folders(split_dir)
    unknown = sorted({d.name for d in folders} - set(class_names))
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise ConvserveError(f"{split_dir} has class folders that train/ lacks: {shown}")
    index = {name: i for i, name in enumerate(class_names)}
    paths, labels = [], []
    for class_dir in folders:
        # a class with no training image cannot be learnt; val/test may lack some classes
        images = _class_images(class_dir, "class") if every_class else list_images(class_dir)
        paths += images
        labels += [index[class_dir.name]] * len(images)
    if not paths:
        raise ConvserveError(f"no images under {split_dir}: expected {IMAGEFOLDER_LAYOUT}")
    return ImageFiles(paths, labels)


def load_imagefolder(root: Path, seed: int) -> RawSplits:
    """The splits are the folders' own; ``seed`` is unused (kept for the loaders' common signature)."""
    for needed in (root / "train", root / "val"):
        if not needed.is_dir():
            raise ConvserveError(
                f"image folder dataset: {needed} not found; expected {IMAGEFOLDER_LAYOUT} under {root}"
            )
    class_dirs = class_folders(root / "train")
    if not class_dirs:
        raise ConvserveError(f"no class folders in {root / 'train'}: expected {IMAGEFOLDER_LAYOUT}")
    names = [d.name for d in class_dirs]
    test_dir = root / "test"
    return RawSplits(
        _labelled_split(root / "train", names, every_class=True),
        _labelled_split(root / "val", names),
        _labelled_split(test_dir, names) if test_dir.is_dir() else None,
        names,
    )


# --- Tiny-ImageNet-200 ------------------------------------------------------------------------------------


def _tiny_root(root: Path) -> Path:
    for folder in (root, root / "tiny-imagenet-200"):
        if (folder / "wnids.txt").is_file():
            return folder
    raise ConvserveError(f"Tiny-ImageNet not found under {root}: expected {TINY_LAYOUT}")


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ConvserveError(f"cannot read {path}: {exc.strerror or exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def tiny_class_names(words_file: Path, wnids: list[str]) -> list[str]:
    """First synonym of each wnid in words.txt ("n01443537<TAB>goldfish, Carassius auratus" → "goldfish").

    A name shared by several wnids gets its wnid appended ("crane (n02012849)") so names stay unique;
    a wnid missing from words.txt (or no words.txt) keeps the wnid as its name.
    """
    words = {}
    if words_file.is_file():
        for line in _read_lines(words_file):
            wnid, _, synonyms = line.partition("\t")
            words[wnid.strip()] = synonyms.split(",")[0].strip()
    names = [words.get(w) or w for w in wnids]
    counts = Counter(names)
    return [f"{name} ({wnid})" if counts[name] > 1 else name for name, wnid in zip(names, wnids, strict=True)]


def _tiny_train(folder: Path, wnids: list[str]) -> ImageFiles:
    train = folder / "train"
    if not train.is_dir():
        raise ConvserveError(f"Tiny-ImageNet: {train} not found; expected {TINY_LAYOUT}")
    unknown = sorted({d.name for d in class_folders(train)} - set(wnids))
    if unknown:
        raise ConvserveError(f"{train} has folders not listed in wnids.txt: {', '.join(unknown[:5])}")
    paths, labels = [], []
    for label, wnid in enumerate(wnids):
        images_dir = train / wnid / "images"
        if not images_dir.is_dir():
            raise ConvserveError(f"Tiny-ImageNet: {images_dir} not found; expected {TINY_LAYOUT}")
        images = _class_images(images_dir, "training")
        paths += images
        labels += [label] * len(images)
    return ImageFiles(paths, labels)


def _tiny_val(folder: Path, wnids: list[str]) -> ImageFiles:
    images_dir, notes = folder / "val" / "images", folder / "val" / "val_annotations.txt"
    if not images_dir.is_dir() or not notes.is_file():
        raise ConvserveError(f"Tiny-ImageNet: {images_dir} or {notes} not found; expected {TINY_LAYOUT}")
    present = {p.name for p in images_dir.iterdir()}
    index = {w: i for i, w in enumerate(wnids)}
    paths, labels = [], []
    for number, line in enumerate(_read_lines(notes), start=1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise ConvserveError(
                f"{notes} line {number}: expected FILE<TAB>WNID<TAB>x0<TAB>y0<TAB>x1<TAB>y1, wnid in wnids.txt"
            )
        if fields[0] not in present:
            raise ConvserveError(f"{notes} line {number}: {images_dir / fields[0]} does not exist")
        paths.append(images_dir / fields[0])
        labels.append(index[fields[1]])
    if not paths:
        raise ConvserveError(f"{notes} lists no images")
    return ImageFiles(paths, labels)


def load_tiny_imagenet(root: Path, seed: int) -> RawSplits:
    folder = _tiny_root(root)
    wnids = sorted(set(_read_lines(folder / "wnids.txt")))
    if not wnids:
        raise ConvserveError(f"{folder / 'wnids.txt'} lists no classes")
    train, val = _split_files(_tiny_train(folder, wnids), (0.9, 0.1), seed)
    return RawSplits(train, val, _tiny_val(folder, wnids), tiny_class_names(folder / "words.txt", wnids))
