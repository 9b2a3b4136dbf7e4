"""The artifact folder contract: the card, index_to_name.json, and the rules for writing into a folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from convserve.artifact.card import (
    CARD_FILE,
    ModelCard,
    ModelFile,
    SourceCard,
    describe_file,
    read_card,
    read_index_to_name,
    source_identity,
    unique_labels,
    write_card,
    write_index_to_name,
)
from convserve.common.errors import ConvserveError
from convserve.common.files import sha256_file
from convserve.common.preprocessing import Preprocessing
from convserve.export.destination import TEMP_PREFIX, claim_folder


def make_card(identity: str = "a" * 64, files: list[ModelFile] | None = None) -> ModelCard:
    return ModelCard(
        name="digits",
        arch="mlp",
        num_classes=3,
        class_names=["zero", "one", "two"],
        preprocessing=Preprocessing(input_size=32, resize_size=32, mean=[0.3] * 3, std=[0.4] * 3, channels=1),
        files=files or [],
        source=SourceCard(checkpoint="/runs/x/checkpoints/best.pt", checkpoint_sha256=identity),
    )


def artifact_folder(tmp_path: Path, identity: str = "a" * 64) -> Path:
    folder = tmp_path / "art"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"onnx bytes")
    card = make_card(identity, [describe_file(folder, "model.onnx", "onnx")])
    write_card(folder, card)
    write_index_to_name(folder, card.class_names)
    return folder


def try_claim(folder: Path, identity: str, targets: list[str], force: bool) -> None:
    with claim_folder(folder, identity, targets, force):
        pass


def test_unique_labels_disambiguates_repeats_only():
    assert unique_labels(["crane", "cat", "crane"]) == ["crane (0)", "cat", "crane (2)"]
    assert unique_labels(["0", "1"]) == ["0", "1"]


def test_index_to_name_is_torchserve_format_with_unique_labels(tmp_path):
    write_index_to_name(tmp_path, ["crane", "dog", "crane"])
    mapping = json.loads((tmp_path / "index_to_name.json").read_text())
    assert mapping == {"0": "crane (0)", "1": "dog", "2": "crane (2)"}
    assert read_index_to_name(tmp_path) == ["crane (0)", "dog", "crane (2)"]


def test_card_round_trips_and_describe_file_measures_the_file(tmp_path):
    folder = artifact_folder(tmp_path)
    card = read_card(folder)
    entry = card.file("onnx")
    assert entry.sha256 == sha256_file(folder / "model.onnx") and entry.size_bytes == len(b"onnx bytes")
    assert card.file("torchscript") is None
    assert source_identity(card) == "a" * 64
    assert not list(folder.glob("*.tmp"))  # written atomically through a temp file


def test_with_file_replaces_the_same_format_and_keeps_the_others(tmp_path):
    folder = artifact_folder(tmp_path)
    (folder / "model.ts.pt").write_bytes(b"ts")
    card = read_card(folder).with_file(describe_file(folder, "model.ts.pt", "torchscript"))
    (folder / "model.onnx").write_bytes(b"new onnx")
    card = card.with_file(describe_file(folder, "model.onnx", "onnx"))
    assert [f.format for f in card.files] == ["onnx", "torchscript"]
    assert card.file("onnx").size_bytes == len(b"new onnx")


def test_source_identity_falls_back_to_the_weights_digest():
    card = make_card().model_copy(update={"source": SourceCard(weights_sha256="b" * 64, random_weights=True)})
    assert source_identity(card) == "b" * 64


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "not an artifact folder"), ("{not json", "is invalid"), ('{"name": "x"}', "is invalid: arch")],
)
def test_read_card_errors_are_one_line(tmp_path, content, message):
    if content is not None:
        (tmp_path / CARD_FILE).write_text(content)
    with pytest.raises(ConvserveError, match=message) as info:
        read_card(tmp_path)
    assert "\n" not in str(info.value)


def test_claim_creates_a_missing_folder_and_commits_atomically(tmp_path):
    folder = tmp_path / "new" / "art"
    with claim_folder(folder, "a" * 64, ["model.onnx"], force=False) as claim:
        assert claim.card is None
        claim.stage("model.onnx").write_bytes(b"x")
        assert not (folder / "model.onnx").exists()  # not visible before commit
        claim.commit()
    assert (folder / "model.onnx").read_bytes() == b"x"
    assert not [p for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_a_failed_export_leaves_the_folder_as_it_was(tmp_path):
    folder = artifact_folder(tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(RuntimeError), claim_folder(folder, "a" * 64, ["model.ts.pt"], force=False) as claim:
        claim.stage("model.ts.pt").write_bytes(b"half-written")
        raise RuntimeError("parity failed")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_the_same_source_may_add_a_file_but_not_replace_one_without_force(tmp_path):
    folder = artifact_folder(tmp_path)
    with claim_folder(folder, "a" * 64, ["model.ts.pt"], force=False) as claim:
        assert claim.card is not None and claim.card.file("onnx") is not None
    with pytest.raises(ConvserveError, match=r"model.onnx already exists.*--force"):
        try_claim(folder, "a" * 64, ["model.onnx"], force=False)
    with claim_folder(folder, "a" * 64, ["model.onnx"], force=True) as claim:
        assert claim.card is not None  # --force on our own folder keeps the other files' entries


def test_a_model_pt_the_card_does_not_list_is_not_overwritten(tmp_path):
    folder = artifact_folder(tmp_path)
    (folder / "model.pt").write_bytes(b"someone's weights")
    with pytest.raises(ConvserveError, match="model.pt already exists"):
        try_claim(folder, "a" * 64, ["model.ts.pt"], force=False)


@pytest.mark.parametrize("kind", ["foreign files", "another model's artifact", "broken card"])
def test_a_folder_that_is_not_ours_needs_force(tmp_path, kind):
    if kind == "foreign files":
        folder = tmp_path / "art"
        folder.mkdir()
        (folder / "notes.txt").write_text("mine")
    else:
        folder = artifact_folder(tmp_path, identity="c" * 64)
        if kind == "broken card":
            (folder / CARD_FILE).write_text("{")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(ConvserveError, match="is not empty .* use --force") as info:
        try_claim(folder, "a" * 64, ["model.onnx"], force=False)
    assert "\n" not in str(info.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_force_over_another_model_deletes_only_the_files_its_card_listed(tmp_path):
    folder = artifact_folder(tmp_path, identity="c" * 64)
    (folder / "notes.txt").write_text("mine")
    with claim_folder(folder, "a" * 64, ["model.ts.pt"], force=True) as claim:
        assert claim.card is None  # a fresh card for the new source
        claim.commit()
    assert not (folder / "model.onnx").exists()
    assert (folder / "notes.txt").read_text() == "mine"


def test_force_over_a_card_naming_a_file_outside_deletes_nothing_outside(tmp_path):
    folder = artifact_folder(tmp_path, identity="c" * 64)
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"not in the folder")
    card = json.loads((folder / CARD_FILE).read_text())
    card["files"].append({"path": "../outside.onnx", "format": "onnx-int8", "sha256": "0" * 64, "size_bytes": 1})
    (folder / CARD_FILE).write_text(json.dumps(card))  # written by hand: the card model refuses such a path
    with pytest.raises(ConvserveError, match="'../outside.onnx' is not inside the artifact folder"):
        try_claim(folder, "a" * 64, ["model.ts.pt"], force=False)
    with claim_folder(folder, "a" * 64, ["model.ts.pt"], force=True) as claim:
        assert claim.card is None
        claim.commit()
    assert outside.read_bytes() == b"not in the folder"


def test_an_unwritable_output_folder_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    with pytest.raises(ConvserveError, match="exists and is not a folder"):
        try_claim(blocker, "a" * 64, ["model.onnx"], force=True)
    with pytest.raises(ConvserveError, match="is not writable"):
        try_claim(blocker / "sub", "a" * 64, ["model.onnx"], force=True)
    if os.geteuid() != 0:  # permission bits bind everyone but root (root is covered by the integration test)
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(ConvserveError, match="is not writable"):
            try_claim(locked, "a" * 64, ["model.onnx"], force=True)


def test_leftovers_of_a_killed_export_are_cleaned_up(tmp_path):
    folder = artifact_folder(tmp_path)
    (folder / f"{TEMP_PREFIX}model.ts.pt.tmp").write_bytes(b"partial")
    with claim_folder(folder, "a" * 64, ["model.ts.pt"], force=False):
        pass
    assert not (folder / f"{TEMP_PREFIX}model.ts.pt.tmp").exists()
