"""`clipce-rtdetr degrade data=... kind=haze|lowlight|underwater|rain|snow|rain+haze|... out=DIR`: a degraded copy
of a dataset.

HazyCOCO-style synthesis (METHOD.md §7) applied to any YOLO dataset YAML (a COCO dataset: convert it first,
its COCO JSON is carried along). Images keep their relative paths, format and bit depth; labels and COCO
annotation files are copied unchanged; every image's parameters go to `degradation.csv`, which the new
dataset YAML names under `degradation:` so `val coco=True` can report mAP per level.

Parameters are drawn per image from a generator seeded with (seed, CRC32 of the image's relative path), so
the result does not depend on the process count or order, and a rerun skips finished images (each is
written to a temporary file and renamed) and redoes a half-written one. A finished image is one whose outputs
are all there and were made from its source as it is now (degradation.csv records a fingerprint of each image's
inputs, see degrade_record): the degraded image and its label copy (restored when deleted or changed);
degradation.csv, the COCO ground truth, the list files and the YAML are rewritten (atomically) by every run.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from clipce_rtdetr import atomic
from clipce_rtdetr.atomic import atomic_path, atomic_write
from clipce_rtdetr.config import mix_spelling_hint
from clipce_rtdetr.data import degrade_record
from clipce_rtdetr.data.dataset import (
    IMG_SUFFIXES,
    dataset_root,
    image_files,
    load_data_yaml,
    relative_to_root,
    split_paths,
    walk_files,
)
from clipce_rtdetr.data.degrade_image import (  # noqa: F401  (names tests and tools import from here)
    FIELDS,
    KINDS,
    LEVELS,
    UNRECORDED_SYNTHESIS,
    DepthMapError,
    _prior_max,
    decode_image,
    degrade_array,
    level_of,
    load_depth,
    metres_per_unit,
    prior_depth,
    ranges_for,
    read_bytes,
    read_image,
    sample_params,
    synthesis_version,
    write_image,
)
from clipce_rtdetr.errors import ClipCEError

SETTINGS_FILE = "degrade.json"
CSV_FILE = "degradation.csv"


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


def process(job: tuple) -> tuple[str, str | None, dict[str, str] | None]:
    """Degrade one image and copy its label. Returns (relative path, error or None, fingerprint of its inputs)."""
    rel, src, dst, lsrc, ldst, kind, p, depth, depth_path, depth_scale = job
    try:
        fp, buf = degrade_record.fingerprint([src] + ([depth_path] if depth_path is not None else []), read_bytes)
        img = decode_image(buf, src)
        h, w = img.shape[:2]
        d = load_depth(depth, depth_path, h, w, depth_scale) if kind != "lowlight" else None
        dmax = _prior_max(depth, h, w) if kind == "underwater" and depth in ("centre", "horizon") else None
        out = degrade_array(img, kind, p, d, depth_max=dmax, metres_per_unit=metres_per_unit(depth))
        if lsrc is not None:  # a redone image takes its label as it is now (or loses a copy whose source is gone)
            restore_label(lsrc, ldst)
        write_image(out, dst)  # last: its existence (with its fingerprint) marks the image as done
        return rel, None, fp
    except DepthMapError as e:  # the image is fine: name the map that failed
        return rel, f"{e} (for image {src})", None
    except Exception as e:  # one bad image must not stop a long run; all are listed at the end
        return rel, f"{src}: {e}", None


# ----------------------------------------------------------------------------------------- dataset
def _inside(a: Path, b: Path) -> bool:
    return relative_to_root(a, b) is not None  # the containment rule the images are listed with


def depth_index(folder: Path) -> dict[str, list[Path]]:
    exts = IMG_SUFFIXES | {".npy"}
    index: dict[str, list[Path]] = {}
    for p in walk_files(folder):
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
    """Write a degraded copy of dataset `data` into `out`; return the new dataset YAML path.

    A rerun with the same settings resumes: an image counts as done only when every output it owns is there (the
    degraded image and a copy of its label file; its degradation.csv row and COCO entry are rewritten every run).
    Images an earlier run made from a source that is gone are removed with their label copies.
    """
    req = check_request(data, out, kind, level, depth, ranges or {}, seed)
    out = req["out"]
    images, lists, new_cfg = list_images(req["cfg"], req["yaml"], req["root"], out)
    records = degrade_record.load(out / CSV_FILE)
    # Images made by another synthesis version differ from what this one makes: none is reused.
    plan = plan_jobs(images, req, out, {} if req["old_synthesis"] else records)
    plan.update(old_synthesis=req["old_synthesis"], kind=kind)
    plan["removed"] = degrade_record.remove_orphans(out, records, {r["im_file"] for r in plan["rows"]})
    write_run_files(out, req["settings"], lists, plan["jobs"])
    log_resume(plan, out)
    journal = degrade_record.Journal(out)
    try:
        results = run_jobs(plan["jobs"], processes, f"Degrading ({kind}, {level}) into {out}", progress, journal.add)
    finally:
        journal.close(remove=False)
    failed = {rel for rel, e, _ in results if e}  # the rest of the images exist: done before or now
    errors = [e for _, e, _ in results if e]
    plan["fps"].update({rel: fp for rel, e, fp in results if not e})
    new_yaml = write_records(req, out, images, plan, failed, new_cfg)
    journal.close(remove=True)  # degradation.csv now holds every fingerprint
    if errors:  # the rest is kept; a rerun of the same command retries only these
        raise ClipCEError(
            f"{len(errors)} of {len(plan['rows'])} images could not be degraded and are missing from {out} (and from "
            "its COCO ground truth):\n  "
            + "\n  ".join(errors[:10])
            + (f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else "")
            + "\nFix or remove them and rerun the same command: finished images are kept and skipped."
        )
    return new_yaml


def check_request(data, out, kind: str, level: str, depth, ranges: dict[str, Any], seed: int) -> dict[str, Any]:
    """Every check that needs no image: the dataset, out= (not inside the source; a rerun only with the same
    settings), the ranges and the depth source. Returns what the run needs."""
    from clipce_rtdetr.data.dataset import resolve_data

    if kind not in KINDS:
        hint = mix_spelling_hint([kind], KINDS)
        raise ClipCEError(f"kind={kind} is not valid; use one of {', '.join(KINDS)}.{hint}")
    yaml_path = Path(resolve_data(data, check_labels=False, for_ultralytics=False))  # recorded as the source
    cfg = load_data_yaml(yaml_path)
    root, out = dataset_root(cfg, yaml_path), Path(out)
    # The YAML's own folder may hold out= (a project folder beside its dataset YAMLs): only the images' root counts.
    if _inside(out, root) or _inside(root, out):
        raise ClipCEError(
            f"out={out} overlaps the source dataset {root}; degrade never writes into its source. "
            "Choose another out= folder."
        )
    rng = ranges_for(kind, level, ranges)
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
        "synthesis": synthesis_version(kind),  # another version's images are all redone on a rerun
    }
    old_synthesis = check_resumable_out(out, settings)
    return {"yaml": yaml_path, "cfg": cfg, "root": root, "out": out, "kind": kind, "level": level, "seed": seed,
            "ranges": rng, "depth": depth, "dfolder": dfolder, "depth_scale": depth_scale,
            "settings": settings, "old_synthesis": old_synthesis}  # fmt: skip


def check_resumable_out(out: Path, settings: dict[str, Any]) -> str | None:
    """out= is new, empty, or a degrade run with the same settings (which this run resumes). Returns the synthesis
    version of the images there when it is not this one's (they are all redone), else None."""
    sfile = out / SETTINGS_FILE
    if sfile.exists():
        try:
            old = json.loads(sfile.read_text())
        except (OSError, ValueError) as e:
            raise ClipCEError(
                f"{sfile} cannot be read ({e}); this run cannot tell whether out={out} holds the same settings. "
                "Choose another out= folder, or delete the folder to start again."
            ) from None
        old_synthesis = old.pop("synthesis", UNRECORDED_SYNTHESIS)
        new = {k: v for k, v in settings.items() if k != "synthesis"}
        if old != new:
            diff = ", ".join(f"{k}: {old.get(k)} -> {v}" for k, v in new.items() if old.get(k) != v)
            raise ClipCEError(
                f"out={out} holds a degrade run with other settings ({diff}). "
                "Use the same settings to resume, or another out= folder."
            )
        return old_synthesis if old_synthesis != settings["synthesis"] else None
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ClipCEError(f"out={out} exists, is not an empty folder and is not a degrade run; choose a new folder.")
    return None


def list_images(cfg: dict[str, Any], yaml_path: Path, root: Path, out: Path):
    """(images [(split, image, path inside root)], list files to write {new file: paths inside root}, the new
    YAML's split entries); nothing is written until every image is listed."""
    new_cfg = {
        k: v for k, v in cfg.items() if k not in ("download", "clean", "depth", "depth_scale", "degradation", "path")
    }
    images: list[tuple[str, Path, str]] = []
    lists: dict[Path, list[str]] = {}
    outside = "is outside the dataset folder {}; degrade keeps relative paths, so images must lie under it."
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
                    raise ClipCEError(f"{im} (split {split}) " + outside.format(root))
                images.append((split, im, rel))
                rels.append(rel)
            if entry.suffix == ".txt":  # a list file: the same list, pointing at the degraded copies
                inside = inside or f"{split}{f'_{i}' if i else ''}.txt"  # a list kept outside the dataset folder
                lists[out / inside] = rels
            elif inside is None:
                raise ClipCEError(f"{entry} (split {split}) " + outside.format(root))
            new_entries.append(inside)
        new_cfg[split] = new_entries if isinstance(raw, list) else new_entries[0]
    if not images:
        raise ClipCEError(f"No images found in the splits of {yaml_path}.")
    return images, lists, new_cfg


def plan_jobs(images: list[tuple[str, Path, str]], req: dict[str, Any], out: Path, records: dict) -> dict[str, Any]:
    """Every image's parameters (its degradation.csv row) and the jobs still to do. An image whose degraded copy
    exists is done when it was made from its inputs as they are now (`records`, see degrade_record) and its label
    copy is right too: a missing or changed label file is copied again here (the image is deterministic, so it is
    not redone), and a label whose source is gone is removed. An image whose source changed is redone."""
    from ultralytics.data.utils import img2label_paths  # one call for all: it is a string substitution

    kind, level, dfolder = req["kind"], req["level"], req["dfolder"]
    didx = depth_index(dfolder) if dfolder is not None else {}
    stems = Counter(Path(rel).stem for _, _, rel in images) if dfolder is not None else Counter()
    unique = list({rel: (split, im) for split, im, rel in reversed(images)}.items())[::-1]  # first listing wins
    lsrcs = img2label_paths([str(im) for _, (_, im) in unique])
    ldsts = img2label_paths([str(out / rel) for rel, _ in unique])
    rows, jobs, fps, stale, restored = [], [], {}, 0, 0
    for (rel, (split, im)), ls, ld in zip(unique, lsrcs, ldsts):
        p = sample_params(kind, level, req["ranges"], req["seed"], rel)
        rows.append(csv_row(rel, split, kind, p))
        dst = out / rel
        dpath = find_depth(dfolder, didx, Path(rel), stems[Path(rel).stem] == 1) if dfolder is not None else None
        if image_done(dst):
            fp = degrade_record.is_current([im] + ([dpath] if dpath is not None else []), records.get(rel))
            if fp is not None:
                fps[rel] = fp
                restored += restore_label(Path(ls), Path(ld))
                continue
            stale += 1
        jobs.append((rel, im, dst, Path(ls), Path(ld), kind, p, req["depth"], dpath, req["depth_scale"]))
    return {"rows": rows, "jobs": jobs, "fps": fps, "done": len(fps), "stale": stale, "restored": restored}


def log_resume(plan: dict[str, Any], out: Path) -> None:
    from ultralytics.utils import LOGGER

    if plan["done"] or plan["restored"]:
        restored = f"; {plan['restored']} of their label files restored" if plan["restored"] else ""
        LOGGER.info(f"Resuming: {plan['done']} of {len(plan['rows'])} images already done in {out}{restored}.")
    if plan.get("removed"):
        LOGGER.info(f"Removed {plan['removed']} degraded images (with their label copies) from {out}: source gone.")
    if plan["old_synthesis"]:
        version = f"synthesis version {plan['old_synthesis']}, not this one's"
        LOGGER.info(f"Redoing every image in {out}: they were made by {version} ({synthesis_version(plan['kind'])}).")
    elif plan["stale"]:
        LOGGER.info(
            f"Redoing {plan['stale']} degraded images in {out} whose source (image or depth map) changed since they "
            "were made, or that have no record of their source."
        )


def csv_row(rel: str, split: str, kind: str, p: dict[str, Any]) -> dict[str, Any]:
    fields = {f: (f"{p[f]:.6f}" if isinstance(p[f], float) else p[f]) for f in FIELDS[kind]}
    return {"im_file": rel, "split": split, "kind": kind, "level": p["level"], **fields}


def image_done(dst: Path) -> bool:
    """A finished degraded image: written by rename, so present means complete; empty means damaged since."""
    try:
        return dst.stat().st_size > 0
    except OSError:
        return False


def restore_label(lsrc: Path, ldst: Path) -> bool:
    """Make an image's label copy match its source; True when it had to be restored or removed."""
    import filecmp

    if not lsrc.is_file():
        if ldst.exists():  # the source label is gone: a stale copy would give the image objects it no longer has
            ldst.unlink()
            return True
        return False
    if ldst.is_file() and filecmp.cmp(lsrc, ldst, shallow=False):
        return False
    ldst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(ldst, fsync=False) as tmp:
        shutil.copyfile(lsrc, tmp)
    return True


def write_run_files(out: Path, settings: dict[str, Any], lists: dict[Path, list[str]], jobs: list[tuple]) -> None:
    """The settings file (which makes out= resumable), the list files and every output folder, up front."""
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / SETTINGS_FILE, json.dumps(settings, indent=2))
    for lst, rels in lists.items():
        lst.parent.mkdir(parents=True, exist_ok=True)
        entries = ("./" + Path(os.path.relpath(out / r, lst.parent)).as_posix() + "\n" for r in rels)
        atomic.write_text(lst, "".join(entries))
    for folder in {x.parent for j in jobs for x in (j[2], j[4])}:  # once here, not per image in the workers
        folder.mkdir(parents=True, exist_ok=True)


def run_jobs(jobs: list[tuple], processes: int, desc: str, progress: bool, on_done=None) -> list[tuple]:
    """process() every job, in this process or a pool; `on_done(rel, fingerprint)` as each image finishes."""
    results: list[tuple] = []
    for r in _run_jobs(jobs, processes, desc, progress):
        if on_done is not None and not r[1]:
            on_done(r[0], r[2])
        results.append(r)
    return results


def _run_jobs(jobs: list[tuple], processes: int, desc: str, progress: bool):
    from tqdm import tqdm

    n_proc = processes or os.cpu_count() or 1
    if n_proc == 1 or len(jobs) < 2:
        import cv2

        # In this process: one OpenCV thread as in the workers (the same noise draws), restored afterwards; the
        # caller's memory allocator is left as it is (no reuse_freed_image_memory).
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            yield from (process(j) for j in tqdm(jobs, desc=desc, disable=not progress, unit="img"))
        finally:
            cv2.setNumThreads(threads)
        return
    import multiprocessing as mp

    with mp.get_context("spawn" if os.name == "nt" else "fork").Pool(
        min(n_proc, len(jobs)), initializer=_init_worker
    ) as pool:
        it = pool.imap_unordered(process, jobs, chunksize=max(1, min(16, len(jobs) // (n_proc * 8))))
        yield from tqdm(it, total=len(jobs), desc=desc, disable=not progress, unit="img")


def write_records(req: dict[str, Any], out: Path, images, plan: dict, failed: set[str], new_cfg) -> Path:
    """degradation.csv (with each image's source fingerprint), the COCO ground truth and the dataset YAML, for the
    finished images only."""
    from ultralytics.utils import LOGGER

    finished = {rel for _, _, rel in images if rel not in failed}
    rows = [{**r, **plan["fps"][r["im_file"]]} for r in plan["rows"] if r["im_file"] in finished]
    present: dict[str, set[str]] = {}  # per split (an image listed in two splits is recorded once in rows)
    for split, _, rel in images:
        if rel in finished:
            present.setdefault(split, set()).add(Path(rel).name)
    copy_coco_annotations(req["cfg"], req["root"], out, present)
    with atomic_write(out / CSV_FILE, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["im_file"])
        writer.writeheader()
        writer.writerows(rows)
    settings = req["settings"]
    new_cfg = {
        "path": str(out.resolve()),
        **new_cfg,
        "degradation": CSV_FILE,
        "degraded": {k: v for k, v in settings.items() if k != "source"} | {"from": settings["source"]},
    }
    new_yaml = out / f"{out.resolve().name}.yaml"
    atomic.write_text(
        new_yaml,
        f"# made by 'clipce-rtdetr degrade kind={req['kind']} level={req['level']}'\n"
        + yaml.safe_dump(new_cfg, sort_keys=False, allow_unicode=True),
    )
    levels = Counter(r["level"] for r in rows)
    LOGGER.info(
        f"Degraded {len(rows)} images ({', '.join(f'{k}: {v}' for k, v in levels.items())}); "
        f"parameters in {out / CSV_FILE}.\nDataset YAML: {new_yaml}"
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
        atomic.write_text(out / rel, json.dumps(gt, ensure_ascii=False))


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
            "degrade needs data=path/to/data.yaml (a YOLO dataset YAML; convert COCO datasets first with "
            "'clipce-rtdetr convert format=coco')."
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
