"""Per-object identity through Ultralytics' augmentations.

Why: the embedding cache holds one CLIP embedding per ground-truth object of the *source* images, but
mosaic, random perspective, flips, mixup, cutmix and copy-paste filter, merge and reorder boxes. Every
one of them moves rows of `labels["cls"]` in step with the boxes, so extra `cls` columns carrying a global
object id survive them all; they are split off again in the trainer's `preprocess_batch`.

`cls` is float32 (and must stay a float array: MPS has no float64), which holds integers exactly only below
2^24 (16.7 M, less than Objects365's ~25 M boxes). So an id rides as two columns, high and low 24-bit digits
(id = high * 2^24 + low), each exact in float32: ids up to 2^48. An object with no source (-1) is -1 in both.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

ID_BASE = 2**24  # float32 holds every integer below this exactly
ID_COLUMNS = 2  # (high, low) digits in base ID_BASE, after the class column
MAX_OBJECTS = ID_BASE**2


def object_offsets(labels: list[dict]) -> np.ndarray:
    """offsets[i] = global id of the first object of image i (objects numbered in dataset order)."""
    counts = np.array([len(lb["cls"]) for lb in labels], dtype=np.int64)
    return np.concatenate([[0], np.cumsum(counts)])


def id_columns(ids: np.ndarray) -> np.ndarray:
    """Global ids (n,) int -> (n, 2) float32 (high, low) digits, each exact in float32; -1 -> (-1, -1)."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    high, low = np.divmod(ids, ID_BASE)
    out = np.stack([high, low], 1).astype(np.float32)
    out[ids < 0] = -1
    return out


def ids_from_columns(columns: torch.Tensor) -> torch.Tensor:
    """(n, 2) (high, low) digits -> ids (n,) long; a row with a negative digit (no source object) -> -1."""
    high, low = columns[:, 0].long(), columns[:, 1].long()
    return torch.where((high < 0) | (low < 0), torch.full_like(high, -1), high * ID_BASE + low)


class EnsureIdColumn:
    """Last transform: Ultralytics' `Format` builds an empty `cls` as (0, 1); make it (0, 3) so batches collate."""

    def __call__(self, labels: dict) -> dict:
        cls = labels.get("cls")
        if isinstance(cls, torch.Tensor) and cls.ndim == 2 and cls.shape[1] == 1:
            missing = torch.full((len(cls), ID_COLUMNS), -1.0, dtype=cls.dtype, device=cls.device)
            labels["cls"] = torch.cat([cls, missing], 1)
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
            if self.obj_offsets[-1] > MAX_OBJECTS:
                raise ValueError(f"{self.obj_offsets[-1]} objects: more than CLIP-CE's object ids can carry (2^48).")
            self.transforms = self.build_transforms(hyp=hyp)

        def get_image_and_label(self, index: int) -> dict:
            label = super().get_image_and_label(index)
            cls = np.asarray(label["cls"], dtype=np.float32).reshape(-1, 1)
            ids = self.obj_offsets[index] + np.arange(len(cls))
            label["cls"] = np.concatenate([cls, id_columns(ids)], 1)
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
    """Remove the id columns from batch['cls'] (in place); return the ids (N,) long, or None if absent."""
    cls = batch.get("cls")
    if cls is None or cls.ndim != 2 or cls.shape[1] != 1 + ID_COLUMNS:
        return None
    batch["cls"] = cls[:, :1].float()
    return ids_from_columns(cls[:, 1:])
