import os
import pickle
from pathlib import Path

import pytest
import torch

from convserve.common.errors import ConvserveError
from convserve.common.preprocessing import Preprocessing
from convserve.models import build_model, model_from_checkpoint
from convserve.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint


def _ckpt(arch: str = "mlp") -> Checkpoint:
    model, options = build_model(arch, 3, 16 if arch == "mlp" else 64)
    pre = Preprocessing(input_size=options["input_size"], resize_size=options["input_size"],
                        mean=[0.5] * 3, std=[0.25] * 3, channels=1)  # fmt: skip
    return Checkpoint(arch, 3, ["a", "b", "c"], pre, "relu", options, model.state_dict(), config={"seed": 1})


def test_round_trip_rebuilds_the_same_model(tmp_path: Path):
    ckpt = _ckpt()
    save_checkpoint(ckpt, tmp_path / "x.pt")
    loaded = load_checkpoint(tmp_path / "x.pt")
    assert loaded.class_names == ["a", "b", "c"] and loaded.preprocessing == ckpt.preprocessing
    model = model_from_checkpoint(loaded)
    x = torch.randn(2, 3, 16, 16)
    reference, _ = build_model("mlp", 3, 16)
    reference.load_state_dict(ckpt.model_state)
    torch.testing.assert_close(model(x), reference.eval()(x))


def test_checkpoint_loads_with_plain_weights_only(tmp_path: Path):
    save_checkpoint(_ckpt(), tmp_path / "x.pt")
    payload = torch.load(tmp_path / "x.pt", weights_only=True)
    assert payload["arch"] == "mlp" and payload["input_size"] == 16 and payload["mean"] == [0.5] * 3


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/convserve-pwned",))


def test_pickled_objects_are_refused_and_never_run(tmp_path: Path):
    marker = Path("/tmp/convserve-pwned")
    marker.unlink(missing_ok=True)
    torch.save({"format": "convserve.checkpoint/v1", "arch": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ConvserveError, match="pickled"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", pickle.dumps({"a": 1})])
def test_foreign_files_are_refused(tmp_path: Path, content: bytes):
    (tmp_path / "x.pt").write_bytes(content)
    with pytest.raises(ConvserveError, match="not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "x.pt")


def test_other_torch_files_are_refused(tmp_path: Path):
    torch.save({"state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(ConvserveError, match="not a convserve checkpoint"):
        load_checkpoint(tmp_path / "x.pt")


def test_architecture_mismatch_is_refused(tmp_path: Path):
    save_checkpoint(_ckpt(), tmp_path / "x.pt")
    with pytest.raises(ConvserveError, match="is a mlp model, not alexnet"):
        load_checkpoint(tmp_path / "x.pt", expected_arch="alexnet")


def test_a_failed_save_leaves_the_old_file_intact(tmp_path: Path, monkeypatch):
    target = tmp_path / "last.pt"
    save_checkpoint(_ckpt(), target)
    before = target.read_bytes()

    def explode(*args, **kwargs):  # what torch.save raised here when the disk filled up mid-write
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 398938880 vs 398938768")

    monkeypatch.setattr(torch, "save", explode)
    with pytest.raises(ConvserveError, match=r"cannot write checkpoint .*last.pt \(\d+ MB free there\).*intact"):
        save_checkpoint(_ckpt(), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# --- What a run keeps in train_state and writes beside it (training/results.py) ----------------------------


def test_the_chosen_epoch_round_trips_as_train_state_has_always_held_it():
    from types import SimpleNamespace

    from convserve.training.checkpoint_keeper import is_better
    from convserve.training.results import ChosenEpoch

    for best in (
        {"val_acc1": 91.5, "val_acc5": 99.6, "val_loss": 0.43, "epoch": 2},
        {"val_acc1": 91.5, "val_acc5": 99.6, "epoch": 2},  # before val loss broke ties
        {"val_acc1": -1.0, "epoch": -1},  # none chosen yet
    ):
        restored = ChosenEpoch.from_dict(best)
        assert restored.to_dict() == best and list(restored.to_dict()) == list(best)
    old = ChosenEpoch.from_dict({"val_acc1": 91.5, "val_acc5": 99.6, "epoch": 2})
    assert is_better(SimpleNamespace(acc1=91.5, loss=0.01), old)  # its loss unknown: a tie goes to the new epoch
    assert is_better(SimpleNamespace(acc1=0.0, loss=9.0), ChosenEpoch())


def test_metrics_rows_and_the_summary_keep_their_columns_and_keys():
    from convserve.training.results import METRIC_COLUMNS, EpochRow, RunSummary

    columns = ["epoch", "train_loss", "train_acc1", "train_acc5", "val_loss", "val_acc1", "val_acc5", "lr",
               "epoch_seconds"]  # fmt: skip
    assert columns == METRIC_COLUMNS
    row = dict(zip(columns, [3, 0.5, 80.0, 99.0, 0.4, 85.0, 99.5, 1e-3, 2.5], strict=True))
    assert EpochRow.from_dict(row).to_dict() == row
    summary = RunSummary(*range(26))
    assert list(summary.to_dict())[-3:] == ["world_size", "input_size", "num_params"]
    rated = RunSummary(*range(26), rate={"train_flops_per_image": 1.0, "threads": 2})
    assert list(rated.to_dict()) == [*summary.to_dict(), "train_flops_per_image", "threads"]
