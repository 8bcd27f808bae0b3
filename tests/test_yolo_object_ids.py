"""Object identity through YOLO's real augmentation pipeline (YOLODataset: mosaic, mixup, copy-paste, perspective)."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest
import torch
from ultralytics.cfg import get_cfg
from ultralytics.data import YOLODataset
from ultralytics.utils import DEFAULT_CFG

from clipce_rtdetr.method.object_ids import as_object_id_dataset, object_offsets, split_object_ids

N_IMG, PER_IMG, W, H = 8, 3, 128, 96


@pytest.fixture(scope="module")
def polygon_dataset(tmp_path_factory):
    """Every object its own class (a wrong id -> class mapping shows), labelled as polygons so copy-paste runs."""
    root = tmp_path_factory.mktemp("yolo-ids")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    (root / "labels").mkdir()
    c = 0
    for i in range(N_IMG):
        img = np.full((H, W, 3), 90, np.uint8)
        lines = []
        for _ in range(PER_IMG if i < N_IMG - 1 else 0):  # the last image has no objects
            x1, y1 = int(rng.integers(0, 80)), int(rng.integers(0, 50))
            w, h = int(rng.integers(20, 45)), int(rng.integers(20, 45))
            cv2.rectangle(img, (x1, y1), (x1 + w, y1 + h), tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
            poly = [(x1, y1), (x1 + w, y1), (x1 + w, y1 + h), (x1, y1 + h)]
            lines.append(f"{c} " + " ".join(f"{x / W:.5f} {y / H:.5f}" for x, y in poly))
            c += 1
        cv2.imwrite(str(root / "images" / f"im{i}.jpg"), img)
        (root / "labels" / f"im{i}.txt").write_text("\n".join(lines))
    return root, c


def _dataset(root, nc, **hyp):
    args = get_cfg(DEFAULT_CFG, {"imgsz": 96, **hyp})
    ds = YOLODataset(
        img_path=str(root / "images"),
        imgsz=96,
        batch_size=4,
        augment=True,
        hyp=args,
        rect=False,
        data={"names": {i: f"c{i}" for i in range(nc)}, "channels": 3},
        task="detect",
        prefix="yolo-ids: ",
    )
    return as_object_id_dataset(ds, args), args


@pytest.mark.parametrize(
    "hyp",
    [
        {"mosaic": 1.0, "mixup": 1.0, "degrees": 10.0, "translate": 0.2, "scale": 0.5, "shear": 5.0, "fliplr": 0.5},
        {"mosaic": 1.0, "copy_paste": 1.0, "copy_paste_mode": "flip", "fliplr": 0.5},
        {"mosaic": 1.0, "copy_paste": 1.0, "copy_paste_mode": "mixup", "mixup": 0.5},
        {"mosaic": 1.0, "cutmix": 1.0, "scale": 0.9, "flipud": 0.5},
        {"mosaic": 0.0, "mixup": 0.0, "scale": 0.2, "translate": 0.4, "perspective": 0.0005},  # letterbox path
    ],
)
def test_ids_survive_yolo_augmentation(polygon_dataset, hyp):
    root, nc = polygon_dataset
    ds, _ = _dataset(root, nc, **hyp)
    assert type(ds).__name__ == "ObjectIdYOLODataset"
    src_cls = torch.cat([torch.as_tensor(lb["cls"]).view(-1) for lb in ds.labels]).long()
    assert len(src_cls) == nc and object_offsets(ds.labels)[-1] == nc
    random.seed(0)  # Ultralytics' augmentations draw from Python's and numpy's global generators
    np.random.seed(0)
    seen, rows, per_source = set(), 0, []
    for _ in range(3):
        for start in range(0, len(ds), 4):
            batch = ds.collate_fn([ds[i] for i in range(start, min(start + 4, len(ds)))])
            ids = split_object_ids(batch)
            assert batch["cls"].shape == (len(ids), 1) and len(batch["bboxes"]) == len(ids)
            assert torch.equal(batch["cls"].view(-1).long(), src_cls[ids]), "an augmented box lost its source object"
            seen.update(ids.tolist())
            rows += len(ids)
            per_source.append(len(ids) - len(set(ids.tolist())))
    assert rows > 0 and len(seen) > nc // 2  # the pipeline really moved objects around
    if hyp.get("copy_paste"):
        assert sum(per_source) > 0, "copy-paste added no copies: the test would not cover it"


def test_yolo_empty_image_collates(polygon_dataset):
    root, nc = polygon_dataset
    ds, _ = _dataset(root, nc, mosaic=0.0, scale=0.0, translate=0.0)
    empty = ds[len(ds) - 1]
    assert empty["cls"].shape == (0, 2)
    batch = ds.collate_fn([empty, ds[0]])
    ids = split_object_ids(batch)
    assert len(ids) == PER_IMG and (batch["batch_idx"] == 1).all()
