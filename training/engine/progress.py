"""Progress: a tqdm bar on a terminal, plain ``[ 10/40] ...`` lines every ``print_freq`` batches otherwise."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tqdm import tqdm


class Progress:
    def __init__(self, total: int, desc: str, print_freq: int = 20, enabled: bool = True):
        self.total, self.print_freq, self.enabled = total, print_freq, enabled
        self.bar = (
            tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True) if enabled and sys.stderr.isatty() else None
        )

    def update(self, batch: int, line: Callable[[], str], postfix: dict[str, str] | None = None) -> None:
        """``batch`` counts from 1; ``line`` builds the plain-text line only when it is printed."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
        elif batch % self.print_freq == 0 or batch == self.total:
            print(line(), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
