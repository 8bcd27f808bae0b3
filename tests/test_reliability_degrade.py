"""degrade reruns after the source changed (issue 21 item 1): an output counts as done only if it was made from the
source as it is now; the label is copied with the regenerated image."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import yaml
from test_degrade import _small_dataset, read_rows

from clipce_rtdetr.data.degrade import degrade
from clipce_rtdetr.data.degrade_record import JOURNAL_FILE


def dataset(root: Path) -> Path:
    _small_dataset(root)
    y = root / "d.yaml"
    y.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val", "names": {0: "x"}}))
    return y


def edit_source(root: Path, with_label: bool) -> None:
    """A user's edit: other pixels, same size and format (so only the contents tell), optionally a moved box."""
    im = root / "images" / "val" / "b.png"
    cv2.imwrite(str(im), np.full((24, 32, 3), (10, 200, 40), np.uint8))
    st = os.stat(im)
    os.utime(im, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # a later edit, whatever the clock granularity
    if with_label:
        (root / "labels" / "val" / "b.txt").write_text("0 0.2 0.3 0.2 0.2\n")


def fresh_copy(tmp_path: Path, src: Path) -> Path:
    """The same dataset as it is now, degraded into a new folder: what the rerun must produce."""
    ref = tmp_path / "ref-src"
    os.system(f"cp -a '{src}' '{ref}'")
    y = ref / "d.yaml"
    y.write_text(yaml.safe_dump({**yaml.safe_load(y.read_text()), "path": str(ref)}))
    out = tmp_path / "ref-out"
    degrade(y, out, processes=1, progress=False)
    return out


def first_run(tmp_path: Path) -> tuple[Path, Path, Path, bytes]:
    """(source folder, its YAML, out=, the degraded val/b.png) after a first degrade run."""
    src = tmp_path / "src"
    y = dataset(src)
    out = tmp_path / "hazy"
    degrade(y, out, processes=1, progress=False)
    return src, y, out, (out / "images" / "val" / "b.png").read_bytes()


def test_rerun_redoes_an_image_whose_source_was_edited_with_its_label(tmp_path):
    src, y, out, before = first_run(tmp_path)
    untouched = (out / "images" / "val" / "a.png").stat().st_mtime_ns
    edit_source(src, with_label=True)
    degrade(y, out, processes=1, progress=False)
    ref = fresh_copy(tmp_path, src)
    got = (out / "images" / "val" / "b.png").read_bytes()
    assert got != before and got == (ref / "images" / "val" / "b.png").read_bytes()
    assert (out / "labels" / "val" / "b.txt").read_text() == "0 0.2 0.3 0.2 0.2\n"
    assert (out / "images" / "val" / "a.png").stat().st_mtime_ns == untouched  # unchanged sources are not redone
    row = {r["im_file"]: r for r in read_rows(out)}["images/val/b.png"]
    assert row["source_sha256"] == {r["im_file"]: r for r in read_rows(ref)}["images/val/b.png"]["source_sha256"]
    assert not (out / JOURNAL_FILE).exists()


def test_rerun_redoes_an_image_edited_without_its_label_and_trusts_a_touched_one(tmp_path):
    src, y, out, before = first_run(tmp_path)
    edit_source(src, with_label=False)
    touched = src / "images" / "train" / "a.png"
    os.utime(touched, ns=(0, 10**18))  # touched, not edited: contents decide, the image is kept
    kept = (out / "images" / "train" / "a.png").stat().st_mtime_ns
    degrade(y, out, processes=1, progress=False)
    assert (out / "images" / "val" / "b.png").read_bytes() != before
    assert (out / "images" / "val" / "b.png").read_bytes() == (
        fresh_copy(tmp_path, src) / "images" / "val" / "b.png"
    ).read_bytes()
    assert (out / "images" / "train" / "a.png").stat().st_mtime_ns == kept
    row = {r["im_file"]: r for r in read_rows(out)}["images/train/a.png"]
    assert row["source_stat"].endswith(f":{10**18}")  # the record follows the touched file


def test_interrupted_run_resumes_from_its_journal_and_redoes_unrecorded_outputs(tmp_path):
    """A run killed after some images (degradation.csv not yet rewritten) keeps their records in the journal; an
    output with no record at all (e.g. made by an older version, or its row lost) is redone, not trusted."""
    src, y, out, _ = first_run(tmp_path)
    full = {p.name: p.read_bytes() for p in (out / "images" / "val").iterdir()}
    rows = (out / "degradation.csv").read_text().splitlines()
    journal = [r.split(",") for r in rows[1:] if r.startswith("images/val/a.png")]
    (out / JOURNAL_FILE).write_text(f"images/val/a.png\t{journal[0][-2]}\t{journal[0][-1]}\n" + "images/val/b.png\t1")
    (out / "degradation.csv").unlink()  # killed before the records were written
    (out / "images" / "val" / "c.png").write_bytes(b"stale bytes from an older run")
    a_mtime = (out / "images" / "val" / "a.png").stat().st_mtime_ns
    degrade(y, out, processes=1, progress=False)
    assert (out / "images" / "val" / "a.png").stat().st_mtime_ns == a_mtime  # recorded in the journal: kept
    assert {p.name: p.read_bytes() for p in (out / "images" / "val").iterdir()} == full
    assert len(read_rows(out)) == 6 and not (out / JOURNAL_FILE).exists()


def test_rerun_removes_outputs_whose_source_was_deleted_but_nothing_else(tmp_path):
    """A source image deleted (with its label) after a run: the rerun removes the degraded copy and its label copy it
    made, so the new dataset holds no image without a source; a file the user put in out= stays."""
    src, y, out, _ = first_run(tmp_path)
    (src / "images" / "val" / "b.png").unlink()
    (src / "labels" / "val" / "b.txt").unlink()
    mine = out / "images" / "val" / "mine.png"  # not made by degrade: never deleted
    mine.write_bytes((out / "images" / "val" / "a.png").read_bytes())
    degrade(y, out, processes=1, progress=False)
    assert not (out / "images" / "val" / "b.png").exists() and not (out / "labels" / "val" / "b.txt").exists()
    assert mine.exists() and (out / "images" / "val" / "a.png").exists() and (out / "labels" / "val" / "a.txt").exists()
    assert "images/val/b.png" not in {r["im_file"] for r in read_rows(out)}
    assert len(read_rows(out)) == 5
