"""A dataset on a read-only filesystem (issue 11.1): CLIP-CE caches fall back to $CLIPCE_HOME, built once.

The mount is real (tmpfs remounted read-only): running as root, chmod would not stop writes.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from clipce_rtdetr import ClipCERTDETR
from tests.conftest import FAST, TINY_MODEL
from tests.test_trainer import _FakeBundle, _labels


def _mount(cmd: list[str]) -> str | None:
    out = subprocess.run(cmd, capture_output=True, text=True)
    return None if out.returncode == 0 else (out.stderr or out.stdout).strip()


@pytest.fixture
def readonly_dataset(tiny_hazy_shapes, tmp_path):
    """A copy of the tiny dataset on a read-only tmpfs mount; yields its YAML. Unmounted afterwards."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    err = _mount(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)])
    if err:
        print(f"cannot mount a tmpfs ({err})")
        pytest.skip(f"a read-only mount is needed and mounting is not possible here: {err}")
    try:
        src = Path(tiny_hazy_shapes).parent
        for sub in ("images", "labels"):
            shutil.copytree(src / sub, mnt / sub, ignore=shutil.ignore_patterns("*.cache", "*.clipce-*"))
        text = Path(tiny_hazy_shapes).read_text().replace(f"path: {src}", f"path: {mnt}")
        yaml_path = mnt / "data.yaml"
        yaml_path.write_text("\n".join(ln for ln in text.splitlines() if not ln.startswith(("degradation", "clean"))))
        err = _mount(["mount", "-o", "remount,ro,bind", str(mnt)])
        if err:
            print(f"cannot remount read-only ({err})")
            pytest.skip(f"cannot remount the tmpfs read-only: {err}")
        with pytest.raises(OSError):
            (mnt / "labels" / "probe").write_text("x")  # really read-only, even for root
        yield yaml_path
    finally:
        _mount(["umount", "-l", str(mnt)])


def test_cache_falls_back_to_clipce_home_once(readonly_dataset, caplog):
    from clipce_rtdetr.method import embedding_cache as ec
    from clipce_rtdetr.paths import home

    labels, files = _labels(readonly_dataset)
    b = _FakeBundle()
    first = ec.dataset_embeddings(labels, files, b, 0.1, progress=False)  # raised RuntimeError before the fix
    key = ec.cache_key(b.fingerprint, 0.1, b.image_size, b.mean, b.std, ec.labels_hash(labels))
    beside = ec.cache_path_for(files, key)
    fallback = ec.fallback_cache_path(beside)
    assert not beside.exists() and fallback.exists() and home() in fallback.parents
    assert sum("saved under $CLIPCE_HOME" in r.message for r in caplog.records) == 1  # one notice
    calls = b.calls
    again = ec.dataset_embeddings(labels, files, b, 0.1, progress=False)  # a second process: loads, no rebuild
    assert b.calls == calls and torch.equal(again["embeddings"], first["embeddings"])
    # the prior's cache is a sibling: same fallback, also built once
    w = ec.dataset_prior_weights(labels, files, 1.5, progress=False)
    assert len(w) == sum(len(lb["cls"]) for lb in labels)
    assert any(p.name.startswith(beside.name.split(".clipce-")[0]) for p in fallback.parent.glob("*.clipce-*.pt"))
    assert len(list(fallback.parent.glob("*.clipce-*.pt"))) == 2  # embeddings + prior, nothing beside the labels
    w2 = ec.dataset_prior_weights(labels, files, 1.5, progress=False)
    assert torch.equal(w, w2)


@pytest.mark.parametrize("mode", ["fame", "prior"])
def test_train_on_readonly_dataset(readonly_dataset, tiny_clip, tmp_root, mode):
    model = ClipCERTDETR(TINY_MODEL)
    model.train(
        data=str(readonly_dataset),
        clip=tiny_clip,
        clipce=mode,
        project=str(tmp_root / "runs"),
        name=f"ro-{mode}",
        **{**FAST, "val": False},
    )
    assert model.trainer.weight_table is not None and torch.isfinite(model.trainer.weight_table).all()
    assert (Path(model.trainer.save_dir) / "weights" / "last.pt").exists()


def test_ame_scoring_on_readonly_dataset(readonly_dataset, tiny_clip, tmp_root):
    from clipce_rtdetr.eval.ame_inspect import run_ame_inspection

    out = run_ame_inspection(
        {"data": str(readonly_dataset), "clip": tiny_clip, "split": "val", "project": str(tmp_root / "runs")}
    )
    assert (out / "ame.csv").exists()
