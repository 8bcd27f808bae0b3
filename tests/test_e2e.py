"""Tiny end-to-end through the console script: train -> val -> predict -> export, and best.pt in a fresh process.

Runs by default (imgsz=64, one epoch, CPU): about a minute on two cores.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL

pytestmark = pytest.mark.slow  # selectable with -m slow; never deselected by default

SCRIPT = Path(sys.executable).parent / "clipce-rtdetr"
COMMON = ["imgsz=64", "device=cpu", "workers=0"]


def cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> str:
    r = subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=os.environ.copy()
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"clipce-rtdetr {' '.join(args)} failed ({r.returncode}):\n{out[-4000:]}"
    assert "Traceback" not in out
    return out


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tiny_hazy_shapes, tmp_path_factory):
    project = tmp_path_factory.mktemp("e2e-runs")
    out = cli(
        "train",
        f"model={TINY_MODEL}",
        f"data={tiny_hazy_shapes}",
        "epochs=1",
        "batch=8",
        "clipce=none",
        f"project={project}",
        "name=e2e",
        "plots=False",
        *COMMON,
    )
    return project, project / "e2e", out


def test_train_writes_checkpoints(trained):
    project, run, out = trained
    best, last = run / "weights" / "best.pt", run / "weights" / "last.pt"
    assert best.is_file() and last.is_file()
    assert (run / "results.csv").is_file() and (run / "args.yaml").is_file()
    assert "mAP50-95" in out
    assert str(run) in out  # the run folder is reported
    assert not list(run.glob("*.onnx"))


def test_existing_run_folder_gets_a_new_suffix(trained, tiny_hazy_shapes):
    project, run, _ = trained
    best = run / "weights" / "best.pt"
    before = sha(best)
    cli(
        "train",
        f"model={TINY_MODEL}",
        f"data={tiny_hazy_shapes}",
        "epochs=1",
        "batch=8",
        "clipce=none",
        f"project={project}",
        "name=e2e",
        "plots=False",
        "val=False",
        *COMMON,
    )
    new = [
        p.name
        for p in project.iterdir()
        if p.name.startswith("e2e") and p.name != "e2e" and (p / "weights" / "last.pt").is_file()
    ]
    assert len(new) == 1, new  # Ultralytics 8.4 names it e2e-2
    assert sha(best) == before, "the first run's best.pt was overwritten"


def test_val(trained, tiny_hazy_shapes):
    project, run, _ = trained
    out = cli(
        "val",
        f"model={run / 'weights' / 'best.pt'}",
        f"data={tiny_hazy_shapes}",
        "batch=8",
        f"project={project}",
        "name=val",
        "plots=False",
        *COMMON,
    )
    assert "all" in out and "mAP50" in out
    assert (project / "val").is_dir()


def test_predict(trained, tiny_hazy_shapes, tmp_path):
    project, run, _ = trained
    src = tmp_path / "src"
    src.mkdir()
    for p in sorted((tiny_hazy_shapes.parent / "images" / "val").glob("*.png"))[:2]:
        (src / p.name).write_bytes(p.read_bytes())
    cli(
        "predict",
        f"model={run / 'weights' / 'best.pt'}",
        f"source={src}",
        "save=True",
        "save_txt=True",
        "conf=0.0",
        f"project={project}",
        "name=pred",
        *COMMON,
    )
    saved = sorted(p.name for p in (project / "pred").glob("*.png")) + sorted(
        p.name for p in (project / "pred").glob("*.jpg")
    )
    assert len(saved) == 2, list((project / "pred").rglob("*"))
    labels = list((project / "pred" / "labels").glob("*.txt"))
    assert len(labels) == 2 and all(f.read_text().strip() for f in labels)  # conf=0: some boxes written


def test_export_onnx(trained):
    import onnxruntime as ort

    _, run, _ = trained
    cli("export", f"model={run / 'weights' / 'best.pt'}", "format=onnx", "imgsz=64", "device=cpu")
    onnx_file = run / "weights" / "best.onnx"
    assert onnx_file.is_file()
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    assert list(inp.shape) == [1, 3, 64, 64]
    y = sess.run(None, {inp.name: np.random.default_rng(0).random((1, 3, 64, 64), np.float32)})[0]
    assert y.shape == (1, 100, 6)  # 100 queries x (cx, cy, w, h, score, class): Ultralytics' end-to-end RT-DETR output
    assert np.all((y[0, :, 4] >= 0) & (y[0, :, 4] <= 1))
    cls = y[0, :, 5]
    assert np.all(cls == np.round(cls)) and cls.min() >= 0 and cls.max() <= 4  # 5 hazy-shapes classes


def test_best_pt_loads_in_fresh_process_without_clipce(trained, tiny_hazy_shapes, tmp_path):
    """best.pt is a plain RT-DETR checkpoint: it must not need clipce_rtdetr to unpickle or predict."""
    _, run, _ = trained
    img = sorted((tiny_hazy_shapes.parent / "images" / "val").glob("*.png"))[0]
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["clipce_rtdetr"] = None  # any reference to the package in the checkpoint fails to import
        from ultralytics import RTDETR
        model = RTDETR({str(run / "weights" / "best.pt")!r})
        res = model.predict({str(img)!r}, imgsz=64, device="cpu", conf=0.0, verbose=False)
        assert len(res) == 1 and len(res[0].boxes) > 0, res
        assert model.names == {{0: "circle", 1: "square", 2: "triangle", 3: "star", 4: "cross"}}, model.names
        assert not [m for m in sys.modules if m.startswith("clipce_rtdetr.")], "clipce_rtdetr was imported"
        print("FRESH-OK", len(res[0].boxes))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "CLIPCE_HOME"}
    env["YOLO_OFFLINE"] = "1"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert r.returncode == 0 and "FRESH-OK" in r.stdout, (r.stdout + r.stderr)[-4000:]
