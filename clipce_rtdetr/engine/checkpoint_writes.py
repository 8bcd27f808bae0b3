"""Checkpoints written atomically: a full disk (or a kill) during a save leaves the previous last.pt/best.pt whole.

Ultralytics writes checkpoints in place (`self.last.write_bytes(...)` in `save_model`, `torch.save(x, f)` in
`strip_optimizer` at the end of training), so a failed write truncates the only good copy and resume refuses it.
Both are routed through `clipce_rtdetr.atomic` here, without copying Ultralytics code: the trainer's checkpoint
paths become `AtomicWritePath`s around `save_model`, and `strip_optimizer` writes to a temporary file that is then
renamed over the checkpoint (its log line is made to name the checkpoint, not the temporary file).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from clipce_rtdetr.atomic import AtomicWritePath, atomic_path

_CHECKPOINT_ATTRS = ("wdir", "last", "best")


@contextmanager
def atomic_checkpoint_paths(trainer: Any):
    """While it is active, the trainer's wdir/last/best write atomically (epoch files derive from wdir)."""
    saved = {a: getattr(trainer, a) for a in _CHECKPOINT_ATTRS}
    for a, p in saved.items():
        setattr(trainer, a, AtomicWritePath(p))
    try:
        yield
    finally:
        for a, p in saved.items():
            if isinstance(getattr(trainer, a), AtomicWritePath):  # not reassigned meanwhile
                setattr(trainer, a, p)


@contextmanager
def atomic_strip_optimizer():
    """Ultralytics' final_eval strips the optimizer from last.pt and best.pt in place: make that write atomic."""
    import ultralytics.engine.trainer as ul_trainer

    original = ul_trainer.strip_optimizer

    def strip_atomically(f: str | Path = "best.pt", s: str = "", updates: dict[str, Any] | None = None):
        with atomic_path(Path(s or f), missing_ok=True) as tmp:  # no file: not a checkpoint, skipped with a warning
            with _log_names_final_file(tmp, s):
                return original(f, s=str(tmp), updates=updates)

    ul_trainer.strip_optimizer = strip_atomically
    try:
        yield
    finally:
        ul_trainer.strip_optimizer = original


@contextmanager
def _log_names_final_file(tmp: Path, s: str | Path):
    """strip_optimizer logs the file it saved to, which here is the temporary one, gone after the rename: its line
    names the file the user gets instead (`s`, or nothing extra when the checkpoint is stripped in place)."""
    from ultralytics.utils import LOGGER

    shown = f" saved as {tmp},"
    final = f" saved as {s}," if s else ""

    def rename(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if shown in message:
            record.msg, record.args = message.replace(shown, final), ()
        return True

    LOGGER.addFilter(rename)
    try:
        yield
    finally:
        LOGGER.removeFilter(rename)
