"""The output folder: claimed safely, written all-or-nothing, shared by the exporters of one source model.

Rules (the README repeats them):
- A missing folder is created; an empty one is used.
- A folder whose model_card.json describes the SAME source (checkpoint sha256, or weights sha256 for
  torchvision models) is ours: an exporter adds its file(s) to it, so ``to_onnx`` then ``to_torchscript``
  into one folder just works. Only a file it would write that already exists needs ``--force``.
- Any other non-empty folder (no card, an unreadable card, another model's card) is refused without
  ``--force``. With ``--force`` the old card starts afresh and the model files it listed are deleted;
  files the card did not list are left alone.
- Every file is written under a hidden temporary name first and renamed into place only after all checks
  passed, then the card is rewritten atomically: a failed export leaves the folder exactly as it was.
- Two exporters writing one folder at the same time take turns (an exclusive ``flock`` on the folder).
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from convserve.artifact.card import CARD_FILE, FILE_NAMES, ModelCard, read_card, source_identity
from convserve.common.errors import ConvserveError
from convserve.common.files import commit_temp, new_temp_path

log = logging.getLogger(__name__)

TEMP_PREFIX = ".convserve-"


@dataclass
class Claim:
    folder: Path
    card: ModelCard | None  # the existing card of the same source, else None (a fresh artifact)
    stale: list[Path] = field(default_factory=list)  # files of another model's card, deleted on commit
    staged: dict[str, Path] = field(default_factory=dict)  # final name → temporary file

    def stage(self, name: str) -> Path:
        """A fresh temporary path in the folder for the file that will become ``name``."""
        path = new_temp_path(self.folder / name, prefix=TEMP_PREFIX)
        self.staged[name] = path
        return path

    def commit(self) -> None:
        for path in self.stale:
            path.unlink(missing_ok=True)
        for name, tmp in self.staged.items():
            commit_temp(tmp, self.folder / name)
        self.staged.clear()

    def discard(self) -> None:
        for tmp in self.staged.values():
            tmp.unlink(missing_ok=True)
        self.staged.clear()


@contextmanager
def claim_folder(folder: Path, identity: str, targets: list[str], force: bool) -> Iterator[Claim]:
    """Create/lock ``folder`` and check that writing ``targets`` (file names) there is safe; see module doc."""
    folder = Path(folder)
    created = not folder.exists()
    _make_writable_folder(folder)
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another export writing %s", folder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        claim = _inspect(folder, identity, targets, force)
        try:
            yield claim
        finally:
            claim.discard()
    except BaseException:
        if created and not any(folder.iterdir()):
            folder.rmdir()  # a failed export into a new folder leaves no trace
        raise
    finally:
        os.close(fd)  # releases the lock


def _make_writable_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise ConvserveError(f"output folder {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # a real write: permission bits say little when running as root or on read-only mounts
        with tempfile.NamedTemporaryFile(dir=folder, prefix=TEMP_PREFIX, suffix=".probe"):
            pass
    except OSError as exc:
        raise ConvserveError(f"output folder {folder} is not writable: {exc.strerror or exc}") from None


def _inspect(folder: Path, identity: str, targets: list[str], force: bool) -> Claim:
    for leftover in folder.glob(f"{TEMP_PREFIX}*"):  # from an export that was killed (we hold the lock)
        leftover.unlink(missing_ok=True)
    present = sorted(p.name for p in folder.iterdir())
    if not present:
        return Claim(folder, None)
    card, unreadable = _read_card_or_none(folder)
    if card is not None and source_identity(card) == identity:
        clashes = [name for name in targets if (folder / name).exists()]
        if card.file("eager") is None and (folder / FILE_NAMES["eager"]).exists():
            clashes.append(FILE_NAMES["eager"])  # a model.pt the card does not vouch for
        if clashes and not force:
            raise ConvserveError(
                f"{folder / clashes[0]} already exists (artifact card of {card.created_at}); use --force to replace it"
            )
        return Claim(folder, card)
    if not force:
        what = (
            f"an artifact of another model ({card.arch} from {_origin(card)})"
            if card is not None
            else "not an artifact folder" + (f" ({unreadable})" if unreadable else "")
        )
        shown = ", ".join(present[:4]) + (", ..." if len(present) > 4 else "")
        raise ConvserveError(f"output folder {folder} is not empty ({shown}) and is {what}; use --force to replace it")
    # only our own plain file names: a card's paths are data and must not steer deletions out of the folder
    listed = {f.path for f in card.files} if card is not None else set()
    stale = [folder / name for name in FILE_NAMES.values() if name in listed]
    log.warning("--force: %s held %s; starting a new artifact there", folder, ", ".join(present[:6]))
    return Claim(folder, None, stale=stale)


def _origin(card: ModelCard) -> str:
    return card.source.checkpoint or card.source.torchvision_weights or "an unknown source"


def _read_card_or_none(folder: Path) -> tuple[ModelCard | None, str | None]:
    """The folder's card, or None and why it could not be used (None when there is no card at all)."""
    if not (folder / CARD_FILE).is_file():
        return None, None
    try:
        return read_card(folder), None
    except ConvserveError as exc:
        return None, str(exc)
