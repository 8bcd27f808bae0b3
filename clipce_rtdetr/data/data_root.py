"""Where a dataset YAML's `path:` points: one answer, used by our checks and by Ultralytics alike.

Ultralytics 8.4.190 (`check_det_dataset`) reads a relative `path:` against the current folder, and where nothing
is there, against its datasets_dir. Users write it relative to the YAML (a dataset folder that carries its YAML).
The rule here:

1. an absolute `path:` is used as it is; no `path:` means the YAML's folder (as in Ultralytics);
2. a relative `path:` is looked up beside the YAML and in the current folder: where both hold the dataset (one of
   its train/val/test entries exists there) and are different folders, the run is refused, naming both (training
   on the wrong one would go unnoticed). `path: .` run from another folder is not ambiguous unless that folder
   holds such an entry too;
3. where one of them holds the dataset, that one; else the one that exists (beside the YAML first); where neither
   does, Ultralytics' datasets_dir.

When the answer is not the folder Ultralytics would pick itself (a `path:` found only beside the YAML, run from
another folder), Ultralytics is given a copy of the YAML whose `path:` is that absolute folder (under
$CLIPCE_HOME/data-yamls), so both read the same images.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import yaml

from clipce_rtdetr import atomic
from clipce_rtdetr.errors import ClipCEError

PINNED_FOLDERS = ("data-yamls", "clipce-data-yamls")  # under $CLIPCE_HOME, else under the temp folder
PINNED_HEADER = "# {source} with path: {raw} resolved\n"  # first line of a pinned copy: whose copy it is


def _ultralytics_datasets_dir() -> Path:
    from ultralytics.data.utils import DATASETS_DIR  # the one check_det_dataset falls back to

    return Path(DATASETS_DIR)


def dataset_root(cfg: dict[str, Any], yaml_path: Path) -> Path:
    """The dataset folder of the YAML at `yaml_path` (see the module docstring for the rule)."""
    raw = cfg.get("path")
    if not raw:
        return Path(yaml_path.parent)
    root = Path(str(raw))
    if root.is_absolute():
        return root
    beside, here = (Path(yaml_path).parent / root).resolve(), root.resolve()
    in_beside, in_here = _holds_dataset(beside, cfg), _holds_dataset(here, cfg)
    if in_beside and in_here and beside != here:
        raise ClipCEError(
            f"Dataset YAML {yaml_path}: path: {raw} is relative and names two different folders: {beside} (beside "
            f"the YAML) and {here} (in the current folder {Path.cwd()}). Make path: absolute, or run from another "
            "folder."
        )
    for folder in ([beside] if in_beside else []) + ([here] if in_here else []) + [beside, here]:
        if folder.exists():
            return folder
    return (_ultralytics_datasets_dir() / root).resolve()


def _holds_dataset(folder: Path, cfg: dict[str, Any]) -> bool:
    """Whether one of the YAML's relative split entries exists in `folder` (the folder alone, if it has none)."""
    if not folder.is_dir():
        return False
    entries = [e for s in ("train", "val", "test") for e in ([cfg.get(s)] if isinstance(cfg.get(s), str) else
                                                             cfg.get(s) or [])]  # fmt: skip
    relative = [str(e) for e in entries if isinstance(e, str) and not Path(e).is_absolute()]
    return not relative or any((folder / e).exists() for e in relative)


def ultralytics_root(cfg: dict[str, Any], yaml_path: Path) -> Path:
    """The folder Ultralytics' check_det_dataset would take as the dataset root, by its own rule."""
    raw = cfg.get("path")
    if not raw:
        return Path(yaml_path.parent).resolve()
    root = Path(str(raw))
    if not root.exists() and not root.is_absolute():
        root = _ultralytics_datasets_dir() / root
    return root.resolve()


def yaml_for_ultralytics(yaml_path: Path, cfg: dict[str, Any]) -> Path:
    """`yaml_path` itself when Ultralytics resolves its `path:` to the same folder we do; else a copy with that
    folder as an absolute `path:` (written once per YAML and content, atomically)."""
    root = dataset_root(cfg, yaml_path)
    if root.resolve() == ultralytics_root(cfg, yaml_path):
        return yaml_path
    from ultralytics.utils import LOGGER

    from clipce_rtdetr.paths import home

    text = yaml.safe_dump({**cfg, "path": str(root.resolve())}, sort_keys=False, allow_unicode=True)
    key = hashlib.sha256(f"{Path(yaml_path).resolve()}\n{text}".encode()).hexdigest()[:16]
    for folder in (home() / PINNED_FOLDERS[0], Path(tempfile.gettempdir()) / PINNED_FOLDERS[1]):  # home read-only
        pinned = folder / f"{Path(yaml_path).stem}-{key}.yaml"
        try:
            if not pinned.is_file() or pinned.read_text(encoding="utf-8").split("\n", 1)[-1] != text:
                pinned.parent.mkdir(parents=True, exist_ok=True)
                header = PINNED_HEADER.format(source=Path(yaml_path).resolve(), raw=cfg["path"])
                atomic.write_text(pinned, header + text)
            break
        except OSError:
            if folder.name != PINNED_FOLDERS[0]:
                raise
    LOGGER.info(f"Dataset YAML {yaml_path}: path: {cfg['path']} is {root} (beside the YAML); running on {pinned}.")
    return pinned


def user_yaml(path: str | Path) -> Path:
    """The user's own YAML behind a pinned copy (named in the copy's first line), so messages name the file the
    user gave; any other path as it is."""
    path = Path(path)
    if path.parent.name not in PINNED_FOLDERS:
        return path
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline().rstrip("\n")
    except (OSError, UnicodeDecodeError):
        return path
    source, sep, _ = first.removeprefix("# ").rpartition(" with path: ")
    return Path(source) if first.startswith("# ") and sep and first.endswith(" resolved") else path
