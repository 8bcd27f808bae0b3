"""COCO evaluation: perfect predictions give 1.0; shifted boxes equal pycocotools called directly; per level;
and `val coco=True` end to end with a random-weight tiny RT-DETR."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipce_rtdetr.eval.coco import coco_report, dataset_gt, evaluate, map_predictions

FIX = Path(__file__).parent / "fixtures" / "data"


def as_predictions(gt, shift=0.0, drop_every=0):
    """Ultralytics-style predictions (image_id = stem, file_name) from the ground truth boxes."""
    names = {im["id"]: im["file_name"] for im in gt["images"]}
    out = []
    for i, a in enumerate(gt["annotations"]):
        if a.get("iscrowd") or (drop_every and i % drop_every == 0):
            continue
        x, y, w, h = a["bbox"]
        out.append(
            {
                "image_id": Path(names[a["image_id"]]).stem,
                "file_name": names[a["image_id"]],
                "category_id": a["category_id"],
                "bbox": [x + shift * w, y, w, h],
                "score": 0.9 - 0.01 * (i % 7),
            }
        )
    return out


def test_perfect_and_shifted(tiny_hazy_shapes, tmp_path):
    gt, levels = dataset_gt(tiny_hazy_shapes, "val")
    assert len(gt["images"]) == 8 and levels and set(levels.values()) <= {"light", "medium", "heavy"}
    perfect = map_predictions(as_predictions(gt), gt)
    res = coco_report(gt, perfect, tmp_path, levels)
    assert res["stats"]["AP"] == pytest.approx(1.0) and res["stats"]["AP50"] == pytest.approx(1.0)
    assert all(r["mAP50-95"] == pytest.approx(1.0) for r in res["per_level"])
    assert sum(r["images"] for r in res["per_level"]) == 8
    for f in (
        "coco_gt.json",
        "coco_predictions.json",
        "coco_metrics.json",
        "coco_per_level.json",
        "coco_per_level.png",
    ):
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
    assert [ours[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")] == pytest.approx(
        list(ev.stats[:9])
    )


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
    (tmp_path / "rec.csv").write_text(
        "im_file,split,level\nimages/train/a.png,train,heavy\nimages/train/b.png,train,heavy\n"
        "images/val/a.png,val,light\nimages/val/b.png,val,medium\n"
    )
    y = tmp_path / "d.yaml"
    y.write_text(
        yaml.safe_dump(
            {
                "path": str(tmp_path),
                "train": "images/train",
                "val": "images/val",
                "names": {0: "x"},
                "degradation": "rec.csv",
            }
        )
    )
    assert dataset_gt(y, "val")[1] == {"a.png": "light", "b.png": "medium"}
    assert dataset_gt(y, "train")[1] == {"a.png": "heavy", "b.png": "heavy"}


def test_converted_gt_with_crowd(tmp_path):
    """A converted VOC set: difficult objects are iscrowd (ignored), so missing them costs nothing."""
    from clipce_rtdetr.data.convert import convert

    y = convert("voc", FIX / "voc", tmp_path / "rtts", val_fraction=1.0, progress=False)
    gt, levels = dataset_gt(y, "val")
    assert levels is None and any(a["iscrowd"] for a in gt["annotations"])
    assert evaluate(gt, map_predictions(as_predictions(gt), gt), verbose=False)["AP"] == pytest.approx(1.0)


def test_val_coco_true_end_to_end(tiny_hazy_shapes, tmp_root):
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR
    from tests.conftest import TINY_MODEL

    m = ClipCERTDETR(TINY_MODEL)
    metrics = m.val(
        data=str(tiny_hazy_shapes),
        coco=True,
        imgsz=128,
        batch=8,
        device="cpu",
        workers=0,
        project=str(tmp_root / "runs-coco"),
        name="val",
        plots=False,
    )
    run = tmp_root / "runs-coco" / "val"
    assert {"stats", "per_level"} <= set(metrics.coco)
    preds = json.loads((run / "coco_predictions.json").read_text())
    gt = json.loads((run / "coco_gt.json").read_text())
    assert preds and {p["image_id"] for p in preds} <= {im["id"] for im in gt["images"]}
    assert (run / "predictions.json").is_file() and (run / "coco_per_level.png").is_file()


def test_zero_based_category_ids_are_matched_by_name(tmp_path):
    """A user's COCO file numbering categories from 0: predictions (class + 1, as Ultralytics writes them) are
    matched by class name, so a perfect prediction still scores 1.0 (not the wrong class)."""
    from clipce_rtdetr.eval.coco import category_map

    gt = {
        "images": [{"id": 7, "file_name": "a.png", "width": 100, "height": 100}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 0, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [50, 50, 20, 20], "area": 400, "iscrowd": 0},
        ],
        "categories": [{"id": 0, "name": "car"}, {"id": 1, "name": "bus"}],
    }
    names = {0: "car", 1: "bus"}
    preds = [
        {"image_id": "a", "file_name": "a.png", "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.9},
        {"image_id": "a", "file_name": "a.png", "category_id": 2, "bbox": [50, 50, 20, 20], "score": 0.8},
    ]
    cats = category_map(gt, names, [1, 2])
    assert cats == {1: 0, 2: 1}
    assert evaluate(gt, map_predictions(preds, gt, cats), verbose=False)["AP"] == pytest.approx(1.0)
    assert evaluate(gt, map_predictions(preds, gt), verbose=False)["AP"] < 0.5  # what matching by id alone gave
    from clipce_rtdetr.errors import ClipCEError

    with pytest.raises(ClipCEError, match="no categories named"):
        category_map({"categories": [{"id": 5, "name": "truck"}]}, names, [1, 2])


def test_ground_truth_is_what_ultralytics_evaluated(tmp_path, caplog):
    """Malformed label lines and a corrupt image: left out as Ultralytics leaves them out; a garbled or missing
    COCO file is a clear error / a warning."""
    import cv2
    import numpy as np
    import yaml

    from clipce_rtdetr.errors import ClipCEError
    from clipce_rtdetr.eval.coco import verified_labels

    (tmp_path / "images" / "val").mkdir(parents=True)
    (tmp_path / "labels" / "val").mkdir(parents=True)
    for n in ("good", "badlabel", "corrupt"):
        cv2.imwrite(str(tmp_path / "images" / "val" / f"{n}.png"), np.zeros((20, 30, 3), np.uint8))
    (tmp_path / "images" / "val" / "corrupt.png").write_bytes(b"")
    (tmp_path / "labels" / "val" / "good.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "labels" / "val" / "badlabel.txt").write_text("a b c d e\n")
    (tmp_path / "labels" / "val" / "corrupt.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    y = tmp_path / "d.yaml"
    cfg = {"path": str(tmp_path), "train": "images/val", "val": "images/val", "names": {0: "x"}}
    y.write_text(yaml.safe_dump(cfg))
    labels = verified_labels(sorted((tmp_path / "images" / "val").glob("*.png")), 1)
    assert [Path(lb["im_file"]).name for lb in labels] == ["good.png"]
    gt, _ = dataset_gt(y, "val")
    assert [im["file_name"] for im in gt["images"]] == ["good.png"] and len(gt["annotations"]) == 1
    assert gt["annotations"][0]["bbox"] == pytest.approx([12.0, 8.0, 6.0, 4.0])

    (tmp_path / "ann.json").write_text("{not json")
    y.write_text(yaml.safe_dump({**cfg, "coco_annotations": {"val": "ann.json"}}))
    with pytest.raises(ClipCEError, match="ann.json is not valid JSON"):
        dataset_gt(y, "val")
    full = {
        "images": [
            {"id": i, "file_name": f"{n}.png", "width": 30, "height": 20}
            for i, n in enumerate(("good", "badlabel", "corrupt"))
        ],
        "annotations": [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "x"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(full))
    gt, _ = dataset_gt(y, "val", labels)
    assert [im["file_name"] for im in gt["images"]] == ["good.png"] and gt["annotations"] == []
    y.write_text(yaml.safe_dump({**cfg, "coco_annotations": {"val": "missing.json"}}))
    gt, _ = dataset_gt(y, "val")
    assert [im["file_name"] for im in gt["images"]] == ["good.png"]


class CountedId(int):
    """An image id that counts how often it is hashed: set/dict work done per id, a measure of the evaluation's
    complexity that needs no clock."""

    hashes = 0

    def __hash__(self):
        CountedId.hashes += 1
        return int.__hash__(self)


def synthetic_gt_preds(n_images: int, per_image: int = 2) -> tuple[dict, list[dict]]:
    """A small COCO ground truth (ids are CountedId) and one near-perfect prediction per object."""
    gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "x"}], "info": {}, "licenses": []}
    preds = []
    for i in range(1, n_images + 1):
        gt["images"].append({"id": CountedId(i), "file_name": f"{i}.png", "width": 64, "height": 64})
        for k in range(per_image):
            box = [4.0 + 20 * k, 4.0, 16.0, 16.0]
            gt["annotations"].append(
                {"id": len(gt["annotations"]) + 1, "image_id": CountedId(i), "category_id": 1, "bbox": box}
            )
            gt["annotations"][-1].update(area=256.0, iscrowd=0)
            preds.append({"image_id": CountedId(i), "category_id": 1, "bbox": [box[0] + 1, *box[1:]], "score": 0.9})
    return gt, preds


@pytest.mark.parametrize("by_level", [False, True])
def test_evaluation_work_grows_linearly_with_the_dataset(by_level):
    """Issue 13.1: evaluate() built set(image ids) once per prediction (quadratic). Doubling the dataset must
    about double the id hashing (overall and per level), not quadruple it."""
    from clipce_rtdetr.eval.coco import per_level

    counts = []
    for n in (150, 300):
        gt, preds = synthetic_gt_preds(n)
        levels = {im["file_name"]: ("light", "medium", "heavy")[im["id"] % 3] for im in gt["images"]}
        CountedId.hashes = 0
        if by_level:
            rows = per_level(gt, preds, levels)
            assert [r["level"] for r in rows] == ["light", "medium", "heavy"] and sum(r["images"] for r in rows) == n
            assert all(r["mAP50"] == pytest.approx(1.0) for r in rows)
        else:
            assert evaluate(gt, preds, verbose=False)["AP50"] == pytest.approx(1.0)
        counts.append(CountedId.hashes)
    assert counts[1] < 2.5 * counts[0], counts  # quadratic gives ~4x
