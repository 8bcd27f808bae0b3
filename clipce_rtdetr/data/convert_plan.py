"""convert's plan: which class each source name becomes (`names=`), and which split each image goes to."""

from __future__ import annotations

import difflib
import random
from collections import Counter
from pathlib import Path
from typing import Any

from clipce_rtdetr.data.convert_readers import SPLITS, Record, image_key
from clipce_rtdetr.data.dataset import walk_files
from clipce_rtdetr.errors import ClipCEError

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
EXDARK_SPLIT_CODES = {"1": "train", "2": "val", "3": "test"}


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
            f"split={split}: no such file or folder. "
            "Pass a split list (ExDark imageclasslist.txt) or a folder with train.txt/val.txt."
        )
    if fmt == "exdark":
        folder = cand or source
        lists = (
            [p for p in walk_files(folder) if p.name.startswith("imageclasslist") and p.suffix == ".txt"]
            if folder.is_dir()
            else []
        )
        f = cand if cand and cand.is_file() else next(iter(lists), None)
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
        else [p.parent for name in ("train.txt", "trainval.txt") for p in walk_files(source) if p.name == name]
        if source.is_dir()
        else []
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
