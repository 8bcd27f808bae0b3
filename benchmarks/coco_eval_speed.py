"""COCO evaluation speed: what our code around pycocotools adds to pycocotools' own evaluate/accumulate time.

A synthetic COCO-val-sized ground truth (5,000 images, ~36k boxes, 80 classes) and Ultralytics-style
predictions (image_id = file stem, file_name; 100k+ boxes: a noisy box for most objects plus false
positives), split into degradation levels by image. It runs what `clipce-rtdetr val ... coco=True` runs on
them: `map_predictions`, `evaluate` (overall) and `per_level`, and times pycocotools' COCOeval.evaluate and
.accumulate inside them. Overhead = (our wall time - pycocotools' evaluate + accumulate) / that core time,
overall and per level (a level's share of the shared setup: index, loaded predictions, grouping, is
counted by its images). Goal (issue 13): <= 10 % overall and per level.

    python benchmarks/coco_eval_speed.py                 # 5k images, 3 levels (~2-4 min on 2 cores)
    python benchmarks/coco_eval_speed.py --images 500    # a smoke run

Writes benchmarks/results/coco_eval_speed.json and .md (or --out DIR).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LEVELS = ("light", "medium", "heavy")
GOAL = 0.10


def synthetic_coco(n_images: int, n_classes: int, objects: float, extra: float, seed: int):
    """(COCO ground truth, Ultralytics-style predictions, {file name: level}); sizes as COCO val2017."""
    rng = np.random.default_rng(seed)
    gt = {"info": {}, "licenses": [], "images": [], "annotations": []}
    gt["categories"] = [{"id": c + 1, "name": f"class{c}"} for c in range(n_classes)]
    preds, levels = [], {}
    for i in range(1, n_images + 1):
        w, h = 640, 480
        name = f"{i:012d}.jpg"
        gt["images"].append({"id": i, "file_name": name, "width": w, "height": h})
        levels[name] = LEVELS[i % len(LEVELS)]
        n_obj = rng.poisson(objects)
        wh = rng.uniform(8, 240, (n_obj, 2))
        xy = rng.uniform(0, 1, (n_obj, 2)) * (np.array([w, h]) - wh)
        cls = rng.integers(1, n_classes + 1, n_obj)
        for k in range(n_obj):
            box = [float(xy[k, 0]), float(xy[k, 1]), float(wh[k, 0]), float(wh[k, 1])]
            aid = len(gt["annotations"]) + 1
            ann = {"id": aid, "image_id": i, "category_id": int(cls[k]), "bbox": box, "area": box[2] * box[3]}
            gt["annotations"].append({**ann, "iscrowd": 0})
            if rng.random() < 0.85:  # a detection of this object, a few pixels off
                noisy = (np.array(box) + rng.normal(0, 0.06, 4) * np.array([box[2], box[3], box[2], box[3]])).tolist()
                preds.append(_pred(name, int(cls[k]), noisy, float(rng.uniform(0.3, 1.0))))
        for _ in range(rng.poisson(extra)):  # false positives
            bw, bh = rng.uniform(8, 200, 2)
            box = [float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh)), float(bw), float(bh)]
            preds.append(_pred(name, int(rng.integers(1, n_classes + 1)), box, float(rng.uniform(0.0, 0.6))))
    return gt, preds, levels


def _pred(name: str, cat: int, box: list[float], score: float) -> dict:
    return {"image_id": Path(name).stem, "file_name": name, "category_id": cat, "bbox": box, "score": score}


class CoreTimer:
    """Wraps pycocotools' COCOeval: time of evaluate + accumulate (the core) and of the rest of each instance's
    life we call (construction, summarize), one record per COCOeval, in call order."""

    def __init__(self):
        from pycocotools import cocoeval

        self.cls, self.records = cocoeval.COCOeval, []
        self.saved = {k: getattr(self.cls, k) for k in ("__init__", "evaluate", "accumulate", "summarize")}

    def __enter__(self):
        timer, saved = self, self.saved

        def wrap(name):
            def timed(ev, *a, **k):
                if name == "__init__":
                    timer.records.append({"core": 0.0, "other": 0.0})
                rec = timer.records[-1]
                t = time.perf_counter()
                out = saved[name](ev, *a, **k)
                rec["core" if name in ("evaluate", "accumulate") else "other"] += time.perf_counter() - t
                return out

            return timed

        for k in saved:
            setattr(self.cls, k, wrap(k))
        return self

    def __exit__(self, *exc):
        for k, f in self.saved.items():
            setattr(self.cls, k, f)


def run(n_images: int, seed: int) -> dict:
    from clipce_rtdetr.eval.coco import evaluate, level_groups, map_predictions, per_level

    t = time.perf_counter()
    gt, raw, levels = synthetic_coco(n_images, 80, 7.3, 14.0, seed)
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    preds = map_predictions(raw, gt)
    map_s = time.perf_counter() - t

    with CoreTimer() as ct:
        t = time.perf_counter()
        stats = evaluate(gt, preds, verbose=False)
        overall_wall = time.perf_counter() - t
    overall_core = ct.records[0]["core"]

    with CoreTimer() as ct:
        t = time.perf_counter()
        rows = per_level(gt, preds, levels)
        levels_wall = time.perf_counter() - t
    groups = level_groups(gt, levels)
    own = [r["core"] + r["other"] for r in ct.records]
    shared = levels_wall - sum(own)  # index, loaded predictions, grouping: shared by the levels
    per = []
    for row, rec in zip(rows, ct.records):
        share = shared * row["images"] / n_images
        ours = rec["other"] + share
        per.append(
            {
                "level": row["level"],
                "images": row["images"],
                "objects": row["objects"],
                "predictions": sum(1 for p in preds if levels[f"{p['image_id']:012d}.jpg"] == row["level"]),
                "mAP50-95": round(row["mAP50-95"], 4),
                "core_s": round(rec["core"], 3),
                "ours_s": round(ours, 3),
                "overhead": round(ours / rec["core"], 4),
            }
        )
    levels_core = sum(r["core"] for r in ct.records)
    total_core = overall_core + levels_core
    total_ours = map_s + (overall_wall - overall_core) + (levels_wall - levels_core)
    assert len(groups) == len(rows)
    return {
        "images": n_images,
        "gt_boxes": len(gt["annotations"]),
        "predictions": len(preds),
        "classes": 80,
        "levels": len(rows),
        "generate_s": round(gen_s, 2),
        "map_predictions_s": round(map_s, 3),
        "overall": {
            "AP": round(stats["AP"], 4),
            "core_s": round(overall_core, 3),
            "ours_s": round(overall_wall - overall_core, 3),
            "overhead": round((overall_wall - overall_core) / overall_core, 4),
        },
        "per_level_shared_s": round(shared, 3),
        "per_level": per,
        "total": {
            "core_s": round(total_core, 3),
            "ours_s": round(total_ours, 3),
            "overhead": round(total_ours / total_core, 4),
        },
    }


def markdown(res: dict) -> str:
    ok = [res["overall"]["overhead"], res["total"]["overhead"]] + [r["overhead"] for r in res["per_level"]]
    verdict = "met" if max(ok) <= GOAL else "NOT met"
    lines = [
        "# COCO evaluation speed (synthetic COCO-val-sized set)",
        "",
        f"Command: `{res['command']}`; {res['machine']}.",
        "",
        f"{res['images']} images, {res['gt_boxes']} ground-truth boxes, {res['predictions']} predictions, "
        f"{res['classes']} classes, {res['levels']} degradation levels (synthetic boxes: the mAP values mean nothing, "
        "the times are what is measured).",
        "",
        "Core = pycocotools' COCOeval.evaluate + accumulate. Ours = everything else `val coco=True` runs for the "
        "evaluation: re-keying predictions (`map_predictions`), the ground-truth index, loading predictions, "
        "per-level grouping, COCOeval set-up and summary. Per level, the shared set-up is split by images.",
        "",
        "| part | core s | ours s | overhead |",
        "|---|---|---|---|",
        f"| map_predictions | - | {res['map_predictions_s']:.3f} | (in total) |",
        f"| overall evaluate | {res['overall']['core_s']:.2f} | {res['overall']['ours_s']:.3f} | "
        f"{100 * res['overall']['overhead']:.2f} % |",
    ]
    for r in res["per_level"]:
        lines.append(
            f"| level {r['level']} ({r['images']} img, {r['predictions']} preds) | {r['core_s']:.2f} | "
            f"{r['ours_s']:.3f} | {100 * r['overhead']:.2f} % |"
        )
    t = res["total"]
    lines += [
        f"| **total** | {t['core_s']:.2f} | {t['ours_s']:.3f} | **{100 * t['overhead']:.2f} %** |",
        "",
        f"Goal: <= {100 * GOAL:.0f} % overall and per level: **{verdict}** (largest {100 * max(ok):.2f} %).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    res = run(args.images, args.seed)
    res["command"] = "python benchmarks/coco_eval_speed.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    res["machine"] = f"{platform.processor() or platform.machine()}, Python {platform.python_version()}"
    import pycocotools

    res["pycocotools"] = getattr(pycocotools, "__version__", "unknown")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "coco_eval_speed.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "coco_eval_speed.md").write_text(markdown(res))
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
