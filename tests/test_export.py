"""Export: ONNX parity check on the tiny model, clear errors before anything is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL

from clipce_rtdetr.errors import ClipCEError


@pytest.fixture(scope="module")
def tiny_pt(tmp_path_factory) -> Path:
    """A random-weights tiny RT-DETR checkpoint, saved the way Ultralytics saves one (Model.save)."""
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    path = tmp_path_factory.mktemp("export") / "tiny.pt"
    ClipCERTDETR(TINY_MODEL).save(path)
    return path


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_onnx_export_parity(tiny_pt):
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    model = ClipCERTDETR(tiny_pt)
    f = model.export(format="onnx", imgsz=64)
    assert Path(f).suffix == ".onnx" and Path(f).exists()
    rep = model.export_report
    assert rep["passed"] and rep["runtime"] == "onnxruntime"
    assert rep["images"] >= 1 and rep["detections_per_image"] == 100  # tiny: 100 queries, top-k inside the graph
    assert rep["max_box_diff"] <= 1e-3 and rep["max_score_diff"] <= 1e-3 and rep["unmatched_class"] == 0


def test_export_check_fails_over_tolerance(tiny_pt, monkeypatch):
    import clipce_rtdetr.deploy.export as ex
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    real = ex.onnx_outputs

    def skewed(path, batches):  # an export whose boxes are off by 0.05
        outs = real(path, batches)
        for o in outs:
            o[..., :4] += 0.05
        return outs

    monkeypatch.setattr(ex, "onnx_outputs", skewed)
    with pytest.raises(ClipCEError, match="largest box difference 5.*FAILED"):
        ClipCERTDETR(tiny_pt).export(format="onnx", imgsz=64, export_tol=0.01)


def test_engine_export_without_gpu_writes_nothing(tiny_pt, monkeypatch):
    import clipce_rtdetr.deploy.export as ex
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    monkeypatch.setattr(ex, "cuda_available", lambda: False)  # as on this CPU machine, also when run on a GPU box
    before = _files(tiny_pt.parent)
    for kw in ({"format": "engine"}, {"format": "tensorrt", "quantize": 16}, {"format": "engine", "device": "cpu"}):
        with pytest.raises(ClipCEError, match="needs an NVIDIA GPU.*Nothing was written"):
            ClipCERTDETR(tiny_pt).export(imgsz=64, **kw)
    assert _files(tiny_pt.parent) == before


@pytest.mark.parametrize(
    "fmt, match",
    [("onx", "Did you mean format=onnx"), ("banana", "Unknown export format 'banana'"), ("pt", "already in PyTorch")],
)
def test_unknown_formats(tiny_pt, fmt, match):
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    before = _files(tiny_pt.parent)
    with pytest.raises(ClipCEError, match=match):
        ClipCERTDETR(tiny_pt).export(format=fmt, imgsz=64)
    assert _files(tiny_pt.parent) == before


def test_int8_needs_calibration_data(tiny_pt):
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    with pytest.raises(ClipCEError, match="calibration images"):
        ClipCERTDETR(tiny_pt).export(format="onnx", quantize=8, imgsz=64)


def test_export_of_an_exported_model_and_bad_paths(tmp_path):
    from clipce_rtdetr.cli import entrypoint
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"not really onnx")
    with pytest.raises(ClipCEError, match="needs a PyTorch model"):
        ClipCERTDETR(fake).export(format="onnx")
    with pytest.raises(ClipCEError, match="not found"):
        ClipCERTDETR(tmp_path / "missing.pt")
    assert entrypoint(["export", f"model={tmp_path / 'missing.pt'}", "format=onnx"]) == 2
    assert entrypoint(["export", f"model={TINY_MODEL}", "format=nope"]) == 2


def test_compare_detections_tolerates_swapped_near_ties():
    from clipce_rtdetr.deploy.export import compare_detections

    ref = np.array([[0.5, 0.5, 0.2, 0.2, 0.9, 1], [0.3, 0.3, 0.1, 0.1, 0.50001, 2], [0.7, 0.7, 0.1, 0.1, 0.5, 2]])
    out = ref[[0, 2, 1]].copy()  # the two near-equal scores swapped places
    d = compare_detections(ref, out)
    assert d["box"] == 0 and d["score"] < 1e-4 and d["unmatched"] == 0
    out[0, 5] = 7  # a class no reference detection has
    assert compare_detections(ref, out)["unmatched"] == 1


def test_export_check_source_globs_and_bad_sources(tiny_pt, tmp_path, monkeypatch):
    import cv2

    from clipce_rtdetr.deploy.export import sample_images
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    src = tmp_path / "srcdir"
    src.mkdir()
    for i in range(3):
        cv2.imwrite(str(src / f"{i}.png"), np.full((20, 30, 3), 40 * i, np.uint8))
    (src / "notes.txt").write_text("not an image")
    monkeypatch.chdir(tmp_path)
    assert len(sample_images(f"{src}/*.png")) == 3  # absolute glob (Path().glob rejects it)
    assert len(sample_images("srcdir/*.png")) == 3 and len(sample_images("srcdir/**/*.png")) == 3
    before = _files(tiny_pt.parent)
    for source, why in (
        (tmp_path / "nope", "does not exist"),
        (f"{src}/*.jpg", "matches no file"),
        (src / "notes.txt", "no image"),
    ):
        with pytest.raises(ClipCEError, match=f"export_check_source=.*{why}.*Nothing was written"):
            ClipCERTDETR(tiny_pt).export(format="onnx", imgsz=64, export_check_source=str(source))
    assert _files(tiny_pt.parent) == before  # checked before the exporter wrote anything


def test_quantized_check_covers_confident_detections():
    """FP16/INT8: the check compares detections at or above the score floor (top 10 when none reach it)."""
    from clipce_rtdetr.deploy.export import QUANT_CHECK_CONF, compare_detections, confident

    ref = np.array([[0.5, 0.5, 0.2, 0.2, 0.9, 1], [0.3, 0.3, 0.1, 0.1, 0.02, 2], [0.7, 0.7, 0.1, 0.1, 0.01, 2]])
    out = ref.copy()
    out[1, :4] += 0.3  # a near-zero-score query whose box moved: no detection a user keeps
    assert compare_detections(ref, out)["box"] == pytest.approx(0.3)
    assert compare_detections(ref, confident(out, QUANT_CHECK_CONF))["box"] == 0
    assert len(confident(out, 0.95)) == 3 and confident(out, None) is out
