"""CLIP reliability (issue 21): clip-train checks out= before training (a real read-only mount, a real full tmpfs),
a failed save names the file in one line and keeps the earlier file, and wrong CLIP weights (a detector checkpoint,
a damaged file) are named before a run folder is made or a dataset read."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from clipce_rtdetr.cli import entrypoint
from clipce_rtdetr.errors import ClipCEError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def mount_tmpfs(tmp_path):
    """mount(options) -> a fresh folder with a real tmpfs mounted on it (unmounted afterwards); skips where this
    process may not mount (not root, or a container without CAP_SYS_ADMIN)."""
    mounted = []

    def mount(options: str) -> Path:
        where = tmp_path / f"mnt{len(mounted)}"
        where.mkdir()
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                             text=True)  # fmt: skip
        if out.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({out.stderr.strip() or out.returncode}): needs root")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def spy_train(monkeypatch):
    """Records whether clip-train's training loop ran (it still runs for real); `after` runs once it returns."""
    import clipce_rtdetr.engine.clip_train.tool as ct

    calls: list[int] = []
    real = ct.train

    def train(*a, **k):
        calls.append(1)
        history = real(*a, **k)
        if spy_train_after:
            spy_train_after[0]()
        return history

    spy_train_after: list = []
    monkeypatch.setattr(ct, "train", train)
    return calls, spy_train_after


def _clip_train(data, out, **k):
    from clipce_rtdetr.engine.clip_train.tool import clip_train

    return clip_train(str(data), "clipce-tiny", out, epochs=1, batch=32, seed=0, progress=False, **k)


def test_clip_train_read_only_out_refused_before_training(tiny_hazy_shapes, mount_tmpfs, spy_train):
    ro = mount_tmpfs("ro,size=1m")
    with pytest.raises(ClipCEError, match=rf"out=: cannot write in {ro} \(Read-only file system\)\. Nothing was"):
        _clip_train(tiny_hazy_shapes, ro / "sub" / "clip.safetensors")
    assert spy_train[0] == []  # refused before any training (was: trained, then failed on the save)


def test_clip_train_full_disk_refused_before_training(tiny_hazy_shapes, mount_tmpfs, spy_train):
    small = mount_tmpfs("size=1m")
    with pytest.raises(ClipCEError, match=r"need about .* MiB and .* has .* MiB free\. Nothing was trained"):
        _clip_train(tiny_hazy_shapes, small / "clip.safetensors")
    assert spy_train[0] == [] and list(small.iterdir()) == []


def test_clip_train_failed_save_names_the_file_and_keeps_the_earlier_one(tiny_hazy_shapes, mount_tmpfs, spy_train):
    """The disk fills up while training runs (another process writes a large file): the save fails in one line
    naming out=, the earlier file there is unchanged and no temporary file is left."""
    disk = mount_tmpfs("size=48m")
    out = disk / "clip.safetensors"
    out.write_bytes(b"an earlier clip-train's weights")  # stand-in content: only its survival is checked

    def fill_disk():
        try:
            with open(disk / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 2**16)
        except OSError:  # ENOSPC: the disk is full
            pass

    spy_train[1].append(fill_disk)
    with pytest.raises(ClipCEError) as err:
        _clip_train(tiny_hazy_shapes, out, exist_ok=True)
    msg = str(err.value)
    assert spy_train[0] == [1] and "\n" not in msg, msg
    assert f"could not write {out}" in msg and "No space left on device" in msg and "unchanged" in msg
    assert out.read_bytes() == b"an earlier clip-train's weights"
    assert sorted(p.name for p in disk.iterdir()) == ["clip.safetensors", "filler"]


@pytest.fixture
def detector_pt(tmp_path) -> Path:
    pt = tmp_path / "det" / "yolo11n-shapes.pt"
    pt.parent.mkdir()
    pt.write_bytes((REPO / "weights" / "yolo11n-shapes.pt").read_bytes())
    return pt


@pytest.fixture
def damaged_clip(tiny_clip, tmp_path) -> Path:
    src = Path(tiny_clip.split(":", 1)[1])
    cut = tmp_path / "cut" / "clip.safetensors"
    cut.parent.mkdir()
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])  # a copy cut short
    return cut


@pytest.mark.parametrize(
    ("weights", "message"),
    [("detector_pt", "is an Ultralytics detector checkpoint (DetectionModel), not open_clip weights"),
     ("damaged_clip", "is not a readable safetensors file (Error while deserializing header: incomplete metadata")],
)  # fmt: skip
def test_wrong_clip_weights_named_before_the_run_folder(request, tiny_hazy_shapes, tmp_path, capsys, weights, message):
    path = request.getfixturevalue(weights)
    runs = tmp_path / "runs"
    rc = entrypoint(["train", f"model={REPO / 'weights' / 'rtdetr-tiny-shapes.pt'}", f"data={tiny_hazy_shapes}",
                     "epochs=1", "imgsz=64", "batch=8", "device=cpu", "workers=0", "clipce=fame",
                     f"clip=clipce-tiny:{path}", f"project={runs}"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and f"clip=clipce-tiny:{path}" in err, err
    assert message in err and "weights_only" not in err
    assert not runs.exists()  # was: a run folder made and the dataset scanned first


def test_clip_train_reads_the_clip_before_the_dataset(detector_pt, tmp_path):
    with pytest.raises(ClipCEError, match="Ultralytics detector checkpoint"):
        from clipce_rtdetr.engine.clip_train.tool import clip_train

        clip_train(str(tmp_path / "no-such-dataset.yaml"), f"clipce-tiny:{detector_pt}", tmp_path / "c.safetensors")


@pytest.fixture
def text_pt(tmp_path) -> Path:
    pt = tmp_path / "txt" / "clip.pt"
    pt.parent.mkdir()
    pt.write_text("<html>404 Not Found</html>\n")  # an error page saved under the weights' name
    return pt


@pytest.mark.parametrize(
    ("weights", "message"),
    [("detector_pt", "is an Ultralytics detector checkpoint (DetectionModel)"),
     ("text_pt", "is not a PyTorch checkpoint (neither the zip archive")],
)  # fmt: skip
def test_ame_reads_the_clip_before_the_dataset(request, tmp_path, capsys, weights, message):
    """`ame` loaded CLIP only after the dataset was resolved and scanned: with a dataset that does not exist, the
    dataset's error came first (a real dataset was scanned, its label cache written). A text file named .pt was
    'open_clip could not build the model from ...: Unsupported operand 60' with torch's weights_only advice."""
    path = request.getfixturevalue(weights)
    runs = tmp_path / "runs"
    rc = entrypoint(["ame", f"data={tmp_path / 'no-such-dataset.yaml'}", f"clip=clipce-tiny:{path}", f"project={runs}"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "not found" not in err, err
    assert not runs.exists()


def test_train_reads_the_clip_before_the_dataset(detector_pt, tmp_path, capsys):
    """train checked CLIP in the trainer, after the dataset was resolved and its labels scanned: with a dataset that
    does not exist, the dataset's error came first."""
    runs = tmp_path / "runs"
    rc = entrypoint(["train", f"model={REPO / 'weights' / 'rtdetr-tiny-shapes.pt'}",
                     f"data={tmp_path / 'no-such-dataset.yaml'}", "clipce=fame", f"clip=clipce-tiny:{detector_pt}",
                     f"project={runs}", "device=cpu"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "is an Ultralytics detector checkpoint" in err and "not found" not in err, err
    assert not runs.exists()
