"""Dataset input checks (issue 21 items 3, 6, 7, 8): a relative `path:` read one way by our checks and Ultralytics,
EXIF-rotated VOC images, empty prompt profiles, an empty val folder."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from clipce_rtdetr.data.dataset import resolve_data
from clipce_rtdetr.errors import ClipCEError


def yolo_folder(root: Path, n: int, colour: int) -> Path:
    """A small YOLO dataset folder (n images per split, one box each); `colour` tells two of them apart."""
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / "images" / split / f"im{i}.png"), np.full((32, 32, 3), colour, np.uint8))
            (root / "labels" / split / f"im{i}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    return root


def relative_yaml(folder: Path) -> Path:
    """A dataset YAML inside `folder` whose `path: ds` means folder/ds (the dataset beside it)."""
    yolo_folder(folder / "ds", 2, 50)
    y = folder / "data.yaml"
    y.write_text(yaml.safe_dump({"path": "ds", "train": "images/train", "val": "images/val", "names": {0: "x"}}))
    return y


def ultralytics_val_folder(yaml_path: str) -> Path:
    from ultralytics.data.utils import check_det_dataset

    return Path(check_det_dataset(yaml_path, autodownload=False)["val"])


def test_relative_path_beside_the_yaml_is_what_ultralytics_reads(tmp_path, monkeypatch):
    """Run from another folder, with another dataset of the same relative name in Ultralytics' datasets_dir: both
    our checks and Ultralytics read the dataset beside the YAML."""
    from ultralytics.data import utils as ul_data

    y = relative_yaml(tmp_path / "project")
    other = tmp_path / "ultra-datasets"
    yolo_folder(other / "ds", 3, 200)  # what Ultralytics alone would have trained on
    monkeypatch.setattr(ul_data, "DATASETS_DIR", other)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    given = resolve_data(str(y))
    assert ultralytics_val_folder(given) == (tmp_path / "project" / "ds" / "images" / "val").resolve()
    assert resolve_data(str(y)) == given  # the same pinned copy every time
    from clipce_rtdetr.data.degrade import degrade

    made = yaml.safe_load(degrade(y, tmp_path / "hazy", processes=1, progress=False).read_text())
    assert made["degraded"]["from"] == str(y.resolve())  # degrade reads the same folder and records the user's YAML
    assert len(list((tmp_path / "hazy" / "images" / "val").iterdir())) == 2


def test_relative_path_that_names_two_folders_is_refused_naming_both(tmp_path, monkeypatch):
    y = relative_yaml(tmp_path / "project")
    here = tmp_path / "cwd"
    yolo_folder(here / "ds", 3, 200)  # another dataset called ds in the folder the command runs from
    monkeypatch.chdir(here)
    with pytest.raises(ClipCEError, match="names two different folders") as err:
        resolve_data(str(y))
    assert str((tmp_path / "project" / "ds").resolve()) in str(err.value)
    assert str((here / "ds").resolve()) in str(err.value)
    monkeypatch.chdir(tmp_path / "project")  # from the YAML's own folder both readings agree
    assert ultralytics_val_folder(resolve_data(str(y))) == (tmp_path / "project" / "ds" / "images" / "val").resolve()


# ------------------------------------------------------------------------- VOC <size> vs EXIF (item 6)
VOC_XML = """<annotation><filename>{name}</filename>
  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>
  <object><name>car</name><difficult>0</difficult>
    <bndbox><xmin>8</xmin><ymin>4</ymin><xmax>24</xmax><ymax>16</ymax></bndbox></object>
</annotation>"""


def exif_jpeg(path: Path, orientation: int) -> None:
    """A 64x48 JPEG (as stored) with a white block at x 8-24, y 4-16 and the given EXIF orientation, as a phone
    camera writes it; the VOC boxes were drawn on the stored pixels (what LabelImg shows)."""
    from PIL import Image

    a = np.zeros((48, 64, 3), np.uint8)
    a[4:16, 8:24] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(a).save(path, "JPEG", quality=98, exif=exif.tobytes())


def test_voc_boxes_of_an_exif_rotated_jpeg_land_on_the_object(tmp_path):
    from clipce_rtdetr.data.convert import convert

    src = tmp_path / "voc"
    (src / "Annotations").mkdir(parents=True)
    (src / "JPEGImages").mkdir()
    exif_jpeg(src / "JPEGImages" / "turned.jpg", 6)  # read as 48x64, turned 90 degrees clockwise
    (src / "Annotations" / "turned.xml").write_text(VOC_XML.format(name="turned.jpg", w=64, h=48))
    exif_jpeg(src / "JPEGImages" / "odd.jpg", 1)
    (src / "Annotations" / "odd.xml").write_text(VOC_XML.format(name="odd.jpg", w=640, h=480))  # another image's
    y = convert("voc", src, tmp_path / "out", val_fraction=1.0, progress=False)
    out = y.parent
    img = cv2.imread(str(out / "images" / "val" / "turned.jpg"), cv2.IMREAD_GRAYSCALE)  # as Ultralytics reads it
    assert img.shape == (64, 48)
    ys, xs = np.nonzero(img > 128)
    cls, cx, cy, bw, bh = map(float, (out / "labels" / "val" / "turned.txt").read_text().split())
    box = np.array([(cx - bw / 2) * 48, (cy - bh / 2) * 64, (cx + bw / 2) * 48, (cy + bh / 2) * 64])
    assert np.abs(box - [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).max() <= 1.5  # on the white block
    assert not (out / "images" / "val" / "odd.jpg").exists()  # <size> of another image: left out, named
    report = (out / "convert_report.txt").read_text()
    assert "annotation <size> disagrees with the image" in report and str(src / "JPEGImages" / "odd.jpg") in report
    assert "fix <size>" in report


# ------------------------------------------------------------------------- prompt profiles (item 7)
@pytest.mark.parametrize(
    "text, missing",
    [
        ("", "the prompt profile is empty. It needs at least 'negatives:'"),
        ("# just a comment\n", "the prompt profile is empty. It needs at least 'negatives:'"),
        ("templates: ['a photo of a {}.']\n", "no scene negatives ('negatives:' is missing or empty)"),
        ("negatives: []\n", "no scene negatives ('negatives:' is missing or empty)"),
    ],
)
def test_empty_prompt_profile_is_refused_naming_the_file_and_what_is_missing(tmp_path, text, missing):
    from clipce_rtdetr.method.prompts import build_prompts, load_profile

    f = tmp_path / "my-profile.yaml"
    f.write_text(text)
    with pytest.raises(ClipCEError) as err:
        build_prompts(load_profile(str(f)), ["car", "person"])
    assert str(f) in str(err.value) and missing in str(err.value)
