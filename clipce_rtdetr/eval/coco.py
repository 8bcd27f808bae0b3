"""COCO-standard evaluation (`clipce-rtdetr val ... coco=True`): pycocotools beside Ultralytics' own mAP.

Runs Ultralytics' validation with save_json=True, then evaluates its predictions.json with pycocotools on a
COCO ground truth: the dataset's own (`coco_annotations:` in the data YAML, as `convert` writes) or one built
from the YOLO labels. Ultralytics writes custom-data predictions with the image's file stem as image_id and
its file name; both are mapped onto the ground truth's ids by file name. Ground truth and mapped predictions
are kept in the run folder. When the data YAML names a degradation record (`degradation: file.csv` with
`im_file` and `level` columns, as hazy-shapes and `degrade` write), COCO mAP is also reported per level:
a table, `coco_per_level.json` and `coco_per_level.png`.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

from clipce_rtdetr import atomic
from clipce_rtdetr.errors import ClipCEError

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
LEVEL_ORDER = ("light", "medium", "heavy")


# ----------------------------------------------------------------------------------------- ground truth
def verified_labels(images: list[Path], nc: int) -> list[dict[str, Any]]:
    """Ultralytics' own check of each image and label file (verify_image_label), in the form its datasets hold
    labels: a corrupt image or label file is left out, as Ultralytics' validation leaves it out."""
    from ultralytics.data.utils import verify_image_label

    from clipce_rtdetr.data.dataset import label_file

    out = []
    for im in sorted(images, key=str):
        im_file, lb, shape, *_ = verify_image_label((str(im), str(label_file(im)), "", False, nc, 0, 0, False))
        if im_file is not None:
            out.append({"im_file": im_file, "shape": shape, "cls": lb[:, :1], "bboxes": lb[:, 1:]})
    return out


def image_hw(label: dict[str, Any]) -> tuple[int, int]:
    """(height, width) of a label's image: its recorded shape, else the image header (YOLO's rect validation
    dataset drops `shape` from its labels once it has sorted the images by aspect ratio)."""
    if label.get("shape") is not None:
        return tuple(int(v) for v in label["shape"])
    from PIL import Image
    from ultralytics.data.utils import exif_size

    with Image.open(label["im_file"]) as im:
        w, h = exif_size(im)
    return int(h), int(w)


def labels_to_coco(labels: list[dict[str, Any]], names: dict[int, str] | list[str]) -> dict[str, Any]:
    """COCO ground truth from Ultralytics-format labels (normalised cx cy w h -> pixel x y w h); ids 1..N,
    categories 1..nc named after the classes."""
    names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else {int(k): v for k, v in names.items()}
    gt = {
        "info": {},
        "licenses": [],
        "images": [],
        "annotations": [],
        "categories": [{"id": k + 1, "name": v} for k, v in sorted(names.items())],
    }
    for i, lb in enumerate(sorted(labels, key=lambda x: str(x["im_file"])), 1):
        h, w = image_hw(lb)
        gt["images"].append({"id": i, "file_name": Path(lb["im_file"]).name, "width": w, "height": h})
        for c, (cx, cy, bw, bh) in zip(lb["cls"].reshape(-1), lb["bboxes"].reshape(-1, 4)):
            box = [float((cx - bw / 2) * w), float((cy - bh / 2) * h), float(bw * w), float(bh * h)]
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": i,
                    "category_id": int(c) + 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    return gt


def yolo_to_coco(images: list[Path], names: dict[int, str] | list[str]) -> dict[str, Any]:
    """COCO ground truth from YOLO label files, read and checked as Ultralytics reads them."""
    return labels_to_coco(verified_labels(images, len(names)), names)


def category_map(gt: dict[str, Any], names: dict[int, str], class_map: list[int] | None) -> dict[int, int]:
    """Prediction category id (Ultralytics writes class_map[class], class + 1 on custom data) -> ground-truth
    category id, matched by class name: a ground truth numbered from 0, or in another order, still lines up."""
    class_map = list(class_map) if class_map is not None else [k + 1 for k in sorted(names)]
    by_name = {str(c.get("name")): int(c["id"]) for c in gt.get("categories", []) if "id" in c}
    missing = [names[k] for k in sorted(names) if str(names[k]) not in by_name]
    if not missing:
        return {class_map[k]: by_name[str(names[k])] for k in sorted(names) if k < len(class_map)}
    ids = {int(c["id"]) for c in gt.get("categories", []) if "id" in c}
    if ids and ids <= set(class_map):  # no names to match, but the ids are the ones predictions use
        return {i: i for i in class_map}
    raise ClipCEError(
        f"The COCO ground truth has no categories named {missing[:5]} (it has {sorted(by_name)[:8]}) and its ids "
        f"{sorted(ids)[:8]} are not the model's {class_map[:8]}: predictions cannot be matched to categories. "
        "Give the dataset YAML the same class names as the COCO file."
    )


def map_predictions(preds: list[dict], gt: dict[str, Any], categories: dict[int, int] | None = None) -> list[dict]:
    """Re-key Ultralytics predictions (image_id = stem, file_name = name) onto the ground truth's image ids, and
    their category ids onto the ground truth's (category_map)."""
    by_name, by_stem = {}, {}
    for im in gt["images"]:
        name = Path(im["file_name"]).name
        if name in by_name:
            raise ClipCEError(
                f"Two ground-truth images share the file name '{name}'; predictions cannot be matched by name."
            )
        by_name[name] = im["id"]
        by_stem[Path(name).stem] = im["id"]
    out, unmatched = [], set()
    for p in preds:
        key = p.get("file_name")
        img_id = by_name.get(Path(key).name) if key else by_stem.get(str(p["image_id"]))
        if img_id is None:
            unmatched.add(key or p["image_id"])
            continue
        cat = int(p["category_id"])
        out.append(
            {
                "image_id": img_id,
                "category_id": categories.get(cat, cat) if categories else cat,
                "bbox": [float(v) for v in p["bbox"]],
                "score": float(p["score"]),
            }
        )
    if unmatched:
        from ultralytics.utils import LOGGER

        LOGGER.warning(
            f"{len(unmatched)} predicted images are not in the ground truth "
            f"(e.g. {sorted(map(str, unmatched))[:3]}); their boxes are ignored."
        )
    return out


# ----------------------------------------------------------------------------------------- evaluation
def _coco(gt: dict | str | Path):
    """A pycocotools COCO object of `gt` (a dict, a JSON file, or a COCO object, which is returned as it is)."""
    from pycocotools.coco import COCO

    if isinstance(gt, COCO):
        return gt
    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(gt, (str, Path)):
            return COCO(str(gt))
        c = COCO()
        c.dataset = gt
        c.createIndex()
        return c


def _load_results(coco_gt, preds: list[dict]):
    """pycocotools' loadRes of `preds` (already restricted to images of `coco_gt`), quietly."""
    with contextlib.redirect_stdout(io.StringIO()):
        return coco_gt.loadRes(preds)


def _run_cocoeval(coco_gt, coco_dt, ids: list[int], verbose: bool) -> dict[str, float]:
    """COCOeval evaluate/accumulate/summarize over the images `ids`; {AP, AP50, ...}."""
    from pycocotools.cocoeval import COCOeval

    ev = COCOeval(coco_gt, coco_dt, "bbox")
    ev.params.imgIds = ids
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(STAT_NAMES, ev.stats)}


def evaluate(
    gt: dict | str | Path, preds: list[dict] | str | Path, img_ids: list[int] | None = None, verbose: bool = True
) -> dict[str, float]:
    """pycocotools bbox evaluation; prints the standard summary when verbose. Returns {AP, AP50, ...}.

    Linear in images + predictions: the image ids are one set, built once (a set per prediction made a
    COCO-val-sized evaluation quadratic, issue 13)."""
    coco_gt = _coco(gt)
    if isinstance(preds, (str, Path)):
        preds = json.loads(Path(preds).read_text())
    ids = sorted(coco_gt.getImgIds()) if img_ids is None else sorted(img_ids)
    id_set = set(ids)
    preds = [p for p in preds if p["image_id"] in id_set]
    if not preds or not coco_gt.getAnnIds(imgIds=ids):  # nothing to match: pycocotools would fail or give -1
        return dict.fromkeys(STAT_NAMES, 0.0)
    return _run_cocoeval(coco_gt, _load_results(coco_gt, preds), ids, verbose)


def read_levels(csv_path: Path, images: list[Path], root: Path) -> dict[str, str]:
    """{file name: level} for `images` (one split) from the degradation record of the dataset in `root`."""
    from clipce_rtdetr.data.dataset import read_degradation, relative_to_root

    rows = read_degradation(csv_path)
    if rows and "level" not in next(iter(rows.values())):
        raise ClipCEError(f"{csv_path}: no 'level' column; per-level evaluation needs im_file and level columns.")
    levels = {}
    for im in images:
        r = rows.get(relative_to_root(im, root) or "")
        if r is not None:
            levels[im.name] = r["level"]
    return levels


def level_groups(gt: dict[str, Any], levels: dict[str, str]) -> dict[str, list[int]]:
    """{level: ground-truth image ids}, levels in LEVEL_ORDER (then by name)."""
    groups: dict[str, list[int]] = {}
    for im in gt["images"]:
        lv = levels.get(Path(im["file_name"]).name)
        if lv is not None:
            groups.setdefault(lv, []).append(im["id"])
    order = sorted(groups, key=lambda k: (LEVEL_ORDER.index(k) if k in LEVEL_ORDER else len(LEVEL_ORDER), k))
    return {lv: groups[lv] for lv in order}


def per_level(gt: dict[str, Any], preds: list[dict], levels: dict[str, str]) -> list[dict[str, Any]]:
    """COCO mAP per degradation level, over the images of each level.

    The ground-truth index and the loaded predictions are built once and shared by every level (COCOeval
    restricted to a level's image ids gives the same numbers as evaluating that level's predictions alone)."""
    coco_gt = _coco(gt)
    groups = level_groups(gt, levels)
    level_of = {i: lv for lv, ids in groups.items() for i in ids}
    n_obj = dict.fromkeys(groups, 0)
    for a in gt["annotations"]:
        lv = level_of.get(a["image_id"])
        if lv is not None and not a.get("iscrowd"):
            n_obj[lv] += 1
    n_preds = dict.fromkeys(groups, 0)
    for p in preds:
        lv = level_of.get(p["image_id"])
        if lv is not None:
            n_preds[lv] += 1
    kept = [p for p in preds if p["image_id"] in level_of]
    coco_dt = _load_results(coco_gt, kept) if kept else None
    rows = []
    for lv, ids in groups.items():
        ids = sorted(ids)
        has_gt = bool(coco_gt.getAnnIds(imgIds=ids))
        zero = not n_preds[lv] or not has_gt
        s = dict.fromkeys(STAT_NAMES, 0.0) if zero else _run_cocoeval(coco_gt, coco_dt, ids, verbose=False)
        rows.append(
            {
                "level": lv,
                "images": len(ids),
                "objects": n_obj[lv],
                "mAP50-95": s["AP"],
                "mAP50": s["AP50"],
                "mAP75": s["AP75"],
            }
        )
    return rows


def save_per_level(rows: list[dict[str, Any]], save_dir: Path) -> str:
    """Write coco_per_level.json and .png; return the printed table."""
    table = f"{'level':>10} {'images':>7} {'objects':>8} {'mAP50-95':>9} {'mAP50':>7}\n" + "\n".join(
        f"{r['level']:>10} {r['images']:>7} {r['objects']:>8} {r['mAP50-95']:>9.4f} {r['mAP50']:>7.4f}" for r in rows
    )
    atomic.write_text(save_dir / "coco_per_level.json", json.dumps(rows, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(rows), 3.2))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["mAP50-95"] for r in rows], 0.4, label="mAP50-95")
    ax.bar([i + 0.2 for i in x], [r["mAP50"] for r in rows], 0.4, label="mAP50")
    ax.set_xticks(list(x), [f"{r['level']}\n({r['images']} img)" for r in rows])
    ax.set_ylim(0, 1)
    ax.set_ylabel("COCO mAP")
    ax.set_title("COCO mAP per degradation level")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(save_dir / "coco_per_level.png", dpi=120)
    plt.close(fig)
    return table


def coco_report(
    gt: dict[str, Any], preds: list[dict], save_dir: Path, levels: dict[str, str] | None = None
) -> dict[str, Any]:
    """Evaluate, print, and keep coco_gt.json, coco_predictions.json, coco_metrics.json (+ per level) in save_dir."""
    from ultralytics.utils import LOGGER

    save_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(save_dir / "coco_gt.json", json.dumps(gt, ensure_ascii=False))
    atomic.write_text(save_dir / "coco_predictions.json", json.dumps(preds))
    LOGGER.info(
        f"\nCOCO evaluation (pycocotools) of {len(gt['images'])} images, ground truth {save_dir / 'coco_gt.json'}:"
    )
    stats = evaluate(gt, preds)
    result: dict[str, Any] = {"stats": stats}
    if levels:
        rows = per_level(gt, preds, levels)
        result["per_level"] = rows
        LOGGER.info(
            "COCO mAP per degradation level:\n"
            + save_per_level(rows, save_dir)
            + f"\nSaved {save_dir / 'coco_per_level.json'} and .png"
        )
    atomic.write_text(save_dir / "coco_metrics.json", json.dumps(result, indent=2))
    return result


# ----------------------------------------------------------------------------------------- val
def read_coco_gt(path: Path, yaml_path: Path, labels: list[dict[str, Any]] | None) -> dict[str, Any]:
    """A dataset's own COCO ground truth, checked; with `labels` (what the validator evaluated), only those
    images (a corrupt image Ultralytics skipped is not counted as all misses)."""
    from ultralytics.utils import LOGGER

    try:
        gt = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ClipCEError(
            f"COCO ground truth {path} is not valid JSON ({e}); fix it or remove 'coco_annotations' from {yaml_path}."
        ) from None
    if (
        not isinstance(gt, dict)
        or not isinstance(gt.get("images"), list)
        or not isinstance(gt.get("annotations"), list)
    ):
        raise ClipCEError(f"COCO ground truth {path} needs 'images' and 'annotations' lists.")
    gt.setdefault("info", {})
    gt.setdefault("licenses", [])
    if labels is not None:
        seen = {Path(lb["im_file"]).name for lb in labels}
        keep = {im["id"] for im in gt["images"] if Path(str(im.get("file_name"))).name in seen}
        if len(keep) < len(gt["images"]):
            LOGGER.warning(
                f"{len(gt['images']) - len(keep)} images of {path} were not evaluated (missing, or skipped by "
                "Ultralytics as corrupt); COCO metrics leave them out."
            )
            gt["images"] = [im for im in gt["images"] if im["id"] in keep]
            gt["annotations"] = [a for a in gt["annotations"] if a.get("image_id") in keep]
    return gt


def dataset_gt(
    data_yaml: str | Path, split: str, labels: list[dict[str, Any]] | None = None
) -> tuple[dict[str, Any], dict[str, str] | None]:
    """(COCO ground truth, {file name: level} or None) of a dataset split.

    `labels`: the validator's own (Ultralytics-format) labels of the images it evaluated; the ground truth then
    covers exactly those images (a corrupt image Ultralytics skipped is not counted as all misses)."""
    from ultralytics.utils import LOGGER

    from clipce_rtdetr.data.dataset import dataset_root, image_files, load_data_yaml, split_paths

    yaml_path = Path(data_yaml)
    cfg = load_data_yaml(yaml_path)
    root = dataset_root(cfg, yaml_path)
    images = [im for p in split_paths(cfg, yaml_path, split) for im in image_files(p)]
    ann = (cfg.get("coco_annotations") or {}).get(split)
    gt = None
    if ann and not (root / ann).is_file():
        LOGGER.warning(
            f"COCO ground truth {root / ann} (coco_annotations: {split}) does not exist; "
            "building it from the YOLO labels instead."
        )
    elif ann:
        gt = read_coco_gt(root / ann, yaml_path, labels)
    if gt is None:
        gt = labels_to_coco(labels, cfg["names"]) if labels is not None else yolo_to_coco(images, cfg["names"])
    record = root / cfg["degradation"] if cfg.get("degradation") else None
    levels = read_levels(record, images, root) if record is not None and record.is_file() else None
    return gt, levels


def _listed(names: dict[int, str], limit: int = 12) -> str:
    shown = ", ".join(f"{k}: {v}" for k, v in list(names.items())[:limit])
    return "{" + shown + (f", ... ({len(names)} classes)" if len(names) > limit else "") + "}"


def check_same_classes(model, data_yaml: str | Path, single_cls=None) -> None:
    """COCO metrics match predictions to ground truth by class id: a model trained on other classes (or the same
    ones in another order) would be scored against the wrong classes with exit 0. Refuse, naming both lists.
    Only a model loaded from a checkpoint has classes of its own (a model built from a YAML is untrained)."""
    from ultralytics.nn.autobackend import check_class_names

    from clipce_rtdetr.data.data_root import user_yaml
    from clipce_rtdetr.data.dataset import load_data_yaml

    if not getattr(model, "ckpt", None) or single_cls:
        return
    mine = {int(k): str(v) for k, v in check_class_names(model.names).items()}
    theirs = {int(k): str(v) for k, v in check_class_names(load_data_yaml(Path(data_yaml))["names"]).items()}
    if mine != theirs:
        diff = next((k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)), None)
        raise ClipCEError(
            f"val coco=True: the model {getattr(model, 'ckpt_path', '') or ''} knows other classes than the dataset "
            f"{user_yaml(data_yaml)} (first difference at class {diff}: {mine.get(diff)!r} vs {theirs.get(diff)!r}).\n"
            f"  model:   {_listed(mine)}\n  dataset: {_listed(theirs)}\n"
            "COCO metrics pair classes by number, so they would score the wrong classes. Validate on a dataset with "
            "the model's classes (same names, same order), or convert the data with names= in the model's order."
        )


def val_with_coco(model, validator=None, **kwargs: Any):
    """Ultralytics validation (save_json=True), then pycocotools on the COCO ground truth; returns the metrics
    object with `.coco` = {"stats": {AP, AP50, ...}, "per_level": [...]} added."""
    from ultralytics import RTDETR

    check_same_classes(model, kwargs["data"], kwargs.get("single_cls"))  # before the validator makes a run folder
    holder: dict[str, Any] = {}
    base = validator or model._smart_load("validator")

    class _Recording(base):  # keeps the validator instance to find its save_dir, images and class map
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            holder["v"] = self

        def eval_json(self, stats):  # pycocotools runs below; Ultralytics' faster-coco-eval attempt only warns
            return stats

    metrics = RTDETR.val(model, validator=_Recording, **{**kwargs, "save_json": True})
    v = holder["v"]
    save_dir = Path(v.save_dir)
    pred_file = save_dir / "predictions.json"
    preds = json.loads(pred_file.read_text()) if pred_file.exists() else []
    dataset = getattr(getattr(v, "dataloader", None), "dataset", None)
    labels = getattr(dataset, "labels", None)
    gt, levels = dataset_gt(kwargs["data"], kwargs.get("split") or v.args.split or "val", labels)
    names = {int(k): str(n) for k, n in dict(v.names).items()}
    result = coco_report(gt, map_predictions(preds, gt, category_map(gt, names, v.class_map)), save_dir, levels)
    metrics.coco = result
    return metrics
