"""Object identity through YOLO's real augmentation pipeline (YOLODataset: mosaic, mixup, copy-paste, perspective)."""

from __future__ import annotations

import pytest
from ultralytics.data import YOLODataset

from clipce_rtdetr.method.object_ids import ID_BASE, split_object_ids
from tests.object_id_data import PER_IMG, check_ids_through_batches, object_id_dataset, write_unique_class_images


@pytest.fixture(scope="module")
def polygon_dataset(tmp_path_factory):
    """Labelled as polygons, so copy-paste runs."""
    root = tmp_path_factory.mktemp("yolo-ids")
    return root, write_unique_class_images(root, polygons=True)


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
    ds, _ = object_id_dataset(YOLODataset, root, nc, **hyp)
    assert type(ds).__name__ == "ObjectIdYOLODataset"
    seen, rows, repeats = check_ids_through_batches(ds, nc)
    assert rows > 0 and len(seen) > nc // 2  # the pipeline really moved objects around
    if hyp.get("copy_paste"):
        assert repeats > 0, "copy-paste added no copies: the test would not cover it"


def test_yolo_copy_paste_ids_past_float32(polygon_dataset):
    root, nc = polygon_dataset
    ds, _ = object_id_dataset(YOLODataset, root, nc, mosaic=1.0, copy_paste=1.0, copy_paste_mode="flip")
    seen, rows, repeats = check_ids_through_batches(ds, nc, id_offset=ID_BASE + 1, epochs=2)
    assert rows > 0 and repeats > 0


def test_yolo_empty_image_collates(polygon_dataset):
    root, nc = polygon_dataset
    ds, _ = object_id_dataset(YOLODataset, root, nc, mosaic=0.0, scale=0.0, translate=0.0)
    empty = ds[len(ds) - 1]
    assert empty["cls"].shape == (0, 3)
    batch = ds.collate_fn([empty, ds[0]])
    ids = split_object_ids(batch)
    assert len(ids) == PER_IMG and (batch["batch_idx"] == 1).all()
