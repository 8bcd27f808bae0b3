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

import difflib
import json
import math
import os
import random
import re
import shutil
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clipce_rtdetr.data.dataset import IMG_SUFFIXES, image_size
from clipce_rtdetr.errors import ClipCEError

FORMATS = ("voc", "exdark", "coco")
RTTS_CLASSES = ("person", "bicycle", "car", "motorbike", "bus")
EXDARK_CLASSES = (
    "Bicycle",
    "Boat",
    "Bottle",
    "Bus",
    "Car",
    "Cat",
    "Chair",
    "Cup",
    "Dog",
    "Motorbike",
    "People",
    "Table",
)
DEFAULT_NAMES = {"voc": RTTS_CLASSES, "exdark": EXDARK_CLASSES}
SPLITS = ("train", "val", "test")
EXDARK_SPLIT_CODES = {"1": "train", "2": "val", "3": "test"}
MARKER = ".clipce-convert.json"
MAX_SHOWN = 10


@dataclass
class Obj:
    name: str  # class name as written in the source
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    where: str  # file[:line] for messages
    ignore: bool = False  # difficult (VOC) or crowd (COCO): evaluation ignores it


@dataclass
class Record:
    src: Path | None  # image file (None: not found)
    key: str  # image name as referenced by the annotation (for split lists)
    where: str  # annotation file
    objects: list[Obj] = field(default_factory=list)
    split: str | None = None
    size: tuple[int, int] | None = None  # (w, h) as verified from the image


@dataclass
class Report:
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    details: list[str] = field(default_factory=list)  # "reason: where (detail)"
    categories: list[str] = field(default_factory=list)  # coco: category names in id order

    def add(self, reason: str, where: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        self.details.append(f"{reason}: {where}" + (f" ({detail})" if detail else ""))


# ----------------------------------------------------------------------------------------- helpers
def index_images(root: Path) -> dict[str, list[Path]]:
    """Every image under root by file name, and by lower-cased file name (for case mismatches)."""
    idx: dict[str, list[Path]] = defaultdict(list)
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in IMG_SUFFIXES and p.is_file():
            idx[p.name].append(p)
            if p.name.lower() != p.name:
                idx[p.name.lower()].append(p)
    return idx


def find_image(name: str, idx: dict[str, list[Path]], *candidates: Path) -> Path | None:
    for c in candidates:
        if c.is_file():
            return c
    hits = idx.get(Path(name).name) or idx.get(Path(name).name.lower()) or []
    return hits[0] if hits else None


def image_key(name: str) -> str:
    """An image's key (annotations and split lists alike): the file name without an image suffix. VOC gives bare
    ids, and an id may hold a dot ('img.v2'), so only a known image suffix is dropped (Path.stem would cut it to 'img')."""
    base = Path(name).name
    return base[: -len(Path(base).suffix)] if Path(base).suffix.lower() in IMG_SUFFIXES else base


def _num(text: str | None) -> float:
    if text is None:
        raise ValueError("missing")
    value = float(text.strip())
    if not math.isfinite(
        value
    ):  # float() accepts 'nan' and 'inf'; as a box corner they poison labels and the COCO JSON
        raise ValueError(f"not a finite number: '{text.strip()}'")
    return value


def is_finite_number(v: Any) -> bool:
    """A JSON number usable as a coordinate (json.loads turns NaN/Infinity into floats; true/false are not numbers)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ----------------------------------------------------------------------------------------- readers
def read_voc(source: Path, report: Report) -> list[Record]:
    """VOC XML (RTTS): every *.xml under source; images from <filename>, JPEGImages/ or by name."""
    xmls = sorted(source.rglob("*.xml"))
    if not xmls:
        raise ClipCEError(
            f"No .xml annotation files under {source}. format=voc expects VOC XML (e.g. RTTS/Annotations/*.xml)."
        )
    idx = index_images(source)
    records = []
    for x in xmls:
        try:
            root = ET.parse(x).getroot()
        except ET.ParseError as e:
            line, col = e.position
            report.add("malformed annotation file", f"{x}:{line}", f"column {col}: {e}")
            continue
        if root.tag != "annotation":
            report.add("not a VOC annotation (root is not <annotation>)", str(x))
            continue
        fname = (root.findtext("filename") or "").strip() or x.stem
        if Path(fname).suffix.lower() not in IMG_SUFFIXES:  # some VOC tools write the stem only (which may hold a dot)
            fname = next((p.name for s in IMG_SUFFIXES for p in idx.get(fname + s, [])), fname)
        src = find_image(fname, idx, x.parent.parent / "JPEGImages" / fname, x.parent / fname)
        if src is None:
            src = next((ps[0] for s in IMG_SUFFIXES for ps in [idx.get(x.stem + s, [])] if ps), None)
        rec = Record(src=src, key=image_key(fname), where=str(x))
        for n, o in enumerate(root.iter("object"), 1):
            name = (o.findtext("name") or "").strip()
            bb = o.find("bndbox")
            try:
                box = tuple(_num(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")) if bb is not None else None
            except ValueError as e:
                box, err = None, str(e)
            else:
                err = "no <bndbox>"
            if not name or box is None:
                report.add(
                    "object without name or numeric bndbox", f"{x} object #{n}", err if box is None else "no <name>"
                )
                continue
            difficult = (o.findtext("difficult") or "0").strip() in ("1", "true")
            rec.objects.append(Obj(name, box, f"{x} object #{n}", ignore=difficult))
        records.append(rec)
    return records


def read_exdark(source: Path, report: Report) -> list[Record]:
    """ExDark: per-image `<image name>.txt` files (first line `% bbGt version=3`), lines `class l t w h ...`."""
    idx = index_images(source)
    records = []
    for t in sorted(source.rglob("*.txt")):
        try:
            text = t.read_text(encoding="utf-8-sig", errors="strict")
        except (OSError, UnicodeDecodeError) as e:
            report.add("unreadable annotation file", str(t), str(e))
            continue
        lines = text.splitlines()
        if not lines or not lines[0].startswith("% bbGt"):
            continue  # not an ExDark annotation (e.g. the split list or a README)
        name = t.name[: -len(".txt")]
        rec = Record(src=find_image(name, idx), key=image_key(name), where=str(t))
        for n, line in enumerate(lines[1:], 2):
            parts = line.split()
            if not parts:
                continue
            try:
                if len(parts) < 5:
                    raise ValueError(f"expected 'class l t w h', got {len(parts)} fields")
                left, top, w, h = (_num(v) for v in parts[1:5])
            except ValueError as e:
                report.add("malformed annotation line", f"{t}:{n}", f"{e}: '{line.strip()}'")
                continue
            rec.objects.append(Obj(parts[0], (left, top, left + w, top + h), f"{t}:{n}"))
        records.append(rec)
    if not records:
        raise ClipCEError(f"No ExDark annotation files (.txt starting with '% bbGt') under {source}.")
    return records


def split_of_filename(name: str) -> str | None:
    tokens = re.split(r"[^a-z]+", name.lower())
    for s, aliases in (("train", ("train", "trainval")), ("val", ("val", "valid", "validation")), ("test", ("test",))):
        if any(a in tokens or any(tok.startswith(a) and tok[len(a) :].isdigit() for tok in tokens) for a in aliases):
            return s
    for s in SPLITS:  # e.g. instances_train2017 -> tokens ['instances', 'train']
        if s in name.lower():
            return s
    return None


def read_coco(source: Path, report: Report) -> list[Record]:
    """COCO JSON (RUOD, URPC2020/DUO, COCO subsets): a .json file or every .json under a folder."""
    files = [source] if source.is_file() else sorted(source.rglob("*.json"))
    files = [f for f in files if f.name != MARKER]
    if not files:
        raise ClipCEError(f"No .json annotation files under {source}. format=coco expects COCO instances JSON files.")
    root = source if source.is_dir() else source.parent
    if source.is_file() and root.name.lower().startswith(
        "ann"
    ):  # dataset/annotations/x.json: images beside annotations/
        root = root.parent
    idx = index_images(root)
    records = []
    for jf in files:
        try:
            d = json.loads(jf.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as e:
            raise ClipCEError(f"{jf}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}). Fix or remove the file.") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ClipCEError(f"{jf}: cannot be read ({e}).") from None
        if not isinstance(d, dict) or not all(
            isinstance(d.get(k), list) for k in ("images", "annotations", "categories")
        ):
            if source.is_dir() and isinstance(d, dict) and "images" not in d:
                continue  # some other JSON in the folder
            raise ClipCEError(f"{jf}: a COCO file needs 'images', 'annotations' and 'categories' lists.")
        split = split_of_filename(jf.stem) if len(files) > 1 or split_of_filename(jf.stem) else None
        cats = {}
        for c in d["categories"]:
            if not isinstance(c, dict) or "id" not in c or "name" not in c:
                raise ClipCEError(f"{jf}: category {c!r} needs 'id' and 'name'.")
            cats[c["id"]] = str(c["name"]).strip()
        for _, name in sorted(cats.items(), key=lambda kv: str(kv[0]).zfill(12)):
            if name not in report.categories:
                report.categories.append(name)
        by_id: dict[Any, Record] = {}
        for im in d["images"]:
            if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
                report.add("image entry without id or file_name", str(jf), repr(im)[:80])
                continue
            fn = str(im["file_name"])
            cands = [jf.parent / fn, root / fn, root / "images" / fn, jf.parent.parent / "images" / fn]
            if split:
                cands += [root / split / fn, root / "images" / split / fn]
            rec = Record(
                src=find_image(fn, idx, *cands), key=image_key(fn), where=f"{jf} image id {im['id']}", split=split
            )
            by_id[im["id"]] = rec
            records.append(rec)
        for n, a in enumerate(d["annotations"]):
            where = f"{jf} annotation #{n} (id {a.get('id') if isinstance(a, dict) else '?'})"
            if not isinstance(a, dict) or a.get("image_id") not in by_id:
                report.add("annotation of an unknown image_id", where)
                continue
            if a.get("category_id") not in cats:
                report.add("annotation of an unknown category_id", where, f"category_id={a.get('category_id')!r}")
                continue
            b = a.get("bbox")
            if not (isinstance(b, (list, tuple)) and len(b) == 4 and all(is_finite_number(v) for v in b)):
                report.add("annotation without a numeric bbox [x, y, w, h]", where, repr(b)[:60])
                continue
            box = (float(b[0]), float(b[1]), float(b[0] + b[2]), float(b[1] + b[3]))
            by_id[a["image_id"]].objects.append(
                Obj(cats[a["category_id"]], box, where, ignore=bool(a.get("iscrowd", 0)))
            )
    if not records:
        raise ClipCEError(f"No COCO instances file with images under {source}.")
    return records


READERS = {"voc": read_voc, "exdark": read_exdark, "coco": read_coco}


# ----------------------------------------------------------------------------------------- classes
def class_mapping(
    fmt: str, names: Any, records: list[Record], categories: list[str] = ()
) -> tuple[list[str], dict[str, int | None]]:
    """Resolve `names=` into (target class names, {source name: target index or None to drop}).

    names=None: the format's classes (RTTS's 5 for voc, ExDark's 12) or, for coco, the files' categories.
    names=[a, b]: the target classes, in order. names={src: dst}: rename (dst None drops the class) and keep
    the other default classes; with the key '*' (applies to every source class not listed) the mapping's
    values are the whole class list. Unknown source classes are an error listing them.
    """
    seen = Counter(o.name for r in records for o in r.objects)
    defaults = default_classes(fmt, records, categories)
    if isinstance(names, dict):
        mapping = {str(k): (None if v in (None, "") else str(v)) for k, v in names.items()}
        targets = mapped_targets(mapping, defaults)
    else:
        targets, mapping = [str(n) for n in (defaults if names is None else names)], {}
    lower = {t.lower(): i for i, t in enumerate(targets)}
    result, unknown = {}, {}
    for src, count in seen.items():
        dst = mapping[src] if src in mapping else mapping.get("*", src) if "*" in mapping else src
        if dst is None:
            result[src] = None
        elif dst.lower() in lower:
            result[src] = lower[dst.lower()]
        else:
            unknown[src] = count
    if unknown:
        listed = ", ".join(f"'{k}' ({v} objects)" for k, v in sorted(unknown.items(), key=lambda kv: -kv[1]))
        raise ClipCEError(
            f"Class names not in the target classes {targets}: {listed}.\n"
            + unknown_class_hint(list(unknown), targets, names)
        )
    return targets, result


def default_classes(fmt: str, records: list[Record], categories: list[str]) -> list[str]:
    """The classes names=None gives: the format's own, or for coco the files' categories (else the names used)."""
    if fmt == "coco":
        return list(categories) or list(dict.fromkeys(o.name for r in records for o in r.objects))
    return list(DEFAULT_NAMES[fmt])


def mapped_targets(mapping: dict[str, str | None], defaults: list[str]) -> list[str]:
    """Target classes of names={src: dst}. Without '*' the mapping edits the default list (a renamed class keeps its
    place, a dropped one leaves it, a new name is appended), so {'Truck': None} drops only Truck."""
    if "*" in mapping:
        values = mapping.values()
    else:
        values = [mapping.get(d, d) for d in defaults] + list(mapping.values())
    firsts: dict[
        str, str
    ] = {}  # lower-cased -> first spelling: 'car' and 'Car' are one class (matched case-insensitively)
    for v in values:
        if v is not None:
            firsts.setdefault(v.lower(), v)
    return list(firsts.values())


def unknown_class_hint(unknown: list[str], targets: list[str], names: Any) -> str:
    """How to fix unknown classes without losing the others: drop or map just those (or, for a list, keep only it)."""
    if isinstance(names, (list, tuple)):
        keep = {t: t for t in targets} | {"*": None}
        return f'Add them to names=[...], or keep only the listed classes and drop the rest with names="{keep}".'
    given = names if isinstance(names, dict) else {}  # the user's own renames stay in the suggestion
    shown = unknown[:2]
    hint = f'Drop them with names="{given | dict.fromkeys(shown)}"'
    if targets:
        lower = {t.lower(): t for t in targets}
        closest = [
            lower[m[0]] if (m := difflib.get_close_matches(k.lower(), list(lower), n=1)) else targets[0] for k in shown
        ]
        hint += f' or count them as one of the target classes, e.g. names="{given | dict(zip(shown, closest))}"'
    return hint + "; the other classes stay as they are. Or give the full class list, e.g. names=[...]."


# ----------------------------------------------------------------------------------------- splits
def read_split_lists(split: str | None, fmt: str, source: Path) -> dict[str, str] | None:
    """{image key (stem): split} from the user's split files, or the ones that ship with the dataset."""
    cand = Path(split) if split and split not in SPLITS else None
    if cand is not None and not cand.exists():
        raise ClipCEError(
            f"split={split}: no such file or folder. Pass a split list (ExDark imageclasslist.txt) or a folder with train.txt/val.txt."
        )
    if fmt == "exdark":
        f = cand if cand and cand.is_file() else next(iter(sorted((cand or source).rglob("imageclasslist*.txt"))), None)
        if f is None:
            return None
        out = {}
        for n, line in enumerate(f.read_text(encoding="utf-8-sig").splitlines(), 1):
            parts = line.rsplit(None, 4)  # the name may hold spaces; the 4 codes after it do not
            if len(parts) == 5 and parts[-1] in EXDARK_SPLIT_CODES:
                out[image_key(parts[0].strip())] = EXDARK_SPLIT_CODES[parts[-1]]
            elif parts and n > 1:
                raise ClipCEError(
                    f"{f}:{n}: expected 'Name Class Light In/Out Train/Val/Test(1/2/3)', got '{line.strip()}'."
                )
        return out
    folder = cand if cand and cand.is_dir() else (cand.parent if cand else None)
    folders = (
        [folder]
        if folder
        else [p.parent for p in sorted(source.rglob("train.txt"))]
        + [p.parent for p in sorted(source.rglob("trainval.txt"))]
    )
    for d in folders:
        for names in (("train", "val", "test"), ("trainval", "test", None)):
            files = {s: d / f"{n}.txt" for s, n in zip(("train", "val", "test"), names) if n}
            if files["train"].is_file() and files["val"].is_file():
                out = {}
                for s, f in files.items():
                    if f.is_file():  # one name per line: names may contain spaces
                        for name in filter(
                            None, (line.strip() for line in f.read_text(encoding="utf-8-sig").splitlines())
                        ):
                            out.setdefault(image_key(name), s)
                return out
    if cand is not None:
        raise ClipCEError(f"split={split}: expected train.txt and val.txt (or trainval.txt and test.txt) in {folder}.")
    return None


def check_val_fraction(val_fraction: float) -> None:
    if not 0 <= val_fraction <= 1:
        raise ClipCEError(
            f"val_fraction={val_fraction}: must be between 0 and 1 (the share of images held out for validation, "
            "e.g. 0.2; 1 puts every image in images/val for an evaluation-only set)."
        )


def seeded_split(keys: list[str], val_fraction: float, seed: int) -> dict[str, str]:
    """Deterministic train/val split: sorted keys shuffled with `seed`, the first val_fraction to val.

    val_fraction is in [0, 1]. The ends make a one-split set and are warned about when the YAML is written:
    0 sends every image to train (val: then points at train too), 1 every image to val, for a set used for
    evaluation only, such as RTTS as a test set (train: then points at val, since Ultralytics needs the key).
    A fraction strictly between keeps at least one image on each side, so rounding on a small set does not
    silently leave val or train empty.
    """
    check_val_fraction(val_fraction)
    order = sorted(set(keys))
    random.Random(seed).shuffle(order)
    n_val = round(len(order) * val_fraction)
    if 0 < val_fraction < 1 and len(order) > 1:
        n_val = min(max(n_val, 1), len(order) - 1)
    return {k: ("val" if i < n_val else "train") for i, k in enumerate(order)}


# ----------------------------------------------------------------------------------------- images
def order_box(box) -> tuple[tuple[float, float, float, float], bool]:
    """(x1, y1, x2, y2) with x1 <= x2 and y1 <= y2, and whether corners had to be swapped (a negative COCO w/h,
    VOC xmin > xmax): kept and reported, like a clipped box, since the swapped box is the one the numbers span."""
    x1, y1, x2, y2 = box
    ordered = (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
    return ordered, ordered != (x1, y1, x2, y2)


def clip_box(box, w: int, h: int) -> tuple[tuple[float, float, float, float] | None, bool]:
    """Clip an ordered (x1, y1, x2, y2) to the image; returns (box or None if nothing is left, whether it was clipped)."""
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
    shutil.copy2(src, dst)


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
) -> Path:
    """Convert a VOC/ExDark/COCO dataset into YOLO layout plus COCO JSON; return the dataset YAML path."""
    from tqdm import tqdm

    if fmt not in FORMATS:
        raise ClipCEError(
            f"format={fmt} is not a convert format. Use format=voc (RTTS), format=exdark or format=coco (RUOD, URPC2020/DUO, COCO)."
        )
    source, out = Path(source), Path(out)
    if not source.exists():
        raise ClipCEError(f"source={source} does not exist.")
    check_out(source, out)  # everything up to clear_out only reads: a failed rerun leaves the last conversion intact
    report = Report()
    records = READERS[fmt](source, report)
    targets, cmap = class_mapping(fmt, names, records, report.categories)

    lists = read_split_lists(split if isinstance(split, str) else None, fmt, source)
    if lists is not None:
        split_note = "split files"
        for r in records:
            r.split = r.split or lists.get(r.key)
            if r.split is None:
                report.add("image not in the split files", r.where, r.key)
        records = [r for r in records if r.split]
    elif all(r.split for r in records) and len({r.split for r in records}) > 1:
        split_note = "annotation files per split"
    else:  # drawn below, among the usable images only (a missing file must not take a val place)
        split_note = f"seeded split (seed={seed}, val_fraction={val_fraction})"
        check_val_fraction(val_fraction)  # before the images are read

    # Check every image (threads: PIL releases the GIL while decoding headers).
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
            good.append(r)
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
    (out / MARKER).write_text(json.dumps({"format": fmt, "source": str(source.resolve())}))
    coco = {
        s: {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(targets)]}
        for s in SPLITS
    }
    used: dict[str, set[str]] = defaultdict(set)
    per_class: dict[str, Counter] = defaultdict(Counter)
    n_images, n_empty, ann_id = Counter(), Counter(), 0
    seen_src: set[Path] = set()
    for r in tqdm(
        sorted(good, key=lambda r: (r.split, str(r.src))), desc=f"Writing {out}", disable=not progress, unit="img"
    ):
        if r.src.resolve() in seen_src:
            report.add("image annotated twice (second annotation ignored)", r.where, str(r.src))
            continue
        seen_src.add(r.src.resolve())
        w, h = r.size
        name = unique_name(r.src, used[r.split])
        if name != r.src.name:
            reason = "image renamed (an earlier image in the split has its stem, so its label file)"
            report.add(reason, str(r.src), f"images/{r.split}/{name}")
        place_image(r.src, out / "images" / r.split / name, link)
        img_id = len(coco[r.split]["images"]) + 1
        coco[r.split]["images"].append({"id": img_id, "file_name": name, "width": w, "height": h})
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
            ann_id += 1
            coco[r.split]["annotations"].append(
                {
                    "id": ann_id,
                    "image_id": img_id,
                    "category_id": c + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": int(ignore),
                }
            )
            if ignore:
                report.add(
                    "difficult object (left out of labels, ignored by COCO eval)"
                    if fmt == "voc"
                    else "crowd annotation (ignored)",
                    o.where,
                )
                continue
            lines.append(f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
            per_class[r.split][targets[c]] += 1
        lb = out / "labels" / r.split / f"{Path(name).stem}.txt"
        lb.parent.mkdir(parents=True, exist_ok=True)
        lb.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
        n_images[r.split] += 1
        n_empty[r.split] += not lines

    splits = [s for s in SPLITS if n_images[s]]  # not empty: every usable image was written once
    (out / "annotations").mkdir(exist_ok=True)
    for s in splits:
        (out / "annotations" / f"instances_{s}.json").write_text(
            json.dumps(coco[s], ensure_ascii=False), encoding="utf-8"
        )
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
    yaml_path.write_text(
        f"# made by 'clipce-rtdetr convert format={fmt}'\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )
    warnings = split_warnings(n_images, val)
    summary = format_summary(splits, targets, n_images, n_empty, per_class, report, split_note, warnings)
    (out / "convert_report.txt").write_text(
        summary + "\n\nDetails:\n" + "\n".join(report.details) + "\n", encoding="utf-8"
    )
    (out / "convert_summary.json").write_text(
        json.dumps(
            {
                "images": dict(n_images),
                "images_without_objects": dict(n_empty),
                "objects": {s: dict(per_class[s]) for s in splits},
                "skipped": dict(report.skipped),
                "split": split_note,
                "warnings": warnings,
            },
            indent=2,
        )
    )
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
            f"convert needs {', '.join(f'{k}=' for k in missing)}, e.g. 'clipce-rtdetr convert format=voc source=path/to/RTTS out=path/to/rtts-yolo'."
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
    )
