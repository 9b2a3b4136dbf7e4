"""Which precision a run trains in, for every (device, native bf16, setting) case, and the emulation warning."""

from __future__ import annotations

import pytest
import torch

from convserve.training.config import build_config
from convserve.training.engine import precision as precision_module
from convserve.training.engine.precision import choose_precision, resolve_precision

CASES = [
    # requested, device, native bf16 -> precision, warns
    ("auto", "cpu", True, "bf16", False),
    ("auto", "cpu", False, "fp32", False),
    ("auto", "cuda", True, "bf16", False),
    ("auto", "cuda", False, "fp16", False),
    ("amp", "cpu", True, "bf16", False),
    ("amp", "cpu", False, "bf16", True),
    ("amp", "cuda", True, "bf16", False),
    ("amp", "cuda", False, "fp16", False),
    ("bf16", "cpu", True, "bf16", False),
    ("bf16", "cpu", False, "bf16", True),
    ("bf16", "cuda", False, "bf16", True),
    ("fp16", "cuda", True, "fp16", False),
    ("fp16", "cpu", True, "fp16", True),
    ("fp32", "cpu", True, "fp32", False),
    ("fp32", "cuda", False, "fp32", False),
]


@pytest.mark.parametrize(("requested", "device", "native", "expected", "warns"), CASES)
def test_choice(requested, device, native, expected, warns):
    choice = choose_precision(requested, device, native)
    assert choice.precision == expected
    assert (choice.warning is not None) == warns
    assert choice.uses_scaler == (expected == "fp16")
    if warns:
        assert "\n" not in choice.warning


def test_forced_bf16_without_native_support_says_emulated():
    warning = choose_precision("bf16", "cpu", False).warning
    assert "emulated" in warning and "slow" in warning


def test_the_probe_decides_on_this_cpu(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_native_bf16", lambda: False)
    assert resolve_precision("auto", torch.device("cpu")).precision == "fp32"
    monkeypatch.setattr(precision_module, "cpu_native_bf16", lambda: True)
    choice = resolve_precision("auto", torch.device("cpu"))
    assert choice.precision == "bf16"
    with choice.autocast(torch.device("cpu")):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    assert choice.scaler(torch.device("cpu")) is None


def test_onednn_avx2_cap_turns_auto_to_fp32(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert resolve_precision("auto", torch.device("cpu")).precision == "fp32"


def test_config_default_is_auto_and_old_amp_keys_still_read():
    assert build_config().run.precision == "auto"
    assert build_config({"run": {"amp": True}}).run.precision == "amp"
    assert build_config({"run": {"amp": False}}).run.precision == "fp32"
    assert build_config({"run": {"amp": "auto"}}).run.precision == "auto"
    assert build_config(None, {"precision": "bf16"}).run.precision == "bf16"


@pytest.mark.parametrize("tree", [{"run": {"amp": "sometimes"}}, {"run": {"amp": True, "precision": "fp32"}}])
def test_bad_amp_values_are_one_line_errors(tree):
    from convserve.common.errors import ConvserveError

    with pytest.raises(ConvserveError, match="run") as err:
        build_config(tree)
    assert "\n" not in str(err.value)


def test_profile_groups_name_the_kind_of_work():
    from convserve.training.engine.step_profile import group_of

    assert group_of("aten::addmm") == "matmul" and group_of("aten::mkldnn_convolution") == "convolution"
    assert group_of("aten::_fused_adamw_") == "optimizer" and group_of("aten::grid_sampler_2d") == "input pipeline"
    assert group_of("aten::relu") == "other"
