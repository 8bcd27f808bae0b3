"""`clipce-rtdetr convert format=voc|exdark|coco source=DIR out=DIR`: datasets into Ultralytics' YOLO layout.

Why: RTTS (VOC XML), ExDark (per-image `class l t w h` text) and the underwater sets (COCO JSON) each come
with their own quirks; every peer project ships a one-off script. This one reads the three formats into one
record list, checks every image and box, and writes

    out/images/{train,val[,test]}/   images, symlinked (or copied with link=False); the source is never written
    out/labels/{...}/                YOLO labels (class cx cy w h, normalised)
    out/annotations/instances_{split}.json   COCO ground truth for COCO-standard evaluation (val coco=True)
    out/<name>.yaml                  the dataset YAML (with `coco_annotations:` pointing at the JSONs)
    out/convert_report.txt           every skipped or changed item, with file (and line) and the reason

Difficult objects (VOC) are left out of the YOLO labels unless keep_difficult=True and go into the COCO
ground truth as `iscrowd: 1`, i.e. ignored by the evaluation as the VOC protocol does; COCO crowd
annotations are treated the same way.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from clipce_rtdetr import atomic
from clipce_rtdetr.data.convert_exif import reconcile_declared_size
from clipce_rtdetr.data.convert_plan import (  # noqa: F401  (names tests and tools import from here)
    DEFAULT_NAMES,
    EXDARK_CLASSES,
    RTTS_CLASSES,
    check_val_fraction,
    class_mapping,
    read_split_lists,
    seeded_split,
)
from clipce_rtdetr.data.convert_readers import (  # noqa: F401
    MARKER,
    MAX_SHOWN,
    READERS,
    SPLITS,
    Obj,
    Record,
    Report,
    image_key,
    read_coco,
    read_exdark,
    read_voc,
)
from clipce_rtdetr.data.dataset import image_size
from clipce_rtdetr.errors import ClipCEError

FORMATS = ("voc", "exdark", "coco")


# ----------------------------------------------------------------------------------------- images
def order_box(box) -> tuple[tuple[float, float, float, float], bool]:
    """(x1, y1, x2, y2) with x1 <= x2 and y1 <= y2, and whether corners had to be swapped (a negative COCO w/h,
    VOC xmin > xmax): kept and reported, like a clipped box, since the swapped box is the one the numbers span."""
    x1, y1, x2, y2 = box
    ordered = (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
    return ordered, ordered != (x1, y1, x2, y2)


def clip_box(box, w: int, h: int) -> tuple[tuple[float, float, float, float] | None, bool]:
    """Clip an ordered (x1, y1, x2, y2) to the image; returns (box or None if nothing is left, whether it was
    clipped)."""
    x1, y1, x2, y2 = box
    c = (min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h))
    clipped = c != (x1, y1, x2, y2)
    if c[2] - c[0] < 1e-3 or c[3] - c[1] < 1e-3:
        return None, clipped
    return c, clipped


def place_image(src: Path, dst: Path, link: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.symlink(src.resolve(), dst)
            return
        except OSError:
            pass  # no symlinks (e.g. Windows without developer mode): copy instead
    with atomic.atomic_path(dst, fsync=False) as tmp:
        shutil.copy2(src, tmp)


def check_out(source: Path, out: Path) -> None:
    """Refuse an output inside the source (or the reverse), a file, and a non-empty folder we did not make.

    Only checks: an earlier conversion in out= is removed by clear_out, once the new one has been validated.
    """
    s, o = source.resolve(), out.resolve()
    if o == s or s in o.parents or o in s.parents:
        raise ClipCEError(
            f"out={out} overlaps source={source}; the source folder is never written. Choose an out= folder outside it."
        )
    blocker = next((p for p in (o, *o.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ClipCEError(
            f"out={out}: {blocker} is a file, not a folder. Choose a new folder for out= (it is created)."
        )
    if o.exists() and any(o.iterdir()) and not (o / MARKER).exists():
        raise ClipCEError(
            f"out={out} exists and is not empty; choose a new folder (a folder made by 'convert' is replaced)."
        )


def clear_out(out: Path) -> None:
    """Remove the images, labels and JSONs of an earlier conversion (check_out made sure out= is ours)."""
    for sub in ("images", "labels", "annotations"):
        shutil.rmtree(out / sub, ignore_errors=True)


def unique_name(src: Path, used: set[str]) -> str:
    """src's file name, or one with another stem if an earlier image of this split has its stem (`used`, lower-cased).

    Why stems: Ultralytics finds an image's labels by its stem (images/train/a.jpg -> labels/train/a.txt), so
    a.jpg and a.png would share one label file. Lower-cased: on macOS and Windows A.txt and a.txt are one file.
    """
    stem, n = src.stem, 1
    while stem.lower() in used:
        stem, n = f"{src.stem}_{n}", n + 1
    used.add(stem.lower())
    return stem + src.suffix


# ----------------------------------------------------------------------------------------- main
def convert(
    fmt: str,
    source: str | Path,
    out: str | Path,
    names: Any = None,
    split: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    keep_difficult: bool = False,
    link: bool = True,
    progress: bool = True,
    keep_unreadable: bool = False,
) -> Path:
    """Convert a VOC/ExDark/COCO dataset into YOLO layout plus COCO JSON; return the dataset YAML path.

    An image with an object that could not be read is left out (its labels would teach that the object is
    background) unless keep_unreadable=True, which keeps it with the objects that could be read.
    """
    if fmt not in FORMATS:
        raise ClipCEError(
            f"format={fmt} is not a convert format. "
            "Use format=voc (RTTS), format=exdark or format=coco (RUOD, URPC2020/DUO, COCO)."
        )
    source, out = Path(source), Path(out)
    if not source.exists():
        raise ClipCEError(f"source={source} does not exist.")
    check_out(source, out)  # everything up to clear_out only reads: a failed rerun leaves the last conversion intact
    report = Report()
    records = READERS[fmt](source, report)
    targets, cmap = class_mapping(fmt, names, records, report.categories)
    records, split_note = listed_splits(records, split, fmt, source, val_fraction, seed, report)
    good = usable_images(records, report, progress)
    good = one_record_per_image(good, report)
    good = readable_images(good, report, keep_unreadable)
    if not good:
        raise ClipCEError(
            f"No usable images were found in {source}; see the reasons below.\n" + "\n".join(report.details[:MAX_SHOWN])
        )
    if split_note.startswith("seeded"):
        assign = seeded_split([r.key for r in good], val_fraction, seed)
        for r in good:
            r.split = assign[r.key]

    clear_out(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / MARKER, json.dumps({"format": fmt, "source": str(source.resolve())}))
    written = write_images(good, out, fmt, targets, cmap, keep_difficult, link, report, progress)
    return write_dataset_files(out, fmt, source, targets, written, report, split_note)


def listed_splits(records, split, fmt: str, source: Path, val_fraction: float, seed: int, report: Report):
    """(records, how they are split): by split files (records not in them are reported and left out), by the
    annotation files' own splits, or a seeded split drawn later among the usable images only."""
    lists = read_split_lists(split if isinstance(split, str) else None, fmt, source)
    if lists is not None:
        for r in records:
            r.split = r.split or lists.get(r.key)
            if r.split is None:
                report.add("image not in the split files", r.where, r.key)
        return [r for r in records if r.split], "split files"
    if all(r.split for r in records) and len({r.split for r in records}) > 1:
        return records, "annotation files per split"
    check_val_fraction(val_fraction)  # before the images are read
    return records, f"seeded split (seed={seed}, val_fraction={val_fraction})"


def usable_images(records: list[Record], report: Report, progress: bool) -> list[Record]:
    """The records whose image file exists and opens (threads: PIL releases the GIL while decoding headers)."""
    from tqdm import tqdm

    found = [r for r in records if r.src is not None]
    for r in records:
        if r.src is None:
            report.add("image file missing", r.where, r.key)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as ex:
        sizes = list(
            tqdm(
                ex.map(lambda r: image_size(r.src), found),
                total=len(found),
                desc="Checking images",
                disable=not progress,
                unit="img",
            )
        )
    good = []
    for r, s in zip(found, sizes):
        if isinstance(s, str):
            report.add("image file unreadable", str(r.src), s)
        else:
            r.size = s
            if reconcile_declared_size(r, report):  # VOC <size> vs the image as read (EXIF orientation)
                good.append(r)
    return good


def one_record_per_image(records: list[Record], report: Report) -> list[Record]:
    """One record per image file. Two annotations of one image (two XML files, two COCO entries) are kept once
    when they give the same objects and split, and refused otherwise: which of them is right cannot be told,
    and either choice would drop real boxes (or put one image in two splits)."""
    by_src: dict[Path, list[Record]] = defaultdict(list)
    for r in records:
        by_src[r.src.resolve()].append(r)
    conflicts = []
    for src, recs in by_src.items():
        first = recs[0]
        for r in recs[1:]:
            if objects_of(r) == objects_of(first) and r.split == first.split and r.unreadable == first.unreadable == []:
                report.add(
                    "image annotated twice with the same objects (kept once)", r.where, f"{src}, as {first.where}"
                )
            else:
                conflicts.append(f"{src}: {first.where} and {r.where}")
    if conflicts:
        listed = "\n  ".join(conflicts[:MAX_SHOWN]) + (
            f"\n  ... and {len(conflicts) - MAX_SHOWN} more" if len(conflicts) > MAX_SHOWN else ""
        )
        raise ClipCEError(
            f"{len(conflicts)} images are annotated more than once, with different objects or splits; which "
            f"annotation is right cannot be told:\n  {listed}\nRemove or merge the duplicates. Nothing was written."
        )
    return [recs[0] for recs in by_src.values()]


def objects_of(r: Record) -> list[tuple]:
    return sorted((o.name, o.box, o.ignore) for o in r.objects)


def readable_images(records: list[Record], report: Report, keep_unreadable: bool) -> list[Record]:
    """Leave out an image with an object that could not be read (unless keep_unreadable): written with its other
    objects only, it would teach the detector that the lost object is background."""
    kept = []
    for r in records:
        if not r.unreadable:
            kept.append(r)
        elif keep_unreadable:
            reason = "image kept without its unreadable objects (keep_unreadable=True)"
            report.add(reason, str(r.src), f"{len(r.unreadable)} of {len(r.unreadable) + len(r.objects)} objects")
            kept.append(r)
        else:
            n, total = len(r.unreadable), len(r.unreadable) + len(r.objects)
            reason = "image left out: some of its objects could not be read (keep_unreadable=True keeps it)"
            report.add(reason, str(r.src), f"{n} of {total} objects, first {r.unreadable[0]}")
    return kept


def write_images(good, out: Path, fmt, targets, cmap, keep_difficult: bool, link: bool, report: Report, progress):
    """Place every image and write its YOLO label; return the per-split COCO ground truth and counts."""
    from tqdm import tqdm

    coco = {
        s: {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(targets)]}
        for s in SPLITS
    }
    used: dict[str, set[str]] = defaultdict(set)
    per_class: dict[str, Counter] = defaultdict(Counter)
    n_images, n_empty = Counter(), Counter()
    for r in tqdm(
        sorted(good, key=lambda r: (r.split, str(r.src))), desc=f"Writing {out}", disable=not progress, unit="img"
    ):
        name = unique_name(r.src, used[r.split])
        if name != r.src.name:
            reason = "image renamed (an earlier image in the split has its stem, so its label file)"
            report.add(reason, str(r.src), f"images/{r.split}/{name}")
        place_image(r.src, out / "images" / r.split / name, link)
        img_id = len(coco[r.split]["images"]) + 1
        coco[r.split]["images"].append({"id": img_id, "file_name": name, "width": r.size[0], "height": r.size[1]})
        lines = image_objects(r, img_id, coco[r.split]["annotations"], fmt, targets, cmap, keep_difficult, report)
        for line in lines:
            per_class[r.split][targets[int(line.split()[0])]] += 1
        lb = out / "labels" / r.split / f"{Path(name).stem}.txt"
        lb.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(lb, "\n".join(lines) + ("\n" if lines else ""), fsync=False)
        n_images[r.split] += 1
        n_empty[r.split] += not lines
    return {"coco": coco, "n_images": n_images, "n_empty": n_empty, "per_class": per_class}


def image_objects(r: Record, img_id: int, anns: list, fmt, targets, cmap, keep_difficult, report) -> list[str]:
    """The YOLO label lines of one image; its COCO annotations are appended to `anns` (ids numbered on)."""
    w, h = r.size
    lines = []
    for o in r.objects:
        c = cmap[o.name]
        if c is None:
            report.add("class dropped by names=", o.where, o.name)
            continue
        ordered, flipped = order_box(o.box)
        box, clipped = clip_box(ordered, w, h)
        if box is None:
            report.add("box outside the image or empty (dropped)", o.where, f"{o.box} in {w}x{h}")
            continue
        if flipped:
            report.add("box corners in the wrong order (swapped and kept)", o.where, f"{o.box} -> {ordered}")
        if clipped:
            report.add("box partly outside the image (clipped)", o.where, f"{o.box} in {w}x{h}")
        x1, y1, x2, y2 = box
        ignore = o.ignore and not (keep_difficult and fmt == "voc")
        anns.append(
            {
                "id": len(anns) + 1,
                "image_id": img_id,
                "category_id": c + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": int(ignore),
            }
        )
        if ignore:
            why = (
                "difficult object (left out of labels, ignored by COCO eval)"
                if fmt == "voc"
                else "crowd annotation (ignored)"
            )
            report.add(why, o.where)
            continue
        lines.append(f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
    return lines


def write_dataset_files(out: Path, fmt, source: Path, targets, written: dict, report: Report, split_note: str) -> Path:
    """The COCO JSONs, the dataset YAML, the report and the summary; return the YAML path."""
    coco, n_images = written["coco"], written["n_images"]
    splits = [s for s in SPLITS if n_images[s]]  # not empty: every usable image was written once
    (out / "annotations").mkdir(exist_ok=True)
    for s in splits:
        atomic.write_text(out / "annotations" / f"instances_{s}.json", json.dumps(coco[s], ensure_ascii=False))
    val = "val" if n_images["val"] else "test" if n_images["test"] else "train"  # RUOD/DUO ship train + test only
    data = {
        "path": str(out.resolve()),
        "train": "images/train" if n_images["train"] else f"images/{val}",
        "val": f"images/{val}",
    }
    if n_images["test"]:
        data["test"] = "images/test"
    data["names"] = dict(enumerate(targets))
    data["coco_annotations"] = {s: f"annotations/instances_{s}.json" for s in splits} | {
        "val": f"annotations/instances_{val}.json"
    }
    data["converted_from"] = {"format": fmt, "source": str(source.resolve()), "split": split_note}
    yaml_path = out / f"{out.resolve().name}.yaml"  # resolved: out=. would give '.yaml', a hidden file
    atomic.write_text(
        yaml_path,
        f"# made by 'clipce-rtdetr convert format={fmt}'\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True),
    )
    warnings = split_warnings(n_images, val)
    summary = format_summary(
        splits, targets, n_images, written["n_empty"], written["per_class"], report, split_note, warnings
    )
    atomic.write_text(out / "convert_report.txt", summary + "\n\nDetails:\n" + "\n".join(report.details) + "\n")
    summary_json = {
        "images": dict(n_images),
        "images_without_objects": dict(written["n_empty"]),
        "objects": {s: dict(written["per_class"][s]) for s in splits},
        "skipped": dict(report.skipped),
        "split": split_note,
        "warnings": warnings,
    }
    atomic.write_text(out / "convert_summary.json", json.dumps(summary_json, indent=2))
    from ultralytics.utils import LOGGER

    LOGGER.info(summary + f"\nDataset YAML: {yaml_path}\nEvery skipped or changed item: {out / 'convert_report.txt'}")
    return yaml_path


def split_warnings(n_images: Counter, val: str) -> list[str]:
    """What the YAML does with a missing train or val split: it still loads, but the user should know."""
    warnings = []
    if not n_images["train"]:
        warnings.append(
            f"No training images: the YAML's train: points at images/{val}, so the dataset is for evaluation "
            "(training on it would train on the val images). Check the split files, or use val_fraction < 1."
        )
    if val == "train":
        warnings.append(
            "No val or test images: the YAML's val: points at images/train, so validation metrics would be "
            "measured on the training images. Use val_fraction above 0, e.g. 0.2 (or split files), for a held-out set."
        )
    return warnings


def format_summary(splits, targets, n_images, n_empty, per_class, report: Report, split_note: str, warnings=()) -> str:
    w = max([len(t) for t in targets] + [24])
    rows = [
        f"{'':{w}} " + " ".join(f"{s:>8}" for s in splits),
        f"{'images':{w}} " + " ".join(f"{n_images[s]:>8}" for s in splits),
        f"{'  without objects':{w}} " + " ".join(f"{n_empty[s]:>8}" for s in splits),
    ]
    rows += [f"{'objects: ' + t:{w}} " + " ".join(f"{per_class[s][t]:>8}" for s in splits) for t in targets]
    text = f"Converted ({split_note}):\n" + "\n".join(rows)
    if report.skipped:
        text += "\nSkipped or changed:\n" + "\n".join(
            f"  {n:>7}  {reason}" for reason, n in report.skipped.most_common()
        )
    if warnings:
        text += "\nWarnings:\n" + "\n".join(f"  {w}" for w in warnings)
    return text


def run_convert(overrides: dict[str, Any]) -> Path:
    """CLI entry: `clipce-rtdetr convert format=voc source=RTTS out=datasets/rtts-yolo`."""
    from clipce_rtdetr.config import check_overrides

    ultra, cfg = check_overrides(overrides)
    missing = [k for k in ("format", "source") if not ultra.get(k)] + ([] if cfg.get("out") else ["out"])
    if missing:
        raise ClipCEError(
            f"convert needs {', '.join(f'{k}=' for k in missing)}, e.g. "
            "'clipce-rtdetr convert format=voc source=path/to/RTTS out=path/to/rtts-yolo'."
        )
    return convert(
        str(ultra["format"]),
        ultra["source"],
        cfg["out"],
        names=cfg.get("names"),
        split=ultra.get("split"),
        val_fraction=cfg["val_fraction"],
        seed=int(ultra.get("seed", 0)),
        keep_difficult=cfg["keep_difficult"],
        link=cfg.get("link", True),
        keep_unreadable=cfg["keep_unreadable"],
    )
