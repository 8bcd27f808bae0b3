"""Bad dataset input: every label problem and corrupt image is named (file:line), never a raw traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from conftest import TINY_MODEL

from clipce_rtdetr.data.dataset import (
    check_label_text,
    load_data_yaml,
    report_label_problems,
    resolve_data,
    scan_labels,
)
from clipce_rtdetr.errors import ClipCEError

SCRIPT = Path(sys.executable).parent / "clipce-rtdetr"


# ------------------------------------------------------------------------------ one label file
def test_valid_lines_pass():
    errors, warnings = check_label_text("0 0.5 0.5 0.2 0.3\n\n4 0.1 0.9 0.05 0.05\n", nc=5, where="a.txt")
    assert errors == [] and warnings == []


@pytest.mark.parametrize(
    "line, needle",
    [
        ("0 0.5 0.5 0.1", "expected 5 fields"),
        ("0 0.5 0.5 0.1 0.1 0.3", "expected 5 fields"),
        ("5 0.5 0.5 0.1 0.1", "class id 5 out of range"),
        ("12 0.5 0.5 0.1 0.1", "class id 12 out of range"),
        ("-1 0.5 0.5 0.1 0.1", "class id -1 out of range"),
        ("1.5 0.5 0.5 0.1 0.1", "class id 1.5"),
        ("0 0.5 0.5 0 0.1", "width/height must be > 0"),
        ("0 0.5 0.5 0.1 -0.2", "width/height must be > 0"),
        ("0 0.5 0.5 0.0 0.0", "width/height must be > 0"),
        ("a 0.5 0.5 0.1 0.1", "non-numeric"),
    ],
)
def test_bad_line_named_with_file_and_line(line, needle):
    text = f"0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n{line}\n"
    errors, _ = check_label_text(text, nc=5, where="labels/train/x.txt")
    assert len(errors) == 1, errors
    assert errors[0].startswith("labels/train/x.txt:3: ")
    assert needle in errors[0]


def test_every_bad_line_is_reported():
    text = "9 0.5 0.5 0.1 0.1\n0 0.5 0.5 0.1\n0 0.5 0.5 0.1 0\n"
    errors, _ = check_label_text(text, nc=5, where="f.txt")
    assert [e.split(": ")[0] for e in errors] == ["f.txt:1", "f.txt:2", "f.txt:3"]


def test_coordinates_outside_unit_square_drop_the_image():
    """Ultralytics drops an image with a coordinate above 1.01 (pixel labels): an error saying so, not a warning."""
    errors, warnings = check_label_text("0 320 240 50 40\n", nc=5, where="f.txt")
    assert warnings == [] and len(errors) == 1 and errors[0].startswith("f.txt:1:") and "normalised" in errors[0]
    assert "skips the whole image" in errors[0]


def test_polygon_lines_are_accepted():
    errors, _ = check_label_text("1 0.1 0.1 0.5 0.1 0.5 0.5 0.1 0.5\n", nc=5, where="f.txt")
    assert errors == []


# ------------------------------------------------------------------------------- whole datasets
def make_dataset(root: Path, n_train: int = 6, n_val: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / "images" / split / f"{i}.png"), (rng.random((64, 64, 3)) * 255).astype(np.uint8))
            (root / "labels" / split / f"{i}.txt").write_text(f"{i % 2} 0.5 0.5 0.3 0.3\n")
    y = root / "data.yaml"
    y.write_text(
        yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val", "names": {0: "a", 1: "b"}})
    )
    return y


@pytest.fixture
def bad_dataset(tmp_path) -> Path:
    y = make_dataset(tmp_path / "bad")
    lb = tmp_path / "bad" / "labels" / "train"
    (lb / "0.txt").write_text("0 0.5 0.5 0.3 0.3\n0 0.5 0.5 0.3\n")  # wrong field count, line 2
    (lb / "1.txt").write_text("7 0.5 0.5 0.3 0.3\n")  # class id >= nc
    (lb / "2.txt").write_text("1 0.5 0.5 0 0.3\n1 0.5 0.5 -0.1 0.3\n")  # zero and negative size
    (lb / "3.txt").write_text("")  # empty: background image
    (lb / "4.txt").unlink()  # missing: background image
    (tmp_path / "bad" / "images" / "train" / "broken.jpg").write_bytes(b"not an image " * 40)  # corrupt image
    (lb / "broken.txt").write_text("0 0.5 0.5 0.3 0.3\n")
    return y


def test_scan_names_every_problem(bad_dataset):
    root = bad_dataset.parent
    report = scan_labels(load_data_yaml(bad_dataset), bad_dataset)
    lb = root / "labels" / "train"
    errors = "\n".join(report["errors"])
    assert f"{lb / '0.txt'}:2: expected 5 fields" in errors
    assert f"{lb / '1.txt'}:1: class id 7 out of range; the dataset has 2 classes" in errors
    assert f"{lb / '2.txt'}:1: box width/height must be > 0" in errors
    assert f"{lb / '2.txt'}:2: box width/height must be > 0" in errors
    assert len(report["errors"]) == 4
    assert report["empty"] == [str(lb / "3.txt")]
    assert report["missing"] == [str(lb / "4.txt")]
    assert len(report["corrupt"]) == 1 and str(root / "images" / "train" / "broken.jpg") in report["corrupt"][0]


def test_clean_dataset_has_no_problems(tiny_hazy_shapes):
    report = scan_labels(load_data_yaml(tiny_hazy_shapes), tiny_hazy_shapes)
    assert not any(report.values()), report


def test_report_strict_raises_and_lenient_warns(bad_dataset):
    report = scan_labels(load_data_yaml(bad_dataset), bad_dataset)
    with pytest.raises(ClipCEError) as e:
        report_label_problems(report, strict=True)
    msg = str(e.value)
    assert "0.txt:2" in msg and "1.txt:1" in msg and "broken.jpg" in msg
    report_label_problems(report)  # warnings only
    assert resolve_data(str(bad_dataset)) == str(bad_dataset)  # training can go on without the bad images


def test_many_problems_are_capped_in_the_message():
    report = {
        "errors": [f"f.txt:{i}: bad" for i in range(1, 26)],
        "warnings": [],
        "empty": [],
        "missing": [],
        "corrupt": [],
    }
    with pytest.raises(ClipCEError) as e:
        report_label_problems(report, strict=True)
    assert "f.txt:10:" in str(e.value) and "f.txt:11:" not in str(e.value) and "15 more" in str(e.value)


# --------------------------------------------------------------------------------- dataset YAML
@pytest.mark.parametrize(
    "text, needle",
    [
        ("train: a\nval: b\nnames: [x\n", "not valid YAML"),
        ("train: a\nval: b\n", "'names'"),
        ("- a\n- b\n", "'names'"),
        ("train: images\nnames: [x]\n", "no 'val:'"),
        ("train: a\nval: b\nnc: 3\nnames: [a, b, c, d, e]\n", "nc: 3 but 5 names"),
        ("train: a\nval: b\nnames: {0: a, 2: b}\n", r"without gaps \(got \[0, 2\]\)"),
        ("train: a\nval: b\nnames: {x: a}\n", "keys must be class ids"),
        ("train: a\nval: b\nnames: person\n", "must be a list"),
    ],
)
def test_bad_yaml_is_a_clear_error(tmp_path, text, needle):
    y = tmp_path / "d.yaml"
    y.write_text(text)
    with pytest.raises(ClipCEError, match=needle) as e:
        resolve_data(str(y))
    assert str(y) in str(e.value)


def test_relative_path_resolves_against_yaml_folder(tmp_path, monkeypatch):
    y = make_dataset(tmp_path / "rel")
    data = yaml.safe_load(y.read_text())
    data["path"] = "."
    y.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)  # not the YAML's folder
    from ultralytics.data.utils import check_det_dataset

    given = resolve_data(str(y))  # Ultralytics alone would read path: . as the current folder (issue 21)
    assert Path(check_det_dataset(given, autodownload=False)["path"]) == y.parent.resolve()


def test_txt_list_split(tmp_path):
    y = make_dataset(tmp_path / "lst")
    root = y.parent
    (root / "train.txt").write_text("images/train/0.png\nimages/train/1.png\n")
    data = yaml.safe_load(y.read_text())
    data["train"] = "train.txt"
    y.write_text(yaml.safe_dump(data))
    (root / "labels" / "train" / "1.txt").write_text("3 0.5 0.5 0.3 0.3\n")
    report = scan_labels(load_data_yaml(y), y)
    assert [e.split(": ")[0] for e in report["errors"]] == [f"{root / 'labels' / 'train' / '1.txt'}:1"]


# ------------------------------------------------------------------------- through the CLI
def test_training_on_bad_data_warns_by_name_and_does_not_crash(bad_dataset, tmp_path):
    """Ultralytics names a corrupt image only as "No module named 'pi_heif'"; the project names it properly."""
    r = subprocess.run(
        [
            str(SCRIPT),
            "train",
            f"model={TINY_MODEL}",
            f"data={bad_dataset}",
            "epochs=1",
            "imgsz=64",
            "batch=4",
            "device=cpu",
            "workers=0",
            "clipce=none",
            f"project={tmp_path / 'runs'}",
            "name=bad",
            "plots=False",
            "val=False",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ.copy(),
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "Traceback" not in out
    root = bad_dataset.parent
    assert f"{root / 'labels' / 'train' / '0.txt'}:2" in out
    assert f"{root / 'labels' / 'train' / '1.txt'}:1" in out
    assert str(root / "images" / "train" / "broken.jpg") in out and "not a readable image" in out
    assert (tmp_path / "runs" / "bad" / "weights" / "last.pt").exists()


def test_val_only_dataset_needs_only_its_val_split(tmp_path):
    y = make_dataset(tmp_path / "vo")
    data = yaml.safe_load(y.read_text())
    data["train"] = "images/not-here"
    y.write_text(yaml.safe_dump(data))
    with pytest.raises(ClipCEError, match="not-here"):
        resolve_data(str(y))  # training needs the train split
    assert resolve_data(str(y), splits=("val",)) == str(y)  # validation does not (as in Ultralytics)
    report = scan_labels(load_data_yaml(y), y, splits=("val",))
    assert not any(report.values()), report
