"""convert's readers: VOC XML (RTTS), ExDark text files and COCO JSON into one list of image records.

Every object that cannot be read is counted on its image (`Record.unreadable`), so that convert can leave such an
image out instead of writing it as if the object were background. Duplicate COCO image ids are refused: which
image an annotation belongs to is then ambiguous.
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipce_rtdetr.data.dataset import IMG_SUFFIXES, walk_files
from clipce_rtdetr.errors import ClipCEError

SPLITS = ("train", "val", "test")
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
    declared_size: tuple[int, int] | None = None  # (w, h) the annotation says (VOC <size>), when it says
    unreadable: list[str] = field(default_factory=list)  # where each object that could not be read is


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
    for p in walk_files(root):
        if p.suffix.lower() in IMG_SUFFIXES:
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
    ids, and an id may hold a dot ('img.v2'), so only a known image suffix is dropped (Path.stem would cut it to
    'img')."""
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


def files_with_suffix(source: Path, suffix: str) -> list[Path]:
    """The files under source ending in `suffix` (linked folders followed, a link loop refused: see walk_files)."""
    return [p for p in walk_files(source) if p.name.lower().endswith(suffix)]


def is_finite_number(v: Any) -> bool:
    """A JSON number usable as a coordinate (json.loads turns NaN/Infinity into floats; true/false are not numbers)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ----------------------------------------------------------------------------------------- readers
def _voc_size(root) -> tuple[int, int] | None:
    """<size><width>/<height> when both are positive whole numbers (0 or absent: many tools leave it out)."""
    try:
        w, h = (int(float(root.findtext(f"size/{k}") or 0)) for k in ("width", "height"))
    except ValueError:
        return None
    return (w, h) if w > 0 and h > 0 else None


def read_voc(source: Path, report: Report) -> list[Record]:
    """VOC XML (RTTS): every *.xml under source; images from <filename>, JPEGImages/ or by name."""
    xmls = files_with_suffix(source, ".xml")
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
        rec = Record(src=src, key=image_key(fname), where=str(x), declared_size=_voc_size(root))
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
                rec.unreadable.append(f"{x} object #{n}")
                continue
            difficult = (o.findtext("difficult") or "0").strip() in ("1", "true")
            rec.objects.append(Obj(name, box, f"{x} object #{n}", ignore=difficult))
        records.append(rec)
    return records


def read_exdark(source: Path, report: Report) -> list[Record]:
    """ExDark: per-image `<image name>.txt` files (first line `% bbGt version=3`), lines `class l t w h ...`."""
    idx = index_images(source)
    records = []
    for t in files_with_suffix(source, ".txt"):
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
                rec.unreadable.append(f"{t}:{n}")
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
    files = [source] if source.is_file() else files_with_suffix(source, ".json")
    files = [f for f in files if f.name != MARKER]
    if not files:
        raise ClipCEError(f"No .json annotation files under {source}. format=coco expects COCO instances JSON files.")
    root = source if source.is_dir() else source.parent
    if source.is_file() and root.name.lower().startswith("ann"):  # dataset/annotations/x.json: images beside it
        root = root.parent
    idx = index_images(root)
    records = []
    for jf in files:
        d = load_coco_json(jf, in_folder=source.is_dir())
        if d is None:
            continue  # some other JSON in the folder
        split = split_of_filename(jf.stem) if len(files) > 1 or split_of_filename(jf.stem) else None
        cats = coco_categories(d, jf, report)
        by_id = coco_images(d, jf, split, root, idx, report)
        records += by_id.values()
        for n, a in enumerate(d["annotations"]):
            add_coco_annotation(a, n, jf, by_id, cats, report)
    if not records:
        raise ClipCEError(f"No COCO instances file with images under {source}.")
    return records


def load_coco_json(jf: Path, in_folder: bool) -> dict[str, Any] | None:
    """A COCO instances file's content; None for another JSON met in a folder of files."""
    try:
        d = json.loads(jf.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise ClipCEError(f"{jf}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}). Fix or remove the file.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ClipCEError(f"{jf}: cannot be read ({e}).") from None
    if not isinstance(d, dict) or not all(isinstance(d.get(k), list) for k in ("images", "annotations", "categories")):
        if in_folder and isinstance(d, dict) and "images" not in d:
            return None
        raise ClipCEError(f"{jf}: a COCO file needs 'images', 'annotations' and 'categories' lists.")
    return d


def coco_categories(d: dict[str, Any], jf: Path, report: Report) -> dict[Any, str]:
    cats = {}
    for c in d["categories"]:
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise ClipCEError(f"{jf}: category {c!r} needs 'id' and 'name'.")
        cats[c["id"]] = str(c["name"]).strip()
    for _, name in sorted(cats.items(), key=lambda kv: str(kv[0]).zfill(12)):
        if name not in report.categories:
            report.categories.append(name)
    return cats


def coco_images(
    d: dict[str, Any], jf: Path, split: str | None, root: Path, idx: dict[str, list[Path]], report: Report
) -> dict[Any, Record]:
    """{image id: Record} of one COCO file. Two entries with one id are refused: the annotations name images by id
    alone, so which image each box belongs to cannot be told (the boxes would move to the wrong image)."""
    by_id: dict[Any, Record] = {}
    dup: dict[Any, list[str]] = defaultdict(list)
    first_name: dict[Any, str] = {}
    for im in d["images"]:
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            report.add("image entry without id or file_name", str(jf), repr(im)[:80])
            continue
        fn = str(im["file_name"])
        if not isinstance(im["id"], (int, str)):
            report.add("image entry without id or file_name", str(jf), f"id {im['id']!r} is not a number or text")
            continue
        if im["id"] in by_id:
            dup[im["id"]] += [first_name[im["id"]], fn] if not dup[im["id"]] else [fn]
            continue
        cands = [jf.parent / fn, root / fn, root / "images" / fn, jf.parent.parent / "images" / fn]
        if split:
            cands += [root / split / fn, root / "images" / split / fn]
        rec = Record(src=find_image(fn, idx, *cands), key=image_key(fn), where=f"{jf} image id {im['id']}", split=split)
        by_id[im["id"]], first_name[im["id"]] = rec, fn
    if dup:
        listed = "; ".join(f"id {i!r}: {', '.join(names)}" for i, names in list(dup.items())[:MAX_SHOWN])
        more = f" (and {len(dup) - MAX_SHOWN} more ids)" if len(dup) > MAX_SHOWN else ""
        raise ClipCEError(
            f"{jf}: {len(dup)} image ids are used by more than one image entry, so the annotations of those ids "
            f"cannot be told apart: {listed}{more}. Give every image its own id (and its annotations the right "
            "image_id), or remove the duplicate entries. Nothing was written."
        )
    return by_id


def add_coco_annotation(a: Any, n: int, jf: Path, by_id: dict[Any, Record], cats: dict[Any, str], report: Report):
    """One annotation onto its image's record; one that cannot be read is counted on its image."""
    where = f"{jf} annotation #{n} (id {a.get('id') if isinstance(a, dict) else '?'})"
    image_id = a.get("image_id") if isinstance(a, dict) else None
    rec = by_id.get(image_id) if isinstance(image_id, (int, str)) else None
    if rec is None:
        report.add("annotation of an unknown image_id", where)
        return
    if a.get("category_id") not in cats:
        report.add("annotation of an unknown category_id", where, f"category_id={a.get('category_id')!r}")
        rec.unreadable.append(where)
        return
    b = a.get("bbox")
    if not (isinstance(b, (list, tuple)) and len(b) == 4 and all(is_finite_number(v) for v in b)):
        report.add("annotation without a numeric bbox [x, y, w, h]", where, repr(b)[:60])
        rec.unreadable.append(where)
        return
    box = (float(b[0]), float(b[1]), float(b[0] + b[2]), float(b[1] + b[3]))
    rec.objects.append(Obj(cats[a["category_id"]], box, where, ignore=bool(a.get("iscrowd", 0))))


READERS = {"voc": read_voc, "exdark": read_exdark, "coco": read_coco}
