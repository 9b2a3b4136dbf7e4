"""Files written all-or-nothing, their hashes, and reading a user's file as bytes. No torch here: the load
tester and the serving image use it too.

An atomic write goes to a fresh temporary name in the target's folder (created exclusively, with mode 0666 so
the kernel applies the process umask exactly as a plain ``open`` would: the process umask is never touched),
is flushed and fsync'ed, then renamed over the target. A killed writer leaves the old file intact and at most a
hidden ``.NAME.XXXX.tmp`` behind; an error removes the temporary file.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from convserve.common.errors import ConvserveError


def new_temp_path(target: Path | str, prefix: str = ".") -> Path:
    """Create an empty, uniquely named temporary file beside ``target`` (same filesystem) and return its path."""
    target = Path(target)
    for _ in range(100):
        tmp = target.with_name(f"{prefix}{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {target}")


def commit_temp(tmp: Path, target: Path | str, durable: bool = True) -> None:
    """Rename a finished temporary file over ``target`` (fsync'ing the data first when ``durable``)."""
    if durable:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.replace(tmp, target)


@contextmanager
def atomic_path(target: Path | str, durable: bool = True) -> Iterator[Path]:
    """A temporary path for a writer that wants a file name (``savefig``, an exporter); renamed on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_temp_path(target)
    try:
        yield tmp
        commit_temp(tmp, target, durable)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_file(target: Path | str, mode: str = "w", durable: bool = True, **open_args: Any) -> Iterator[IO]:
    """An open file whose content replaces ``target`` only when the block ends without an error."""
    with atomic_path(target, durable=False) as tmp, open(tmp, mode, **open_args) as fh:
        yield fh
        fh.flush()
        if durable:
            os.fsync(fh.fileno())


def write_bytes_atomic(path: Path | str, data: bytes, durable: bool = True) -> Path:
    with atomic_file(path, "wb", durable) as fh:
        fh.write(data)
    return Path(path)


def write_text_atomic(path: Path | str, text: str, durable: bool = True) -> Path:
    with atomic_file(path, "w", durable, encoding="utf-8") as fh:
        fh.write(text)
    return Path(path)


def write_json_atomic(path: Path | str, data: Any, durable: bool = True) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n", durable)


def sha256_file(path: Path | str) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_image_bytes(path: Path | str) -> bytes:
    """An image file's bytes; a missing, unreadable or empty file is a one-line ConvserveError."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConvserveError(f"cannot read image {path}: {exc.strerror or exc}") from None
    if not data:
        raise ConvserveError(f"cannot decode image {path}: the file is empty")
    return data
