"""The GPU check's judgements that a CPU can test (CUDA faked where a GPU would answer): a row that cannot fail
is "n/a", not PASS; the precision expected from the device's compute capability; the budget and the per-check
limit enforced."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from gpu_check import suite, training_checks  # noqa: E402
from gpu_check.context import Context  # noqa: E402
from gpu_check.plan import dry_plan, gpu_plan, make_plan  # noqa: E402
from gpu_check.report import Report, Row  # noqa: E402
from gpu_check.torchrun_check import check_torchrun  # noqa: E402


def test_torchrun_on_one_gpu_is_not_applicable_not_a_pass(tmp_path):
    plan = gpu_plan(nproc=1, epochs=None, compile_model=False, gpus=1)
    row = check_torchrun(Context(plan, tmp_path))  # returns before anything would need a GPU
    assert row.status == "n/a: 1 GPU" and row.passed
    report = Report(tmp_path, "gpu", "cmd", 480, rows=[row, Row("x", "PASS", "f", "t")])
    assert report.passed  # n/a does not fail the check, and says why in its status


@pytest.mark.parametrize("gpus", [2, 8])
def test_two_nccl_ranks_where_there_are_two_gpus_or_more(monkeypatch, gpus):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    plan = make_plan(False, None, None, False)
    assert plan.nproc == 2 and plan.gpus == gpus


def test_more_ranks_than_gpus_is_refused_up_front(monkeypatch):
    from convserve.common.errors import ConvserveError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConvserveError, match="NCCL needs one GPU per rank"):
        make_plan(False, 2, None, False)


@pytest.mark.parametrize(
    ("capability", "expected"), [((7, 5), "fp16"), ((7, 0), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")]
)
def test_the_expected_precision_comes_from_the_compute_capability(monkeypatch, capability, expected):
    """T4 (7.5) and V100 (7.0) answer is_bf16_supported() True through emulation: the capability decides."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert training_checks.expected_auto_precision("cuda") == expected


def test_over_budget_is_a_fail(tmp_path):
    report = Report(tmp_path, "gpu", "cmd", 480, rows=[Row("x", "PASS", "f", "t")], wall_s=481.0)
    assert report.over_budget and not report.passed
    assert not dataclasses.replace(report, wall_s=479.0).over_budget


def test_a_check_past_its_limit_is_interrupted_and_fails_its_row(tmp_path):
    plan = dataclasses.replace(dry_plan(1, False), check_limit_s=1)

    def never_ends(ctx):
        while True:
            time.sleep(0.05)

    began = time.perf_counter()
    row = suite.timed(never_ends, "stuck", Context(plan, tmp_path))
    assert row.status == "FAIL" and "over the 1 s limit of one check" in row.figure
    assert time.perf_counter() - began < 5
