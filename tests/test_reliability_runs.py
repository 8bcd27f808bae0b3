"""Runs (issue 21 items 4, 5, 8): resume after the run folder was moved, COCO evaluation of a model on a dataset
with other classes, an empty val folder."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from clipce_rtdetr import ClipCERTDETR
from clipce_rtdetr.errors import ClipCEError
from tests.conftest import FAST, TINY_MODEL


class Stop(Exception):
    pass


def stop_after_first_save(trainer):
    raise Stop


@pytest.fixture(scope="module")
def interrupted_run(tiny_hazy_shapes, tmp_path_factory) -> Path:
    """A 2-epoch run stopped after epoch 1's checkpoint (as a killed run would be); returns its run folder. Tests
    only read it (the resume test works on a copy)."""
    tmp_path = tmp_path_factory.mktemp("interrupted")
    model = ClipCERTDETR(TINY_MODEL)
    model.add_callback("on_model_save", stop_after_first_save)
    with pytest.raises(Stop):
        model.train(
            data=str(tiny_hazy_shapes), clipce="none", project=str(tmp_path / "runs"), name="r", **{**FAST, "epochs": 2}
        )
    return Path(model.trainer.save_dir)


def test_resume_after_moving_the_run_folder_goes_on_where_it_is_now(interrupted_run, tiny_hazy_shapes, tmp_path):
    original = tmp_path / "runs" / "r"  # where the checkpoint says the run was started
    shutil.copytree(interrupted_run, original)
    ckpt = torch.load(original / "weights" / "last.pt", weights_only=False)
    ckpt["train_args"]["save_dir"] = str(original)  # as if written there (the fixture's run is shared, read-only)
    torch.save(ckpt, original / "weights" / "last.pt")
    moved = tmp_path / "archive" / "r-moved"
    moved.parent.mkdir()
    shutil.move(str(original), moved)
    resumed = ClipCERTDETR(str(moved / "weights" / "last.pt"))
    resumed.train(resume=True, data=str(tiny_hazy_shapes))
    assert Path(resumed.trainer.save_dir) == moved
    assert not original.exists()  # the old place is not recreated
    rows = list(csv.DictReader(open(moved / "results.csv")))
    assert [int(float(r["epoch"])) for r in rows] == [1, 2]  # one results.csv, both epochs


def test_resume_from_a_checkpoint_outside_a_run_folder_is_refused_saying_why(interrupted_run, tmp_path):
    loose = tmp_path / "loose.pt"
    shutil.copy(interrupted_run / "weights" / "last.pt", loose)
    runs_before = sorted(interrupted_run.parent.iterdir())
    with pytest.raises(ClipCEError, match=r"not in a run folder's weights/ folder.*model="):
        ClipCERTDETR(str(loose)).train(resume=str(loose))
    assert sorted(interrupted_run.parent.iterdir()) == runs_before  # nothing new written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loose.pt"]


def test_val_coco_of_a_model_on_a_dataset_with_other_classes_is_refused_naming_both(interrupted_run, tmp_path):
    data = yaml.safe_load(Path(interrupted_run / "args.yaml").read_text())["data"]
    cfg = yaml.safe_load(Path(data).read_text())
    names = cfg["names"] if isinstance(cfg["names"], dict) else dict(enumerate(cfg["names"]))
    other = {k: f"other-{v}" for k, v in names.items()}  # the same images, other classes
    y = tmp_path / "other.yaml"
    # path: relative to this YAML (not to the current folder), so Ultralytics is given a pinned copy of it
    images = os.path.relpath(Path(data).parent / cfg.get("path", "."), tmp_path)
    y.write_text(yaml.safe_dump({**cfg, "path": images, "names": other}))
    model = ClipCERTDETR(str(interrupted_run / "weights" / "last.pt"))
    project = tmp_path / "vals"
    with pytest.raises(ClipCEError, match=r"(?s)knows other classes.*model: .*dataset: .*other-") as err:
        model.val(data=str(y), coco=True, imgsz=64, batch=8, device="cpu", project=str(project), name="v")
    assert str(names[0]) in str(err.value)
    assert f"the dataset {y} (" in str(err.value)  # the user's YAML, not the pinned copy Ultralytics was given
    assert not project.exists()  # refused before the validator made a run folder


@pytest.mark.parametrize("mode", ["train", "val"])
def test_empty_val_folder_is_named_as_empty_and_no_run_folder_is_left(tmp_path, capsys, mode):
    import cv2
    import numpy as np

    from clipce_rtdetr.cli import entrypoint

    ds = tmp_path / "ds"
    for split in ("train", "val"):
        (ds / "images" / split).mkdir(parents=True)
        (ds / "labels" / split).mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(ds / "images" / "train" / f"{i}.png"), np.zeros((32, 32, 3), np.uint8))
        (ds / "labels" / "train" / f"{i}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    y = tmp_path / "d.yaml"
    y.write_text(yaml.safe_dump({"path": str(ds), "train": "images/train", "val": "images/val", "names": {0: "x"}}))
    project = tmp_path / "runs"
    rc = entrypoint(
        [mode, f"data={y}", f"model={TINY_MODEL}", "clipce=none", "epochs=1", "imgsz=64", "device=cpu",
         f"project={project}", "name=r"]  # fmt: skip
    )
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err
    assert f"the val split {ds / 'images' / 'val'} is empty" in err
    assert not project.exists()
