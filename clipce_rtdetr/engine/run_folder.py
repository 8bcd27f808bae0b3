"""Where a resumed run goes on: the run folder its checkpoint is in now, not the one recorded inside it.

Ultralytics restores `save_dir` from the checkpoint's own arguments, so a run folder that was moved (or copied)
after the checkpoint was written is resumed in its old place: the old folder is recreated, epochs go on there,
and the moved folder keeps stale weights and half a results.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipce_rtdetr.errors import ClipCEError


def resumed_save_dir(args: Any, overrides: dict[str, Any]) -> str | None:
    """The save_dir a resumed run must use (None: leave Ultralytics' choice, e.g. save_dir= was given).

    `args` are the trainer's arguments after Ultralytics' check_resume (`args.resume` is the checkpoint path)."""
    if overrides.get("save_dir"):  # given explicitly (also how Ultralytics' own DDP workers get it)
        return None
    ckpt = Path(str(args.resume)).resolve()
    recorded = Path(str(args.save_dir)) if getattr(args, "save_dir", None) else None
    if ckpt.parent.name != "weights":
        raise ClipCEError(
            f"resume={ckpt}: this checkpoint is not in a run folder's weights/ folder, so where its run would go on "
            f"is unclear (it was written in {recorded or 'an unknown folder'}). Put it back as RUN/weights/last.pt "
            f"and resume from there, or start a new run from its weights with model={ckpt}."
        )
    here = ckpt.parent.parent
    if recorded is not None and recorded.resolve() != here:
        from ultralytics.utils import LOGGER

        LOGGER.info(f"Resuming in {here}, where {ckpt.name} is now (the run was started in {recorded}).")
    return str(here)
