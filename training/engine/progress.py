"""One loop's progress: its running averages, shown as a tqdm bar on a terminal and otherwise as a plain
``Epoch: [0][10/40]  Time ...  Loss ...`` line every ``print_freq`` batches."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from tqdm import tqdm

from convserve.training.engine.meters import AverageMeter

# what a shown batch reports for each meter: this batch's value, the running total and the count behind it
Shown = Callable[[], dict[str, tuple[float, float, int]]]


class ProgressMeter:
    """``meters``: what each batch reports, by key, shown in this order after the batch time; ``bar``: the keys
    the tqdm bar shows and the format of their averages."""

    def __init__(
        self,
        total: int,
        prefix: str,
        desc: str,
        meters: dict[str, AverageMeter],
        bar: dict[str, str],
        print_freq: int = 20,
        enabled: bool = True,
    ):
        self.total, self.prefix, self.print_freq, self.enabled = total, prefix, print_freq, enabled
        self.batch_time, self.meters, self.bar_fields = AverageMeter("Time", ":6.3f"), meters, bar
        self.batch_fmt = "[{:" + str(len(str(total))) + "d}/" + str(total) + "]"
        self.bar = (
            tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True) if enabled and sys.stderr.isatty() else None
        )
        self._end = time.perf_counter()

    def due(self, batch: int) -> bool:
        """Whether ``batch`` (counting from 1) is shown: a line, or the bar's figures."""
        return self.enabled and (batch % self.print_freq == 0 or batch == self.total)

    def update(self, batch: int, shown: Shown) -> None:
        """Every batch; ``shown`` is called only for a batch that is shown, so a loop on a GPU reads its figures
        back to the host once per ``print_freq`` batches, not once per step."""
        now = time.perf_counter()
        self.batch_time.update(now - self._end)
        self._end = now
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
        if not self.due(batch):
            return
        for key, (val, total, count) in shown().items():
            self.meters[key].set(val, total, count)
        if self.bar is not None:
            postfix = {key: format(self.meters[key].avg, fmt) for key, fmt in self.bar_fields.items()}
            self.bar.set_postfix(postfix, refresh=False)
        else:
            print(self.line(batch), flush=True)

    def line(self, batch: int) -> str:
        shown = [self.batch_time, *self.meters.values()]
        return "\t".join([self.prefix + self.batch_fmt.format(batch)] + [str(m) for m in shown])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
