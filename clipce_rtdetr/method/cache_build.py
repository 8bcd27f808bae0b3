"""Building the embedding cache in chunks, shared by the processes of a job, written as it goes.

The objects are cut into chunks of whole images (CHUNK_OBJECTS objects or more each), the same chunks whatever the
number of processes. Chunk j belongs to process j % world_size; each process decodes its images in DataLoader
workers, crops the boxes, runs batched CLIP forwards and writes every finished chunk to a shard file
(`<cache>.shards/chunk-000012.pt`, atomically). A build that is killed resumes from the shards it has. Rank 0 then
merges the shards in chunk order (computing any chunk it cannot find, e.g. on a node-local disk) into the cache.
A single process runs the same code with every chunk its own, so the merged cache is the one a single process
builds, bit for bit: each chunk's crops go through the same CLIP forwards in the same batches.

The merge writes into a memory-mapped scratch file, so no process holds the (N, D) matrix in RAM.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import torch
from ultralytics.utils import LOGGER

from clipce_rtdetr.atomic import atomic_path

CHUNK_OBJECTS = 2048  # objects per chunk: the unit of sharing, of shard files and of resuming
# caches built / reused by this process; chunks it wrote as shards / computed while merging (logs, tests)
COUNTS = {"built": 0, "loaded": 0, "shards": 0, "merge_computed": 0}


def source_boxes_xyxy(label: dict, hw: tuple[int, int]) -> np.ndarray:
    """Ultralytics' normalised xywh label boxes -> pixel xyxy in an image of size hw."""
    from ultralytics.utils.ops import xywh2xyxy

    h, w = hw
    return xywh2xyxy(np.asarray(label["bboxes"], dtype=np.float32).reshape(-1, 4)) * np.array([w, h, w, h], np.float32)


def read_rgb(path: str) -> np.ndarray:
    im = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if im is None:
        raise FileNotFoundError(f"Cannot read image {path} (missing or corrupt).")
    return cv2.cvtColor(im, cv2.COLOR_BGR2RGB)


def chunk_objects() -> int:
    """CHUNK_OBJECTS, or $CLIPCE_CACHE_CHUNK (smaller: finer resuming and sharing of small datasets, more files)."""
    return max(1, int(os.environ.get("CLIPCE_CACHE_CHUNK", CHUNK_OBJECTS)))


def plan_chunks(labels: list[dict]) -> list[tuple[int, int]]:
    """Image ranges [a, b) of `chunk_objects()` objects or more each (the last may hold fewer), in dataset order."""
    chunks, start, count, size = [], 0, 0, chunk_objects()
    for i, lb in enumerate(labels):
        count += len(lb["cls"])
        if count >= size:
            chunks.append((start, i + 1))
            start, count = i + 1, 0
    if start < len(labels):
        chunks.append((start, len(labels)))
    return chunks


class SourceCrops(torch.utils.data.Dataset):
    """Image i of `labels[a:b]` -> (crops (n,3,S,S) float in [0,1], valid (n,)): decoding and cropping run in the
    DataLoader's worker processes."""

    def __init__(self, labels: list[dict], size: int, context: float):
        self.labels = [lb for lb in labels if len(lb["cls"])]
        self.size, self.context = size, context

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from clipce_rtdetr.method.ame import crop_boxes

        lb = self.labels[i]
        im = read_rgb(lb["im_file"])
        t = torch.from_numpy(im).permute(2, 0, 1)[None].float().div_(255)
        boxes = torch.from_numpy(source_boxes_xyxy(lb, im.shape[:2]))
        return crop_boxes(t, boxes, torch.zeros(len(boxes), dtype=torch.long), self.size, self.context)


def encode_chunk(labels: list[dict], bundle, context: float, batch_size: int, device, workers: int = 0, bar=None):
    """CLIP embeddings (n, D) fp16 and valid mask (n,) of every object of `labels` (one chunk), in order; crops are
    encoded `batch_size` or more at a time (the batches depend on the chunk only)."""
    from clipce_rtdetr.method.ame import normalise

    loader = torch.utils.data.DataLoader(
        SourceCrops(labels, bundle.image_size, context), batch_size=None, num_workers=workers
    )
    embs, valids, pending = [], [], []

    def flush():
        if pending:
            x = normalise(torch.cat(pending).to(device), bundle.mean, bundle.std)
            embs.append(bundle.encode_images(x, batch_size).to("cpu", torch.float16))
            pending.clear()

    for crops, valid in loader:
        pending.append(crops)
        valids.append(valid)
        if bar is not None:
            bar.update(len(crops))
        if sum(len(p) for p in pending) >= batch_size:
            flush()
    flush()
    if not embs:
        return torch.zeros(0, 0, dtype=torch.float16), torch.zeros(0, dtype=torch.bool)
    return torch.cat(embs), torch.cat(valids)


def shard_path(shard_dir: Path, j: int) -> Path:
    return Path(shard_dir) / f"chunk-{j:06d}.pt"


def read_shard(path: Path, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A finished chunk's (emb, valid), or None when missing, unreadable or not for `n` objects."""
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        emb, valid = data["emb"], data["valid"]
    except Exception:  # noqa: BLE001 - truncated by a kill: computed again
        return None
    if valid.shape != (n,) or emb.shape[0] != n or not bool(torch.isfinite(emb[valid]).all()):
        return None
    return emb, valid


def build_share(
    labels, bundle, context, batch_size, device, shard_dir: Path, rank: int, world: int, workers=0, progress=True
) -> int:
    """Embed this process's chunks (j % world == rank) into shard files, skipping finished ones. Returns how many
    chunks it computed. A shard folder it cannot write is reported, and its chunks are left to rank 0."""
    from tqdm import tqdm

    from clipce_rtdetr.method.object_ids import object_offsets

    offsets = object_offsets(labels)
    mine = [(j, a, b) for j, (a, b) in enumerate(plan_chunks(labels)) if j % world == rank]
    todo = [(j, a, b) for j, a, b in mine if read_shard(shard_path(shard_dir, j), offsets[b] - offsets[a]) is None]
    total = int(sum(offsets[b] - offsets[a] for _, a, b in todo))
    desc = f"CLIP-CE: embedding crops, share {rank + 1}/{world}"
    with tqdm(total=total, desc=desc, unit="obj", disable=not progress) as bar:
        for j, a, b in todo:
            emb, valid = encode_chunk(labels[a:b], bundle, context, batch_size, device, workers, bar)
            try:
                Path(shard_dir).mkdir(parents=True, exist_ok=True)
                with atomic_path(shard_path(shard_dir, j), fsync=False) as tmp:
                    torch.save({"emb": emb, "valid": valid}, tmp)
            except OSError as e:
                LOGGER.warning(f"CLIP-CE: cannot write cache shards to {shard_dir} ({e}); rank 0 computes them.")
                return 0
            COUNTS["shards"] += 1
    return len(todo)


def merge_shards(
    labels, bundle, context, batch_size, device, shard_dir: Path, scratch: Path, workers=0, progress=True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every chunk's embeddings in order, from its shard or computed here, into a memory-mapped (N, D) fp16 tensor
    backed by `scratch` (a file beside the cache: the caller saves the cache and removes it) and valid (N,)."""
    from tqdm import tqdm

    from clipce_rtdetr.method.object_ids import object_offsets

    offsets = object_offsets(labels)
    n = int(offsets[-1])
    valid_all, emb_all = torch.zeros(n, dtype=torch.bool), None
    with tqdm(total=n, desc="CLIP-CE: embedding cache", unit="obj", disable=not progress) as bar:
        for j, (a, b) in enumerate(plan_chunks(labels)):
            lo, hi = int(offsets[a]), int(offsets[b])
            got = read_shard(shard_path(shard_dir, j), hi - lo)
            if got is None:
                got = encode_chunk(labels[a:b], bundle, context, batch_size, device, workers)
                COUNTS["merge_computed"] += 1
            emb, valid = got
            if hi > lo and emb_all is None:
                emb_all = mapped_matrix(scratch, n, emb.shape[1])
            if hi > lo:
                emb_all[lo:hi] = emb
                valid_all[lo:hi] = valid
            bar.update(hi - lo)
    return (torch.zeros(0, 1, dtype=torch.float16) if emb_all is None else emb_all), valid_all


def mapped_matrix(path: Path, rows: int, cols: int) -> torch.Tensor:
    """A (rows, cols) fp16 tensor stored in the file `path` (memory-mapped, shared: writes go to the file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # a new file: an earlier build's tensor may still map the old one
    with open(path, "wb") as f:
        f.truncate(rows * cols * 2)
    return torch.from_file(str(path), shared=True, size=rows * cols, dtype=torch.float16).view(rows, cols)


def remove_shards(shard_dir: Path) -> None:
    shutil.rmtree(shard_dir, ignore_errors=True)


def chunk_sizes(labels: list[dict]) -> np.ndarray:
    """Objects per chunk (tests, logs)."""
    from clipce_rtdetr.method.object_ids import object_offsets

    offsets = object_offsets(labels)
    return np.array([offsets[b] - offsets[a] for a, b in plan_chunks(labels)], dtype=np.int64)
