"""retain_freed_memory: big tensors freed and allocated again reuse their pages instead of faulting them in anew."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]

# A step of a model with a 64 MB weight: its gradient (16,384 pages, above glibc's largest mmap threshold) is
# allocated anew every step (zero_grad(set_to_none=True)), so by default each step faults its pages in again.
# With retention the heap may still grow once after warm-up (a small allocation split off the freed gradient's
# chunk, so the next gradient no longer fits there): one gradient's pages, never one per step.
SCRIPT = """
import resource, sys
import torch
from convserve.common.host_memory import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
model = torch.nn.Sequential(torch.nn.Linear(4096, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
x = torch.randn(8, 4096)
for step in range(9):
    if step == 3:  # after warm-up
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    optimizer.zero_grad(set_to_none=True)
    model(x).sum().backward()
    optimizer.step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, cwd=ROOT, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning; other platforms keep defaults")
def test_freed_tensors_are_reused_without_page_faults():
    default, retained = page_faults("default"), page_faults("retain")
    assert default > 6 * 16_000  # the premise: six steps, each faulting a 64 MB gradient in
    assert retained < 16_384 + 2_000
