"""degrade reruns and depth maps (issue 11 items 4 and 6): a rerun restores every output an image owns, and a bad
depth map is named as the depth map it is."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from test_degrade import _small_dataset, read_rows

from clipce_rtdetr.data.degrade import degrade
from clipce_rtdetr.errors import ClipCEError


def dataset(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    _small_dataset(src)
    y = src / "d.yaml"
    y.write_text(yaml.safe_dump({"path": str(src), "train": "images/train", "val": "images/val", "names": {0: "x"}}))
    return y


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_rerun_restores_every_output_an_image_owns(tmp_path):
    y = dataset(tmp_path)
    out = tmp_path / "hazy"
    degrade(y, out, processes=1, progress=False)
    full = snapshot(out)
    lb = out / "labels" / "train" / "a.txt"
    lb.unlink()  # issue 11 item 4: the image stayed, its label file did not
    (out / "labels" / "val" / "b.txt").write_text("")  # emptied by hand
    (out / "labels" / "val" / "c.txt").write_text("0 0.5 0.5 0.4 0.4\n0 0.1 0.1 0.1 0.1\n")  # changed
    (out / "images" / "train" / "c.png").write_bytes(b"")  # damaged since: redone
    rows = (out / "degradation.csv").read_text().splitlines()
    (out / "degradation.csv").write_text("\n".join(rows[:2]) + "\n")  # rows lost
    (out / "hazy.yaml").unlink()
    degrade(y, out, processes=1, progress=False)
    assert snapshot(out) == full


def test_label_removed_from_the_source_is_removed_from_the_copy(tmp_path):
    y = dataset(tmp_path)
    out = tmp_path / "hazy"
    degrade(y, out, processes=1, progress=False)
    (y.parent / "labels" / "train" / "b.txt").unlink()  # the image is now background in the source
    degrade(y, out, processes=1, progress=False)
    assert not (out / "labels" / "train" / "b.txt").exists() and (out / "images" / "train" / "b.png").is_file()


def depth_dataset(tmp_path: Path) -> tuple[Path, Path]:
    y = dataset(tmp_path)
    depth = y.parent / "depth"
    for split in ("train", "val"):
        (depth / split).mkdir(parents=True)
        for n in "abc":
            cv2.imwrite(str(depth / split / f"{n}.png"), np.full((24, 32), 200, np.uint8))
    return y, depth


@pytest.mark.parametrize(
    "bad, why",
    [
        ("b.png", "cannot be read"),  # corrupt PNG bytes
        ("b.npy", "has NaN, inf or negative"),
        ("b.npy-neg", "has NaN, inf or negative"),
    ],
)
def test_corrupt_depth_map_is_named_as_a_depth_map(tmp_path, bad, why):
    y, depth = depth_dataset(tmp_path)
    m = depth / "train" / "b.png"
    if bad == "b.png":
        m.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    else:
        m.unlink()
        values = np.full((24, 32), np.nan if bad == "b.npy" else -1.0, np.float32)
        np.save(depth / "train" / "b.npy", values)
        m = depth / "train" / "b.npy"
    out = tmp_path / "hazy"
    with pytest.raises(ClipCEError) as e:
        degrade(y, out, depth="depth", processes=1, progress=False)
    msg = str(e.value)
    assert f"depth map {m}: {why}" in msg and f"(for image {y.parent / 'images' / 'train' / 'b.png'})" in msg
    assert f"\n  {y.parent / 'images' / 'train' / 'b.png'}:" not in msg  # not reported as a bad image
    assert {r["im_file"] for r in read_rows(out)} == {
        f"images/{s}/{n}.png" for s in ("train", "val") for n in "abc"
    } - {"images/train/b.png"}


def test_unreadable_settings_file_is_a_clear_error(tmp_path):
    y = dataset(tmp_path)
    out = tmp_path / "hazy"
    degrade(y, out, processes=1, progress=False)
    (out / "degrade.json").write_text("{not json")
    with pytest.raises(ClipCEError, match=r"degrade.json cannot be read .*Choose another out= folder"):
        degrade(y, out, processes=1, progress=False)
    assert json.loads(json.dumps(read_rows(out)))  # the finished run is untouched
