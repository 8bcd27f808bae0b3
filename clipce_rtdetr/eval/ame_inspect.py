"""`clipce-rtdetr ame`: score every ground-truth object of a dataset split with AME, without training.

Writes to the run folder (Ultralytics' project/name convention): `ame.csv` (one row per object, box in
source-image pixels, `index` = the object's row in its label file), `prompts.json` (the exact prompts
and scoring settings), `weights_per_class.png` and `crops_most_least_weakened.png`. It is the tool for
tuning prompts: the paper names prompt sensitivity as the method's main weakness.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from clipce_rtdetr.errors import ClipCEError


def load_split_labels(data_yaml: str, split: str) -> tuple[dict, list[dict], list[str]]:
    """Ultralytics' own dataset checks and label cache for one split: (data dict, labels, label_files)."""
    from ultralytics.data import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(data_yaml, autodownload=False)
    if not data.get(split):
        raise ClipCEError(f"Dataset {data_yaml} has no '{split}:' split; use split=train or split=val.")
    ds = YOLODataset(img_path=data[split], data=data, augment=False, imgsz=640, prefix=f"{split}: ")
    return data, ds.labels, ds.label_files


def run_ame_inspection(overrides: dict[str, Any]) -> Path:
    from ultralytics.cfg import get_save_dir
    from ultralytics.utils import LOGGER
    from ultralytics.utils.torch_utils import select_device

    from clipce_rtdetr.config import check_overrides
    from clipce_rtdetr.data.dataset import check_clip_first, resolve_run_data
    from clipce_rtdetr.method.embedding_cache import object_classes, score_dataset, source_boxes_xyxy

    ultra, a = check_overrides(overrides)
    split = ultra.get("split") or "val"
    check_clip_first(overrides, ultra.get("data"), a["clip"])
    resolved = resolve_run_data({**overrides, "data": ultra.get("data")}, True, allow_download=a["allow_download"])
    a["clip"] = resolved.get("clip", a["clip"])
    data_yaml = resolved["data"]
    data, labels, label_files = load_split_labels(data_yaml, split)
    names = list(data["names"].values())
    device = select_device(ultra.get("device", "cpu" if not torch.cuda.is_available() else "0"), verbose=False)

    q, d, w, scorer = score_dataset(labels, label_files, names, a, device)
    bundle = scorer.bundle
    cls = object_classes(labels)
    q, d, w = (t.float().cpu().numpy() for t in (q, d, w))

    save_dir = get_save_dir(
        SimpleNamespace(
            project=ultra.get("project"),
            name=ultra.get("name"),
            task="detect",
            mode="ame",
            exist_ok=bool(ultra.get("exist_ok")),
            save_dir=None,
        )
    )
    save_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for lb in labels:
        boxes = source_boxes_xyxy(lb, lb["shape"])
        for j, (c, box) in enumerate(zip(np.asarray(lb["cls"]).reshape(-1).astype(int), boxes)):
            rows.append(
                {
                    "im_file": lb["im_file"],
                    "index": j,
                    "cls": c,
                    "name": names[c],
                    **{k: round(float(v), 2) for k, v in zip(("x1", "y1", "x2", "y2"), box)},
                }
            )
    for r, qi, di, wi in zip(rows, q, d, w):
        r.update(q=f"{qi:.6f}", d=f"{di:.6f}", w=f"{wi:.6f}")
    cols = ["im_file", "index", "cls", "name", "x1", "y1", "x2", "y2", "q", "d", "w"]
    with open(save_dir / "ame.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)
    info = {**scorer.info, "clip": a["clip"], "clip_fingerprint": bundle.fingerprint, "data": data_yaml, "split": split}
    (save_dir / "prompts.json").write_text(json.dumps(info, indent=2))

    from clipce_rtdetr.eval.plots import plot_crop_grid, plot_weights_per_class

    plot_weights_per_class(save_dir / "weights_per_class.png", w, cls.numpy(), names)
    plot_crop_grid(save_dir / "crops_most_least_weakened.png", rows, q, d, a["ame_context"])
    if len(w):
        LOGGER.info(
            f"AME on {len(w)} objects of {split}: mean d={d.mean():.3f}, mean w={w.mean():.3f}, "
            f"w>1.5: {(w > 1.5).mean():.1%}"
        )
    LOGGER.info(f"Results saved to {save_dir} (ame.csv, prompts.json, plots)")
    return save_dir
