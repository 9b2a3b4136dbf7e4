"""What the checks share: the plan, the work folder, and results one check makes and later ones use (the CPU
reference run, the CUDA-trained checkpoint, the artifact folder), each made once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpu_check.plan import Plan


class PrerequisiteFailed(Exception):
    """A check needs what an earlier step should have made, and that step failed."""


@dataclass
class Context:
    plan: Plan
    work: Path
    _made: dict[str, tuple[Any, BaseException | None]] = field(default_factory=dict)
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def log(self, name: str) -> Path:
        folder = self.work / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{name}.log"

    def once(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()``'s result, made on first use (a check in another thread waits for it); a failure is
        remembered and raised to every later user."""
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._made:
                try:
                    self._made[key] = (make(), None)
                except Exception as exc:  # any failure: each user reports it in its own row
                    self._made[key] = (None, exc)
                    raise
        value, error = self._made[key]
        if error is not None:
            raise PrerequisiteFailed(f"{key} failed: {error}") from error
        return value
