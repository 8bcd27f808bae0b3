"""Bring-your-own per-object weights: `clipce=table weights=path.csv` (and `clipce=table_fame`).

The table has the layout `clipce-rtdetr ame` writes (`ame.csv`): one row per ground-truth object of the train
split, `im_file` (the image; absolute, or relative to the table's folder), `index` (the object's row among its
image's labels, as Ultralytics reads them) and `w` (the weight); other columns are ignored. So a user can run
`ame`, edit or replace `w`, and train with it. The weights enter the loss exactly as AME's do (METHOD.md §5,
§5b); `table_fame` adds FAME's confidence adaptation (§4) on top.

Checked in two steps, both before the first training batch: the file itself (readable, its columns, every `w`
finite and > 0, no duplicate row) when the trainer is made, before a run folder exists; then against the train
split's objects once Ultralytics has read its labels (every object has a row, every row an object). Each error
names the first offending row by file and line.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from clipce_rtdetr.errors import ClipCEError

TABLE_MODES = ("table", "table_fame")
FAME_MODES = ("fame", "table_fame")  # modes whose loss applies FAME's confidence adaptation (METHOD.md §4)
COLUMNS = ("im_file", "index", "w")


@dataclass(frozen=True)
class WeightTable:
    """A checked weight table: per (image key, object index) its weight and the CSV line it came from."""

    path: Path
    rows: dict[tuple[str, int], tuple[float, int]]  # (image key, index) -> (w, line number)


def image_key(im_file: str, base: Path | None = None) -> str:
    """One spelling per image file: relative paths are taken from `base` (the table's folder), symlinks resolved."""
    p = Path(im_file)
    if base is not None and not p.is_absolute():
        p = base / p
    return os.path.realpath(p)


def uses_fame(mode: str) -> bool:
    return mode in FAME_MODES


def check_weights_key(mode: str, weights) -> Path | None:
    """`weights=` given exactly when `clipce=table|table_fame`; returns the table path (None for other modes)."""
    if mode not in TABLE_MODES:
        if weights:
            raise ClipCEError(
                f"weights={weights} is only read with clipce=table or clipce=table_fame (given clipce={mode}); "
                "add clipce=table, or drop weights=."
            )
        return None
    if not weights:
        raise ClipCEError(
            f"clipce={mode} needs weights=path.csv: a table with columns im_file, index, w (the layout "
            "'clipce-rtdetr ame split=train' writes in ame.csv)."
        )
    return Path(weights)


def _row_weight(path: Path, line: int, text: str | None) -> float:
    try:
        w = float(text)
    except (TypeError, ValueError):
        w = math.nan
    if not (math.isfinite(w) and w > 0):
        raise ClipCEError(f"{path}:{line}: w={text!r} is not allowed; every weight must be a finite number > 0.")
    return w


def _row_index(path: Path, line: int, text: str | None) -> int:
    try:
        index = int(text)
    except (TypeError, ValueError):
        index = -1
    if index < 0:
        raise ClipCEError(f"{path}:{line}: index={text!r} must be an integer >= 0 (the object's row in its image).")
    return index


def read_table(path: str | Path) -> WeightTable:
    """Read and check the table on its own (no dataset needed): columns, weights, duplicates."""
    path = Path(path)
    try:
        f = open(path, newline="", encoding="utf-8")
    except OSError as e:
        raise ClipCEError(f"weights={path}: cannot read the weight table ({e.strerror or e}).") from None
    rows: dict[tuple[str, int], tuple[float, int]] = {}
    base = path.resolve().parent
    keys: dict[str, str] = {}  # im_file -> image_key: an image's rows resolve its path once, not once per object
    with f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ClipCEError(
                f"{path}:1: the header has no column {', '.join(missing)}; a weight table needs im_file, index, w "
                f"(header read: {', '.join(reader.fieldnames or []) or 'empty file'})."
            )
        for row in reader:
            line = reader.line_num
            if not row.get("im_file"):
                raise ClipCEError(f"{path}:{line}: empty im_file.")
            img = keys.get(row["im_file"]) or keys.setdefault(row["im_file"], image_key(row["im_file"], base))
            key = (img, _row_index(path, line, row.get("index")))
            w = _row_weight(path, line, row.get("w"))
            if key in rows:
                raise ClipCEError(
                    f"{path}:{line}: duplicate row: {row['im_file']} index {key[1]} is already given on line "
                    f"{rows[key][1]}; keep one row per object."
                )
            rows[key] = (w, line)
    return WeightTable(path, rows)


def table_weights(table: WeightTable, labels: list[dict]) -> torch.Tensor:
    """(N,) weights in the dataset's object order (images in `labels` order, objects in label order).

    Every object must have a row and every row an object: the first offender is named."""
    out = []
    used = set()
    for lb in labels:
        key_img = image_key(lb["im_file"])
        for j in range(len(lb["cls"])):
            hit = table.rows.get((key_img, j))
            if hit is None:
                raise ClipCEError(
                    f"weights={table.path}: no row for object {j} of {lb['im_file']} (train split); the table needs "
                    "one row per object (im_file, index, w), e.g. from 'clipce-rtdetr ame split=train'."
                )
            out.append(hit[0])
            used.add((key_img, j))
    extra = [(line, key) for key, (_, line) in table.rows.items() if key not in used]
    if extra:
        line, (img, j) = min(extra)
        raise ClipCEError(
            f"{table.path}:{line}: the row ({img}, index {j}) matches no object of the train split ({len(extra)} "
            "such rows); a table for another dataset or split, or an image whose labels changed?"
        )
    return torch.tensor(out, dtype=torch.float32)
