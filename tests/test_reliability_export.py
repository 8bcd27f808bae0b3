"""Export reliability (issue 21): the ONNX check reads YOLO's nms=True/False layouts, a failed check leaves no file
that looks like a good export, missing export packages are named before anything is written, and Ultralytics'
deprecated half=/int8= keys work as in `yolo`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_yolo_export import stock_checkpoint

from clipce_rtdetr.cli import entrypoint
from clipce_rtdetr.errors import ClipCEError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def yolo_pts(tmp_path_factory) -> dict[str, Path]:
    """Random-weights YOLO11n / YOLO26n checkpoints (nc=5), saved as Ultralytics saves them."""
    d = tmp_path_factory.mktemp("reliability-export")
    return {c: stock_checkpoint(f"{c}.yaml", 5, d / f"{c}.pt") for c in ("yolo11n", "yolo26n")}


def _copy(src: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / src.name
    dst.write_bytes(src.read_bytes())
    return dst


@pytest.mark.parametrize(("family", "nms"), [("yolo26n", False), ("yolo26n", True), ("yolo11n", True)])
def test_yolo_nms_exports_pass_their_check(yolo_pts, tmp_path, family, nms):
    """Crashed before: YOLO26 nms=False (a top-k list compared as if it were the raw head, shapes (84,) vs (9,)),
    nms=True on YOLO11/26 (NMSModel's (300, 6) output indexed as anchors)."""
    from clipce_rtdetr.models import load_detector

    pt = _copy(yolo_pts[family], tmp_path)
    model = load_detector(str(pt))
    f = model.export(format="onnx", imgsz=64, nms=nms)
    rep = model.export_report
    assert Path(f).is_file() and rep["passed"], rep
    assert rep["layout"] == ("nms" if nms else "end2end")


def test_trained_yolo_nms_export_compares_real_detections(tmp_path, tiny_hazy_shapes):
    """The committed YOLO11n fine-tuned on hazy-shapes finds objects on hazy-shapes images: the NMS output's
    detections (not only its zero padding) are compared both ways."""
    from clipce_rtdetr.models import load_detector

    pt = _copy(REPO / "weights" / "yolo11n-shapes.pt", tmp_path)
    model = load_detector(str(pt))
    val_images = tiny_hazy_shapes.parent / "images" / "val"
    model.export(format="onnx", imgsz=128, nms=True, export_check_source=str(val_images))
    rep = model.export_report
    assert rep["passed"] and rep["layout"] == "nms" and rep["compared"] > 0, rep


def _skew(monkeypatch, how):
    import clipce_rtdetr.deploy.export as ex

    real = ex.onnx_outputs

    def skewed(path, batches):  # stand-in for a broken export: its outputs off by 0.2, or a runtime that fails
        if how == "crash":
            raise RuntimeError("onnxruntime could not run the graph")
        outs = real(path, batches)
        return [o + 0.2 for o in outs]

    monkeypatch.setattr(ex, "onnx_outputs", skewed)


@pytest.mark.parametrize("how", ["over tolerance", "crash"])
def test_failed_check_sets_export_aside_and_keeps_the_earlier_one(yolo_pts, tmp_path, monkeypatch, how):
    from clipce_rtdetr.models import load_detector

    pt = _copy(yolo_pts["yolo11n"], tmp_path)
    earlier = tmp_path / "yolo11n.onnx"
    earlier.write_bytes(b"an earlier export")  # stand-in content: only its survival is checked
    _skew(monkeypatch, how)
    with pytest.raises(ClipCEError, match=r"renamed to .*yolo11n\.onnx\.check-failed.*earlier .*yolo11n\.onnx was put"):
        load_detector(str(pt)).export(format="onnx", imgsz=64)
    assert earlier.read_bytes() == b"an earlier export"  # put back, byte for byte (the exporter overwrote it)
    bad = tmp_path / "yolo11n.onnx.check-failed"
    assert bad.is_file() and bad.read_bytes()[:4] != b"an e"  # the new, unchecked export, set aside
    assert sorted(p.name for p in tmp_path.iterdir()) == ["yolo11n.onnx", "yolo11n.onnx.check-failed", "yolo11n.pt"]


def test_half_and_int8_keys_map_onto_quantize_as_in_ultralytics(yolo_pts, tmp_path, capsys):
    """'half' / 'int8' were 'not a valid clipce-rtdetr argument'; Ultralytics 8.4.190 maps them onto quantize=."""
    import onnx

    pt = _copy(yolo_pts["yolo11n"], tmp_path)
    assert entrypoint(["export", f"model={pt}", "format=onnx", "imgsz=64", "half=True"]) == 0
    graph = onnx.load(str(tmp_path / "yolo11n.onnx")).graph
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)  # an FP16 export
    # bare 'int8' as in `yolo export int8`: quantize=8, which then asks for calibration data
    assert entrypoint(["export", f"model={pt}", "format=onnx", "imgsz=64", "int8"]) == 2
    err = capsys.readouterr().err
    assert "INT8 export needs calibration images" in err and "not a valid" not in err


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("openvino") is not None, reason="openvino is installed here"
)
@pytest.mark.parametrize(("extra", "named"), [([], "openvino"), (["quantize=8"], "openvino, nncf")])
def test_missing_openvino_is_named_before_anything_is_written(yolo_pts, tmp_path, capsys, extra, named):
    """openvino is really not installed here: the export stops with its name and the pip extra, and the model's
    folder is left as it was (was: a ModuleNotFoundError traceback from inside the exporter)."""
    pt = _copy(yolo_pts["yolo11n"], tmp_path)
    assert entrypoint(["export", f"model={pt}", "format=openvino", "imgsz=64", *extra]) == 2
    err = capsys.readouterr().err
    assert f"needs {named}, not installed" in err and "pip install 'ultralytics[export-openvino]'" in err
    assert "Traceback" not in err and "Nothing was written" in err
    assert [p.name for p in tmp_path.iterdir()] == ["yolo11n.pt"]


def test_int8_onnx_without_onnxruntime_is_named_before_anything_is_written(yolo_pts, tmp_path):
    """onnxruntime is installed here (a dev dependency), so a subprocess hides it: `sys.modules['onnxruntime'] =
    None` makes both `import onnxruntime` and `importlib.util.find_spec` see it missing, as on a machine without
    it. The data= dataset name is not generated either."""
    pt = _copy(yolo_pts["yolo11n"], tmp_path / "models")
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "from clipce_rtdetr.cli import entrypoint\n"
        f"sys.exit(entrypoint(['export', 'model={pt}', 'format=onnx', 'quantize=8', 'data=hazy-shapes', "
        "'export_check=False']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=pt.parent, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "format=onnx quantize=8 needs onnxruntime" in out.stderr and "clipce-rtdetr[export]" in out.stderr
    assert "Traceback" not in out.stderr and "Generating hazy-shapes" not in out.stderr  # was: generated first
    assert [p.name for p in pt.parent.iterdir()] == ["yolo11n.pt"]


def test_deprecated_keys_are_mapped_in_every_mode():
    """The same mapping for train/val/predict/track and the tools (they all validate through check_overrides)."""
    from clipce_rtdetr.config import check_overrides

    ultra, _ = check_overrides({"half": True, "int8": False, "boxes": False, "end2end": True, "conf": 0.5})
    assert ultra == {"quantize": 16, "show_boxes": False, "nms": False, "conf": 0.5}
    assert check_overrides({"half": True, "int8": True})[0] == {"quantize": 8}  # int8 wins over half
    assert check_overrides({"half": "False"})[0] == {"quantize": None}  # a false flag clears precision
    assert check_overrides({"half": True, "quantize": 32})[0] == {"quantize": 32}  # quantize= wins


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_refused_engine_export_generates_no_calibration_dataset(yolo_pts, tmp_path, monkeypatch, capsys):
    """format=engine on a machine without a GPU is refused before data= is resolved: a dataset name (hazy-shapes)
    is not generated first (it was: 256 images made, then 'Nothing was written')."""
    home = tmp_path / "home"
    monkeypatch.setenv("CLIPCE_HOME", str(home))
    pt = _copy(yolo_pts["yolo11n"], tmp_path / "models")
    assert entrypoint(["export", f"model={pt}", "format=engine", "int8", "data=hazy-shapes", "imgsz=64"]) == 2
    assert "needs an NVIDIA GPU" in capsys.readouterr().err
    assert not home.exists() and [p.name for p in pt.parent.iterdir()] == ["yolo11n.pt"]
