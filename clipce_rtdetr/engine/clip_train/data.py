"""clip-train's data: which images the crops come from (clean copies or the images themselves), the
ground-truth objects of a split, their degradation levels, and crops made on demand (decoded images kept
up to a byte budget), so that no step holds every crop of a split in memory (issue 13.7)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from clipce_rtdetr.errors import ClipCEError


def clean_root(data: dict, images: str | None) -> Path | None:
    """Folder that mirrors the dataset's `images/` with clean copies, or None (crop the images themselves).

    images: 'auto'/None: the YAML's `clean:` folder if it has one, else the images themselves;
    'clean': the YAML's `clean:` folder (an error when there is none); 'images': the images themselves;
    anything else: a folder (absolute, relative to the working directory or to the dataset root)."""
    images = "auto" if images in (None, "") else str(images)
    root = Path(data.get("path") or ".")
    if images == "images":
        return None
    if images in ("auto", "clean"):
        if not data.get("clean"):
            if images == "clean":
                raise ClipCEError(
                    "clip-train images=clean: the dataset YAML has no 'clean:' key naming a folder of clean copies "
                    "(laid out like images/). Add one, or pass images=/path/to/clean/images, or images=images to "
                    "train on the dataset's own images."
                )
            return None
        p = Path(str(data["clean"]))
        return p if p.is_absolute() else root / p
    p = Path(os.path.expanduser(images))
    if not p.is_absolute() and not p.exists():
        p = root / p
    if not p.is_dir():
        raise ClipCEError(
            f"clip-train images={images}: folder not found ({p}). "
            "Use images=clean, images=images or a folder of clean copies."
        )
    return p


def clean_file(im_file: str, root: Path) -> Path:
    """The clean copy of an image: the path after its last `images/` folder, under `root`."""
    parts = Path(im_file).parts
    idx = [i for i, p in enumerate(parts) if p == "images"]
    rel = Path(*parts[idx[-1] + 1 :]) if idx else Path(parts[-1])
    return root / rel


def with_clean_images(labels: list[dict], root: Path | None) -> list[dict]:
    """Ultralytics label dicts with `im_file` pointing at the clean copies (same boxes: same image size)."""
    if root is None:
        return labels
    out, missing = [], []
    for lb in labels:
        f = clean_file(lb["im_file"], root)
        if not f.is_file():
            missing.append(str(f))
        out.append({**lb, "im_file": str(f)})
    if missing:
        raise ClipCEError(
            f"clip-train: {len(missing)} clean image(s) missing under {root}, e.g. {missing[0]} "
            f"(for {labels[0]['im_file']}). Clean copies must mirror images/ with the same file names."
        )
    return out


def gather_objects(labels: list[dict], size: int, context: float, desc: str = "objects", progress: bool = True):
    """The ground-truth objects of `labels` -> (cls (N,), valid (N,), image index (N,)), in the global object
    order. valid is AME's (`ame.crop_boxes`: at least 2 px once clamped), so every image is cropped once, but
    no crop is kept: training crops are made anew each batch (`jittered_crops`), never ~S*S*4 bytes per
    object held for the whole run."""
    from tqdm import tqdm

    from clipce_rtdetr.method import embedding_cache
    from clipce_rtdetr.method.object_ids import object_offsets

    valid, img_of = [], []
    starts = object_offsets(labels)
    image_at = {int(s): i for i, s in enumerate(starts[:-1])}
    bar = tqdm(total=int(starts[-1]), desc=f"clip-train: {desc}", unit="obj", disable=not progress)
    for start, c, v in embedding_cache.iter_source_crops(labels, size, context, "cpu"):
        valid.append(v.cpu())
        img_of.append(torch.full((len(c),), image_at[int(start)], dtype=torch.long))
        bar.update(len(c))
    bar.close()
    cls = embedding_cache.object_classes(labels)
    if not valid:
        return cls, torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.long)
    return cls, torch.cat(valid), torch.cat(img_of)


def object_levels(data: dict, labels: list[dict]) -> list[str | None] | None:
    """Degradation level of each object's image from the dataset's `degradation:` CSV (None when absent)."""
    from clipce_rtdetr.data.dataset import read_degradation, relative_to_root
    from clipce_rtdetr.data.hazy_shapes import haze_level

    if not data.get("degradation"):
        return None
    p = Path(str(data["degradation"]))
    root = Path(data.get("path") or ".")
    p = p if p.is_absolute() else root / p
    if not p.is_file():
        return None
    rows = read_degradation(p)
    out: list[str | None] = []
    for lb in labels:
        r = rows.get(relative_to_root(lb["im_file"], root) or "") or {}
        lvl = r.get("level") or (haze_level(float(r["beta"])) if r.get("beta") else None)
        out += [lvl] * len(lb["cls"])
    return out


IMAGE_MEMORY_BUDGET = 2 * 2**30  # bytes of decoded source images kept in memory for training crops


class DecodedImages:
    """Decoded source images (uint8 (1, 3, H, W)) kept for training crops up to `budget` bytes; the rest are
    re-read from disk each time."""

    def __init__(self, labels: list[dict], budget: int = IMAGE_MEMORY_BUDGET):
        self.labels, self.budget, self.used, self.kept = labels, budget, 0, {}

    def __getitem__(self, i: int) -> torch.Tensor:
        from clipce_rtdetr.method.embedding_cache import read_rgb

        t = self.kept.get(i)
        if t is None:
            t = torch.from_numpy(read_rgb(self.labels[i]["im_file"])).permute(2, 0, 1)[None].contiguous()
            if self.used + t.numel() <= self.budget:
                self.kept[i], self.used = t, self.used + t.numel()
        return t


def jittered_crops(
    images: DecodedImages,
    img_idx: torch.Tensor,
    boxes: torch.Tensor,
    size: int,
    context: float,
    jitter: float,
    gen: torch.Generator,
) -> torch.Tensor:
    """Training crops made on demand: each box's centre moved by up to `jitter` x its size and its width/height
    scaled by exp(U(-jitter, jitter)), then cropped exactly as AME crops (`ame.crop_boxes`, same context and
    size). jitter=0 crops the boxes as they are and draws nothing from `gen`."""
    from clipce_rtdetr.method.ame import crop_boxes

    n = len(boxes)
    new = boxes.float()
    if jitter > 0:
        wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1)
        ctr = (boxes[:, :2] + boxes[:, 2:]) / 2 + (torch.rand(n, 2, generator=gen) * 2 - 1) * jitter * wh
        wh = wh * torch.exp((torch.rand(n, 2, generator=gen) * 2 - 1) * jitter)
        new = torch.cat([ctr - wh / 2, ctr + wh / 2], 1)
    out = torch.empty(n, 3, size, size)
    for i in img_idx.unique().tolist():
        m = img_idx == i
        out[m] = crop_boxes(images[i], new[m], torch.zeros(int(m.sum()), dtype=torch.long), size, context)[0]
    return out
