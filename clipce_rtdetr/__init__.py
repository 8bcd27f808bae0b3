# clipce-rtdetr, AGPL-3.0 (as Ultralytics, which it extends)
"""RT-DETR trained with a CLIP-guided cross-entropy loss (CLIP-CE) for degraded scenes."""

__version__ = "0.1.0"

# Offline safety must be in place before ultralytics is imported anywhere (it probes DNS at import).
from clipce_rtdetr import offline as _offline

_offline.configure()

from clipce_rtdetr.model import ClipCERTDETR  # noqa: E402

__all__ = ["ClipCERTDETR", "__version__"]
