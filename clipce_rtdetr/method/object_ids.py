"""Per-object identity through Ultralytics' augmentations.

Why: the embedding cache holds one CLIP embedding per ground-truth object of the *source* images, but
mosaic, random perspective, flips, mixup, cutmix and copy-paste filter, merge and reorder boxes. Every
one of them moves rows of `labels["cls"]` in step with the boxes, so a second `cls` column carrying a
global object id survives them all; it is split off again in the trainer's `preprocess_batch`.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch


def object_offsets(labels: list[dict]) -> np.ndarray:
    """offsets[i] = global id of the first object of image i (objects numbered in dataset order)."""
    counts = np.array([len(lb["cls"]) for lb in labels], dtype=np.int64)
    return np.concatenate([[0], np.cumsum(counts)])


class EnsureIdColumn:
    """Last transform: Ultralytics' `Format` builds an empty `cls` as (0, 1); make it (0, 2) so batches collate."""

    def __call__(self, labels: dict) -> dict:
        cls = labels.get("cls")
        if isinstance(cls, torch.Tensor) and cls.ndim == 2 and cls.shape[1] == 1:
            labels["cls"] = cls.new_zeros((0, 2)) if len(cls) == 0 else torch.cat([cls, torch.full_like(cls, -1)], 1)
        return labels


@cache
def object_id_class(base: type) -> type:
    """`base` (a detector's Ultralytics dataset class: RTDETRDataset, YOLODataset) whose `cls` has a second column,
    the object's global id in `self.labels` order. Single inheritance: a built dataset can be re-classed in place
    only to a class of the same layout (a mixin base in front of it would change the layout)."""
    if getattr(base, "carries_object_ids", False):
        return base

    class ObjectIdDataset(base):
        carries_object_ids = True

        def enable_object_ids(self, hyp) -> None:
            self.obj_offsets = object_offsets(self.labels)
            if self.obj_offsets[-1] >= 2**24:  # ids travel as float32 in `cls` (exact below 2^24; MPS has no float64)
                raise ValueError(f"{self.obj_offsets[-1]} objects: more than CLIP-CE's object ids can carry (2^24).")
            self.transforms = self.build_transforms(hyp=hyp)

        def get_image_and_label(self, index: int) -> dict:
            label = super().get_image_and_label(index)
            cls = np.asarray(label["cls"], dtype=np.float32).reshape(-1, 1)
            ids = (self.obj_offsets[index] + np.arange(len(cls))).astype(np.float32)
            label["cls"] = np.concatenate([cls, ids[:, None]], 1)
            return label

        def build_transforms(self, hyp=None):
            transforms = super().build_transforms(hyp)
            transforms.append(EnsureIdColumn())
            return transforms

    ObjectIdDataset.__name__ = ObjectIdDataset.__qualname__ = f"ObjectId{base.__name__}"
    globals()[ObjectIdDataset.__name__] = ObjectIdDataset  # found by name when a dataloader worker unpickles it (spawn)
    return ObjectIdDataset


def as_object_id_dataset(dataset, hyp):
    """Give a built training dataset object ids in place (same labels, transforms rebuilt).

    Re-classing the instance avoids copying Ultralytics' dataset constructor arguments.
    """
    dataset.__class__ = object_id_class(type(dataset))
    dataset.enable_object_ids(hyp)
    return dataset


def split_object_ids(batch: dict) -> torch.Tensor | None:
    """Remove the id column from batch['cls'] (in place); return the ids (N,) long, or None if absent."""
    cls = batch.get("cls")
    if cls is None or cls.ndim != 2 or cls.shape[1] != 2:
        return None
    batch["cls"] = cls[:, :1].float()
    return cls[:, 1].long()
