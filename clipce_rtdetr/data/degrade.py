"""`clipce-rtdetr degrade data=... kind=haze|lowlight|underwater out=DIR`: a degraded copy of a dataset.

HazyCOCO-style synthesis (METHOD.md §7) applied to any YOLO dataset YAML (a COCO dataset: convert it first,
its COCO JSON is carried along). Images keep their relative paths, format and bit depth; labels and COCO
annotation files are copied unchanged; every image's parameters go to `degradation.csv`, which the new
dataset YAML names under `degradation:` so `val coco=True` can report mAP per level.

Parameters are drawn per image from a generator seeded with (seed, CRC32 of the image's relative path), so
the result does not depend on the process count or order, and a rerun skips finished images (each is
written to a temporary file and renamed) and redoes a half-written one.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import zlib
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from clipce_rtdetr.data import physics
from clipce_rtdetr.data.dataset import (
    IMG_SUFFIXES,
    dataset_root,
    image_files,
    load_data_yaml,
    relative_to_root,
    split_paths,
)
from clipce_rtdetr.errors import ClipCEError

KINDS = ("haze", "lowlight", "underwater")
# Named levels: the range of each kind's main parameter. The recorded `level` of an image is the bin its
# sampled value falls in (so custom ranges are broken down the same way); haze bins match hazy-shapes.
LEVELS: dict[str, dict[str, tuple[float, float]]] = {
    "haze": {"light": (0.02, 0.06), "medium": (0.06, 0.11), "heavy": (0.11, 0.16)},  # beta
    "lowlight": {"light": (1.5, 2.5), "medium": (2.5, 3.5), "heavy": (3.5, 5.0)},  # gamma
    "underwater": {
        "light": (1.0, 3.0),
        "medium": (3.0, 6.0),
        "heavy": (6.0, 10.0),
    },  # distance (m) at the farthest pixel
}
MAIN_PARAM = {"haze": "beta", "lowlight": "gamma", "underwater": "distance"}
AIRLIGHT = (0.7, 1.0)
NOISE = {
    "light": ((0.0005, 0.002), (0.002, 0.005)),
    "medium": ((0.001, 0.004), (0.004, 0.01)),
    "heavy": ((0.002, 0.008), (0.008, 0.02)),
}
VEIL_RGB = ((0.05, 0.20), (0.35, 0.60), (0.45, 0.75))  # blue-green veiling light
TURBIDITY = (0.8, 1.25)  # factor on physics.WATER_ATTENUATION_RGB
FIELDS = {
    "haze": ("beta", "airlight"),
    "lowlight": ("gamma", "shot", "read", "noise_seed"),
    "underwater": ("distance", "atten_r", "atten_g", "atten_b", "veil_r", "veil_g", "veil_b"),
}
SETTINGS_FILE = "degrade.json"
CSV_FILE = "degradation.csv"
PART = ".part"


# ----------------------------------------------------------------------------------------- parameters
def level_of(kind: str, value: float) -> str:
    """Named bin of a sampled main parameter (below the lowest bin: the first; above: the last)."""
    bins = list(LEVELS[kind].items())
    for name, (_, hi) in bins:
        if value < hi:
            return name
    return bins[-1][0]


def ranges_for(kind: str, level: str, cfg: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Sampling ranges: the named level's, replaced by any explicit *_range key."""
    explicit = {
        "haze": {"beta": cfg.get("beta_range"), "airlight": cfg.get("airlight_range")},
        "lowlight": {"gamma": cfg.get("gamma_range")},
        "underwater": {"distance": cfg.get("distance_range")},
    }[kind]
    main = MAIN_PARAM[kind]
    if level == "custom" and explicit.get(main) is None:
        raise ClipCEError(f"level=custom needs {main}_range=[min,max] for kind={kind}.")
    base = LEVELS[kind].get(level, LEVELS[kind]["medium"])
    r = {main: base, "airlight": AIRLIGHT} if kind == "haze" else {main: base}
    for k, v in explicit.items():
        if v is not None:
            lo, hi, why = RANGE_LIMITS[k]
            if not (
                isinstance(v, (list, tuple))
                and len(v) == 2
                and all(isinstance(x, (int, float)) for x in v)
                and lo <= v[0] <= v[1] <= hi
            ):
                raise ClipCEError(
                    f"'{k}_range={v}' must be [min, max] with {lo:g} <= min <= max{f' <= {hi:g}' if hi < float('inf') else ''} ({why})."
                )
            r[k] = (float(v[0]), float(v[1]))
    return r


# Physically meaningful bounds of the explicit ranges: (lowest, highest, why).
RANGE_LIMITS = {
    "beta": (0.0, float("inf"), "scattering per depth unit; 0 is no haze"),
    "airlight": (0.0, 1.0, "atmospheric light as a fraction of white"),
    "gamma": (1.0, float("inf"), "I = J ** gamma darkens only for gamma >= 1; 1 with no noise is the input"),
    "distance": (0.0, float("inf"), "metres of water at the farthest pixel"),
}


def sample_params(kind: str, level: str, ranges: dict[str, tuple[float, float]], seed: int, rel: str) -> dict[str, Any]:
    """Deterministic parameters of one image from (seed, its relative path)."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(rel.encode("utf-8"))])
    main = MAIN_PARAM[kind]
    p: dict[str, Any] = {main: float(rng.uniform(*ranges[main]))}
    if kind == "haze":
        p["airlight"] = float(rng.uniform(*ranges["airlight"]))
    elif kind == "lowlight":
        shot, read = NOISE.get(level_of(kind, p[main]), NOISE["medium"])
        p["shot"], p["read"] = float(rng.uniform(*shot)), float(rng.uniform(*read))
        p["noise_seed"] = int(rng.integers(2**31))
    else:
        turb = float(rng.uniform(*TURBIDITY))
        for c, base, (lo, hi) in zip("rgb", physics.WATER_ATTENUATION_RGB, VEIL_RGB):
            p[f"atten_{c}"] = base * turb
            p[f"veil_{c}"] = float(rng.uniform(lo, hi))
    p["level"] = level_of(kind, p[main])
    return p


# ----------------------------------------------------------------------------------------- images
def read_image(path: Path) -> np.ndarray:
    """Decode keeping bit depth, grayscale and alpha; EXIF orientation applied where no alpha is possible."""
    import cv2

    buf = np.fromfile(str(path), dtype=np.uint8)  # works with non-ASCII paths
    flags = (
        cv2.IMREAD_UNCHANGED
        if path.suffix.lower() in (".png", ".tif", ".tiff", ".webp")
        else cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
    )
    if not buf.size:
        raise ValueError("empty file (0 bytes)")
    img = cv2.imdecode(buf, flags)
    if img is None:
        raise ValueError("cannot be decoded")
    return img


def write_image(img: np.ndarray, dst: Path) -> None:
    """Encode in dst's format and write atomically (temporary file, then rename)."""
    import cv2

    ok, enc = cv2.imencode(dst.suffix, img)
    if not ok:
        raise ValueError(f"cannot be encoded as {dst.suffix}")
    tmp = dst.with_name(dst.name + PART)
    enc.tofile(str(tmp))
    os.replace(tmp, dst)


@lru_cache(maxsize=8)
def prior_depth(source: str, h: int, w: int) -> np.ndarray:
    return physics.centre_distance_depth(h, w) if source == "centre" else physics.horizon_depth(h, w)


def load_depth(depth: str, depth_path: Path | None, h: int, w: int, scale: float) -> np.ndarray:
    if depth in ("centre", "horizon"):
        return prior_depth(depth, h, w)
    import cv2

    if depth_path is None:
        raise ValueError(f"no depth map in {depth}")
    d = np.load(depth_path) if depth_path.suffix == ".npy" else read_image(depth_path)
    d = (d[..., 0] if d.ndim == 3 else d).astype(np.float32) * scale
    return d if d.shape == (h, w) else cv2.resize(d, (w, h), interpolation=cv2.INTER_LINEAR)


@lru_cache(maxsize=8)
def _prior_max(source: str, h: int, w: int) -> float:
    return float(prior_depth(source, h, w).max())


def _fast_u8(
    colour: np.ndarray, kind: str, p: dict[str, Any], depth: np.ndarray | None, bgr: bool, depth_max: float | None
) -> np.ndarray | None:
    """The uint8 fast path (physics.*_u8, within one grey level of the float path); None where it does not apply."""
    if kind == "lowlight":
        return physics.lowlight_u8(colour, p["gamma"], p["shot"], p["read"], p["noise_seed"])
    if kind == "haze":
        return physics.apply_haze_u8(colour, depth, p["beta"], p["airlight"])
    if colour.ndim != 3:
        return None  # the float path raises its message
    att, veil = [p[f"atten_{c}"] for c in "rgb"], [p[f"veil_{c}"] for c in "rgb"]
    if bgr:
        att, veil = att[::-1], veil[::-1]
    m = float(np.max(depth)) if depth_max is None else depth_max
    if not m > 0:
        return colour.copy()  # a flat depth map: distance 0 everywhere
    return physics.apply_underwater_u8(colour, depth, att, veil, scale=float(np.float32(p["distance"]) / np.float32(m)))


def degrade_array(
    img: np.ndarray,
    kind: str,
    p: dict[str, Any],
    depth: np.ndarray | None,
    bgr: bool = True,
    fast: bool = True,
    depth_max: float | None = None,
) -> np.ndarray:
    """Apply the degradation with parameters p to an 8/16-bit image (gray, BGR or BGRA); same dtype back.

    8-bit images take the uint8 fast path (within one grey level of the float reference, fast=False);
    depth_max, when given, is depth.max() (cached for the depth priors).
    """
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{img.dtype} images are not supported; use 8- or 16-bit images")
    scale = 255.0 if img.dtype == np.uint8 else 65535.0
    alpha = img[..., 3:] if img.ndim == 3 and img.shape[2] == 4 else None
    colour = img[..., :3] if alpha is not None else img
    if colour.ndim == 3 and colour.shape[2] == 1:
        colour = colour[..., 0]
    res = _fast_u8(colour, kind, p, depth, bgr, depth_max) if fast and colour.dtype == np.uint8 else None
    if res is not None:
        if alpha is not None:
            res = np.concatenate([res, alpha], axis=2)
        elif img.ndim == 3 and img.shape[2] == 1:
            res = res[..., None]
        return res
    if kind == "lowlight" and colour.dtype == np.uint8:
        out = physics.apply_lowlight_u8(colour, p["gamma"], p["shot"], p["read"], p["noise_seed"])
        j = None
    else:
        j = colour.astype(np.float32) * np.float32(1.0 / scale)
    if j is None:
        pass
    elif kind == "haze":
        out = physics.apply_haze(j, depth, p["beta"], p["airlight"])
    elif kind == "lowlight":
        out = physics.apply_lowlight(j, p["gamma"], p["shot"], p["read"], p["noise_seed"])
    else:
        if j.ndim != 3:
            raise ValueError(
                "grayscale image: underwater needs colour (attenuation differs per channel); convert it to RGB first"
            )
        att, veil = [p[f"atten_{c}"] for c in "rgb"], [p[f"veil_{c}"] for c in "rgb"]
        if bgr:
            att, veil = att[::-1], veil[::-1]
        out = physics.apply_underwater(j, physics.normalised_depth(depth) * np.float32(p["distance"]), att, veil)
    out *= np.float32(scale)
    out += np.float32(0.5)
    res = out.astype(img.dtype)
    if alpha is not None:
        res = np.concatenate([res, alpha], axis=2)
    elif img.ndim == 3 and img.shape[2] == 1:
        res = res[..., None]
    return res


# ----------------------------------------------------------------------------------------- worker
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)


def reuse_freed_image_memory(limit: int = 64 << 20) -> bool:
    """Let glibc keep freed image-sized blocks on the heap instead of unmapping them.

    By default every array over ~128 KiB (a decoded image, each float map of the physics) is a fresh mmap whose
    pages the kernel faults in and zeroes on first touch; on a 640x480 image that page faulting costs more than
    the physics itself (measured 4.7 -> 1.1 ms per image for haze). With the thresholds raised, blocks up to
    `limit` are reused from the heap. Linux/glibc only; elsewhere a no-op. Returns whether it took effect.
    """
    try:
        import ctypes

        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, int(limit)) and mallopt(M_TRIM_THRESHOLD, 4 * int(limit)))


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)
    reuse_freed_image_memory()


def process(job: tuple) -> tuple[str, str | None]:
    """Degrade one image and copy its label. Returns (relative path, error or None)."""
    rel, src, dst, lsrc, ldst, kind, p, depth, depth_path, depth_scale = job
    try:
        img = read_image(src)
        h, w = img.shape[:2]
        d = load_depth(depth, depth_path, h, w, depth_scale) if kind != "lowlight" else None
        dmax = _prior_max(depth, h, w) if kind == "underwater" and depth in ("centre", "horizon") else None
        out = degrade_array(img, kind, p, d, depth_max=dmax)
        if lsrc is not None:  # output folders were made up front by degrade()
            try:
                shutil.copyfile(lsrc, ldst)
            except FileNotFoundError:
                if os.path.exists(lsrc):  # its folder is missing (process() called on its own)
                    ldst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(lsrc, ldst)
        try:
            write_image(out, dst)  # last: its existence marks the image as done
        except FileNotFoundError:
            dst.parent.mkdir(parents=True, exist_ok=True)
            write_image(out, dst)
        return rel, None
    except Exception as e:  # one bad image must not stop a long run; all are listed at the end
        return rel, f"{src}: {e}"


# ----------------------------------------------------------------------------------------- dataset
def _inside(a: Path, b: Path) -> bool:
    return relative_to_root(a, b) is not None  # the containment rule the images are listed with


def depth_index(folder: Path) -> dict[str, list[Path]]:
    exts = IMG_SUFFIXES | {".npy"}
    index: dict[str, list[Path]] = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in exts:
            index.setdefault(p.stem, []).append(p)
    return index


def find_depth(folder: Path, index: dict[str, list[Path]], rel: Path, stem_unique: bool = True) -> Path | None:
    """The depth map of image `rel`: the same relative path in `folder` (without a leading images/), else, for a
    flat folder of maps, the one map of that file stem, but only when neither the stem's images nor its maps are
    ambiguous (train/im0 and val/im0 must not share a map)."""
    parts = rel.parts[1:] if rel.parts and rel.parts[0] == "images" else rel.parts
    for ext in (rel.suffix, ".png", ".tif", ".tiff", ".npy", ".exr"):
        c = folder.joinpath(*parts).with_suffix(ext) if parts else None
        if c is not None and c.is_file():
            return c
    maps = index.get(rel.stem, [])
    return maps[0] if stem_unique and len(maps) == 1 else None


def degrade(
    data: str | Path,
    out: str | Path,
    kind: str = "haze",
    level: str = "medium",
    seed: int = 0,
    depth: str = "horizon",
    ranges: dict[str, Any] | None = None,
    processes: int = 0,
    progress: bool = True,
) -> Path:
    """Write a degraded copy of dataset `data` into `out`; return the new dataset YAML path."""
    from tqdm import tqdm

    from clipce_rtdetr.data.dataset import resolve_data

    if kind not in KINDS:
        raise ClipCEError(f"kind={kind} is not valid; use one of {', '.join(KINDS)}.")
    yaml_path = Path(resolve_data(data, check_labels=False))
    cfg = load_data_yaml(yaml_path)
    root, out = dataset_root(cfg, yaml_path), Path(out)
    # The YAML's own folder may hold out= (a project folder beside its dataset YAMLs): only the images' root counts.
    if _inside(out, root) or _inside(root, out):
        raise ClipCEError(
            f"out={out} overlaps the source dataset {root}; degrade never writes into its source. Choose another out= folder."
        )
    rng = ranges_for(kind, level, ranges or {})
    depth = str(depth or "horizon")
    dfolder = None
    if kind != "lowlight" and depth not in ("centre", "horizon"):
        dfolder = Path(depth) if Path(depth).is_absolute() or Path(depth).exists() else root / depth
        if not dfolder.is_dir():
            raise ClipCEError(f"depth={depth}: not 'horizon', 'centre' or a folder of depth maps (tried {dfolder}).")
        if _inside(out, dfolder):
            raise ClipCEError(f"out={out} is inside the depth folder {dfolder}; choose another out= folder.")
    depth_scale = float(cfg.get("depth_scale", 1.0)) if dfolder is not None else 1.0
    settings = {
        "source": str(yaml_path.resolve()),
        "kind": kind,
        "level": level,
        "seed": int(seed),
        "ranges": {k: list(v) for k, v in rng.items()},
        "depth": str(dfolder.resolve()) if dfolder else depth,
        "depth_scale": depth_scale,
    }
    sfile = out / SETTINGS_FILE
    if sfile.exists():
        old = json.loads(sfile.read_text())
        if old != settings:
            diff = ", ".join(f"{k}: {old.get(k)} -> {v}" for k, v in settings.items() if old.get(k) != v)
            raise ClipCEError(
                f"out={out} holds a degrade run with other settings ({diff}). Use the same settings to resume, or another out= folder."
            )
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ClipCEError(f"out={out} exists, is not an empty folder and is not a degrade run; choose a new folder.")

    # Every image of every split, its path inside the dataset kept; nothing is written until all are listed.
    new_cfg = {
        k: v for k, v in cfg.items() if k not in ("download", "clean", "depth", "depth_scale", "degradation", "path")
    }
    images: list[tuple[str, Path, str]] = []  # (split, image, path inside root)
    lists: dict[Path, list[str]] = {}  # list files to write: new file -> paths inside root
    for split in ("train", "val", "test"):
        raw = cfg.get(split)
        if not raw:
            continue
        new_entries = []
        for i, entry in enumerate(split_paths(cfg, yaml_path, split)):
            rels = []
            inside = relative_to_root(entry, root)
            for im in image_files(entry):
                rel = relative_to_root(im, root)
                if rel is None:
                    raise ClipCEError(
                        f"{im} (split {split}) is outside the dataset folder {root}; degrade keeps relative paths, so images must lie under it."
                    )
                images.append((split, im, rel))
                rels.append(rel)
            if entry.suffix == ".txt":  # a list file: the same list, pointing at the degraded copies
                inside = inside or f"{split}{f'_{i}' if i else ''}.txt"  # a list kept outside the dataset folder
                lists[out / inside] = rels
            elif inside is None:
                raise ClipCEError(
                    f"{entry} (split {split}) is outside the dataset folder {root}; degrade keeps relative paths, so images must lie under it."
                )
            new_entries.append(inside)
        new_cfg[split] = new_entries if isinstance(raw, list) else new_entries[0]
    if not images:
        raise ClipCEError(f"No images found in the splits of {yaml_path}.")

    didx = depth_index(dfolder) if dfolder is not None else {}
    stems = Counter(Path(rel).stem for _, _, rel in images) if dfolder is not None else Counter()
    todo, rows, seen, done = [], [], set(), 0
    for split, im, rel in images:
        if rel in seen:
            continue
        seen.add(rel)
        p = sample_params(kind, level, rng, seed, rel)
        rows.append(
            {
                "im_file": rel,
                "split": split,
                "kind": kind,
                "level": p["level"],
                **{f: (f"{p[f]:.6f}" if isinstance(p[f], float) else p[f]) for f in FIELDS[kind]},
            }
        )
        dst = out / rel
        if os.path.exists(dst):
            done += 1
            continue
        dpath = find_depth(dfolder, didx, Path(rel), stems[Path(rel).stem] == 1) if dfolder is not None else None
        todo.append((rel, im, dst, p, dpath))
    from ultralytics.data.utils import img2label_paths  # one call for all: it is a string substitution

    lsrcs = img2label_paths([str(t[1]) for t in todo])
    ldsts = img2label_paths([str(t[2]) for t in todo])
    jobs = [
        (rel, im, dst, Path(ls), Path(ld), kind, p, depth, dpath, depth_scale)
        for (rel, im, dst, p, dpath), ls, ld in zip(todo, lsrcs, ldsts)
    ]
    folders = {x.parent for j in jobs for x in (j[2], j[4])}

    out.mkdir(parents=True, exist_ok=True)
    sfile.write_text(json.dumps(settings, indent=2))
    for lst, rels in lists.items():
        lst.parent.mkdir(parents=True, exist_ok=True)
        lst.write_text(
            "".join("./" + Path(os.path.relpath(out / r, lst.parent)).as_posix() + "\n" for r in rels), encoding="utf-8"
        )
    for folder in folders:  # once here, not per image in the workers
        folder.mkdir(parents=True, exist_ok=True)

    from ultralytics.utils import LOGGER

    n_proc = processes or os.cpu_count() or 1
    if done:
        LOGGER.info(f"Resuming: {done} of {len(rows)} images already done in {out}.")
    desc = f"Degrading ({kind}, {level}) into {out}"
    if n_proc == 1 or len(jobs) < 2:
        import cv2

        # In this process: one OpenCV thread as in the workers (the same noise draws), restored afterwards; the
        # caller's memory allocator is left as it is (no reuse_freed_image_memory).
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            results = [process(j) for j in tqdm(jobs, desc=desc, disable=not progress, unit="img")]
        finally:
            cv2.setNumThreads(threads)
    else:
        import multiprocessing as mp

        with mp.get_context("spawn" if os.name == "nt" else "fork").Pool(
            min(n_proc, len(jobs)), initializer=_init_worker
        ) as pool:
            it = pool.imap_unordered(process, jobs, chunksize=max(1, min(16, len(jobs) // (n_proc * 8))))
            results = list(tqdm(it, total=len(jobs), desc=desc, disable=not progress, unit="img"))
    failed = {rel for rel, e in results if e}  # the rest of the images exist: done before or now
    errors = [e for _, e in results if e]

    finished = {rel for _, _, rel in images if rel not in failed}
    rows = [r for r in rows if r["im_file"] in finished]
    present: dict[str, set[str]] = {}  # per split (an image listed in two splits is recorded once in rows)
    for split, _, rel in images:
        if rel in finished:
            present.setdefault(split, set()).add(Path(rel).name)
    copy_coco_annotations(cfg, root, out, present)
    with open(out / CSV_FILE, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["im_file"])
        writer.writeheader()
        writer.writerows(rows)
    new_cfg = {
        "path": str(out.resolve()),
        **new_cfg,
        "degradation": CSV_FILE,
        "degraded": {k: v for k, v in settings.items() if k != "source"} | {"from": settings["source"]},
    }
    new_yaml = out / f"{out.resolve().name}.yaml"
    new_yaml.write_text(
        f"# made by 'clipce-rtdetr degrade kind={kind} level={level}'\n"
        + yaml.safe_dump(new_cfg, sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )
    levels = {}
    for r in rows:
        levels[r["level"]] = levels.get(r["level"], 0) + 1
    LOGGER.info(
        f"Degraded {len(rows)} images ({', '.join(f'{k}: {v}' for k, v in levels.items())}); parameters in {out / CSV_FILE}.\nDataset YAML: {new_yaml}"
    )
    if errors:  # the rest is kept; a rerun of the same command retries only these
        raise ClipCEError(
            f"{len(errors)} of {len(seen)} images could not be degraded and are missing from {out} (and from its "
            "COCO ground truth):\n  "
            + "\n  ".join(errors[:10])
            + (f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else "")
            + "\nFix or remove them and rerun the same command: finished images are kept and skipped."
        )
    return new_yaml


def copy_coco_annotations(cfg: dict[str, Any], root: Path, out: Path, present: dict[str, set[str]]) -> None:
    """Copy a converted dataset's COCO ground truth per split, keeping only images that are in `out` (by file name,
    as the COCO files name them), so a failed image does not count as a miss in COCO evaluation."""
    for split, rel in (cfg.get("coco_annotations") or {}).items():
        src = root / rel
        if not src.is_file():
            continue
        gt = json.loads(src.read_text(encoding="utf-8"))
        if isinstance(gt, dict) and isinstance(gt.get("images"), list):
            names = present.get(split, set())
            keep = {im.get("id") for im in gt["images"] if Path(str(im.get("file_name", ""))).name in names}
            gt["images"] = [im for im in gt["images"] if im.get("id") in keep]
            gt["annotations"] = [a for a in gt.get("annotations", []) if a.get("image_id") in keep]
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(json.dumps(gt, ensure_ascii=False), encoding="utf-8")


def run_degrade(overrides: dict[str, Any]) -> Path:
    """CLI entry: `clipce-rtdetr degrade data=coco.yaml kind=haze level=heavy out=hazy-coco`."""
    from clipce_rtdetr.config import check_overrides

    ultra, cfg = check_overrides(overrides)
    if not cfg.get("out"):
        raise ClipCEError(
            "degrade needs out=DIR, e.g. 'clipce-rtdetr degrade data=hazy-shapes kind=haze level=heavy out=hazy-heavy'."
        )
    if not ultra.get("data"):
        raise ClipCEError(
            "degrade needs data=path/to/data.yaml (a YOLO dataset YAML; convert COCO datasets first with 'clipce-rtdetr convert format=coco')."
        )
    return degrade(
        ultra["data"],
        cfg["out"],
        kind=cfg["kind"],
        level=cfg["level"],
        seed=int(ultra.get("seed", 0)),
        depth=cfg["depth"],
        ranges=cfg,
        processes=int(cfg["processes"]),
    )
