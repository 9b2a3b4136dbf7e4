"""Dynamic batching for the v2 server: requests that arrive within a window, up to a maximum number of images, go
through one backend call, and each request gets its own rows back.

Our own small asyncio batcher: KServe 0.21's ModelServer has no in-process batching (KServe batches in its agent
sidecar, ``predictor.batcher``, a separate container in front of the model). Decoding stays per request (a bad
image fails its own request in ``preprocess``, before it can join a batch); only decoded images are batched. One
batch computes at a time on the model's inference thread; while it does, the next batch gathers, as TorchServe's
frontend queue fills a worker's next batch. A request of N images is N items of a batch; a request larger than
the maximum runs as a batch of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import torch
from prometheus_client import Histogram

Rows = list[dict[str, float]]

BATCH_IMAGES = Histogram(
    "convserve_batch_images",
    "Images per backend call of the v2 server's dynamic batching",
    ["model_name"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
BATCH_WAIT = Histogram(
    "convserve_batch_wait_seconds",
    "Seconds a request waited for its batch to start (the batching window and the batch before it)",
    ["model_name"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
)


@dataclass
class _Waiting:
    images: list[torch.Tensor]
    answer: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    """``await batcher.classify(images)`` from any number of concurrent requests.

    ``run``: decoded images -> one row per image, called on ``executor``; ``max_images``: images per call at
    most (1: no batching); ``max_delay_s``: how long the first request of a batch waits for company.
    """

    def __init__(
        self, run: Callable[[list[torch.Tensor]], Rows], executor: Executor, max_images: int, max_delay_s: float,
        model_name: str = "",
    ):  # fmt: skip
        self.run, self.executor = run, executor
        self.max_images, self.max_delay_s = max(1, max_images), max(0.0, max_delay_s)
        self.model_name = model_name
        self._queue: asyncio.Queue[_Waiting] | None = None
        self._held: _Waiting | None = None  # arrived too late for a full batch: first in the next one
        self._task: asyncio.Task | None = None

    async def classify(self, images: list[torch.Tensor]) -> Rows:
        rows, _ = await self.classify_counted(images)
        return rows

    async def classify_counted(self, images: list[torch.Tensor]) -> tuple[Rows, int]:
        """The rows of ``images`` and how many images the backend call that computed them held."""
        if self._queue is None:  # created in the serving loop, on first use
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._serve())
        waiting = _Waiting(images, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(waiting)
        return await waiting.answer

    async def _serve(self) -> None:
        while True:
            batch = await self._gather()
            started = time.perf_counter()
            images = [image for waiting in batch for image in waiting.images]
            try:
                rows = await asyncio.get_running_loop().run_in_executor(self.executor, self.run, images)
            except Exception as exc:  # the backend failed this call: every request in it gets the error
                for waiting in batch:
                    if not waiting.answer.done():
                        waiting.answer.set_exception(exc)
                continue
            BATCH_IMAGES.labels(self.model_name).observe(len(images))
            at = 0
            for waiting in batch:
                BATCH_WAIT.labels(self.model_name).observe(started - waiting.arrived)
                if not waiting.answer.done():  # a client that went away cancelled its future
                    waiting.answer.set_result((rows[at : at + len(waiting.images)], len(images)))
                at += len(waiting.images)

    async def _gather(self) -> list[_Waiting]:
        """The next batch: the first waiting request, then whoever arrives within the window, up to the maximum."""
        first = self._held or await self._queue.get()
        self._held = None
        batch, count = [first], len(first.images)
        deadline = first.arrived + self.max_delay_s
        while count < self.max_images:
            try:
                left = deadline - time.perf_counter()
                waiting = self._queue.get_nowait() if left <= 0 else await asyncio.wait_for(self._queue.get(), left)
            except (asyncio.QueueEmpty, TimeoutError):
                break
            if count + len(waiting.images) > self.max_images:
                self._held = waiting
                break
            batch.append(waiting)
            count += len(waiting.images)
        return batch

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
