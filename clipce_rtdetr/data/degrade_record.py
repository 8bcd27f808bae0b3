"""Which source each degraded image was made from, so a rerun redoes the ones whose source changed since.

Every finished image's row in degradation.csv carries a fingerprint of its inputs (the source image and, with
depth=FOLDER, its depth map): `source_stat` (size and modification time in ns of each input) and `source_sha256`
(a hash of their contents). A rerun trusts a degraded image only when its inputs still match: the same stat, or a
changed stat (a touched or copied file) with the same contents. Images finished by a run that stopped before it
rewrote degradation.csv are in a journal beside it (appended one line per image as they finish), so an
interrupted run still resumes where it stopped.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from clipce_rtdetr.hashing import sha256_file

JOURNAL_FILE = ".degrade-journal.tsv"
FIELDS = ("source_stat", "source_sha256")


def source_stat(paths: Sequence[Path]) -> str:
    """'size:mtime_ns' of each input, ';'-joined (cheap: no reading)."""
    parts = []
    for p in paths:
        st = os.stat(p)
        parts.append(f"{st.st_size}:{st.st_mtime_ns}")
    return ";".join(parts)


def source_sha256(paths: Sequence[Path], first: bytes | memoryview | None = None) -> str:
    """A hash of the inputs' contents (each file's own hash, in order); `first`: the first input's contents, when
    the caller has read them already."""
    total = hashlib.sha256()
    for i, p in enumerate(paths):
        if i == 0 and first is not None:
            total.update(hashlib.sha256(first).digest())
            continue
        total.update(sha256_file(p).digest())
    return total.hexdigest()


def fingerprint(paths: Sequence[Path], read_first: Callable[[Path], Any] | None = None) -> tuple[dict[str, str], Any]:
    """Stat first, then contents: an edit made after this call changes the stat, so the next run notices it.
    With `read_first` (a reader returning a buffer), the first input is read once by it, hashed from that buffer,
    and the buffer handed back beside the fingerprint (degrade decodes the very bytes it hashed); else None."""
    stat = source_stat(paths)
    data = read_first(paths[0]) if read_first is not None else None
    return {"source_stat": stat, "source_sha256": source_sha256(paths, data)}, data


def load(csv_path: Path) -> dict[str, dict[str, str]]:
    """{image path inside the dataset: fingerprint} from degradation.csv and the journal of a run that stopped
    early (the journal is newer). Rows without a fingerprint (written before fingerprints existed) are left out,
    so their images are redone."""
    records: dict[str, dict[str, str]] = {}
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if row.get("im_file") and row.get("source_stat") and row.get("source_sha256"):
                    records[row["im_file"]] = {k: row[k] for k in FIELDS}
    except (OSError, csv.Error, UnicodeDecodeError):  # missing or damaged: every image is checked against nothing
        pass
    try:
        lines = (csv_path.parent / JOURNAL_FILE).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        lines = []
    for line in lines:  # a line cut short by a crash has fewer fields or a short hash: skipped
        parts = line.split("\t")
        if len(parts) == 3 and len(parts[2]) == 64:
            records[parts[0]] = dict(zip(FIELDS, parts[1:]))
    return records


def is_current(paths: Sequence[Path], record: dict[str, str] | None) -> dict[str, str] | None:
    """The record (its stat refreshed) when `paths` are what the record says they were; None when the image must
    be redone (no record, an input gone, or other contents)."""
    if not record:
        return None
    try:
        stat = source_stat(paths)
        if stat == record["source_stat"]:
            return record
        if source_sha256(paths) == record["source_sha256"]:  # touched, not edited
            return {"source_stat": stat, "source_sha256": record["source_sha256"]}
    except OSError:
        return None
    return None


def remove_orphans(out: Path, records: dict[str, dict[str, str]], current: set[str]) -> int:
    """Delete the degraded images (and their label copies) that a previous run made (`records`, from load()) from a
    source that is no longer listed (deleted, or dropped from its split), so the new dataset holds no image without
    a source. Only paths a record names, inside `out`, are touched: a file degrade did not make is never deleted.
    Returns how many images were removed."""
    from ultralytics.data.utils import img2label_paths  # a string substitution: the label copy degrade made

    root = out.resolve()
    gone = [rel for rel in records if rel not in current]
    removed = 0
    for rel, label in zip(gone, img2label_paths([str(out / rel) for rel in gone])):
        image = out / rel
        if not image.resolve().is_relative_to(root) or image.resolve() == root:  # a damaged record: not ours
            continue
        if image.is_file():  # else already gone: its label copy may still be there
            image.unlink()
            removed += 1
        label = Path(label)
        if label != image and label.resolve().is_relative_to(root):
            label.unlink(missing_ok=True)
    return removed


class Journal:
    """Appends one line per finished image, flushed at once, so a run killed part-way keeps its records."""

    def __init__(self, out: Path):
        self.path: Path | None = out / JOURNAL_FILE
        self.file = None

    def add(self, rel: str, fp: dict[str, str]) -> None:
        if self.path is None:
            return
        try:
            if self.file is None:
                self.file = open(self.path, "a", encoding="utf-8")
            self.file.write(f"{rel}\t{fp['source_stat']}\t{fp['source_sha256']}\n")
            self.file.flush()
        except OSError:  # no room for the journal: the images it would name are redone by a rerun, nothing is wrong
            self.path = None

    def close(self, remove: bool) -> None:
        """`remove` once degradation.csv holds every record the journal had."""
        if self.file is not None:
            self.file.close()
            self.file = None
        if remove and self.path is not None:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
