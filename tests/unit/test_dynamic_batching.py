"""The v2 server's dynamic batcher on its own: concurrent requests share backend calls, each gets its own rows,
the maximum and the window hold, and a failing call fails only the requests in it."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from convserve.serving.dynamic_batching import DynamicBatcher


class Backend:
    """Rows that name their image, the calls it saw, and an optional failure or delay per call."""

    def __init__(self, delay_s: float = 0.0, fail_when: int | None = None):
        self.calls: list[int] = []
        self.delay_s, self.fail_when = delay_s, fail_when
        self.lock = threading.Lock()

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, float]]:
        with self.lock:
            self.calls.append(len(images))
        time.sleep(self.delay_s)
        if self.fail_when is not None and any(int(image) == self.fail_when for image in images):
            raise RuntimeError("backend failed")
        return [{f"image {int(image)}": 1.0} for image in images]


def run(coroutine):
    return asyncio.run(coroutine)


async def requests(batcher: DynamicBatcher, sizes: list[int], gap_s: float = 0.0):
    """Concurrent requests of ``sizes`` images each (image k carries the number k)."""
    tasks, k = [], 0
    for size in sizes:
        images = [torch.tensor(k + i) for i in range(size)]
        tasks.append(asyncio.ensure_future(batcher.classify(images)))
        k += size
        if gap_s:
            await asyncio.sleep(gap_s)
    return await asyncio.gather(*tasks, return_exceptions=True)


def test_concurrent_requests_share_calls_and_each_gets_its_own_rows():
    backend = Backend(delay_s=0.05)
    batcher = DynamicBatcher(backend, ThreadPoolExecutor(1), max_images=16, max_delay_s=0.02)
    answers = run(requests(batcher, [1] * 20))
    assert [list(a[0]) for a in answers] == [[f"image {k}"] for k in range(20)]
    assert sum(backend.calls) == 20 and len(backend.calls) < 20 and max(backend.calls) <= 16


def test_a_request_of_n_images_is_n_items_and_never_split():
    backend = Backend(delay_s=0.02)
    batcher = DynamicBatcher(backend, ThreadPoolExecutor(1), max_images=8, max_delay_s=0.05)
    answers = run(requests(batcher, [3, 3, 3, 20]))
    assert [len(a) for a in answers] == [3, 3, 3, 20]
    assert [list(row)[0] for row in answers[3]] == [f"image {k}" for k in range(9, 29)]
    assert 20 in backend.calls  # larger than the maximum: a batch of its own
    assert all(calls <= 8 for calls in backend.calls if calls != 20)


def test_batch_size_1_never_batches():
    backend = Backend(delay_s=0.01)
    batcher = DynamicBatcher(backend, ThreadPoolExecutor(1), max_images=1, max_delay_s=0.05)
    run(requests(batcher, [1] * 6))
    assert backend.calls == [1] * 6


def test_a_lone_request_waits_about_the_window_not_more():
    backend = Backend()
    batcher = DynamicBatcher(backend, ThreadPoolExecutor(1), max_images=16, max_delay_s=0.05)

    async def one():
        started = time.perf_counter()
        await batcher.classify([torch.tensor(0)])
        return time.perf_counter() - started

    waited = run(one())
    assert 0.04 <= waited < 1.0 and backend.calls == [1]


def test_a_failing_call_fails_its_requests_only():
    backend = Backend(delay_s=0.05, fail_when=0)
    batcher = DynamicBatcher(backend, ThreadPoolExecutor(1), max_images=2, max_delay_s=0.01)
    answers = run(requests(batcher, [1, 1, 1, 1]))
    failed = [isinstance(a, RuntimeError) for a in answers]
    assert failed[0] and not all(failed)  # image 0's batch failed, later batches answered
    assert [list(a[0])[0] for a in answers if not isinstance(a, Exception)][-1] == "image 3"


@pytest.mark.parametrize("max_images", [4, 16])
def test_every_image_is_answered_once_under_steady_arrivals(max_images):
    backend = Backend(delay_s=0.01)
    batcher = DynamicBatcher(backend, ThreadPoolExecutor(1), max_images=max_images, max_delay_s=0.005)
    answers = run(requests(batcher, [1, 2, 1, 3] * 5, gap_s=0.002))
    seen = [label for answer in answers for row in answer for label in row]
    assert sorted(seen, key=lambda s: int(s.split()[1])) == [f"image {k}" for k in range(35)]
