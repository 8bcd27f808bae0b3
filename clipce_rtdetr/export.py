"""Export through Ultralytics' exporter (placeholder: the deployment issue adds output checks)."""

from __future__ import annotations

from typing import Any


def export_checked(model, proj: dict[str, Any], **kwargs: Any) -> str:
    from ultralytics import RTDETR

    return RTDETR.export(model, **kwargs)
