"""Multi-GPU correctness that a CPU can check: each rank takes its own GPU (CUDA faked: no GPU here), collectives
run on the process group's device, and the training and evaluation loops read their figures back to the host once
per epoch (and per shown progress line), not once per step."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from convserve.common import devices
from convserve.common.errors import ConvserveError
from convserve.training.engine import distributed
from convserve.training.engine.distributed import DistInfo, all_reduce_sum
from convserve.training.engine.evaluation import evaluate
from convserve.training.engine.train_loop import TrainStep, train_one_epoch


@pytest.fixture
def four_fake_gpus(monkeypatch):
    """torch believes in 4 GPUs (only the device choice runs; nothing is allocated on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)


@pytest.mark.parametrize("name", ["auto", "cuda", None])
def test_each_torchrun_rank_takes_its_own_gpu(four_fake_gpus, monkeypatch, name):
    for rank in range(4):
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        assert devices.choose_device(name) == torch.device("cuda", rank)


def test_a_lone_process_takes_gpu_0_and_an_explicit_index_wins(four_fake_gpus, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert devices.choose_device("auto") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert devices.choose_device("cuda:1") == torch.device("cuda", 1)


def test_more_ranks_than_gpus_is_a_one_line_error(four_fake_gpus, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "5")
    with pytest.raises(ConvserveError, match=r"has 4; start at most 4 processes per node") as err:
        devices.choose_device("auto")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("backend", "expected"), [("nccl", torch.device("cuda", 2)), ("gloo", torch.device("cpu"))])
def test_collectives_run_on_the_group_backends_device(monkeypatch, backend, expected):
    monkeypatch.setattr(distributed.dist, "get_backend", lambda group=None: backend)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    assert distributed.collective_device() == expected


def test_all_reduce_hands_the_backend_a_tensor_on_its_device_and_writes_back(monkeypatch):
    """The group's device is faked as 'meta' (no GPU here) to see the tensor travel there and the sum come back."""
    seen = []

    def fake_all_reduce(tensor, op=None):
        seen.append(tensor.device)

    monkeypatch.setattr(distributed, "collective_device", lambda: torch.device("meta"))
    monkeypatch.setattr(distributed.dist, "all_reduce", fake_all_reduce)
    sums = torch.tensor([1.0, 2.0], dtype=torch.float64)
    with pytest.raises(NotImplementedError):  # copying the meta result back is where a real device would return
        all_reduce_sum(sums, DistInfo(rank=0, world_size=2))
    assert seen == [torch.device("meta")]


class HostReads:
    """Counts every read of a tensor's value back to the host (each one waits for a GPU's queue to drain)."""

    NAMES = ("item", "tolist", "__int__", "__float__", "__bool__")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(original))

    def _counting(self, original):
        def read(tensor, *args, **kwargs):
            self.count += 1
            return original(tensor, *args, **kwargs)

        return read


def tiny_setup(batches: int = 30):
    torch.manual_seed(0)
    x, y = torch.randn(batches * 4, 6), torch.randint(0, 10, (batches * 4,))
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    model = nn.Linear(6, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    step = TrainStep(model, nn.CrossEntropyLoss(), optimizer, scheduler, torch.device("cpu"))
    return step, loader


def reads_during(monkeypatch, run, *args, **kwargs) -> int:
    with monkeypatch.context() as patch:
        reads = HostReads(patch)
        run(*args, **kwargs)
    return reads.count


def test_the_train_loop_reads_back_once_per_epoch_not_per_step(monkeypatch):
    counts = []
    for batches in (30, 90):
        step, loader = tiny_setup(batches)
        counts.append(reads_during(monkeypatch, train_one_epoch, step, loader, epoch=0, print_freq=1000))
    assert counts[0] == counts[1] <= 5, counts  # the shown last line and the epoch's sums, however long the epoch


def test_evaluation_reads_back_once_per_split_not_per_batch(monkeypatch):
    counts = []
    for batches in (30, 90):
        step, loader = tiny_setup(batches)
        names = [str(k) for k in range(10)]
        counts.append(reads_during(monkeypatch, evaluate, step.model, loader, step.device, names, print_freq=1000))
    assert counts[0] == counts[1] <= 5, counts


def test_figures_read_lazily_are_the_figures_of_every_batch():
    """The epoch's loss and accuracy from the device sums equal the mean over batches computed one by one."""
    step, loader = tiny_setup(30)
    model_copy = nn.Linear(6, 10)
    model_copy.load_state_dict(step.model.state_dict())
    stats = train_one_epoch(step, loader, epoch=0, print_freq=1000)
    optimizer = torch.optim.SGD(model_copy.parameters(), lr=0.1)
    losses, hits = [], 0
    for x, y in loader:
        out = model_copy(x)
        loss = nn.functional.cross_entropy(out, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item() * len(y))
        hits += int((out.argmax(1) == y).sum())
    assert stats.loss == pytest.approx(sum(losses) / 120, rel=1e-9)
    assert stats.acc1 == pytest.approx(100.0 * hits / 120)
