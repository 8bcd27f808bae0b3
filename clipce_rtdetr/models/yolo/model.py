"""`ClipCEYOLO`: the Python API for YOLO detectors, mirroring `ultralytics.YOLO` (train/val/predict/track/export).

Training goes through `ClipCEYOLOTrainer` (CLIP-CE loss); validation, prediction, tracking and export are stock
Ultralytics YOLO, because a CLIP-CE checkpoint is a plain YOLO detection checkpoint.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from ultralytics import YOLO
from ultralytics.engine.model import Model

from clipce_rtdetr.errors import ClipCEError
from clipce_rtdetr.models import DETECTION_ONLY, ClipCEModelMixin
from clipce_rtdetr.models.rtdetr.model import resolve_model

DEFAULT_MODEL = "yolo11n.pt"
LOAD_ERRORS = (TypeError, KeyError, ValueError, EOFError, RuntimeError, AttributeError, pickle.UnpicklingError)


class ClipCEYOLO(ClipCEModelMixin, YOLO):
    """A YOLO detector trained with CLIP-CE. `ClipCEYOLO("yolo11n.pt").train(data=..., clipce="fame")`."""

    def __init__(self, model: str | Path = DEFAULT_MODEL, verbose: bool = False) -> None:
        path = resolve_model(model) if isinstance(model, (str, Path)) else model
        try:
            # Model's constructor, not YOLO's: YOLO's turns RT-DETR, YOLO-World and YOLOE files into those classes,
            # which this class must refuse instead (check_detector).
            Model.__init__(self, model=path, task=None, verbose=verbose)
        except LOAD_ERRORS as e:
            if not isinstance(path, (str, Path)):
                raise
            raise ClipCEError(
                f"model={model}: {path} cannot be loaded as a YOLO model ({type(e).__name__}: {str(e).strip()[:300]}). "
                "Expected an Ultralytics YOLO detection checkpoint (.pt, e.g. runs/detect/train/weights/best.pt), "
                "a model config (.yaml, e.g. yolo11n.yaml) or, for predict/val, an exported .onnx/.engine file."
            ) from None
        self.check_detector(model)

    def check_detector(self, given) -> None:
        """Refuse what CLIP-CE cannot train: other tasks, open-vocabulary heads, RT-DETR (ClipCERTDETR's)."""
        if self.task != "detect":
            raise ClipCEError(f"model={given}: {DETECTION_ONLY}; this is a {self.task} model. Use e.g. yolo11n.pt.")
        head = self.model.model[-1]._get_name() if hasattr(self.model, "model") else ""
        if "RTDETR" in head:
            raise ClipCEError(
                f"model={given} is an RT-DETR model: load it with ClipCERTDETR (or models.load_detector)."
            )
        if head.startswith(("World", "YOLOE")):
            raise ClipCEError(f"model={given}: {DETECTION_ONLY} with a fixed class list; {head} is open-vocabulary.")

    @property
    def task_map(self) -> dict:
        from clipce_rtdetr.models.yolo.train import ClipCEYOLOTrainer

        task_map = super().task_map
        task_map["detect"] = {**task_map["detect"], "trainer": ClipCEYOLOTrainer}
        return task_map
