"""convert on ambiguous or partly unreadable annotations (issue 11 items 3 and 5): refused before anything is
written, or left out and counted; never written as a wrong label file with exit 0."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from test_convert import FIX, add_voc, coco_boxes, copy_fixture, labels, voc_object

from clipce_rtdetr.data.convert import convert, run_convert
from clipce_rtdetr.errors import ClipCEError


def coco_source(tmp_path: Path) -> tuple[Path, Path, dict]:
    src = tmp_path / "co"
    shutil.copytree(FIX / "coco", src)
    f = src / "annotations" / "instances_train.json"
    return src, f, json.loads(f.read_text())


def skipped(out: Path) -> dict[str, int]:
    return json.loads((out / "convert_summary.json").read_text())["skipped"]


# ------------------------------------------------------------------------------ item 3: duplicates
def test_coco_duplicate_image_ids_are_refused_with_ids_and_names(tmp_path):
    src, f, d = coco_source(tmp_path)
    d["images"][1]["id"] = 1  # u2.jpg now shares id 1 with u1.jpg: whose are id 1's boxes?
    f.write_text(json.dumps(d))
    with pytest.raises(ClipCEError) as e:
        convert("coco", src, tmp_path / "o", progress=False)
    msg = str(e.value)
    assert "instances_train.json: 1 image ids are used by more than one image entry" in msg
    assert "id 1: u1.jpg, u2.jpg" in msg and "Nothing was written" in msg
    assert not (tmp_path / "o").exists()


def test_coco_id_types_that_cannot_be_keys(tmp_path):
    src, f, d = coco_source(tmp_path)
    d["images"][1]["id"] = [2]  # a list: not hashable, not an id
    d["annotations"].append({"id": 9, "image_id": [2], "category_id": 1, "bbox": [1, 1, 5, 5]})
    f.write_text(json.dumps(d))
    out = tmp_path / "o"
    convert("coco", src, out, progress=False, keep_unreadable=True)
    s = skipped(out)
    assert s["image entry without id or file_name"] == 1 and s["annotation of an unknown image_id"] == 2


def test_one_image_annotated_twice(tmp_path):
    src = copy_fixture(tmp_path, "voc")
    add_voc(src, "a2_copy", "a2.png", None, voc_object("bus", 5, 5, 35, 25))  # a2.png's objects differ
    with pytest.raises(ClipCEError, match=r"(?s)1 images are annotated more than once.*a2\.xml and .*a2_copy\.xml"):
        convert("voc", src, tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()
    # The same objects twice (a copied XML file): kept once, and the report says exactly that.
    shutil.copy(src / "Annotations" / "a1.xml", src / "Annotations" / "a2_copy.xml")
    out = tmp_path / "o2"
    convert("voc", src, out, val_fraction=0.0, progress=False)
    assert skipped(out)["image annotated twice with the same objects (kept once)"] == 1
    assert len(labels(out)["a1.txt"]) == 2 and len(coco_boxes(out, "train")["a1.jpg"]) == 2


def test_coco_image_in_two_splits_is_refused(tmp_path):
    src = tmp_path / "co"
    shutil.copytree(FIX / "coco", src)
    shutil.copy(src / "images" / "train" / "u2.jpg", src / "images" / "val" / "u2.jpg")
    f = src / "annotations" / "instances_val.json"
    d = json.loads(f.read_text())
    d["images"].append({"id": 11, "file_name": "u2.jpg", "width": 60, "height": 40})
    f.write_text(json.dumps(d))
    convert("coco", src, tmp_path / "ok", progress=False, keep_unreadable=True)  # two files: two images
    os.remove(src / "images" / "val" / "u2.jpg")  # now both entries find the one train/u2.jpg
    with pytest.raises(ClipCEError, match="different objects or splits"):
        convert("coco", src, tmp_path / "o", progress=False, keep_unreadable=True)


# --------------------------------------------------------------------- item 5: unreadable objects
def test_exdark_file_with_only_malformed_lines_is_left_out(tmp_path):
    src = tmp_path / "ex"
    shutil.copytree(FIX / "exdark", src)
    (src / "ExDark_Annno" / "Bicycle" / "2015_00002.jpg.txt").write_text("% bbGt version=3\nCar 1 2 x 4\nDog 3\n")
    out = tmp_path / "o"
    convert("exdark", src, out, progress=False)
    assert "2015_00002.txt" not in labels(out)
    assert not (out / "images" / "val" / "2015_00002.jpg").exists()
    assert skipped(out)["image left out: some of its objects could not be read (keep_unreadable=True keeps it)"] == 1
    # Asked for: kept as it was read (no objects), and counted.
    run_convert({"format": "exdark", "source": str(src), "out": str(tmp_path / "k"), "keep_unreadable": True})
    assert labels(tmp_path / "k")["2015_00002.txt"] == []
    assert skipped(tmp_path / "k")["image kept without its unreadable objects (keep_unreadable=True)"] == 1


@pytest.mark.parametrize(
    "annotation",
    [
        {"category_id": 9, "bbox": [1, 1, 5, 5]},  # a category the file does not define
        {"category_id": 1, "bbox": [1, 1, "5", 5]},
        {"category_id": 1, "bbox": None},
        {"category_id": 1, "bbox": [1, 1, float("nan"), 5]},
    ],
)
def test_coco_image_with_an_unreadable_annotation_is_left_out(tmp_path, annotation):
    src, f, d = coco_source(tmp_path)
    d["annotations"] = [a for a in d["annotations"] if a["id"] not in (4, 5)]  # u1's own unreadable ones
    d["annotations"].append({"id": 99, "image_id": 2, **annotation})
    f.write_text(json.dumps(d))
    out = tmp_path / "o"
    convert("coco", src, out, progress=False)
    assert "u2.txt" not in labels(out) and "u2.jpg" not in coco_boxes(out, "train") and "u1.txt" in labels(out)


def test_voc_non_numeric_corner_and_every_image_unreadable(tmp_path):
    src = tmp_path / "v"
    (src / "Annotations").mkdir(parents=True)
    (src / "JPEGImages").mkdir()
    add_voc(src, "x", "x.jpg", (20, 20), voc_object("car", 1, 1, "9px", 9))
    with pytest.raises(ClipCEError, match="No usable images") as e:
        convert("voc", src, tmp_path / "o", progress=False)
    assert "x.jpg (1 of 1 objects, first " in str(e.value)
    assert not (tmp_path / "o").exists()


def test_keep_unreadable_is_a_config_key():
    from clipce_rtdetr.config import ConfigError, check_overrides

    assert check_overrides({})[1]["keep_unreadable"] is False
    with pytest.raises(ConfigError, match="keep_unreadable"):
        check_overrides({"keep_unreadable": "yes"})


def test_source_with_a_symlink_loop(tmp_path):
    src = copy_fixture(tmp_path, "voc")
    os.symlink(src, src / "JPEGImages" / "again")
    with pytest.raises(ClipCEError, match="folder that contains it"):
        convert("voc", src, tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()
