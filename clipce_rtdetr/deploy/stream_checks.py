"""Checks before a predict/track run whose Ultralytics errors name neither file nor fix, and the `lap` stand-in.

* `check_tracker_cfg`: the tracker YAML (file, line, keys missing compared with Ultralytics' bundled config).
* `check_source_list`: the entries of a .txt/.csv list of sources (list file and line).
* `ensure_lap`: Ultralytics' trackers importable without the optional `lap` package.
"""

from __future__ import annotations

import csv
import glob
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
from ultralytics.utils import LOGGER

from clipce_rtdetr.errors import ClipCEError


# -------------------------------------------------------------------------------------------------- lap
def ensure_lap() -> None:
    """Make Ultralytics' trackers importable without the optional `lap` package.

    Ultralytics imports `lap` at import time of its matching module and pip-installs it when missing,
    which is disabled here (YOLO_AUTOINSTALL=False). Without it, a small stand-in built on Ultralytics'
    own `linear_sum_assignment` is registered (same result as Ultralytics' use_lap=False path, slower
    on many objects). For speed: pip install 'lap>=0.5.12'.
    """
    try:
        import lap  # noqa: F401

        return
    except ImportError:
        pass
    from ultralytics.utils.ops import linear_sum_assignment

    def lapjv(cost, extend_cost=True, cost_limit=np.inf, return_cost=True):
        cost = np.asarray(cost, dtype=np.float64)
        x = -np.ones(cost.shape[0], dtype=np.int64)
        y = -np.ones(cost.shape[1], dtype=np.int64)
        if cost.size:
            rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols):
                if cost[r, c] <= cost_limit:
                    x[r], y[c] = c, r
        total = float(sum(cost[r, c] for r, c in enumerate(x) if c >= 0))
        return (total, x, y) if return_cost else (x, y)

    mod = types.ModuleType("lap")
    mod.__version__ = "0.0+clipce-fallback"
    mod.lapjv = lapjv
    sys.modules["lap"] = mod
    LOGGER.warning(
        "Package 'lap' not installed: tracking uses a slower built-in assignment. For speed: pip install 'lap>=0.5.12'"
    )


# --------------------------------------------------------------------------------------------- checks
def check_tracker_cfg(tracker: str) -> Path:
    """Resolve and validate a tracker YAML before Ultralytics reads it; return its path.

    Ultralytics fails on a broken file with a bare ValueError, and on a missing key with an AttributeError
    that blames its default.yaml. Here the message names the file (and line), and lists the keys missing
    compared with Ultralytics' bundled config of the same tracker_type, which is the file to start from.
    """
    import yaml
    from ultralytics.trackers.track import TRACKER_MAP
    from ultralytics.utils import ROOT, YAML
    from ultralytics.utils.checks import check_yaml

    bundled_dir = ROOT / "cfg" / "trackers"
    try:
        path = Path(check_yaml(tracker))
    except (FileNotFoundError, AssertionError) as e:
        raise ClipCEError(
            f"tracker={tracker}: {e}. Use a bundled tracker ({', '.join(sorted(TRACKER_MAP))}, "
            f"e.g. tracker=bytetrack.yaml) or the path of your own copy of one from {bundled_dir}."
        ) from None
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise ClipCEError(
            f"Tracker config {path}{where}: invalid YAML ({getattr(e, 'problem', None) or e}). "
            f"Fix that line, or start again from a copy of {bundled_dir / 'bytetrack.yaml'}."
        ) from None
    if not isinstance(cfg, dict):
        raise ClipCEError(
            f"Tracker config {path} is not a list of 'key: value' settings. "
            f"Start from a copy of a file in {bundled_dir}, e.g. bytetrack.yaml."
        )
    ttype = cfg.get("tracker_type")
    if ttype not in TRACKER_MAP:
        raise ClipCEError(
            f"Tracker config {path}: tracker_type must be one of {', '.join(sorted(TRACKER_MAP))}, "
            f"got {ttype!r}. Start from a copy of a file in {bundled_dir}, e.g. bytetrack.yaml."
        )
    bundled = bundled_dir / f"{ttype}.yaml"
    missing = [k for k in YAML.load(bundled) if k not in cfg] if bundled.is_file() else []
    if missing:
        unknown = sorted(set(cfg) - set(YAML.load(bundled)))
        extra = f" (it has keys {ttype} does not use: {', '.join(unknown)}; a typo?)" if unknown else ""
        raise ClipCEError(
            f"Tracker config {path} lacks {', '.join(missing)}, which tracker_type: {ttype} needs{extra}. "
            f"Copy Ultralytics' {bundled} as a starting point and change only what you need."
        )
    return path


def check_tracking(model, tracker: str | None = None) -> None:
    """What Ultralytics' tracking reads, checked first: `lap` (or the stand-in) and the tracker YAML in use."""
    from ultralytics.cfg import DEFAULT_CFG

    ensure_lap()
    check_tracker_cfg(tracker or model.overrides.get("tracker") or DEFAULT_CFG.tracker)


def _listed_source_exists(entry: str, list_dir: Path) -> bool:
    """As LoadImagesAndVideos resolves a listed entry: from the current folder, else from the list's folder."""
    for p in (Path(entry).absolute(), (list_dir / entry).absolute()):
        if glob.glob(str(p), recursive=True) if "*" in str(p) else p.exists():
            return True
    return False


def check_source_list(source: Any) -> None:
    """A .txt/.csv source is a list of sources (Ultralytics reads it so without saying); check every entry.

    Ultralytics reports a missing entry as only "<entry> does not exist"; here the list file and line are named.
    """
    if (
        not isinstance(source, (str, Path))
        or Path(source).suffix.lower() not in (".txt", ".csv")
        or not Path(source).is_file()
    ):
        return
    lst = Path(source)
    lines = lst.read_text(encoding="utf-8-sig", errors="replace").splitlines()
    rows = [[x] for x in lines] if lst.suffix.lower() == ".txt" else list(csv.reader(lines))
    start = 2 if lst.suffix.lower() == ".csv" and rows[:1] == [["source"]] else 1  # csv: optional header row
    entries = [(n, e.strip()) for n, row in enumerate(rows[start - 1 :], start) for e in row if e.strip()]
    LOGGER.info(f"source={source} is a list of sources, one per line: {len(entries)} listed.")
    for n, entry in entries:
        if not _listed_source_exists(entry, lst.parent):
            hint = " Streams (rtsp://, http://, webcams) go in a .streams file, one per line." if "://" in entry else ""
            raise ClipCEError(
                f"{lst}, line {n}: '{entry}' does not exist (looked from {Path.cwd()} and from {lst.parent}). "
                f"Fix or remove that line.{hint}"
            )
