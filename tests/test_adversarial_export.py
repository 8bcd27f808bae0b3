"""Export from a read-only folder (issue 11 item 10) and the TensorRT output check's device (issue 13 item 6)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL
from test_cli import assert_clear_error, run_cli

import clipce_rtdetr

TINY_PT = Path(clipce_rtdetr.__file__).parents[1] / "weights" / "rtdetr-tiny-shapes.pt"


@pytest.fixture
def read_only_folder(tmp_path):
    """A really read-only folder holding a copy of the tiny checkpoint: a read-only bind mount (chmod does not
    stop root, and tests run as root in containers). Skipped, with the reason, where mounting is not allowed."""
    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    shutil.copy(TINY_PT, src / "best.pt")
    cmds = [["mount", "--bind", str(src), str(ro)], ["mount", "-o", "remount,bind,ro", str(ro)]]
    for i, cmd in enumerate(cmds):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            if i:
                subprocess.run(["umount", str(ro)], capture_output=True)
            pytest.skip(f"cannot make a read-only mount here ({' '.join(cmd)}: {r.stderr.strip() or r.returncode})")
    try:
        probe = ro / "probe"
        try:
            probe.write_text("x")
        except OSError:
            pass
        else:
            pytest.skip("the read-only mount accepted a write")
        yield ro
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def test_export_of_a_model_in_a_read_only_folder(capsys, read_only_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = read_only_folder / "best.pt"
    rc, _, err = run_cli(capsys, "export", f"model={model}", "format=onnx", "imgsz=64")
    assert_clear_error(rc, err, f"{read_only_folder} is not writable (Read-only file system)", "Nothing was written")
    assert "cp " in err and "export model=./best.pt" in err
    assert sorted(p.name for p in read_only_folder.iterdir()) == ["best.pt"]


def test_tensorrt_check_runs_on_the_exports_device(monkeypatch):
    """The engine check loads the engine on the device the exporter used (device=1 -> cuda:1), not on cuda:0.

    Stand-in: no GPU or TensorRT exists here, so AutoBackend (which would load the .engine) is replaced by an object
    that records the device it is asked for and answers with the PyTorch model's own outputs."""
    import torch
    import ultralytics.nn.autobackend

    from clipce_rtdetr.deploy import export
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    model = ClipCERTDETR(TINY_MODEL)
    asked = []

    class EngineStandIn:
        def __init__(self, path, device, verbose=False):
            asked.append(str(device))
            self.device = torch.device("cpu")  # where the stand-in really runs

        def __call__(self, x):
            return torch.from_numpy(export.reference_outputs(model.model, [x.numpy()], 300)[0])

    monkeypatch.setattr(ultralytics.nn.autobackend, "AutoBackend", EngineStandIn)
    info = {"imgsz": (64, 64), "batch": 1, "quantize": None, "max_det": 300, "dynamic": False, "device": "cuda:1"}
    rep = export.check_export(model, "best.engine", "engine", info, {"export_tol": 0.01})
    assert asked == ["cuda:1"] and rep["passed"] and rep["runtime"] == "tensorrt"
    out = export.engine_outputs("best.engine", [np.zeros((1, 3, 64, 64), np.float32)], "cuda:3")
    assert asked[-1] == "cuda:3" and out[0].shape[-1] == 6


def test_export_records_the_device_it_used(tmp_path, monkeypatch):
    """What the exporter reports (exporter.device) reaches the check: an ONNX export on CPU records 'cpu'."""
    from clipce_rtdetr.deploy import export
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    monkeypatch.chdir(tmp_path)
    seen = {}
    real = export.check_export
    monkeypatch.setattr(
        export, "check_export", lambda m, f, fmt, info, proj: seen.update(info) or real(m, f, fmt, info, proj)
    )
    shutil.copy(TINY_PT, tmp_path / "m.pt")
    ClipCERTDETR(tmp_path / "m.pt").export(format="onnx", imgsz=64, device="cpu")
    assert seen["device"] == "cpu"


@pytest.mark.parametrize(
    "args",
    [
        [
            "predict",
            f"model={TINY_MODEL}",
            "imgsz=64",
            "source=" + str(TINY_PT.parents[1] / "tests" / "fixtures" / "data" / "coco" / "images" / "val" / "u3.jpg"),
        ],
        ["train", f"model={TINY_MODEL}", "data=hazy-shapes", "epochs=1", "imgsz=64", "clipce=none", "batch=2"],
        ["convert", "format=voc", "source=" + str(TINY_PT.parents[1] / "tests" / "fixtures" / "data" / "voc")],
        ["degrade", "data=hazy-shapes"],
    ],
)
def test_outputs_in_a_read_only_folder_are_one_line(capsys, read_only_folder, tmp_path, monkeypatch, args):
    """Siblings of export: every mode whose output folder (project=, out=) is read-only ends with one line naming
    the path, before or when it first writes, never a traceback."""
    monkeypatch.chdir(tmp_path)
    key = "project" if args[0] in ("predict", "train") else "out"
    rc, _, err = run_cli(capsys, *args, f"{key}={read_only_folder / 'runs'}")
    assert_clear_error(rc, err, str(read_only_folder / "runs"), "read-only")
    assert sorted(p.name for p in read_only_folder.iterdir()) == ["best.pt"]
