"""Label scan and file walks against what Ultralytics 8.4.190 really does (issue 11 items 8 and 9).

The scan must say an image is dropped exactly when Ultralytics' own verify_image_label drops it: the sweep below
runs both on the same label files (real Ultralytics, real image) and compares the verdicts line by line.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from test_data_checks import make_dataset

from clipce_rtdetr.data.dataset import (
    check_label_text,
    image_files,
    load_data_yaml,
    resolve_data,
    scan_labels,
    walk_files,
)
from clipce_rtdetr.errors import ClipCEError

SWEEP = [
    "0 0.5 0.5 0.2 0.2",
    "0 nan 0.5 0.2 0.2",  # issue 11: a nan coordinate drops the whole image
    "0 0.5 0.5 NaN 0.2",
    "nan 0.5 0.5 0.2 0.2",
    "0 inf 0.5 0.2 0.2",
    "0 0.5 -inf 0.2 0.2",
    "0 1e39 0.5 0.2 0.2",  # finite for Python, inf in float32 (which Ultralytics parses to)
    "0 1.005 0.5 0.2 0.2",  # within Ultralytics' 1.01 tolerance: kept
    "0 1.02 0.5 0.2 0.2",
    "0 320 240 50 40",
    "0 -0.005 0.5 0.2 0.2",  # within the -0.01 tolerance: kept
    "0 -0.02 0.5 0.2 0.2",
    "0 0.5 0.5 0 0.2",  # zero size: kept as a degenerate box
    "0 0.5 0.5 -0.001 0.2",
    "0 -0.5 0.5 0 0.2",
    "1.5 0.5 0.5 0.2 0.2",
    "2 0.5 0.5 0.2 0.2",
    "-1 0.5 0.5 0.2 0.2",
    "0 0.5 0.5 0.2",
    "0 0.5 0.5 0.2 0.2 0.9",
    "a 0.5 0.5 0.2 0.2",
    "0 0,5 0.5 0.2 0.2",
    "0 1_0 0.5 0.2 0.2",
    "0 0.1 0.1 0.5 0.1 0.5 0.5",  # a polygon
    "0 0.1 0.1 0.5 0.1 0.5 0.5 0.1",  # odd number of polygon coordinates
    "0 0.1 0.1 1.5 0.1 1.5 0.5",  # polygon box centre 0.8 but width 1.4
    "0 -0.3 0.1 0.5 0.1 0.5 0.5",  # polygon box centre 0.1, a corner at -0.3: kept
    "0 0.5 0.5 0.2 0.2\n0 0.1 0.1 0.5 0.1 0.5 0.5",  # boxes and polygons mixed in one file
    "\ufeff0 0.5 0.5 0.2 0.2",  # a UTF-8 byte-order mark: Ultralytics reads it as nothing
    "\ufeff0 nan 0.5 0.2 0.2",
]


def ultralytics_drops(img: Path, lb: Path, nc: int) -> bool:
    from ultralytics.data.utils import verify_image_label

    return verify_image_label((str(img), str(lb), "", False, nc, 0, 3, False))[8] == 1


@pytest.mark.parametrize("text", SWEEP)
def test_scan_says_dropped_exactly_when_ultralytics_drops(tmp_path, text):
    img, lb = tmp_path / "images" / "a.png", tmp_path / "labels" / "a.txt"
    img.parent.mkdir()
    lb.parent.mkdir()
    cv2.imwrite(str(img), np.full((32, 32, 3), 90, np.uint8))
    lb.write_bytes((text + "\n").encode("utf-8"))
    errors, warnings = check_label_text(lb.read_text(encoding="utf-8-sig"), nc=2, where=str(lb))
    said_dropped = any("skips the whole image" in e for e in errors)
    assert said_dropped == ultralytics_drops(img, lb, 2), (errors, warnings)
    assert all(e.startswith(f"{lb}:") for e in errors + warnings)


def test_nan_coordinate_is_reported_and_bom_is_not(tmp_path):
    y = make_dataset(tmp_path / "d")
    lbs = tmp_path / "d" / "labels" / "train"
    (lbs / "0.txt").write_text("0 0.5 nan 0.3 0.3\n")
    (lbs / "1.txt").write_bytes("\ufeff1 0.5 0.5 0.3 0.3\n".encode())  # saved by Windows Notepad
    report = scan_labels(load_data_yaml(y), y)
    assert report["errors"] == [
        f"{lbs / '0.txt'}:1: 'nan' is not a finite number in '0 0.5 nan 0.3 0.3' (Ultralytics skips the whole image)"
    ]
    assert report["warnings"] == []


def test_list_file_with_a_byte_order_mark(tmp_path):
    y = make_dataset(tmp_path / "d")
    root = y.parent
    (root / "train.txt").write_bytes("\ufeffimages/train/0.png\nimages/train/1.png\n".encode())
    assert image_files(root / "train.txt") == [root / "images" / "train" / "0.png", root / "images" / "train" / "1.png"]


# ------------------------------------------------------------------------------------- walks
@pytest.mark.parametrize("target", ["..", ".", "../..", "/"])
def test_symlink_loop_in_images_is_a_clear_error(tmp_path, target):
    y = make_dataset(tmp_path / "d")
    link = tmp_path / "d" / "images" / "train" / "loop"
    os.symlink(target, link)
    with pytest.raises(ClipCEError, match=r"loop.* is a symbolic link to .*a folder that contains it") as e:
        resolve_data(str(y))
    assert str(link) in str(e.value)


def test_two_link_loop_and_linked_folders(tmp_path):
    """A loop through two links is found too; a linked folder that is no loop is walked, as Ultralytics walks it."""
    y = make_dataset(tmp_path / "d")
    root = tmp_path / "d"
    extra = tmp_path / "extra"
    extra.mkdir()
    cv2.imwrite(str(extra / "x.png"), np.zeros((8, 8, 3), np.uint8))
    os.symlink(extra, root / "images" / "train" / "more")
    names = [p.name for p in image_files(root / "images" / "train")]
    assert "x.png" in names and len(names) == 7
    os.symlink(root / "images" / "train", extra / "back")  # train/more/back -> train
    with pytest.raises(ClipCEError, match="folder that contains it"):
        walk_files(root / "images" / "train")
    assert yaml.safe_load(y.read_text())["train"] == "images/train"


def test_hidden_files_are_skipped_like_ultralytics(tmp_path):
    make_dataset(tmp_path / "d")
    train = tmp_path / "d" / "images" / "train"
    cv2.imwrite(str(train / ".hidden.png"), np.zeros((8, 8, 3), np.uint8))
    (train / ".cache").mkdir()
    cv2.imwrite(str(train / ".cache" / "c.png"), np.zeros((8, 8, 3), np.uint8))
    import glob

    theirs = sorted(glob.glob(str(train / "**" / "*.*"), recursive=True))
    assert [str(p) for p in image_files(train)] == theirs
