"""clip-train's output files: checked before any work (suffix, nothing overwritten unasked, the folder writable,
room for the weights), and the weights written atomically (a temporary file renamed into place), so a failed save
names the file in one line and leaves an earlier file at `out` intact."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from clipce_rtdetr.errors import ClipCEError

REPORT_SUFFIXES = (".json", ".md", ".png")
REPORT_ROOM = 4 * 2**20  # bytes kept free beyond the weights for the report (JSON, markdown, a small PNG)


def output_paths(out: str | Path, report: str | Path | None, exist_ok: bool) -> tuple[Path, Path]:
    """(weights file, report stem), checked before any work: a .safetensors file, nothing overwritten unasked, every
    folder they go to writable."""
    out = Path(out).expanduser()
    if out.suffix.lower() != ".safetensors":
        raise ClipCEError(
            f"clip-train out={out}: the weights file must end in .safetensors (it is loaded with clip=MODEL:{out})."
        )
    stem = Path(report).expanduser() if report else out.with_suffix("")
    stem = stem.with_suffix("") if stem.suffix.lower() in REPORT_SUFFIXES else stem
    targets = [out] + [stem.with_suffix(s) for s in REPORT_SUFFIXES]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not exist_ok:
        raise ClipCEError(
            f"clip-train: {', '.join(existing)} already exist(s); pass exist_ok=True to overwrite, "
            "or choose another out=."
        )
    for folder in dict.fromkeys((out.parent, stem.parent)):
        check_writable(folder, "out=" if folder == out.parent else "report=")
    return out, stem


def nearest_existing(folder: Path) -> Path:
    """`folder`, or its nearest ancestor that exists (where a missing folder would be created)."""
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_writable(folder: Path, key: str) -> None:
    """A probe file written (and removed) in `folder`, or where it would be created: a read-only mount, a folder
    without permission or a file in the way is found before training, not by the save at the end."""
    base = nearest_existing(folder)
    try:
        if not base.is_dir():
            raise NotADirectoryError(20, "not a folder", str(base))
        with tempfile.TemporaryFile(dir=base, prefix=".clipce-write-probe-"):
            pass
    except OSError as e:
        raise ClipCEError(
            f"clip-train {key}: cannot write in {base} ({e.strerror or e}). Nothing was trained; point {key} at a "
            "writable folder."
        ) from None


def check_free_space(out: Path, model: torch.nn.Module, half: bool) -> int:
    """Room for the weights file (parameters and buffers, fp16 when `half`) and the report where `out` goes;
    returns the bytes needed. Checked once the model is built, before training."""
    need = REPORT_ROOM + sum(
        t.numel() * (2 if half and t.is_floating_point() else t.element_size()) for t in model.state_dict().values()
    )
    base = nearest_existing(out.parent)
    free = shutil.disk_usage(base).free
    if free < need:
        raise ClipCEError(
            f"clip-train out={out}: the weights and report need about {need / 2**20:.1f} MiB and {base} has "
            f"{free / 2**20:.1f} MiB free. Nothing was trained; free some space or point out= elsewhere."
        )
    return need


def save_weights(model: torch.nn.Module, out: Path, recipe: dict[str, Any], meta_key: str, half: bool) -> torch.dtype:
    """The state_dict as safetensors (fp16 when `half`), the recipe in its metadata, written atomically: a failed
    write (a full disk, a read-only remount) is one ClipCEError naming `out`, and an earlier file there is kept."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from clipce_rtdetr.atomic import atomic_path

    dtype = torch.float16 if half else torch.float32
    sd = {
        k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous().clone()
        for k, v in model.state_dict().items()
    }
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            save_file(sd, str(tmp), metadata={meta_key: json.dumps(recipe)})
    except (OSError, SafetensorError) as e:  # atomic_path's AtomicWriteError is a ClipCEError and an OSError
        raise ClipCEError(f"clip-train: {saving_error(out, e)}") from None
    return dtype


def saving_error(path: Path, e: BaseException) -> str:
    """One line: which file, why (the OS's words), and that an earlier version is unchanged."""
    import re

    from clipce_rtdetr.atomic import AtomicWriteError

    if isinstance(e, AtomicWriteError):  # names the file and the earlier version already
        return str(e)
    text = str(e).strip()
    os_words = re.search(r'message: "([^"]+)"', text)  # safetensors wraps the OS error: IoError(Os { ... })
    why = getattr(e, "strerror", None) or (os_words.group(1) if os_words else (text.splitlines() or [repr(e)])[0])
    return f"could not write {path}: {why}. The previous version of this file, if any, is unchanged."
