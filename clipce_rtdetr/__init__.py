# clipce-rtdetr, AGPL-3.0 (as Ultralytics, which it extends)
"""Ultralytics detectors trained with a CLIP-guided cross-entropy loss (CLIP-CE) for degraded scenes.

Sub-packages: `method` (AME/FAME, prompts, the embedding cache: detector-independent), `clip` (loading and
adapting open_clip models), `models/<detector>` (the loss, trainer and model class per detector), `data`
(dataset checks, converters, degradation, the demo dataset), `eval` (COCO metrics, ablation, plots) and
`deploy` (export, streams).
"""

__version__ = "0.1.0"

# Offline safety must be in place before ultralytics is imported anywhere (it probes DNS at import).
from clipce_rtdetr import offline as _offline

_offline.configure()

__all__ = ["ClipCERTDETR", "ClipCEYOLO", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `import clipce_rtdetr.method` (or the CLI's --help) does not import a detector.
    if name == "ClipCERTDETR":
        from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

        return ClipCERTDETR
    if name == "ClipCEYOLO":
        from clipce_rtdetr.models.yolo.model import ClipCEYOLO

        return ClipCEYOLO
    raise AttributeError(f"module 'clipce_rtdetr' has no attribute {name!r}")
