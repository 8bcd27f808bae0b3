"""convert: VOC (RTTS), ExDark and COCO fixtures, box by box, and every malformed case."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from clipce_rtdetr.convert import convert, run_convert
from clipce_rtdetr.errors import ClipCEError

FIX = Path(__file__).parent / "fixtures" / "data"


def labels(out: Path) -> dict[str, list[list[float]]]:
    return {p.name: [[float(v) for v in line.split()] for line in p.read_text().splitlines()] for p in sorted(out.glob("labels/*/*.txt"))}


def yolo(c, x1, y1, x2, y2, w, h):
    return [c, (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]


def check_boxes(got: list[list[float]], want: list[list[float]]) -> None:
    assert len(got) == len(want)
    for g, wnt in zip(got, want):
        assert g == pytest.approx(wnt, abs=1e-5)


def test_voc_rtts(tmp_path):
    src_files = sorted(p.relative_to(FIX) for p in (FIX / "voc").rglob("*"))
    y = convert("voc", FIX / "voc", tmp_path / "rtts", val_fraction=0.0, progress=False)
    assert sorted(p.relative_to(FIX) for p in (FIX / "voc").rglob("*")) == src_files  # source untouched
    cfg = yaml.safe_load(y.read_text())
    assert cfg["names"] == {0: "person", 1: "bicycle", 2: "car", 3: "motorbike", 4: "bus"}
    lb = labels(tmp_path / "rtts")
    assert set(lb) == {"a1.txt", "a2.txt", "a3.txt", "brouillard_ü.txt"}  # bad xml, missing and corrupt image skipped
    check_boxes(lb["a1.txt"], [yolo(0, 10, 8, 30, 40, 64, 48), yolo(2, 40, 20, 64, 47, 64, 48)])  # car clipped at x=64
    check_boxes(lb["a2.txt"], [yolo(4, 5, 5, 35, 25, 40, 30)])  # difficult bicycle left out, ' bus ' stripped
    assert lb["a3.txt"] == []  # image without objects kept as background
    check_boxes(lb["brouillard_ü.txt"], [yolo(3, 5, 4, 25, 24, 50, 40)])  # non-ASCII name; non-numeric box skipped
    assert (tmp_path / "rtts" / "images" / "train" / "brouillard_ü.png").is_symlink()
    gt = json.loads((tmp_path / "rtts" / "annotations" / "instances_train.json").read_text())
    crowd = [a for a in gt["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and crowd[0]["bbox"] == [2, 2, 10, 8]  # difficult: ignored by COCO eval
    s = json.loads((tmp_path / "rtts" / "convert_summary.json").read_text())
    assert s["skipped"] == {
        "malformed annotation file": 1, "object without name or numeric bndbox": 1, "image file missing": 1,
        "image file unreadable": 1, "box partly outside the image (clipped)": 1,
        "difficult object (left out of labels, ignored by COCO eval)": 1}
    report = (tmp_path / "rtts" / "convert_report.txt").read_text()
    assert "bad.xml:4" in report  # malformed XML named with its line


def test_voc_keep_difficult_split_and_copy(tmp_path):
    y = convert("voc", FIX / "voc", tmp_path / "o", keep_difficult=True, val_fraction=0.5, seed=3, link=False, progress=False)
    lb = labels(tmp_path / "o")
    assert len(lb["a2.txt"]) == 2
    cfg = yaml.safe_load(y.read_text())
    n = {s: len(list((tmp_path / "o" / "images" / s).iterdir())) for s in ("train", "val")}
    assert n["train"] + n["val"] == 4 and n["val"] > 0
    assert not any(p.is_symlink() for p in (tmp_path / "o" / "images").rglob("*"))
    assert cfg["coco_annotations"] == {"train": "annotations/instances_train.json", "val": "annotations/instances_val.json"}
    # Same seed, same split; a convert folder is replaced on rerun.
    convert("voc", FIX / "voc", tmp_path / "o", keep_difficult=True, val_fraction=0.5, seed=3, link=False, progress=False)
    assert labels(tmp_path / "o") == lb


def test_voc_unknown_class_and_mapping(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIX / "voc", src)
    (src / "Annotations" / "a3.xml").write_text(
        "<annotation><filename>a3.jpg</filename><object><name>truck</name>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>")
    with pytest.raises(ClipCEError, match="'truck' \\(1 objects\\)"):
        convert("voc", src, tmp_path / "o", progress=False)
    convert("voc", src, tmp_path / "o", names={**{k: k for k in ("person", "bicycle", "car", "motorbike", "bus")}, "truck": "car"},
            val_fraction=0.0, progress=False)
    assert labels(tmp_path / "o")["a3.txt"][0][0] == 2  # truck -> car
    convert("voc", src, tmp_path / "o2", names={"truck": None, **{k: k for k in ("person", "car", "motorbike", "bus", "bicycle")}}, progress=False)
    assert all(len(v) == 0 for k, v in labels(tmp_path / "o2").items() if k == "a3.txt")


def test_exdark_official_split(tmp_path):
    y = convert("exdark", FIX / "exdark", tmp_path / "ex", progress=False)
    cfg = yaml.safe_load(y.read_text())
    assert len(cfg["names"]) == 12 and cfg["test"] == "images/test"
    out = tmp_path / "ex"
    assert (out / "labels" / "train" / "2015_00001.txt").exists() and (out / "labels" / "val" / "2015_00002.txt").exists()
    assert (out / "images" / "test" / "2015_00003.JPG").exists()  # annotation '.jpg.txt' matched case-insensitively
    lb = labels(out)
    check_boxes(lb["2015_00001.txt"], [yolo(0, 10, 5, 30, 20, 64, 48), yolo(10, 50, 30, 64, 48, 64, 48)])  # People clipped
    check_boxes(lb["2015_00002.txt"], [yolo(4, 0, 0, 10, 10, 40, 40)])  # malformed lines skipped
    check_boxes(lb["2015_00003.txt"], [yolo(10, 2, 2, 12, 17, 30, 20)])
    s = json.loads((out / "convert_summary.json").read_text())
    assert s["skipped"]["malformed annotation line"] == 2 and s["skipped"]["image file missing"] == 1
    assert "2015_00002.jpg.txt:2" in (out / "convert_report.txt").read_text()


def test_coco_underwater(tmp_path):
    y = convert("coco", FIX / "coco", tmp_path / "duo", progress=False)
    cfg = yaml.safe_load(y.read_text())
    assert cfg["names"] == {0: "holothurian", 1: "echinus", 2: "scallop", 3: "starfish"}
    lb = labels(tmp_path / "duo")
    check_boxes(lb["u1.txt"], [yolo(0, 5, 5, 15, 25, 60, 40), yolo(3, 50, 30, 60, 40, 60, 40)])  # crowd/unknown/bad left out
    assert lb["u2.txt"] == []
    check_boxes(lb["u3.txt"], [yolo(2, 10.5, 12.25, 30.5, 22.25, 50, 50)])  # box fully outside dropped
    val = json.loads((tmp_path / "duo" / "annotations" / "instances_val.json").read_text())
    assert val["images"] == [{"id": 1, "file_name": "u3.jpg", "width": 50, "height": 50}]
    assert [a["bbox"] for a in val["annotations"]] == [[10.5, 12.25, 20.0, 10.0]]
    s = json.loads((tmp_path / "duo" / "convert_summary.json").read_text())["skipped"]
    assert s["annotation of an unknown category_id"] == 1 and s["annotation without a numeric bbox [x, y, w, h]"] == 1
    assert s["annotation of an unknown image_id"] == 1 and s["crowd annotation (ignored)"] == 1
    assert s["box outside the image or empty (dropped)"] == 1 and s["image file missing"] == 1


def test_coco_malformed_json_and_subset(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIX / "coco", src)
    (src / "annotations" / "instances_val.json").write_text('{"images": [\n  {"id": 1,,}\n]}')
    with pytest.raises(ClipCEError, match=r"instances_val.json:2:\d+"):
        convert("coco", src, tmp_path / "o", progress=False)
    # A subset of classes: keep two, drop the rest.
    convert("coco", FIX / "coco" / "annotations" / "instances_train.json", tmp_path / "sub",
            names={"starfish": "starfish", "holothurian": "sea cucumber", "*": None}, val_fraction=0.0, progress=False)
    cfg = yaml.safe_load((tmp_path / "sub" / "sub.yaml").read_text())
    assert cfg["names"] == {0: "starfish", 1: "sea cucumber"}
    assert [r[0] for r in labels(tmp_path / "sub")["u1.txt"]] == [1, 0]


def test_refuses_unsafe_out_and_cli(tmp_path):
    with pytest.raises(ClipCEError, match="overlaps source"):
        convert("voc", FIX / "voc", FIX / "voc" / "out", progress=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("mine")
    with pytest.raises(ClipCEError, match="not empty"):
        convert("voc", FIX / "voc", tmp_path / "full", progress=False)
    with pytest.raises(ClipCEError, match="format=, source="):
        run_convert({"out": str(tmp_path / "o")})
    y = run_convert({"format": "voc", "source": str(FIX / "voc"), "out": str(tmp_path / "cli"), "seed": 1})
    assert y.exists()
