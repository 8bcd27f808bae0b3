"""Object identity survives Ultralytics' real augmentation pipeline (mosaic, perspective, flips, mixup, cutmix),
also for ids past 2^24 (where float32 stops holding every integer)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from ultralytics.models.rtdetr.train import RTDETRDataset

from clipce_rtdetr.method.object_ids import ID_BASE, id_columns, ids_from_columns, split_object_ids
from tests.object_id_data import check_ids_through_batches, object_id_dataset, write_unique_class_images


@pytest.fixture(scope="module")
def unique_class_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ids")
    return root, write_unique_class_images(root)


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
    ds, _ = object_id_dataset(RTDETRDataset, root, nc, **hyp)
    seen, rows, _ = check_ids_through_batches(ds, nc)
    assert rows > 0 and len(seen) > nc // 2  # the pipeline really moved objects around


@pytest.mark.parametrize("offset", [ID_BASE - 5, 3 * ID_BASE + 7, 25_000_000, 2**40 + 1])
def test_ids_past_float32_survive_augmentation(unique_class_dataset, offset):
    """A dataset as if it had `offset` objects before these (Objects365 has ~25 M): every id comes back exactly
    (as one float32 column, ids 2^24 + 1 and 2^24 would collide and the class check would fail)."""
    root, nc = unique_class_dataset
    ds, _ = object_id_dataset(RTDETRDataset, root, nc, mosaic=1.0, mixup=1.0, scale=0.5, fliplr=0.5)
    seen, rows, _ = check_ids_through_batches(ds, nc, id_offset=offset, epochs=2)
    assert rows > 0 and len(seen) > nc // 2


def test_id_columns_round_trip():
    ids = np.array([0, 1, ID_BASE - 1, ID_BASE, ID_BASE + 1, 25_000_001, 2**47 + 3, -1])
    cols = id_columns(ids)
    assert cols.dtype == np.float32 and cols.shape == (len(ids), 2)
    assert ids_from_columns(torch.from_numpy(cols)).tolist() == ids.tolist()
    assert float(np.float32(ID_BASE + 1)) == ID_BASE  # why one float32 column is not enough


def test_close_mosaic_keeps_ids(unique_class_dataset):
    root, nc = unique_class_dataset
    # scale/translate off too: the remaining random perspective may otherwise push a box out of the frame
    ds, args = object_id_dataset(RTDETRDataset, root, nc, mosaic=1.0, scale=0.0, translate=0.0)
    ds.close_mosaic(hyp=args)
    random.seed(0)
    np.random.seed(0)
    batch = ds.collate_fn([ds[i] for i in range(len(ds))])
    ids = split_object_ids(batch)
    assert ids is not None and sorted(ids.tolist()) == list(range(nc))  # no mosaic, no crop: every object once


def test_empty_batch_collates(unique_class_dataset):
    root, nc = unique_class_dataset
    ds, _ = object_id_dataset(RTDETRDataset, root, nc, mosaic=0.0, scale=0.0, translate=0.0)
    empty = ds[len(ds) - 1]  # the image without objects
    assert empty["cls"].shape == (0, 3)
    batch = ds.collate_fn([empty, empty])
    assert split_object_ids(batch).numel() == 0
