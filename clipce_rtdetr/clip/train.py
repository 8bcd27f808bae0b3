"""Moved: `clipce-rtdetr clip-train` is `clipce_rtdetr.engine.clip_train` (its keys: `engine/clip_train/tool.py`).

This name is kept so that `from clipce_rtdetr.clip.train import clip_train` (and the other public names of the tool)
keeps working; new code imports from `clipce_rtdetr.engine.clip_train.tool`. `clip/` itself holds only the loader.
"""

from __future__ import annotations

from clipce_rtdetr.engine.clip_train import tool as _tool
from clipce_rtdetr.engine.clip_train.tool import *  # noqa: F403  (the names this module had)

__all__ = list(_tool.__all__)
