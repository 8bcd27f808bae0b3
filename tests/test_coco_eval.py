"""COCO evaluation: perfect predictions give 1.0; shifted boxes equal pycocotools called directly; per level;
and `val coco=True` end to end with a random-weight tiny RT-DETR."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipce_rtdetr.coco_eval import coco_report, dataset_gt, evaluate, map_predictions

FIX = Path(__file__).parent / "fixtures" / "data"


def as_predictions(gt, shift=0.0, drop_every=0):
    """Ultralytics-style predictions (image_id = stem, file_name) from the ground truth boxes."""
    names = {im["id"]: im["file_name"] for im in gt["images"]}
    out = []
    for i, a in enumerate(gt["annotations"]):
        if a.get("iscrowd") or (drop_every and i % drop_every == 0):
            continue
        x, y, w, h = a["bbox"]
        out.append({"image_id": Path(names[a["image_id"]]).stem, "file_name": names[a["image_id"]],
                    "category_id": a["category_id"], "bbox": [x + shift * w, y, w, h], "score": 0.9 - 0.01 * (i % 7)})
    return out


def test_perfect_and_shifted(tiny_hazy_shapes, tmp_path):
    gt, levels = dataset_gt(tiny_hazy_shapes, "val")
    assert len(gt["images"]) == 8 and levels and set(levels.values()) <= {"light", "medium", "heavy"}
    perfect = map_predictions(as_predictions(gt), gt)
    res = coco_report(gt, perfect, tmp_path, levels)
    assert res["stats"]["AP"] == pytest.approx(1.0) and res["stats"]["AP50"] == pytest.approx(1.0)
    assert all(r["mAP50-95"] == pytest.approx(1.0) for r in res["per_level"])
    assert sum(r["images"] for r in res["per_level"]) == 8
    for f in ("coco_gt.json", "coco_predictions.json", "coco_metrics.json", "coco_per_level.json", "coco_per_level.png"):
        assert (tmp_path / f).is_file()

    # Shifted boxes and a few misses: our number equals pycocotools run directly on the same files.
    shifted = map_predictions(as_predictions(gt, shift=0.2, drop_every=3), gt)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(shifted))
    ours = evaluate(tmp_path / "gt.json", tmp_path / "dt.json", verbose=False)
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cg = COCO(str(tmp_path / "gt.json"))
    ev = COCOeval(cg, cg.loadRes(str(tmp_path / "dt.json")), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert 0 < ours["AP"] < 1
    assert [ours[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")] == pytest.approx(list(ev.stats[:9]))


def test_levels_come_from_the_evaluated_split(tmp_path):
    """train/ and val/ hold images of the same names with different levels: val's levels are val's rows."""
    import cv2
    import numpy as np
    import yaml

    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "labels" / split).mkdir(parents=True)
        for n in ("a", "b"):
            cv2.imwrite(str(tmp_path / "images" / split / f"{n}.png"), np.zeros((16, 16, 3), np.uint8))
            (tmp_path / "labels" / split / f"{n}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (tmp_path / "rec.csv").write_text("im_file,split,level\nimages/train/a.png,train,heavy\nimages/train/b.png,train,heavy\n"
                                      "images/val/a.png,val,light\nimages/val/b.png,val,medium\n")
    y = tmp_path / "d.yaml"
    y.write_text(yaml.safe_dump({"path": str(tmp_path), "train": "images/train", "val": "images/val", "names": {0: "x"}, "degradation": "rec.csv"}))
    assert dataset_gt(y, "val")[1] == {"a.png": "light", "b.png": "medium"}
    assert dataset_gt(y, "train")[1] == {"a.png": "heavy", "b.png": "heavy"}


def test_converted_gt_with_crowd(tmp_path):
    """A converted VOC set: difficult objects are iscrowd (ignored), so missing them costs nothing."""
    from clipce_rtdetr.convert import convert

    y = convert("voc", FIX / "voc", tmp_path / "rtts", val_fraction=1.0, progress=False)
    gt, levels = dataset_gt(y, "val")
    assert levels is None and any(a["iscrowd"] for a in gt["annotations"])
    assert evaluate(gt, map_predictions(as_predictions(gt), gt), verbose=False)["AP"] == pytest.approx(1.0)


def test_val_coco_true_end_to_end(tiny_hazy_shapes, tmp_root):
    from tests.conftest import TINY_MODEL

    from clipce_rtdetr.model import ClipCERTDETR

    m = ClipCERTDETR(TINY_MODEL)
    metrics = m.val(data=str(tiny_hazy_shapes), coco=True, imgsz=128, batch=8, device="cpu", workers=0,
                    project=str(tmp_root / "runs-coco"), name="val", plots=False)
    run = tmp_root / "runs-coco" / "val"
    assert {"stats", "per_level"} <= set(metrics.coco)
    preds = json.loads((run / "coco_predictions.json").read_text())
    gt = json.loads((run / "coco_gt.json").read_text())
    assert preds and {p["image_id"] for p in preds} <= {im["id"] for im in gt["images"]}
    assert (run / "predictions.json").is_file() and (run / "coco_per_level.png").is_file()
