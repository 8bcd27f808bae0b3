"""Object identity survives Ultralytics' real augmentation pipeline (mosaic, perspective, flips, mixup, cutmix)."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest
import torch
from ultralytics.cfg import get_cfg
from ultralytics.models.rtdetr.train import RTDETRDataset
from ultralytics.utils import DEFAULT_CFG

from clipce_rtdetr.method.object_ids import as_object_id_dataset, object_offsets, split_object_ids

N_IMG, PER_IMG = 8, 3


@pytest.fixture(scope="module")
def unique_class_dataset(tmp_path_factory):
    """Every object has its own class, so a wrong id -> class mapping cannot go unnoticed."""
    root = tmp_path_factory.mktemp("ids")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    (root / "labels").mkdir()
    c = 0
    for i in range(N_IMG):
        img = np.full((96, 128, 3), 90, np.uint8)
        lines = []
        for _j in range(PER_IMG):
            if i == N_IMG - 1:
                break  # one image without objects
            x1, y1 = rng.integers(0, 80), rng.integers(0, 50)
            w, h = rng.integers(20, 45), rng.integers(20, 45)
            cv2.rectangle(
                img, (int(x1), int(y1)), (int(x1 + w), int(y1 + h)), tuple(int(v) for v in rng.integers(0, 255, 3)), -1
            )
            lines.append(f"{c} {(x1 + w / 2) / 128:.5f} {(y1 + h / 2) / 96:.5f} {w / 128:.5f} {h / 96:.5f}")
            c += 1
        cv2.imwrite(str(root / "images" / f"im{i}.jpg"), img)
        (root / "labels" / f"im{i}.txt").write_text("\n".join(lines))
    return root, c


def _dataset(root, nc, **hyp):
    args = get_cfg(DEFAULT_CFG, {"imgsz": 96, **hyp})
    ds = RTDETRDataset(
        img_path=str(root / "images"),
        imgsz=96,
        batch_size=4,
        augment=True,
        hyp=args,
        rect=False,
        data={"names": {i: f"c{i}" for i in range(nc)}, "channels": 3},
        prefix="ids: ",
    )
    return as_object_id_dataset(ds, args), args


@pytest.mark.parametrize(
    "hyp",
    [
        {
            "mosaic": 1.0,
            "mixup": 1.0,
            "degrees": 10.0,
            "translate": 0.2,
            "scale": 0.5,
            "shear": 5.0,
            "fliplr": 0.5,
            "flipud": 0.5,
        },
        {"mosaic": 1.0, "cutmix": 1.0, "scale": 0.9, "fliplr": 0.5},
        {"mosaic": 0.0, "mixup": 0.0, "scale": 0.2, "translate": 0.4},  # no mosaic: perspective/letterbox path
    ],
)
def test_ids_survive_augmentation(unique_class_dataset, hyp):
    root, nc = unique_class_dataset
    ds, _ = _dataset(root, nc, **hyp)
    src_cls = torch.cat([torch.as_tensor(lb["cls"]).view(-1) for lb in ds.labels]).long()
    assert len(src_cls) == nc and object_offsets(ds.labels)[-1] == nc
    random.seed(0)  # Ultralytics' augmentations draw from Python's and numpy's global generators
    np.random.seed(0)
    seen, rows = set(), 0
    for _epoch in range(3):
        for start in range(0, len(ds), 4):
            batch = ds.collate_fn([ds[i] for i in range(start, min(start + 4, len(ds)))])
            ids = split_object_ids(batch)
            assert batch["cls"].shape == (len(ids), 1)
            assert torch.equal(batch["cls"].view(-1).long(), src_cls[ids]), "an augmented box lost its source object"
            seen.update(ids.tolist())
            rows += len(ids)
    assert rows > 0 and len(seen) > nc // 2  # the pipeline really moved objects around


def test_close_mosaic_keeps_ids(unique_class_dataset):
    root, nc = unique_class_dataset
    # scale/translate off too: the remaining random perspective may otherwise push a box out of the frame
    ds, args = _dataset(root, nc, mosaic=1.0, scale=0.0, translate=0.0)
    ds.close_mosaic(hyp=args)
    random.seed(0)
    np.random.seed(0)
    batch = ds.collate_fn([ds[i] for i in range(len(ds))])
    ids = split_object_ids(batch)
    assert ids is not None and len(ids) == nc  # no mosaic, no crop, no shift: every object once


def test_empty_batch_collates(unique_class_dataset):
    root, nc = unique_class_dataset
    ds, _ = _dataset(root, nc, mosaic=0.0, scale=0.0, translate=0.0)
    empty = ds[len(ds) - 1]  # the image without objects
    assert empty["cls"].shape == (0, 2)
    batch = ds.collate_fn([empty, empty])
    assert split_object_ids(batch).numel() == 0
