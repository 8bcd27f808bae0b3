"""Oracle object weights for hazy-shapes: the positive control of the ablation (issue 23).

hazy-shapes records the truth of every image: beta and airlight (haze.csv) and per-pixel depth (depth/), so the
transmission t = exp(-beta * depth) over each object's box is known. From it:
- `oracle`: w = AME's weight formula with d replaced by the true degradation 1 - t (w = exp(alpha (1 - t)) for
  the default form), so the weights sit on AME's scale;
- `oracle-ranked`: AME's own weight values, re-assigned to the objects in the oracle's order of degradation (the
  most degraded object gets AME's largest w): the same distribution as AME, only the ranking differs.
Both are written as weight tables (`clipce=table weights=...`, the layout of `clipce-rtdetr ame`).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from clipce_rtdetr.errors import ClipCEError

ORACLE_METHODS = ("oracle", "oracle-ranked")


def _haze_record(root: Path) -> dict[str, float]:
    """im_file (resolved) -> beta, from haze.csv."""
    path = root / "haze.csv"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return {str((root / r["im_file"]).resolve()): float(r["beta"]) for r in csv.DictReader(f)}
    except (OSError, KeyError, ValueError) as e:
        raise ClipCEError(f"{path}: cannot read beta per image ({e}); the oracle needs hazy-shapes' record.") from None


def _depth_file(root: Path, depth_dir: str, im_file: str) -> Path:
    """images/<split>/<stem>.png -> <depth_dir>/<split>/<stem>.png (hazy-shapes' layout)."""
    rel = Path(im_file).resolve().relative_to((root / "images").resolve())
    return root / depth_dir / rel.with_suffix(".png")


def box_transmission(t_map: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
    """Mean of a transmission map over each box (pixel boxes, rounded outward, at least one pixel)."""
    h, w = t_map.shape
    out = np.empty(len(boxes_xyxy), np.float64)
    for k, (x1, y1, x2, y2) in enumerate(boxes_xyxy):
        c1, r1 = min(max(int(np.floor(x1)), 0), w - 1), min(max(int(np.floor(y1)), 0), h - 1)
        c2, r2 = max(min(int(np.ceil(x2)), w), c1 + 1), max(min(int(np.ceil(y2)), h), r1 + 1)
        out[k] = float(t_map[r1:r2, c1:c2].mean())
    return out


def object_transmission(data_yaml: str, labels: list[dict]) -> np.ndarray:
    """(N,) true mean transmission over every object's box, in the dataset's object order."""
    import yaml

    from clipce_rtdetr.method.embedding_cache import source_boxes_xyxy

    cfg = yaml.safe_load(Path(data_yaml).read_text())
    root = Path(cfg.get("path") or Path(data_yaml).parent)
    if "depth" not in cfg or not (root / "haze.csv").is_file():
        raise ClipCEError(f"{data_yaml}: no depth maps or haze.csv recorded; the oracle needs hazy-shapes' truth.")
    betas, scale = _haze_record(root), float(cfg.get("depth_scale", 0.001))
    out = []
    for lb in labels:
        depth = cv2.imread(str(_depth_file(root, cfg["depth"], lb["im_file"])), cv2.IMREAD_UNCHANGED)
        beta = betas.get(str(Path(lb["im_file"]).resolve()))
        if depth is None or beta is None:
            raise ClipCEError(f"{lb['im_file']}: no depth map or beta recorded for it in {root}.")
        t_map = np.exp(-beta * depth.astype(np.float64) * scale)
        out.append(box_transmission(t_map, source_boxes_xyxy(lb, depth.shape[:2])))
    return np.concatenate(out) if out else np.zeros(0)


def oracle_weights(t: np.ndarray, alpha: float = 1.0, form: str = "exp") -> np.ndarray:
    """AME's weight formula (METHOD.md §3) with d = 1 - t."""
    import torch

    from clipce_rtdetr.method.ame import ame_weights

    return ame_weights(torch.as_tensor(t, dtype=torch.float64), alpha, form).numpy()


def ranked_weights(values: np.ndarray, degradation: np.ndarray) -> np.ndarray:
    """`values` re-assigned so that their order follows `degradation` (largest value to the most degraded)."""
    out = np.empty(len(values), np.float64)
    out[np.argsort(degradation, kind="stable")] = np.sort(np.asarray(values, np.float64))
    return out


def write_weight_table(path: Path, labels: list[dict], w: np.ndarray, extra: dict[str, np.ndarray]) -> Path:
    """A table `clipce=table weights=` reads: im_file, index, w, plus `extra` columns (one value per object)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["im_file", "index", "cls", "w", *extra])
        k = 0
        for lb in labels:
            for j, c in enumerate(np.asarray(lb["cls"]).reshape(-1).astype(int)):
                writer.writerow([lb["im_file"], j, c, f"{w[k]:.6f}", *(f"{v[k]:.6f}" for v in extra.values())])
                k += 1
    tmp.replace(path)
    return path


def ame_scores(data_yaml: str, labels: list[dict], label_files: list[str], a: dict[str, Any]) -> tuple:
    """AME's (d, w) per object with the settings `a` (CLIP, prompts, alpha...), as training would score them."""
    from ultralytics.data.utils import check_det_dataset

    from clipce_rtdetr.method.embedding_cache import score_dataset

    names = list(check_det_dataset(data_yaml, autodownload=False)["names"].values())
    _, d, w, _ = score_dataset(labels, label_files, names, a, "cpu", progress=False)
    return d.double().numpy(), w.double().numpy()


def make_oracle_tables(data_yaml: str, a: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Write oracle.csv and oracle-ranked.csv for the train split to out_dir; return the per-object arrays."""
    from clipce_rtdetr.eval.ame_inspect import load_split_labels

    _, labels, label_files = load_split_labels(data_yaml, "train")
    t = object_transmission(data_yaml, labels)
    d, w_ame = ame_scores(data_yaml, labels, label_files, a)
    w_oracle = oracle_weights(t, a["ame_alpha"], a["ame_form"])
    w_ranked = ranked_weights(w_ame, 1.0 - t)
    cls = np.concatenate([np.asarray(lb["cls"]).reshape(-1) for lb in labels]) if labels else np.zeros(0)
    extra = {"t": t, "d_ame": d, "w_ame": w_ame}
    return {
        "tables": {
            "oracle": write_weight_table(out_dir / "oracle.csv", labels, w_oracle, extra),
            "oracle-ranked": write_weight_table(out_dir / "oracle-ranked.csv", labels, w_ranked, extra),
        },
        "t": t,
        "d_ame": d,
        "w_ame": w_ame,
        "w_oracle": w_oracle,
        "cls": cls.astype(int),
    }
