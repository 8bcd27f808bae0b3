"""Per-object CLIP embeddings of a dataset's source-image crops, computed once and cached on disk.

The cache sits beside Ultralytics' label cache (`labels/train.cache` -> `labels/train.clipce-<key>.pt`), or
under `$CLIPCE_HOME/caches/` when the label folder cannot be written, and is keyed by the CLIP fingerprint
(model + weights checksum), the crop settings and a hash of the labels themselves, so a second run reuses it
and a changed dataset or CLIP rebuilds it. A corrupt or truncated file, or one whose numbers are not finite or
do not fit the labels, is rebuilt with a warning. The few most recently used caches per label folder are kept
(KEEP_CACHES); older ones are deleted when a new one is written.

Size: a cache is one `torch.save` file holding fp16 embeddings (N, D) (1 KB per object at D = 512: 1 GB per million
objects) and a valid mask. It is loaded memory-mapped (`torch.load(mmap=True)`), checked and scored in chunks of
SCORE_CHUNK rows, so its numbers are paged in from disk as needed and never copied whole. The scores (q, w per
object) are saved beside it (`<cache>.scores-<key>.pt`, 8 bytes per object), keyed by the prompts and AME settings,
so a later run with the same settings does not score again. Building is shared by the processes of a job and
resumable: see `cache_build.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from ultralytics.utils import LOGGER

from clipce_rtdetr.method.cache_build import COUNTS, read_rgb, source_boxes_xyxy  # noqa: F401 - also used from here

CACHE_VERSION = 1
KEEP_CACHES = 4  # per label folder: a sweep over a few settings keeps hitting its caches; older ones are removed
SCORE_CHUNK = 1 << 16  # rows per chunk when checking and scoring a cache: 64 MB of fp16 at D = 512


def labels_hash(labels: list[dict]) -> str:
    """Hash of what defines the objects: image files (names, sizes, mtimes, as Ultralytics' label cache does),
    their shapes, classes and boxes, in dataset order."""
    from ultralytics.data.utils import get_hash

    h = hashlib.sha256(get_hash([str(lb["im_file"]) for lb in labels]).encode())
    for lb in labels:
        h.update(str(lb["im_file"]).encode())
        h.update(np.asarray(lb["shape"], dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(lb["cls"], dtype=np.float32).tobytes())
        h.update(np.ascontiguousarray(lb["bboxes"], dtype=np.float32).tobytes())
    return h.hexdigest()


def iter_source_crops(
    labels: list[dict], size: int, context: float, device="cpu"
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield (first object id, crops (n,3,S,S) float in [0,1], valid (n,)) image by image, in dataset order."""
    from clipce_rtdetr.method.ame import crop_boxes
    from clipce_rtdetr.method.object_ids import object_offsets

    for lb, offset in zip(labels, object_offsets(labels)):
        n = len(lb["cls"])
        if n:
            im = read_rgb(lb["im_file"])
            t = torch.from_numpy(im).to(device).permute(2, 0, 1)[None].float().div_(255)
            boxes = torch.from_numpy(source_boxes_xyxy(lb, im.shape[:2])).to(device)
            crops, valid = crop_boxes(t, boxes, torch.zeros(n, dtype=torch.long, device=device), size, context)
            yield int(offset), crops, valid


def compute_embeddings(
    labels: list[dict], bundle, context: float, batch_size: int = 64, device="cpu", progress: bool = True
):
    """CLIP image embeddings (N, D) fp16 and valid mask (N,) for every object of `labels`, in memory (small sets:
    a validation split; the training cache is built with `cache_build`, chunk by chunk, the same way)."""
    from tqdm import tqdm

    from clipce_rtdetr.method.cache_build import encode_chunk, plan_chunks

    n_obj = sum(len(lb["cls"]) for lb in labels)
    embs, valids = [], []
    with tqdm(total=n_obj, desc="CLIP-CE: embedding ground-truth crops", unit="obj", disable=not progress) as bar:
        for a, b in plan_chunks(labels):
            emb, valid = encode_chunk(labels[a:b], bundle, context, batch_size, device, bar=bar)
            if len(valid):
                embs.append(emb)
                valids.append(valid)
    if not embs:  # a dataset without objects
        return torch.zeros(0, 1, dtype=torch.float16), torch.zeros(0, dtype=torch.bool)
    return torch.cat(embs), torch.cat(valids)


def cache_path_for(label_files: list[str], key: str) -> Path:
    """`.../labels/train.clipce-<key12>.pt`, beside Ultralytics' `.../labels/train.cache`."""
    parent = Path(label_files[0]).parent
    return parent.with_name(f"{parent.name}.clipce-{key[:12]}.pt")


def fallback_cache_path(path: Path) -> Path:
    """Where a cache goes when its label folder cannot be written (read-only dataset mounts are the norm on
    clusters): `$CLIPCE_HOME/caches/<folder>-<hash of the folder's absolute path>/<same file name>`, so each label
    folder keeps its own caches (and its own pruning), keyed exactly as beside the labels."""
    from clipce_rtdetr.paths import home

    folder = path.parent.resolve()
    tag = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    return home() / "caches" / f"{folder.name}-{tag}" / path.name


def spec_key(spec: dict) -> str:
    return hashlib.sha256(json.dumps({"v": CACHE_VERSION, **spec}, sort_keys=True).encode()).hexdigest()


def cache_key(bundle_fingerprint: str, context: float, image_size: int, mean, std, lhash: str) -> str:
    return spec_key(
        {
            "clip": bundle_fingerprint,
            "context": round(float(context), 6),
            "size": int(image_size),
            "mean": [round(float(m), 6) for m in mean],
            "std": [round(float(s), 6) for s in std],
            "labels": lhash,
        }
    )


def _touch(path: Path) -> None:
    try:
        os.utime(path)  # "last used", for prune_caches
    except OSError:
        pass


def prune_caches(path: Path, keep: int | None = None) -> list[Path]:
    """Delete all but the `keep` most recently used `<split>.clipce-*.pt` caches beside `path` (they are derived
    data, rebuilt on demand), so sweeping settings does not fill the dataset's disk. Returns what was deleted."""
    keep = KEEP_CACHES if keep is None else keep
    split = path.name.split(".clipce-")[0]
    own = re.compile(re.escape(split) + r"\.clipce-[0-9a-f]{12}\.pt")  # caches, not their scores files
    siblings = [p for p in path.parent.glob(f"{split}.clipce-*.pt") if own.fullmatch(p.name)]
    siblings.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    gone = []
    for old in siblings[max(keep, 1) :]:
        if old == path:
            continue
        try:
            for scores in old.parent.glob(f"{old.stem}.scores-*.pt"):
                scores.unlink()
            old.unlink()
            gone.append(old)
        except OSError:  # in use on another node, read-only: harmless
            pass
    if gone:
        LOGGER.info(
            f"CLIP-CE: removed {len(gone)} older embedding cache(s) beside {path.name} (keeping the {keep} last used)."
        )
    return gone


def _load_valid(path: Path, key: str, check: Callable[[dict], str | None] | None) -> dict | None:
    """The cache at `path` if it is for `key` and its contents pass `check`; None (with the reason logged) if not."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # numbers paged in as read
    except Exception as e:  # truncated/corrupt file
        LOGGER.warning(f"CLIP-CE: cache {path} is unreadable ({type(e).__name__}: {e}); rebuilding it.")
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        LOGGER.info(f"CLIP-CE: cache {path} is for other settings; rebuilding.")
        return None
    problem = check(data) if check is not None else None
    if problem:  # e.g. NaN/inf written into an intact zip: reusing it would turn the loss NaN
        LOGGER.warning(f"CLIP-CE: cache {path} is corrupt ({problem}); rebuilding it.")
        return None
    LOGGER.info(f"CLIP-CE: reusing cache {path}")
    COUNTS["loaded"] += 1
    _touch(path)
    return data


def _save(data: dict, path: Path) -> None:
    """Write atomically: a private temporary file, then a rename (several writers never share one)."""
    from clipce_rtdetr.atomic import AtomicWriteError, atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            torch.save({k: v for k, v in data.items() if k != "path"}, tmp)
    except AtomicWriteError as e:
        raise (e.__cause__ if isinstance(e.__cause__, Exception) else e) from None  # the writer's own error


def load_or_build(
    label_files: list[str] | None,
    key: str,
    build: Callable[[], dict],
    check: Callable[[dict], str | None] | None = None,
) -> dict:
    """Load the cache dict for `key` (beside the labels, else under $CLIPCE_HOME) if it is valid, else build it and
    save it beside the labels or, where they cannot be written, under $CLIPCE_HOME (`fallback_cache_path`).

    `check(data)` returns what is wrong with a loaded cache's contents (None: nothing); a cache that fails it is
    rebuilt with a warning."""
    path = cache_path_for(label_files, key) if label_files else None
    if path is None:
        return {**build(), "key": key}
    fallback = fallback_cache_path(path)
    for candidate in (path, fallback):
        if candidate.exists():
            data = _load_valid(candidate, key, check)
            if data is not None:
                return {**data, "path": candidate}
    data = {**build(), "key": key}
    COUNTS["built"] += 1
    problem = check(data) if check is not None else None
    if problem:
        from clipce_rtdetr.errors import ClipCEError

        raise ClipCEError(f"CLIP-CE: the freshly built cache for {path.parent} is invalid ({problem}); not saved.")
    try:
        _save(data, path)
        LOGGER.info(f"CLIP-CE: cache saved to {path}")
        prune_caches(path)
        return {**data, "path": path}
    except Exception as e:  # OSError, or RuntimeError from torch.save's writer on a read-only filesystem
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    try:
        _save(data, fallback)
        LOGGER.warning(
            f"CLIP-CE: cannot write beside the labels ({path.parent}: {reason}); "
            f"cache saved under $CLIPCE_HOME instead: {fallback}"
        )
        prune_caches(fallback)
        return {**data, "path": fallback}
    except Exception as e:
        LOGGER.warning(
            f"CLIP-CE: cannot write the cache beside the labels ({reason}) nor to {fallback} "
            f"({type(e).__name__}: {e}); it stays in memory for this run."
        )
    return data


def embeddings_problem(data: dict, n_objects: int) -> str | None:
    """What is wrong with a loaded embedding cache for a dataset of `n_objects` objects (None: nothing)."""
    emb, valid = data.get("embeddings"), data.get("valid")
    if not isinstance(emb, torch.Tensor) or not isinstance(valid, torch.Tensor):
        return "missing embeddings or valid mask"
    if emb.ndim != 2 or emb.shape[0] != n_objects or valid.shape != (n_objects,) or valid.dtype != torch.bool:
        return f"shapes {tuple(emb.shape)} / {tuple(valid.shape)} do not fit {n_objects} objects"
    for lo in range(0, n_objects, SCORE_CHUNK):  # in chunks: a memory-mapped cache is never copied whole
        part = slice(lo, lo + SCORE_CHUNK)
        if bool((valid[part] & ~torch.isfinite(emb[part]).all(1)).any()):  # no masked copy of the rows
            return "non-finite embeddings"
    return None


def weights_problem(data: dict, n_objects: int) -> str | None:
    """What is wrong with a loaded prior-weight cache for `n_objects` objects (None: nothing)."""
    w = data.get("weights")
    if not isinstance(w, torch.Tensor) or w.shape != (n_objects,):
        return f"weights of shape {None if w is None else tuple(w.shape)} do not fit {n_objects} objects"
    if n_objects and not bool((torch.isfinite(w) & (w > 0)).all()):
        return "non-finite or non-positive weights"
    return None


def embeddings_key(labels: list[dict], bundle, context: float) -> str:
    return cache_key(bundle.fingerprint, context, bundle.image_size, bundle.mean, bundle.std, labels_hash(labels))


def shard_folder(label_files: list[str], key: str) -> Path:
    """Where the processes of a job write their shares of a cache being built: beside the labels when that folder
    can be written, else beside the $CLIPCE_HOME fallback (every process decides the same way on a shared disk)."""
    path = cache_path_for(label_files, key)
    for candidate in (path, fallback_cache_path(path)):
        folder = candidate.with_name(f"{candidate.stem}.shards")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / ".writable").touch()
            return folder
        except OSError:
            continue
    return fallback_cache_path(path).with_name(f"{path.stem}.shards")  # unwritable too: chunks are computed at merge


def cache_to_build(labels: list[dict], label_files: list[str] | None, bundle, context: float) -> Path | None:
    """The shard folder of the dataset's embedding cache when it has to be built (no cache file for these settings
    yet), else None. Contents are checked when the cache is loaded (a bad one is rebuilt there)."""
    if not label_files:
        return None
    key = embeddings_key(labels, bundle, context)
    path = cache_path_for(label_files, key)
    if any(p.is_file() for p in (path, fallback_cache_path(path))):
        return None
    return shard_folder(label_files, key)


def dataset_embeddings(
    labels: list[dict],
    label_files: list[str] | None,
    bundle,
    context: float,
    batch_size: int = 64,
    device="cpu",
    progress: bool = True,
    workers: int = 0,
) -> dict:
    """Embeddings of every ground-truth object of a dataset, from the disk cache when it is valid, else merged from
    the shares the job's processes wrote (chunks nobody wrote are computed here): `cache_build`."""
    from clipce_rtdetr.method import cache_build

    key = embeddings_key(labels, bundle, context)
    if not label_files:
        emb, valid = compute_embeddings(labels, bundle, context, batch_size, device, progress)
        return {"embeddings": emb, "valid": valid, "key": key}
    shards = shard_folder(label_files, key)

    def build():
        scratch = shards / "merged.f16"
        args = (labels, bundle, context, batch_size, device, shards, scratch, workers, progress)
        emb, valid = cache_build.merge_shards(*args)
        return {"embeddings": emb, "valid": valid}

    n_objects = sum(len(lb["cls"]) for lb in labels)
    try:
        return load_or_build(label_files, key, build, lambda data: embeddings_problem(data, n_objects))
    finally:
        cache_build.remove_shards(shards)  # saved (or kept in memory through the scratch file's mapping)


def dataset_scores(cache: dict, scorer, cls: torch.Tensor, progress: bool = True):
    """AME (q, w) of every object of an embedding cache, scored in chunks (`ame.score_in_chunks`), from the scores
    file beside the cache when one was saved for the same prompts and settings."""
    from clipce_rtdetr.method.ame import score_in_chunks

    skey = spec_key({"embeddings": cache["key"], "scorer": scorer.info, "clip": scorer.bundle.fingerprint})
    path = Path(cache["path"]) if cache.get("path") else None
    target = path.with_name(f"{path.stem}.scores-{skey[:12]}.pt") if path is not None else None
    n = int(cls.numel())
    if target is not None and target.is_file():
        data = _load_valid(target, skey, lambda d: scores_problem(d, n))
        if data is not None:
            return data["q"], data["w"]
    q, w = score_in_chunks(scorer, cache["embeddings"], cls, cache["valid"], SCORE_CHUNK, progress)
    if target is not None:
        try:
            _save({"key": skey, "q": q, "w": w}, target)
        except Exception as e:  # noqa: BLE001 - a read-only cache folder: scored again next time
            LOGGER.warning(f"CLIP-CE: cannot save the scores beside the cache ({target}: {e}); they are not kept.")
    return q, w


def scores_problem(data: dict, n_objects: int) -> str | None:
    """What is wrong with a loaded scores file for `n_objects` objects (None: nothing)."""
    q, w = data.get("q"), data.get("w")
    if not all(isinstance(t, torch.Tensor) and t.shape == (n_objects,) for t in (q, w)):
        return f"scores do not fit {n_objects} objects"
    if n_objects and not bool((torch.isfinite(w) & (w > 0)).all()):
        return "non-finite or non-positive weights"
    return None


def dataset_prior_weights(
    labels: list[dict], label_files: list[str] | None, a: float, progress: bool = True
) -> torch.Tensor:
    """`clipce=prior` weights (N,) of every object, from source images, cached like the embeddings."""
    from tqdm import tqdm

    from clipce_rtdetr.method import prior

    key = spec_key({"prior": [a, prior.PATCH, prior.OMEGA, prior.TOP, prior.T0], "labels": labels_hash(labels)})

    def build():
        out = []
        for lb in tqdm(labels, desc="CLIP-CE prior: dark-channel depth per image", unit="img", disable=not progress):
            if len(lb["cls"]):
                im = read_rgb(lb["im_file"])
                out.append(torch.from_numpy(prior.prior_weights(im, source_boxes_xyxy(lb, im.shape[:2]), a)))
        return {"weights": torch.cat(out).float() if out else torch.zeros(0)}

    n_objects = sum(len(lb["cls"]) for lb in labels)
    return load_or_build(label_files, key, build, lambda data: weights_problem(data, n_objects))["weights"]


def object_classes(labels: list[dict]) -> torch.Tensor:
    """Class id of every object, in the global object order of `object_ids.object_offsets`."""
    if not labels:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([torch.as_tensor(lb["cls"]).reshape(-1) for lb in labels]).long()


def make_scorer(a: dict, names: list[str], device, batch_size: int | None = None):
    """Load CLIP (`a["clip"]`) and build the AMEScorer from the CLIP-CE settings `a`."""
    from clipce_rtdetr.clip.loader import load_clip
    from clipce_rtdetr.method.ame import AMEScorer

    bundle = load_clip(a["clip"], device=device)
    if bundle.random_weights:
        LOGGER.warning(
            f"CLIP-CE: clip={a['clip']} has random weights; its AME scores are uninformative (tests and demos only)."
        )
    return AMEScorer(
        bundle,
        names,
        a["ame_profile"],
        a["ame_templates"],
        a["ame_context"],
        a["ame_temperature"],
        a["ame_alpha"],
        a["ame_form"],
        batch_size=batch_size or a["ame_batch"],
    )


def score_dataset(
    labels: list[dict],
    label_files: list[str] | None,
    names: list[str],
    a: dict,
    device,
    progress: bool = True,
    workers: int = 0,
):
    """AME (q, d, w) of every object of a dataset from its source-image crops (embeddings cached on disk).

    Returns (q, d, w, scorer); all (N,) in the global object order.
    """
    scorer = make_scorer(a, names, device)
    cache = dataset_embeddings(
        labels, label_files, scorer.bundle, a["ame_context"], a["ame_batch"], device, progress, workers
    )
    q, w = dataset_scores(cache, scorer, object_classes(labels), progress)
    return q, 1.0 - q, w, scorer
