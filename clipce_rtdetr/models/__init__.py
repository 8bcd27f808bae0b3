"""Detector adapters, one sub-package per Ultralytics detector family (`rtdetr/`, ...).

`load_detector(model)` picks the family from the model file itself (a checkpoint's model class or a config's
name), never from an extra key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_detector(model: str | Path | None = None) -> Any:
    """The CLIP-CE model class for `model=` (a .pt checkpoint, a .yaml config, or an exported .onnx/.engine)."""
    from clipce_rtdetr.models.rtdetr.model import DEFAULT_MODEL, ClipCERTDETR

    return ClipCERTDETR(model if model is not None else DEFAULT_MODEL)
