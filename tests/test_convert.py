"""convert: VOC (RTTS), ExDark and COCO fixtures, box by box, and every malformed case."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from clipce_rtdetr.data.convert import convert, run_convert, seeded_split
from clipce_rtdetr.errors import ClipCEError

FIX = Path(__file__).parent / "fixtures" / "data"


def labels(out: Path) -> dict[str, list[list[float]]]:
    return {
        p.name: [[float(v) for v in line.split()] for line in p.read_text().splitlines()]
        for p in sorted(out.glob("labels/*/*.txt"))
    }


def yolo(c, x1, y1, x2, y2, w, h):
    return [c, (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]


def check_boxes(got: list[list[float]], want: list[list[float]]) -> None:
    assert len(got) == len(want)
    for g, wnt in zip(got, want):
        assert g == pytest.approx(wnt, abs=1e-5)


def voc_object(name, x1, y1, x2, y2) -> str:
    box = f"<xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
    return f"<object><name>{name}</name><bndbox>{box}</bndbox></object>"


def add_voc(src: Path, xml_stem: str, image: str, size: tuple[int, int] | None, *objects: str) -> None:
    """One VOC annotation (and, with a size, its image) in src/Annotations and src/JPEGImages."""
    from PIL import Image

    if size is not None:
        Image.new("RGB", size, (90, 120, 30)).save(src / "JPEGImages" / image)
    (src / "Annotations" / f"{xml_stem}.xml").write_text(
        f"<annotation><filename>{image}</filename>{''.join(objects)}</annotation>", encoding="utf-8"
    )


def copy_fixture(tmp_path: Path, fmt: str) -> Path:
    shutil.copytree(FIX / fmt, tmp_path / "src")
    return tmp_path / "src"


def snapshot(folder: Path) -> dict[str, Any]:
    """Every path under folder with its content (or symlink target), to compare before and after."""
    return {
        str(p.relative_to(folder)): os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else None
        for p in sorted(folder.rglob("*"))
    }


def coco_boxes(out: Path, split: str) -> dict[str, list[list[float]]]:
    """{image file name: [bbox, ...]} from the written COCO ground truth."""
    gt = json.loads((out / "annotations" / f"instances_{split}.json").read_text())
    names = {im["id"]: im["file_name"] for im in gt["images"]}
    boxes = {n: [] for n in names.values()}
    for a in gt["annotations"]:
        boxes[names[a["image_id"]]].append(a["bbox"])
    return boxes


def test_voc_rtts(tmp_path):
    src_files = sorted(p.relative_to(FIX) for p in (FIX / "voc").rglob("*"))
    y = convert("voc", FIX / "voc", tmp_path / "rtts", val_fraction=0.0, progress=False, keep_unreadable=True)
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
        "malformed annotation file": 1,
        "object without name or numeric bndbox": 1,
        "image file missing": 1,
        "image file unreadable": 1,
        "box partly outside the image (clipped)": 1,
        "difficult object (left out of labels, ignored by COCO eval)": 1,
        "image kept without its unreadable objects (keep_unreadable=True)": 1,
    }
    report = (tmp_path / "rtts" / "convert_report.txt").read_text()
    assert "bad.xml:4" in report  # malformed XML named with its line


def test_image_with_an_unreadable_object_is_left_out(tmp_path):
    """Issue 11 item 5: brouillard_ü has a box with a non-numeric corner; written without it, the image would
    teach that the person there is background. Left out by default, and said so."""
    out = tmp_path / "rtts"
    convert("voc", FIX / "voc", out, val_fraction=0.0, progress=False)
    assert set(labels(out)) == {"a1.txt", "a2.txt", "a3.txt"}
    assert not (out / "images" / "train" / "brouillard_ü.png").exists()
    assert "brouillard_ü.png" not in coco_boxes(out, "train")
    s = json.loads((out / "convert_summary.json").read_text())
    assert s["skipped"]["image left out: some of its objects could not be read (keep_unreadable=True keeps it)"] == 1
    assert s["images"] == {"train": 3}
    report = (out / "convert_report.txt").read_text()
    assert "brouillard_ü.png (1 of 2 objects, first " in report and "brouillard_ü.xml object #2" in report


def test_voc_keep_difficult_split_and_copy(tmp_path):
    opts = dict(keep_difficult=True, val_fraction=0.5, seed=3, link=False, progress=False, keep_unreadable=True)
    y = convert("voc", FIX / "voc", tmp_path / "o", **opts)
    lb = labels(tmp_path / "o")
    assert len(lb["a2.txt"]) == 2
    cfg = yaml.safe_load(y.read_text())
    n = {s: len(list((tmp_path / "o" / "images" / s).iterdir())) for s in ("train", "val")}
    assert n["train"] + n["val"] == 4 and n["val"] > 0
    assert not any(p.is_symlink() for p in (tmp_path / "o" / "images").rglob("*"))
    assert cfg["coco_annotations"] == {
        "train": "annotations/instances_train.json",
        "val": "annotations/instances_val.json",
    }
    # Same seed, same split; a convert folder is replaced on rerun.
    convert("voc", FIX / "voc", tmp_path / "o", **opts)
    assert labels(tmp_path / "o") == lb


def test_voc_unknown_class_and_mapping(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIX / "voc", src)
    (src / "Annotations" / "a3.xml").write_text(
        "<annotation><filename>a3.jpg</filename><object><name>truck</name>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>"
    )
    with pytest.raises(ClipCEError, match="'truck' \\(1 objects\\)"):
        convert("voc", src, tmp_path / "o", progress=False)
    convert(
        "voc",
        src,
        tmp_path / "o",
        names={**{k: k for k in ("person", "bicycle", "car", "motorbike", "bus")}, "truck": "car"},
        val_fraction=0.0,
        progress=False,
    )
    assert labels(tmp_path / "o")["a3.txt"][0][0] == 2  # truck -> car
    convert(
        "voc",
        src,
        tmp_path / "o2",
        names={"truck": None, **{k: k for k in ("person", "car", "motorbike", "bus", "bicycle")}},
        progress=False,
    )
    assert all(len(v) == 0 for k, v in labels(tmp_path / "o2").items() if k == "a3.txt")


def test_exdark_official_split(tmp_path):
    y = convert("exdark", FIX / "exdark", tmp_path / "ex", progress=False, keep_unreadable=True)
    cfg = yaml.safe_load(y.read_text())
    assert len(cfg["names"]) == 12 and cfg["test"] == "images/test"
    out = tmp_path / "ex"
    assert (out / "labels" / "train" / "2015_00001.txt").exists() and (
        out / "labels" / "val" / "2015_00002.txt"
    ).exists()
    assert (out / "images" / "test" / "2015_00003.JPG").exists()  # annotation '.jpg.txt' matched case-insensitively
    lb = labels(out)
    check_boxes(
        lb["2015_00001.txt"], [yolo(0, 10, 5, 30, 20, 64, 48), yolo(10, 50, 30, 64, 48, 64, 48)]
    )  # People clipped
    check_boxes(lb["2015_00002.txt"], [yolo(4, 0, 0, 10, 10, 40, 40)])  # malformed lines skipped
    check_boxes(lb["2015_00003.txt"], [yolo(10, 2, 2, 12, 17, 30, 20)])
    s = json.loads((out / "convert_summary.json").read_text())
    assert s["skipped"]["malformed annotation line"] == 2 and s["skipped"]["image file missing"] == 1
    assert "2015_00002.jpg.txt:2" in (out / "convert_report.txt").read_text()


def test_exdark_split_list_names_with_spaces(tmp_path):
    """ExDark's imageclasslist: 'Name Class Light In/Out Split' where the name may hold spaces."""
    src = tmp_path / "ex"
    shutil.copytree(FIX / "exdark", src)
    shutil.copy(src / "ExDark" / "Bicycle" / "2015_00001.png", src / "ExDark" / "Bicycle" / "my bike 1.png")
    shutil.copy(
        src / "ExDark_Annno" / "Bicycle" / "2015_00001.png.txt", src / "ExDark_Annno" / "Bicycle" / "my bike 1.png.txt"
    )
    with (src / "ExDark" / "imageclasslist.txt").open("a") as f:
        f.write("my bike 1.png 1 2 1 2\n")
    out = tmp_path / "o"
    convert("exdark", src, out, progress=False)
    assert (out / "labels" / "val" / "my bike 1.txt").is_file() and not (
        out / "labels" / "train" / "my bike 1.txt"
    ).exists()


def test_coco_underwater(tmp_path):
    y = convert("coco", FIX / "coco", tmp_path / "duo", progress=False, keep_unreadable=True)
    cfg = yaml.safe_load(y.read_text())
    assert cfg["names"] == {0: "holothurian", 1: "echinus", 2: "scallop", 3: "starfish"}
    lb = labels(tmp_path / "duo")
    check_boxes(
        lb["u1.txt"], [yolo(0, 5, 5, 15, 25, 60, 40), yolo(3, 50, 30, 60, 40, 60, 40)]
    )  # crowd/unknown/bad left out
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
    convert(
        "coco",
        FIX / "coco" / "annotations" / "instances_train.json",
        tmp_path / "sub",
        names={"starfish": "starfish", "holothurian": "sea cucumber", "*": None},
        val_fraction=0.0,
        progress=False,
        keep_unreadable=True,  # u1 has an annotation of an unknown category and one without a bbox
    )
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


def test_failed_rerun_keeps_previous_output(tmp_path):
    out = tmp_path / "v1"
    convert("voc", FIX / "voc", out, val_fraction=0.5, progress=False)
    before = snapshot(out)
    assert any(k.startswith("labels/") for k in before)
    # A class-name error and a bad val_fraction are found before the old conversion is removed.
    with pytest.raises(ClipCEError, match=r"names=\"\{'person': 'person', 'car': 'car', '\*': None\}\""):
        convert("voc", FIX / "voc", out, names=["person", "car"], progress=False)
    assert snapshot(out) == before
    with pytest.raises(ClipCEError, match="val_fraction=1.5: must be between 0 and 1"):
        convert("voc", FIX / "voc", out, val_fraction=1.5, progress=False)
    assert snapshot(out) == before


def test_same_stem_images_get_their_own_label_files(tmp_path):
    src = copy_fixture(tmp_path, "voc")
    add_voc(src, "a1b", "a1.png", (20, 10), voc_object("bus", 1, 1, 9, 9))  # a1.jpg exists: same stem
    out = tmp_path / "o"
    convert("voc", src, out, val_fraction=0.0, progress=False)
    assert sorted(p.name for p in (out / "images" / "train").glob("a1*")) == ["a1.jpg", "a1_1.png"]
    lb = labels(out)
    check_boxes(lb["a1.txt"], [yolo(0, 10, 8, 30, 40, 64, 48), yolo(2, 40, 20, 64, 47, 64, 48)])
    check_boxes(lb["a1_1.txt"], [yolo(4, 1, 1, 9, 9, 20, 10)])
    boxes = coco_boxes(out, "train")
    assert boxes["a1.jpg"] == [[10, 8, 20, 32], [40, 20, 24, 27]] and boxes["a1_1.png"] == [[1, 1, 8, 8]]
    assert "a1.png (images/train/a1_1.png)" in (out / "convert_report.txt").read_text()
    # ExDark: 2015_00001.png and 2015_00001.jpg share a split entry (by stem) and so a split.
    src = tmp_path / "ex"
    shutil.copytree(FIX / "exdark", src)
    from PIL import Image

    Image.new("RGB", (30, 20)).save(src / "ExDark" / "Bicycle" / "2015_00001.jpg")
    (src / "ExDark_Annno" / "Bicycle" / "2015_00001.jpg.txt").write_text(
        "% bbGt version=3\nCar 2 2 10 5 0 0 0 0 0 0 0\n"
    )
    convert("exdark", src, tmp_path / "exo", progress=False)
    lb = labels(tmp_path / "exo")
    check_boxes(lb["2015_00001.txt"], [yolo(4, 2, 2, 12, 7, 30, 20)])
    check_boxes(lb["2015_00001_1.txt"], [yolo(0, 10, 5, 30, 20, 64, 48), yolo(10, 50, 30, 64, 48, 64, 48)])
    assert (tmp_path / "exo" / "images" / "train" / "2015_00001_1.png").exists()


def test_non_finite_coordinates_are_malformed(tmp_path):
    src = copy_fixture(tmp_path, "voc")
    add_voc(
        src,
        "a3",
        "a3.jpg",
        None,
        voc_object("car", "nan", 1, 9, 9),
        voc_object("bus", 1, 1, "inf", 9),
        voc_object("car", 2, 2, 6, 6),
    )
    out = tmp_path / "o"
    convert("voc", src, out, val_fraction=0.0, progress=False, keep_unreadable=True)
    check_boxes(labels(out)["a3.txt"], [yolo(2, 2, 2, 6, 6, 32, 32)])
    assert coco_boxes(out, "train")["a3.jpg"] == [[2, 2, 4, 4]]
    report = (out / "convert_report.txt").read_text()
    assert (
        "a3.xml object #1 (not a finite number: 'nan')" in report
        and "a3.xml object #2 (not a finite number: 'inf')" in report
    )
    # ExDark: a line with 'inf' is a malformed line; COCO: NaN/Infinity (json.dumps writes them) are not a numeric bbox.
    ex = tmp_path / "ex"
    shutil.copytree(FIX / "exdark", ex)
    with (ex / "ExDark_Annno" / "Bicycle" / "2015_00002.jpg.txt").open("a") as f:
        f.write("Car inf 1 5 5 0 0 0 0 0 0 0\n")
    convert("exdark", ex, tmp_path / "exo", progress=False, keep_unreadable=True)
    check_boxes(labels(tmp_path / "exo")["2015_00002.txt"], [yolo(4, 0, 0, 10, 10, 40, 40)])
    assert (
        "2015_00002.jpg.txt:5 (not a finite number: 'inf': 'Car inf 1 5 5"
        in (tmp_path / "exo" / "convert_report.txt").read_text()
    )
    co = tmp_path / "co"
    shutil.copytree(FIX / "coco", co)
    f = co / "annotations" / "instances_train.json"
    d = json.loads(f.read_text())
    d["annotations"] += [
        {"id": 8, "image_id": 2, "category_id": 1, "bbox": [1, 1, float("nan"), 5]},
        {"id": 9, "image_id": 2, "category_id": 1, "bbox": [1, float("inf"), 5, 5]},
    ]
    f.write_text(json.dumps(d))
    convert("coco", co, tmp_path / "coo", progress=False, keep_unreadable=True)
    assert labels(tmp_path / "coo")["u2.txt"] == [] and coco_boxes(tmp_path / "coo", "train")["u2.jpg"] == []
    assert (
        json.loads((tmp_path / "coo" / "convert_summary.json").read_text())["skipped"][
            "annotation without a numeric bbox [x, y, w, h]"
        ]
        == 3
    )


def test_voc_split_files_one_name_per_line(tmp_path):
    src = copy_fixture(tmp_path, "voc")
    add_voc(src, "with space", "with space.jpg", (20, 20), voc_object("car", 1, 1, 5, 5))
    add_voc(src, "résumé é", "résumé é.jpg", (20, 20), voc_object("bus", 2, 2, 6, 6))
    add_voc(src, "img.v2", "img.v2.jpg", (20, 20), voc_object("car", 3, 3, 7, 7))  # a dot in the id
    add_voc(src, "img.v3", "img.v3", None, voc_object("car", 3, 3, 7, 7))  # ... and <filename> without a suffix
    shutil.copy(src / "JPEGImages" / "img.v2.jpg", src / "JPEGImages" / "img.v3.jpg")
    sets = src / "ImageSets" / "Main"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("a1\na2\n\nwith space\n brouillard_ü \n", encoding="utf-8")
    (sets / "val.txt").write_text("a3\r\nrésumé é\r\nimg.v2\nimg.v3\n", encoding="utf-8")
    out = tmp_path / "o"
    convert("voc", src, out, progress=False, keep_unreadable=True)
    assert sorted(p.name for p in (out / "labels" / "train").iterdir()) == [
        "a1.txt",
        "a2.txt",
        "brouillard_ü.txt",
        "with space.txt",
    ]
    assert sorted(p.name for p in (out / "labels" / "val").iterdir()) == [
        "a3.txt",
        "img.v2.txt",
        "img.v3.txt",
        "résumé é.txt",
    ]
    check_boxes(labels(out)["résumé é.txt"], [yolo(4, 2, 2, 6, 6, 20, 20)])
    report = (out / "convert_report.txt").read_text()
    assert "(with space)" not in report and "(résumé é)" not in report and "(corrupt)" in report  # corrupt: not listed


def test_unknown_class_hint_keeps_the_other_classes(tmp_path):
    src = tmp_path / "ex"
    shutil.copytree(FIX / "exdark", src)
    with (src / "ExDark_Annno" / "Bicycle" / "2015_00002.jpg.txt").open("a") as f:
        f.write("Truck 20 20 10 10 0 0 0 0 0 0 0\n")
    with pytest.raises(ClipCEError) as e:
        convert("exdark", src, tmp_path / "o", progress=False)
    assert "'*'" not in str(e.value) and "names=\"{'Truck': None}\"" in str(e.value)
    # Dropping or renaming only Truck keeps ExDark's 12 classes.
    y = convert("exdark", src, tmp_path / "drop", names={"Truck": None}, progress=False, keep_unreadable=True)
    assert list(yaml.safe_load(y.read_text())["names"].values()) == [
        "Bicycle",
        "Boat",
        "Bottle",
        "Bus",
        "Car",
        "Cat",
        "Chair",
        "Cup",
        "Dog",
        "Motorbike",
        "People",
        "Table",
    ]
    check_boxes(labels(tmp_path / "drop")["2015_00002.txt"], [yolo(4, 0, 0, 10, 10, 40, 40)])
    y = convert(
        "exdark",
        src,
        tmp_path / "car",
        names={"Truck": "Car", "People": "Person"},
        progress=False,
        keep_unreadable=True,
    )
    names = yaml.safe_load(y.read_text())["names"]
    assert len(names) == 12 and names[4] == "Car" and names[10] == "Person"  # a renamed class keeps its place
    check_boxes(
        labels(tmp_path / "car")["2015_00002.txt"], [yolo(4, 0, 0, 10, 10, 40, 40), yolo(4, 20, 20, 30, 30, 40, 40)]
    )
    check_boxes(labels(tmp_path / "car")["2015_00003.txt"], [yolo(10, 2, 2, 12, 17, 30, 20)])


def test_flipped_boxes_are_swapped_and_reported(tmp_path):
    src = copy_fixture(tmp_path, "voc")
    add_voc(
        src, "a3", "a3.jpg", None, voc_object("car", 20, 4, 6, 10), voc_object("bus", 40, 30, 20, 2)
    )  # 2nd also clipped
    out = tmp_path / "o"
    convert("voc", src, out, val_fraction=0.0, progress=False)
    check_boxes(labels(out)["a3.txt"], [yolo(2, 6, 4, 20, 10, 32, 32), yolo(4, 20, 2, 32, 30, 32, 32)])
    s = json.loads((out / "convert_summary.json").read_text())["skipped"]
    assert (
        s["box corners in the wrong order (swapped and kept)"] == 2 and s["box partly outside the image (clipped)"] == 2
    )
    assert (
        "a3.xml object #1 ((20.0, 4.0, 6.0, 10.0) -> (6.0, 4.0, 20.0, 10.0))"
        in (out / "convert_report.txt").read_text()
    )
    co = tmp_path / "co"
    shutil.copytree(FIX / "coco", co)
    f = co / "annotations" / "instances_train.json"
    d = json.loads(f.read_text())
    d["annotations"].append({"id": 8, "image_id": 2, "category_id": 1, "bbox": [50, 30, -30, -20]})
    f.write_text(json.dumps(d))
    convert("coco", co, tmp_path / "coo", progress=False)
    check_boxes(labels(tmp_path / "coo")["u2.txt"], [yolo(0, 20, 10, 50, 30, 60, 40)])
    assert coco_boxes(tmp_path / "coo", "train")["u2.jpg"] == [[20, 10, 30, 20]]
    assert (
        json.loads((tmp_path / "coo" / "convert_summary.json").read_text())["skipped"][
            "box corners in the wrong order (swapped and kept)"
        ]
        == 1
    )


def test_unreadable_images_plain_reason_without_heif(tmp_path, monkeypatch):
    import ultralytics.utils.checks

    def no_install(*args, **kwargs):
        raise AssertionError("convert tried to install an image plugin")

    monkeypatch.setattr(ultralytics.utils.checks, "check_requirements", no_install)
    src = copy_fixture(tmp_path, "voc")
    (src / "JPEGImages" / "empty.jpg").write_bytes(b"")
    add_voc(src, "empty", "empty.jpg", None, voc_object("car", 1, 1, 5, 5))
    out = tmp_path / "o"
    convert("voc", src, out, val_fraction=0.0, progress=False)
    report = (out / "convert_report.txt").read_text()
    assert "empty.jpg (empty file (0 bytes))" in report
    assert "corrupt.jpg (not an image (PIL does not recognise the format))" in report
    assert "heif" not in report.lower() and "AssertionError" not in report


def test_out_is_a_file_and_out_dot(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("mine")
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(ClipCEError, match="file is a file, not a folder"):
            convert("voc", FIX / "voc", out, progress=False)
    assert (tmp_path / "file").read_text() == "mine"
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    y = convert("voc", FIX / "voc", ".", progress=False)
    assert y.name == "here.yaml" and not (tmp_path / "here" / ".yaml").exists()


def test_val_fraction_bounds(tmp_path):
    for bad in (1.5, -0.1):
        with pytest.raises(ClipCEError, match=f"val_fraction={bad}: must be between 0 and 1"):
            convert("voc", FIX / "voc", tmp_path / "o", val_fraction=bad, progress=False)
    assert not (tmp_path / "o").exists()
    y = convert("voc", FIX / "voc", tmp_path / "all-val", val_fraction=1, progress=False)  # an evaluation-only set
    cfg = yaml.safe_load(y.read_text())
    assert cfg["train"] == cfg["val"] == "images/val" and not (tmp_path / "all-val" / "images" / "train").exists()
    warnings = json.loads((tmp_path / "all-val" / "convert_summary.json").read_text())["warnings"]
    assert len(warnings) == 1 and "No training images" in warnings[0]
    y = convert("voc", FIX / "voc", tmp_path / "o", val_fraction=0, progress=False)
    assert yaml.safe_load(y.read_text())["val"] == "images/train"
    warnings = json.loads((tmp_path / "o" / "convert_summary.json").read_text())["warnings"]
    assert len(warnings) == 1 and "val: points at images/train" in warnings[0]
    assert "Warnings:" in (tmp_path / "o" / "convert_report.txt").read_text()
    # A fraction above 0 keeps an image on each side even where rounding would not.
    assert sorted(seeded_split(["a", "b"], 0.2, 0).values()) == ["train", "val"]
    assert sorted(seeded_split(["a", "b"], 0.9, 0).values()) == ["train", "val"]
    assert seeded_split(["a"], 0.5, 0) == {"a": "train"}


def test_seeded_split_is_drawn_among_usable_images(tmp_path):
    """The fixture has missing and unreadable images: the default 80/20 split still gives val an image."""
    convert("voc", FIX / "voc", tmp_path / "o", progress=False)
    counts = json.loads((tmp_path / "o" / "convert_summary.json").read_text())["images"]
    assert counts.get("train", 0) >= 1 and counts.get("val", 0) >= 1
