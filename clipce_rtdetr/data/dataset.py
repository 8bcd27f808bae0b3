"""Dataset resolution and checks: built-in names, dataset YAMLs, label files.

Why: Ultralytics drops a bad label file with a one-line warning and runs `download:` scripts (Python
executed with `exec`) when data is missing. Here a user gets every bad line named (file:line) before
training, and a missing dataset is an error unless `allow_download=True`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from clipce_rtdetr import atomic
from clipce_rtdetr.data import hazy_shapes
from clipce_rtdetr.data.data_root import dataset_root, yaml_for_ultralytics
from clipce_rtdetr.errors import ClipCEError
from clipce_rtdetr.paths import DATASETS_DIR

IMG_SUFFIXES = {".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm", ".heic"}
MAX_LISTED = 10
SCAN_VERSION = 2  # part of the label-scan cache key: bump when the scan's rules change (2: Ultralytics 8.4.190's)
# Formats PIL cannot verify without plugins: left to Ultralytics.
NO_VERIFY = {".heic", ".heif", ".pfm"}
HEIF_SUFFIXES = (".heic", ".heif")  # PIL reads these only with the pi_heif plugin


def resolve_data(
    data: str | Path | None,
    allow_download: bool = False,
    check_labels: bool = True,
    splits: tuple[str, ...] = ("train", "val"),
    for_ultralytics: bool = True,
) -> str:
    """Return a dataset YAML path Ultralytics can use, generating hazy-shapes if asked for it (`for_ultralytics`
    False: the user's own YAML even where Ultralytics needs a copy with its relative `path:` resolved)."""
    if hazy_shapes.is_builtin(data):
        return str(hazy_shapes.generate(recipe=hazy_shapes.builtin_recipe(data)))
    p = Path(data)
    if not p.exists() and (DATASETS_DIR / p.name).exists() and p.parent == Path("."):
        p = DATASETS_DIR / p.name
    if not p.exists():
        tried = [str(Path(data).resolve()), str(DATASETS_DIR / Path(data).name)]
        raise ClipCEError(
            f"Dataset '{data}' not found. Tried: {', '.join(tried)}.\n"
            "Pass a dataset YAML path (data=path/to/data.yaml), data=hazy-shapes for the built-in demo, "
            f"or one of the YAMLs in {DATASETS_DIR} (see datasets/README.md for how to get each dataset)."
        )
    if p.suffix not in (".yaml", ".yml"):
        return str(p)  # a folder or other source: Ultralytics decides (e.g. classification layouts)
    cfg = load_data_yaml(p)
    missing = missing_splits(cfg, p, splits)  # val/predict need only the val split, as in Ultralytics
    if missing:
        if cfg.get("download") and allow_download:
            return str(p)  # the user asked for the download script to run
        msg = f"Dataset YAML {p}: paths do not exist: {', '.join(missing)}."
        if cfg.get("download"):
            msg += (
                "\nIt has a `download:` entry, which is not run by default (it may execute Python code or "
                "fetch from the internet). Get the data yourself (see datasets/README.md), or pass allow_download=True."
            )
        else:
            msg += "\nFix `path:`/`train:`/`val:` in the YAML, or convert the data with 'clipce-rtdetr convert'."
        raise ClipCEError(msg)
    check_splits_have_images(cfg, p, splits)  # before a run folder exists: Ultralytics names no reason
    if check_labels:
        checked_scan(cfg, p, splits)
    # Ultralytics must read the same dataset folder as the checks above
    return str(yaml_for_ultralytics(p, cfg)) if for_ultralytics else str(p)


def check_clip_first(overrides: dict[str, Any], data: Any, spec: str) -> None:
    """clip= read before data= is generated or scanned, as train reads it: a missing, damaged or wrong weights file is
    reported at once, not after a scan of the dataset. A built-in dataset without clip= brings its committed demo
    CLIP (resolve_run_data), so there is nothing to check yet."""
    from clipce_rtdetr.clip.loader import check_clip_weights, require_weights

    if "clip" in overrides:
        require_weights(spec)
    elif hazy_shapes.is_builtin(data):
        return
    check_clip_weights(spec)


def resolve_run_data(kwargs: dict[str, Any], needs_clip: bool, **resolve_kwargs) -> dict[str, Any]:
    """`kwargs` with data= resolved to a dataset YAML and, when the run scores with CLIP but no clip= is given,
    clip= set to the dataset's own CLIP if it has one (the built-in demo brings its demo CLIP, since the default
    clip=ViT-B-32:openai has no weights offline)."""
    out = dict(kwargs)
    if needs_clip and "clip" not in kwargs and hazy_shapes.is_builtin(kwargs.get("data")):
        out["clip"] = hazy_shapes.demo_clip_spec()
    out["data"] = resolve_data(kwargs.get("data"), **resolve_kwargs)
    return out


def checked_scan(cfg: dict[str, Any], yaml_path: Path, splits: tuple[str, ...]) -> None:
    """Scan labels and images and report problems. The result is kept under $CLIPCE_HOME/label-scans keyed by the
    files' sizes and mtimes (the hash Ultralytics' label cache uses), so a big dataset is read once, not every run."""
    import hashlib
    import json

    from ultralytics.data.utils import get_hash

    from clipce_rtdetr.paths import home

    files = [str(f) for s in splits for src in split_paths(cfg, yaml_path, s) for f in image_files(src)]
    files += [str(label_file(Path(f))) for f in files]
    ident = f"{SCAN_VERSION}|{yaml_path.resolve()}|{splits}|{class_count(cfg)}|{get_hash(files)}"
    key = hashlib.sha256(ident.encode()).hexdigest()
    marker = home() / "label-scans" / f"{key[:32]}.json"
    try:
        report = json.loads(marker.read_text())["report"]  # unchanged files: the problems found last time
    except (OSError, ValueError, KeyError):
        report = scan_labels(cfg, yaml_path, splits)
    n_img = len(files) // 2
    if n_img and len(report["missing"]) == n_img:
        raise ClipCEError(
            f"No label files found for any of the {n_img} images of {yaml_path}. Labels are looked up by replacing "
            f"/images/ with /labels/ in each image path, e.g. {report['missing'][0]}. Fix the layout or convert the "
            "data with 'clipce-rtdetr convert'."
        )
    report_label_problems(report)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(marker, json.dumps({"yaml": str(yaml_path), "splits": list(splits), "report": report}))
    except OSError:
        pass


def load_data_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            cfg = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ClipCEError(f"Dataset YAML {path} is not valid YAML: {e}") from None
    if not isinstance(cfg, dict) or "names" not in cfg and "nc" not in cfg:
        raise ClipCEError(f"Dataset YAML {path} must be a mapping with 'names' (and 'train', 'val').")
    for key in ("train", "val"):
        if key not in cfg:
            raise ClipCEError(f"Dataset YAML {path} has no '{key}:' entry.")
    check_names(cfg, path)
    return cfg


def check_names(cfg: dict[str, Any], path: Path) -> None:
    """The class names as Ultralytics needs them (it stops on these deep inside training, with a traceback)."""
    names = cfg.get("names")
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise ClipCEError(
                f"Dataset YAML {path}: 'names' keys must be class ids 0, 1, 2, ... (got {list(names)[:6]})."
            ) from None
        if ids != list(range(len(ids))):
            raise ClipCEError(
                f"Dataset YAML {path}: 'names' ids must run 0..{len(ids) - 1} without gaps (got {ids[:10]}); "
                "Ultralytics numbers classes by position. Renumber the names and the label files' class ids."
            )
    elif names is not None and not isinstance(names, list):
        raise ClipCEError(
            f"Dataset YAML {path}: 'names' must be a list or an id -> name mapping, not {type(names).__name__}."
        )
    if names is not None and "nc" in cfg and cfg["nc"] is not None and int(cfg["nc"]) != len(names):
        raise ClipCEError(
            f"Dataset YAML {path}: nc: {cfg['nc']} but {len(names)} names; remove nc: or make them agree."
        )


def split_paths(cfg: dict[str, Any], yaml_path: Path, split: str) -> list[Path]:
    root = dataset_root(cfg, yaml_path)
    entries = cfg.get(split) or []
    entries = entries if isinstance(entries, list) else [entries]
    return [(root / e) if not Path(e).is_absolute() else Path(e) for e in entries]


def missing_splits(cfg: dict[str, Any], yaml_path: Path, splits: tuple[str, ...] = ("train", "val")) -> list[str]:
    return [str(p) for s in splits for p in split_paths(cfg, yaml_path, s) if not p.exists()]


def class_count(cfg: dict[str, Any]) -> int:
    names = cfg.get("names")
    return len(names) if names is not None else int(cfg["nc"])


def check_splits_have_images(cfg: dict[str, Any], yaml_path: Path, splits: tuple[str, ...]) -> None:
    """Every split entry lists at least one image (a quick look at a folder's own files first; the full walk only
    when that finds none, e.g. images in subfolders)."""
    for split in splits:
        for entry in split_paths(cfg, yaml_path, split):
            if entry.is_dir() and any(
                e.is_file() and e.name[:1] != "." and Path(e.name).suffix.lower() in IMG_SUFFIXES
                for e in os.scandir(entry)
            ):
                continue
            if image_files(entry):
                continue
            what = "lists no images" if entry.suffix == ".txt" else "is empty"
            others = walk_files(entry) if entry.is_dir() else []
            if others:
                what = f"has no images ({len(others)} other files, e.g. {others[0].name}; images end in .jpg, .png...)"
            raise ClipCEError(
                f"Dataset YAML {yaml_path}: the {split} split {entry} {what}. Put the {split} images there, or point "
                f"'{split}:' at a folder that has them. Nothing was written."
            )


def image_files(src: Path) -> list[Path]:
    """The images of one split entry as Ultralytics lists them: a folder walked recursively (linked folders followed,
    hidden names skipped, as its glob does; a link loop is an error), a list file, or one image."""
    if src.is_dir():
        return [p for p in walk_files(src) if p.suffix.lower() in IMG_SUFFIXES]
    if src.suffix == ".txt":  # list file, paths relative to its parent
        lines = [x.strip() for x in src.read_text(encoding="utf-8-sig").splitlines() if x.strip()]
        # normpath, not resolve(): a linked image (convert links by default) keeps its place in the dataset tree
        return [Path(os.path.normpath(src.parent / x)) if not Path(x).is_absolute() else Path(x) for x in lines]
    return [src]


def walk_files(root: Path, hidden: bool = False) -> list[Path]:
    """Every file under `root`, sorted, following linked folders (as Ultralytics' and glob's '**' do) but refusing a
    link that leads back into a folder above it: glob would list every image again under loop/loop/... (about 40
    levels, until the OS gives up) and train on those copies as label-less background images."""
    files: list[Path] = []
    stack = [(Path(root), (os.path.realpath(root),))]
    while stack:
        folder, above = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            raise ClipCEError(f"{folder}: cannot be listed ({e.strerror or e}).") from None
        for e in entries:
            if e.name.startswith(".") and not hidden:
                continue
            path = folder / e.name
            if not e.is_dir():  # follows links: a link to a file counts as the file, a broken link as nothing
                if e.is_file():
                    files.append(path)
                continue
            real = os.path.realpath(path)
            if any(a == real or a.startswith(real.rstrip(os.sep) + os.sep) for a in above):
                raise ClipCEError(
                    f"{path} is a symbolic link to {real}, a folder that contains it: the folder is a loop, and "
                    "Ultralytics would list every image again under each repetition (as background images without "
                    "labels). Remove the link, or point it outside the dataset folder it is in."
                )
            stack.append((path, (*above, real)))
    return sorted(files, key=str)


def relative_to_root(im: str | Path, root: str | Path) -> str | None:
    """`im`'s path inside the dataset folder `root` (posix, as degradation records store it), or None when it is
    not under it. Lexical first (a linked file keeps its place in the tree), then with both sides' links resolved."""
    for resolve in (os.path.abspath, os.path.realpath):  # realpath (a syscall per path part) only when needed
        rel = os.path.relpath(resolve(im), resolve(root))  # "." for the root itself
        if rel != os.pardir and not rel.startswith(os.pardir + os.sep) and not os.path.isabs(rel):
            return Path(rel).as_posix()
    return None


def read_degradation(csv_path: str | Path) -> dict[str, dict[str, str]]:
    """A degradation record (degrade's degradation.csv, hazy-shapes' haze.csv) as {im_file: row}; im_file is the
    image's path inside the dataset folder, so images of the same name in different splits stay apart."""
    import csv

    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ClipCEError(f"Degradation record {csv_path} cannot be read ({type(e).__name__}: {e}).") from None
    if rows and "im_file" not in rows[0]:
        raise ClipCEError(f"Degradation record {csv_path} has no 'im_file' column (columns: {', '.join(rows[0])}).")
    return {Path(r["im_file"]).as_posix(): r for r in rows}


def label_file(img: Path) -> Path:
    from ultralytics.data.utils import img2label_paths

    return Path(img2label_paths([str(img)])[0])


def check_image_file(img: Path) -> str | None:
    """None if `img` opens as an image, else a message naming it (Ultralytics itself would only say "No module
    named 'pi_heif'", see image_size)."""
    if img.suffix.lower() in NO_VERIFY:
        return None
    why = image_size(img)
    return (
        f"{img}: not a readable image ({why}). Replace or delete it; Ultralytics skips it."
        if isinstance(why, str)
        else None
    )


def image_size(path: Path) -> tuple[int, int] | str:
    """(w, h) of a readable image (EXIF orientation applied, as Ultralytics does), or why it is unusable.

    Opens with PIL's own Image.open: Ultralytics' patched one retries every unreadable file with the pi_heif
    plugin (installing it), which turns "not an image" into "No module named 'pi_heif'". HEIF files do need
    that plugin, so they alone go through the patched open.
    """
    from PIL import Image, UnidentifiedImageError
    from ultralytics.data.utils import exif_size

    try:
        from ultralytics.utils.patches import _image_open as plain_open
    except ImportError:  # pragma: no cover - other Ultralytics releases
        plain_open = Image.open
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with (Image.open if path.suffix.lower() in HEIF_SUFFIXES else plain_open)(path) as im:
            im.verify()
            size = exif_size(im)
    except UnidentifiedImageError:
        return "not an image (PIL does not recognise the format)"
    except Exception as e:  # PIL raises many types for damaged files
        return f"damaged image ({type(e).__name__}: {e})"
    if min(size) < 1:
        return "image has zero size"
    return size


SKIPS = "Ultralytics skips the whole image"
COORD_TOLERANCE = 0.01  # Ultralytics' verify_image_label accepts coordinates up to 1.01 and down to -0.01


def parse_label_line(parts: list[str]) -> np.ndarray | str:
    """The numbers of one label line as Ultralytics reads them (float32: 'nan', 'inf' and 1e39 parse, to non-finite
    values), or why they cannot be read."""
    try:
        with np.errstate(over="ignore"):
            values = np.array(parts, dtype=np.float32)
    except ValueError:
        return "non-numeric field"
    if not np.isfinite(values).all():
        bad = next(p for p, v in zip(parts, values) if not np.isfinite(v))
        return f"'{bad}' is not a finite number"
    return values


def check_label_line(values: np.ndarray, parts: list[str], nc: int, loc: str) -> tuple[list[str], list[str]]:
    """One parsed line (5 fields, or a polygon, checked as the box around it as Ultralytics does) against
    verify_image_label's rules: (errors, warnings)."""
    errors, warnings = [], []
    c = values[0]
    if c != int(c) or not 0 <= c < nc:
        errors.append(
            f"{loc}: class id {parts[0]} out of range; the dataset has {nc} classes (ids 0-{nc - 1}). "
            f"Fix the id or the YAML's names ({SKIPS})."
        )
    if len(parts) == 5:
        box = values[1:]
    else:  # ultralytics.utils.ops.segments2boxes: the polygon's box as x_center y_center width height
        xy = values[1:].reshape(-1, 2)
        lo, hi = xy.min(0), xy.max(0)
        box = np.concatenate([(lo + hi) / 2, hi - lo])
    if box.max() > 1 + COORD_TOLERANCE:
        errors.append(f"{loc}: coordinates outside [0, 1] (labels must be normalised by image width/height; {SKIPS})")
    if box[2] <= 0 or box[3] <= 0:
        why = SKIPS if min(box[2], box[3]) < 0 or box.min() < -COORD_TOLERANCE else "Ultralytics keeps a degenerate box"
        errors.append(
            f"{loc}: box width/height must be > 0, got w={parts[3]} h={parts[4]}. "
            f"Remove the line or fix the box ({why})."
        )
    elif box.min() < -COORD_TOLERANCE:
        errors.append(f"{loc}: negative value in '{' '.join(parts)}' ({SKIPS})")
    elif box.min() < 0:
        warnings.append(f"{loc}: slightly negative coordinate (within Ultralytics' tolerance of -0.01: kept)")
    return errors, warnings


def check_label_text(text: str, nc: int, where: str) -> tuple[list[str], list[str]]:
    """Check the lines of one YOLO label file (its text read as UTF-8 with or without a byte-order mark, as
    Ultralytics reads it). Returns (errors, warnings), each naming file:line; an error that makes Ultralytics drop
    the whole image says so."""
    errors, warnings, kinds = [], [], set()
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        loc = f"{where}:{n}"
        if len(parts) != 5 and (len(parts) < 7 or len(parts) % 2 == 0):
            errors.append(
                f"{loc}: expected 5 fields 'class x_center y_center width height', got {len(parts)}: "
                f"'{line.strip()}' ({SKIPS})"
            )
            continue
        kind = "box" if len(parts) == 5 else "polygon"
        if kinds and kind not in kinds:
            errors.append(
                f"{loc}: a {kind} line in a file of {kinds.pop()} lines ({SKIPS}: it reads one kind per file)"
            )
        kinds.add(kind)
        values = parse_label_line(parts)
        if isinstance(values, str):
            errors.append(f"{loc}: {values} in '{line.strip()}' ({SKIPS})")
            continue
        e, w = check_label_line(values, parts, nc, loc)
        errors += e
        warnings += w
    return errors, warnings


def scan_labels(
    cfg: dict[str, Any], yaml_path: Path, splits: tuple[str, ...] = ("train", "val")
) -> dict[str, list[str]]:
    """Scan every image and label file of the given splits.

    Returns {'errors', 'warnings', 'empty', 'missing', 'corrupt'}, each a list of messages or paths.
    """
    nc = class_count(cfg)
    report: dict[str, list[str]] = {"errors": [], "warnings": [], "empty": [], "missing": [], "corrupt": []}
    for split in splits:
        for src in split_paths(cfg, yaml_path, split):
            for img in image_files(src):
                bad = check_image_file(img)
                if bad:
                    report["corrupt"].append(bad)
                    continue
                lb = label_file(img)
                if not lb.exists():
                    report["missing"].append(str(lb))
                    continue
                try:
                    text = lb.read_text(encoding="utf-8-sig")  # Ultralytics reads a byte-order mark as nothing
                except (OSError, UnicodeDecodeError) as e:
                    report["errors"].append(f"{lb}: cannot be read ({e})")
                    continue
                if not text.strip():
                    report["empty"].append(str(lb))
                    continue
                e, w = check_label_text(text, nc, str(lb))
                report["errors"] += e
                report["warnings"] += w
    return report


def report_label_problems(report: dict[str, list[str]], strict: bool = False) -> None:
    from ultralytics.utils import LOGGER

    def listed(items):
        more = f"\n  ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
        return "\n  " + "\n  ".join(items[:MAX_LISTED]) + more

    if report["warnings"]:
        LOGGER.warning(f"{len(report['warnings'])} label lines look wrong:{listed(report['warnings'])}")
    if report["empty"]:
        LOGGER.info(f"{len(report['empty'])} label files are empty; their images are used as background (no objects).")
    if report["missing"]:
        LOGGER.info(
            f"{len(report['missing'])} images have no label file; they are used as background. "
            f"First: {report['missing'][0]}"
        )
    msgs = []
    if report.get("corrupt"):
        msgs.append(f"{len(report['corrupt'])} images cannot be read and are skipped:{listed(report['corrupt'])}")
    if report["errors"]:
        msgs.append(
            f"{len(report['errors'])} label problems found. Ultralytics skips an image whose label file has a wrong "
            "field count, a non-numeric or non-finite (nan, inf) value, a class id out of range, a coordinate above "
            "1.01 or a negative value, and keeps zero-size boxes as degenerate targets; each line below says which. "
            f"Fix them:{listed(report['errors'])}"
        )
    for msg in msgs:
        if strict:
            raise ClipCEError("\n".join(msgs))
        LOGGER.warning(msg)
