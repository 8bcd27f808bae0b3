"""Export of YOLO detectors: the ONNX output check reads YOLO's own output layouts (a raw (4 + nc, anchors) head for
YOLOv8/YOLO11, a top-k list for YOLO26), and a CLIP-CE checkpoint exports to the same graph as a stock one."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from clipce_rtdetr.errors import ClipCEError

CONFIGS = ["yolo11n.yaml", "yolo26n.yaml"]


@pytest.fixture(scope="module", params=CONFIGS)
def yolo_pt(request, tmp_path_factory) -> Path:
    """A random-weights YOLO checkpoint saved the way Ultralytics saves one; nc=5 as hazy-shapes."""
    path = tmp_path_factory.mktemp("yolo-export") / f"{Path(request.param).stem}.pt"
    return stock_checkpoint(request.param, 5, path)


def stock_checkpoint(cfg: str, nc: int, path: Path) -> Path:
    """A stock Ultralytics YOLO of `cfg` with `nc` classes and random weights, saved as Ultralytics saves one."""
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    model = YOLO(cfg)
    model.model = DetectionModel(cfg, nc=nc, verbose=False)
    model.save(path)
    return path


def test_yolo_onnx_export_passes_its_check(yolo_pt):
    from clipce_rtdetr.models import load_detector

    model = load_detector(str(yolo_pt))
    f = model.export(format="onnx", imgsz=64)
    rep = model.export_report
    assert Path(f).exists() and rep["passed"], rep
    assert rep["max_box_diff"] <= 1e-3 and rep["max_score_diff"] <= 1e-3


def test_yolo_export_check_fails_over_tolerance(yolo_pt, monkeypatch):
    import clipce_rtdetr.deploy.export as ex
    from clipce_rtdetr.models import load_detector

    real = ex.onnx_outputs

    def skewed(path, batches):  # an export whose class scores are off by 0.05
        outs = real(path, batches)
        for o in outs:
            if o.shape[-1] == 6:  # YOLO26's top-k list: score column
                o[..., 4] += 0.05
            else:  # raw head: rows 4.. are class scores
                o[:, 4:] += 0.05
        return outs

    monkeypatch.setattr(ex, "onnx_outputs", skewed)
    with pytest.raises(ClipCEError, match="largest score difference 5.*FAILED"):
        load_detector(str(yolo_pt)).export(format="onnx", imgsz=64, export_tol=0.01)


def _ops(path: str) -> Counter:
    import onnx

    return Counter(n.op_type for n in onnx.load(path).graph.node)


def test_clipce_yolo_exports_the_stock_graph(tmp_path):
    """A CLIP-CE YOLO checkpoint (the committed one, fine-tuned by this project's trainer on hazy-shapes) and a
    stock Ultralytics YOLO of the same config export to the same ONNX graph."""
    from ultralytics import YOLO

    from clipce_rtdetr.models import load_detector

    repo = Path(__file__).resolve().parents[1]
    ours = load_detector(str(repo / "weights" / "yolo11n-shapes.pt"))
    f_ours = ours.export(format="onnx", imgsz=64, export_check=False)
    stock_pt = stock_checkpoint("yolo11n.yaml", len(ours.names), tmp_path / "stock.pt")
    f_stock = YOLO(stock_pt).export(format="onnx", imgsz=64)
    assert _ops(f_ours) == _ops(f_stock)
