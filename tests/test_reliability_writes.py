"""Atomic writes (issue 21 item 2): a checkpoint write that fails on a full disk (a real, small tmpfs) leaves the
previous last.pt loadable and the error names the file; the shared helper never leaves a half-written file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from clipce_rtdetr import ClipCERTDETR
from clipce_rtdetr.atomic import AtomicWriteError, atomic_write, write_text
from tests.conftest import FAST, TINY_MODEL


@pytest.fixture
def small_disk(tmp_path):
    """A real 64 MiB tmpfs (root only); skipped, saying why, where mounting is not permitted."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(disk: Path, leave: int) -> Path:
    """Fill the file system until `leave` bytes are free."""
    st = os.statvfs(disk)
    filler = disk / "filler.bin"
    with open(filler, "wb") as f:
        f.truncate(0)
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def test_full_disk_during_a_checkpoint_write_keeps_the_previous_last_pt(small_disk, tiny_hazy_shapes):
    from ultralytics.nn.tasks import load_checkpoint

    filled = []

    def fill_after_first_save(trainer):
        if not filled:  # epoch 1's checkpoints are written: now the disk is full (room for results.csv's line)
            filled.append(fill(small_disk, leave=64 * 1024))
            # Stand-in for a checkpoint that grew between saves (a disk filled by another writer meanwhile has the
            # same effect, but not deterministically): 1 MB more in epoch 2's train_args. Rewriting last.pt in place
            # frees its old size and then runs out of room part-way, which is how the field lost its checkpoint.
            trainer.args.padding = "x" * (1 << 20)

    model = ClipCERTDETR(TINY_MODEL)
    model.add_callback("on_model_save", fill_after_first_save)
    with pytest.raises(AtomicWriteError) as err:
        model.train(
            data=str(tiny_hazy_shapes), clipce="none", project=str(small_disk), name="run", **{**FAST, "epochs": 2}
        )
    weights = small_disk / "run" / "weights"
    assert str(weights / "last.pt") in str(err.value) and "No space left" in str(err.value)
    good = (weights / "last.pt").read_bytes()
    _, ckpt = load_checkpoint(weights / "last.pt")
    assert ckpt["epoch"] == 0 and ckpt["ema"] is not None  # epoch 1's checkpoint, whole: resume can use it
    assert sorted(p.name for p in weights.iterdir()) == ["best.pt", "last.pt"]  # no temporary file left behind
    filled[0].unlink()  # room again: the next write goes through
    write_text(weights / "note.txt", "ok")
    assert (weights / "last.pt").read_bytes() == good


def test_failed_write_keeps_the_old_file_and_names_it(small_disk):
    target = small_disk / "report.json"
    write_text(target, '{"old": true}')
    fill(small_disk, leave=0)
    with pytest.raises(AtomicWriteError, match=rf"could not write {target}: No space left on device"):
        with atomic_write(target) as f:
            f.write("x" * (1 << 20))
    assert target.read_text() == '{"old": true}'
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler.bin", "report.json"]


@pytest.mark.parametrize("stem", ["a" * 250, "é" * 125])  # 250 bytes either way: a valid name, near the limit
def test_a_name_near_the_file_name_limit_is_written_atomically(tmp_path, stem):
    target = tmp_path / f"{stem}.txt"
    target.write_text("old")  # the file system takes the name itself
    write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


@pytest.mark.parametrize("save_as", ["", "stripped.pt"])
def test_stripped_checkpoint_log_names_the_final_file_not_the_temporary_one(tmp_path, save_as):
    """final_eval's strip_optimizer writes to a temporary file renamed over last.pt: its log line must name the file
    the user gets (the temporary one no longer exists)."""
    import logging

    import torch
    import ultralytics.engine.trainer as ul_trainer
    from ultralytics.utils import LOGGER

    from clipce_rtdetr.engine.checkpoint_writes import atomic_strip_optimizer

    last = tmp_path / "weights" / "last.pt"
    last.parent.mkdir()
    torch.save({"model": torch.nn.Linear(2, 2), "optimizer": {"state": 1}}, last)
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    LOGGER.addHandler(handler)
    try:
        with atomic_strip_optimizer():
            ul_trainer.strip_optimizer(last, s=str(tmp_path / save_as) if save_as else "")
    finally:
        LOGGER.removeHandler(handler)
    said = [m for m in lines if "Optimizer stripped" in m]
    assert len(said) == 1 and ".tmp" not in said[0], said
    assert said[0].startswith(f"Optimizer stripped from {last},")
    assert (f"saved as {tmp_path / save_as}," in said[0]) == bool(save_as)
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.pt"]  # no temporary file left behind


def only_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_degraded_image_write_on_a_full_disk_keeps_the_old_image_and_leaves_no_temporary_file(small_disk):
    """degrade_image.write_image goes through clipce_rtdetr.atomic: the error names the image, nothing half-written
    stays beside it (a leftover would be picked up or fill the disk further on every retry)."""
    import numpy as np

    from clipce_rtdetr.data.degrade_image import write_image

    dst = small_disk / "im.png"
    write_image(np.zeros((8, 8, 3), np.uint8), dst)
    old = dst.read_bytes()
    fill(small_disk, leave=0)
    noisy = (np.random.default_rng(0).random((256, 256, 3)) * 255).astype(np.uint8)  # PNG cannot compress it away
    with pytest.raises(AtomicWriteError, match=rf"could not write {dst}"):
        write_image(noisy, dst)
    assert dst.read_bytes() == old and only_files(small_disk) == ["filler.bin", "im.png"]


def test_robustness_source_yaml_on_a_full_disk_leaves_no_temporary_file(small_disk, tmp_path):
    from test_degrade import _small_dataset

    from clipce_rtdetr.eval.robustness import split_source

    _small_dataset(tmp_path / "src")
    y = tmp_path / "src" / "d.yaml"
    y.write_text(f"path: {tmp_path / 'src'}\ntrain: images/train\nval: images/val\nnames: {{0: x}}\n")
    folder = small_disk / "robustness"
    folder.mkdir()
    fill(small_disk, leave=0)
    with pytest.raises(AtomicWriteError, match="source.yaml"):
        split_source(y, "val", folder)
    assert only_files(folder) == []


def test_clip_hash_cache_on_a_full_disk_is_skipped_and_leaves_no_temporary_file(small_disk, tmp_path, monkeypatch):
    import hashlib

    from clipce_rtdetr.clip import weights

    monkeypatch.setenv("CLIPCE_HOME", str(small_disk / "home"))
    monkeypatch.setattr(weights, "_HASH_MEMO", {})
    (small_disk / "home").mkdir()
    (small_disk / "home" / "clip-sha256.json").write_text("{}")
    f = tmp_path / "clip.safetensors"
    f.write_bytes(b"weights")
    fill(small_disk, leave=0)
    assert weights.file_sha256(f) == hashlib.sha256(b"weights").hexdigest()  # the cache is optional
    assert only_files(small_disk / "home") == ["clip-sha256.json"]
    assert (small_disk / "home" / "clip-sha256.json").read_text() == "{}"


def test_a_symlinked_file_is_written_through_its_link(tmp_path):
    """Writing a path that is a symbolic link replaces the file it points to, as open() would, and keeps the link
    (a rename onto the link itself would turn it into a separate regular file)."""
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "settings.json"
    target.write_text("old")
    link = tmp_path / "settings.json"
    link.symlink_to(target)
    write_text(link, "new")
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real", "settings.json"]  # nothing left beside the link

