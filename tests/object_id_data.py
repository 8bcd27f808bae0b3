"""Shared by the object-id tests of both detectors: a dataset where every object has its own class (so a wrong
id -> class mapping cannot go unnoticed), and the check that runs it through Ultralytics' real augmentations."""

from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np
import torch
from ultralytics.cfg import get_cfg
from ultralytics.utils import DEFAULT_CFG

from clipce_rtdetr.method.object_ids import as_object_id_dataset, object_offsets, split_object_ids

N_IMG, PER_IMG, W, H = 8, 3, 128, 96


def write_unique_class_images(root: Path, polygons: bool = False) -> int:
    """N_IMG images of PER_IMG filled rectangles (the last image has none), each its own class; labels as boxes, or
    as polygons (YOLO's copy-paste needs segments). Returns the number of objects (= classes)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    c = 0
    for i in range(N_IMG):
        img = np.full((H, W, 3), 90, np.uint8)
        lines = []
        for _ in range(PER_IMG if i < N_IMG - 1 else 0):
            x1, y1 = int(rng.integers(0, 80)), int(rng.integers(0, 50))
            w, h = int(rng.integers(20, 45)), int(rng.integers(20, 45))
            cv2.rectangle(img, (x1, y1), (x1 + w, y1 + h), tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
            if polygons:
                poly = [(x1, y1), (x1 + w, y1), (x1 + w, y1 + h), (x1, y1 + h)]
                lines.append(f"{c} " + " ".join(f"{x / W:.5f} {y / H:.5f}" for x, y in poly))
            else:
                lines.append(f"{c} {(x1 + w / 2) / W:.5f} {(y1 + h / 2) / H:.5f} {w / W:.5f} {h / H:.5f}")
            c += 1
        cv2.imwrite(str(root / "images" / f"im{i}.jpg"), img)
        (root / "labels" / f"im{i}.txt").write_text("\n".join(lines))
    return c


def object_id_dataset(dataset_class, root: Path, nc: int, **hyp):
    """An augmenting `dataset_class` (RTDETRDataset, YOLODataset) on `root`, carrying object ids."""
    args = get_cfg(DEFAULT_CFG, {"imgsz": 96, **hyp})
    extra = {"task": "detect"} if dataset_class.__name__ == "YOLODataset" else {}
    ds = dataset_class(
        img_path=str(root / "images"),
        imgsz=96,
        batch_size=4,
        augment=True,
        hyp=args,
        rect=False,
        data={"names": {i: f"c{i}" for i in range(nc)}, "channels": 3},
        prefix="ids: ",
        **extra,
    )
    return as_object_id_dataset(ds, args), args


def check_ids_through_batches(ds, nc: int, id_offset: int = 0, epochs: int = 3) -> tuple[set, int, int]:
    """Draw `epochs` passes of batches of 4; every augmented box's id must map back to its source class.
    `id_offset` shifts every global id (as if the dataset had that many objects before these), e.g. past 2^24.
    Returns (source objects seen, box rows, rows that repeat a source object in their batch)."""
    src_cls = torch.cat([torch.as_tensor(lb["cls"]).view(-1) for lb in ds.labels]).long()
    assert len(src_cls) == nc and object_offsets(ds.labels)[-1] == nc
    ds.obj_offsets = ds.obj_offsets + id_offset
    random.seed(0)  # Ultralytics' augmentations draw from Python's and numpy's global generators
    np.random.seed(0)
    seen, rows, repeats = set(), 0, 0
    for _ in range(epochs):
        for start in range(0, len(ds), 4):
            batch = ds.collate_fn([ds[i] for i in range(start, min(start + 4, len(ds)))])
            ids = split_object_ids(batch)
            assert batch["cls"].shape == (len(ids), 1) and len(batch["bboxes"]) == len(ids)
            local = ids - id_offset
            assert bool(((local >= 0) & (local < nc)).all()), f"ids outside the dataset: {ids.tolist()}"
            assert torch.equal(batch["cls"].view(-1).long(), src_cls[local]), "an augmented box lost its source object"
            seen.update(local.tolist())
            rows += len(ids)
            repeats += len(ids) - len(set(ids.tolist()))
    return seen, rows, repeats
