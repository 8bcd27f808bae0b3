"""One-line errors instead of tracebacks (issue 11 items 7 and 10): wrong values, wrong model files, names the
filesystem cannot hold, a damaged checkpoint met by resume=True."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL
from test_cli import assert_clear_error, run_cli

import clipce_rtdetr

IMAGE = str(Path(__file__).parent / "fixtures" / "data" / "voc" / "JPEGImages" / "a1.jpg")
TINY_PT = Path(clipce_rtdetr.__file__).parents[1] / "weights" / "rtdetr-tiny-shapes.pt"


@pytest.mark.parametrize("value", ["abc", "[640,abc]", "-5", "0", "[1,2,3]", "True"])
@pytest.mark.parametrize("mode", ["train", "predict", "val"])
def test_bad_imgsz_is_one_line(capsys, mode, value):
    rc, _, err = run_cli(capsys, mode, f"model={TINY_MODEL}", f"imgsz={value}", f"source={IMAGE}", "data=hazy-shapes")
    assert_clear_error(rc, err, "is not a valid image size", "imgsz=640")


@pytest.mark.parametrize("mode", ["train", "predict", "val", "export"])
@pytest.mark.parametrize("name", ["notes.txt", "weights.pth", "model"])
def test_model_that_is_not_a_model_file(capsys, tmp_path, mode, name):
    f = tmp_path / name
    f.write_text("not a model\n")
    rc, _, err = run_cli(capsys, mode, f"model={f}", f"source={IMAGE}", "data=hazy-shapes", "imgsz=64")
    assert_clear_error(rc, err, f"model={f}")
    assert "not a model file Ultralytics can load" in err or "train needs a PyTorch checkpoint" in err


def test_train_from_an_exported_model_is_refused(capsys, tmp_path):
    f = tmp_path / "best.onnx"
    f.write_bytes(b"onnx")
    rc, _, err = run_cli(capsys, "train", f"model={f}", "data=hazy-shapes")
    assert_clear_error(rc, err, "train needs a PyTorch checkpoint (.pt) or a model config")


@pytest.mark.parametrize(
    "mode, key",
    [("train", "name"), ("train", "project"), ("train", "ame_profile"), ("val", "name"), ("predict", "name")],
)
def test_names_longer_than_the_filesystem_allows(capsys, tmp_path, monkeypatch, mode, key):
    monkeypatch.chdir(tmp_path)
    long = "a" * 300
    rc, _, err = run_cli(capsys, mode, f"model={TINY_MODEL}", f"{key}={long}", f"source={IMAGE}", "data=hazy-shapes")
    assert_clear_error(rc, err, f"'{key}=': the name 'aaaa", "is 300 bytes long", f"Choose a shorter {key}=")
    assert not any(tmp_path.iterdir())  # refused before any run folder


def test_tool_modes_check_path_names_too(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "degrade", "data=hazy-shapes", f"out={tmp_path / ('b' * 256)}")
    assert_clear_error(rc, err, "'out=': the name 'bbbb", "is 256 bytes long")


# ------------------------------------------------------------------------------------ item 7: resume
def unfinished(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 3, "optimizer": {"state": {}}}, path)


def test_resume_true_with_the_newest_unfinished_checkpoint_damaged(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old_finished = tmp_path / "runs" / "old" / "weights" / "last.pt"
    old_finished.parent.mkdir(parents=True)
    shutil.copy(TINY_PT, old_finished)
    older_unfinished = tmp_path / "runs" / "older" / "weights" / "last.pt"
    unfinished(older_unfinished)
    time.sleep(0.05)
    newest = tmp_path / "runs" / "new" / "weights" / "last.pt"
    unfinished(newest)
    newest.write_bytes(newest.read_bytes()[:40])  # cut short: the run was killed while saving
    rc, _, err = run_cli(capsys, "train", "resume=True")
    assert_clear_error(rc, err, "runs/new/weights/last.pt cannot be read as a checkpoint", "move the damaged file")
    assert "runs/old" not in err and "runs/older" not in err  # not pointed at another run
    # Named directly, the same file gets the same answer (not Ultralytics' traceback).
    for args in (["resume=runs/new/weights/last.pt"], ["model=runs/new/weights/last.pt", "resume=True"]):
        rc, _, err = run_cli(capsys, "train", *args)
        assert_clear_error(rc, err, "runs/new/weights/last.pt cannot be read as a checkpoint")
    # Moved away: resume=True goes on to the older unfinished run (found, not refused).
    os.remove(newest)
    from clipce_rtdetr.cli import latest_unfinished_run

    assert Path(latest_unfinished_run()[0]) == Path("runs/older/weights/last.pt")


def test_resume_with_a_checkpoint_that_is_not_a_dict(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "runs" / "t" / "weights" / "last.pt"
    f.parent.mkdir(parents=True)
    torch.save(torch.zeros(3), f)
    rc, _, err = run_cli(capsys, "train", "resume=True")
    assert_clear_error(rc, err, "cannot be read as a checkpoint (not a dict)")
