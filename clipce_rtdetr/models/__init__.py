"""Detector adapters, one sub-package per Ultralytics detector family (`rtdetr/`, `yolo/`).

`load_detector(model)` picks the family from the model file itself (a checkpoint's model class, a config's
head, an export's metadata), never from an extra key. `ClipCEModelMixin` gives every family's model class the
project's checks around Ultralytics' train/val/predict/track/export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipce_rtdetr.config import check_overrides
from clipce_rtdetr.errors import ClipCEError

DETECTION_ONLY = "CLIP-CE trains detection models"
EXPORT_SUFFIXES = (".onnx", ".engine", ".torchscript", ".tflite", ".mlpackage", ".xml")


class ClipCEModelMixin:
    """Put in front of an Ultralytics model class (RTDETR, YOLO): project keys checked, project datasets resolved."""

    def train(self, trainer=None, **kwargs: Any):
        from clipce_rtdetr.data.dataset import check_clip_first, resolve_run_data

        ultra, proj = check_overrides(kwargs)
        if isinstance(kwargs.get("data"), (list, tuple)):
            raise ClipCEError(
                "data= must be one dataset for CLIP-CE training (Ultralytics' multi-dataset fine-tuning "
                "is not supported); train on each dataset in turn."
            )
        # With resume, a resumable checkpoint brings its own data and CLIP; data= given anyway is resolved, since
        # Ultralytics starts a new run from it when the checkpoint turns out not to be resumable.
        if not kwargs.get("resume") or kwargs.get("data"):
            needs_clip = kwargs.get("clipce", "fame") in ("ame", "fame")
            if needs_clip and "clip" in kwargs:  # a wrong clip= is named before the dataset is generated or scanned
                check_clip_first(kwargs, ultra.get("data"), proj["clip"])  # (the default is checked after data=,
                # which may bring its own CLIP: a mistyped data= is then named first)
            kwargs = resolve_run_data(kwargs, needs_clip, allow_download=bool(kwargs.get("allow_download")))
        return super().train(trainer=trainer, **kwargs)

    def val(self, validator=None, **kwargs: Any):
        from clipce_rtdetr.data.dataset import resolve_data

        ultra, proj = check_overrides(kwargs)
        data = ultra.get("data") or self.overrides.get("data")
        ultra["data"] = resolve_data(data, allow_download=proj["allow_download"], splits=(ultra.get("split") or "val",))
        if proj["coco"]:
            from clipce_rtdetr.eval.coco import val_with_coco  # COCO-standard evaluation

            return val_with_coco(self, validator=validator, **ultra)
        return super().val(validator=validator, **ultra)

    def predict(self, source=None, stream: bool = False, predictor=None, **kwargs: Any):
        from clipce_rtdetr.deploy.stream import check_source_list

        ultra, _ = check_overrides(kwargs)
        check_source_list(source)  # a .txt/.csv list of sources: each entry checked, file and line named
        return super().predict(source=source, stream=stream, predictor=predictor, **ultra)

    def track(self, source=None, stream: bool = False, persist: bool = False, **kwargs: Any):
        from clipce_rtdetr.deploy.stream import check_tracking

        ultra, _ = check_overrides(kwargs)
        if not (persist and hasattr(self.predictor, "trackers")):  # when Ultralytics (re)reads it: not per frame
            check_tracking(self, ultra.get("tracker"))
        return super().track(source=source, stream=stream, persist=persist, **ultra)

    def export(self, **kwargs: Any) -> str:
        ultra, proj = check_overrides(kwargs)
        from clipce_rtdetr.deploy.export import export_checked

        return export_checked(self, proj, **ultra)


def _config_family(path: str) -> tuple[str, str]:
    from ultralytics.nn.tasks import guess_model_task, yaml_model_load

    try:
        cfg = yaml_model_load(path)
        head = str(cfg["head"][-1][-2])
    except (OSError, KeyError, IndexError, TypeError, ValueError):
        return "rtdetr", "detect"  # unreadable: the model class reports it with its own message
    if "RTDETR" in head:
        return "rtdetr", "detect"
    return "yolo", "open-vocabulary" if head.startswith(("World", "YOLOE")) else guess_model_task(cfg) or "unknown"


def _checkpoint_family(path: str) -> tuple[str, str]:
    from ultralytics.nn.tasks import guess_model_task, torch_safe_load

    try:
        ckpt, _ = torch_safe_load(path)
        model = ckpt.get("ema") or ckpt["model"]
    except Exception:  # not a checkpoint: the model class reports it with its own message  # noqa: BLE001
        return "rtdetr", "detect"
    name = type(model).__name__
    if name in ("WorldModel", "YOLOEModel", "YOLOESegModel"):
        return "yolo", "open-vocabulary"
    if name.startswith("RTDETR"):  # RT-DETR is a detector only; guess_model_task cannot tell it from a tiny config
        return "rtdetr", "detect"
    return "yolo", guess_model_task(model) or "detect"


def _export_family(path: str) -> tuple[str, str]:
    from ultralytics.nn.backends.base import BaseBackend

    meta = BaseBackend.read_metadata(path)
    if not meta:
        return "rtdetr", "detect"  # no metadata (a third-party export): as before YOLO support
    return ("rtdetr" if "RTDETR" in str(meta.get("head", "")) else "yolo"), meta.get("task", "detect")


def _name_family(name: str) -> tuple[str, str]:
    """An Ultralytics asset not downloaded yet (e.g. yolo11n-seg.pt, rtdetr-l.pt): by Ultralytics' naming."""
    stem = Path(name).stem
    tasks = {"-seg": "segment", "-pose": "pose", "-obb": "obb", "-cls": "classify", "-sem": "semantic"}
    task = next((t for suffix, t in tasks.items() if suffix in stem), "detect")
    if "-world" in stem or stem.startswith("yoloe"):
        task = "open-vocabulary"
    return ("rtdetr" if stem.startswith("rtdetr") else "yolo"), task


def detector_family(path: str) -> tuple[str, str]:
    """(family, task) of a resolved model path: family 'rtdetr' or 'yolo', task as Ultralytics names it."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return _config_family(path)
    if not p.exists():
        return _name_family(path)
    if suffix == ".pt":
        return _checkpoint_family(path)
    if suffix in EXPORT_SUFFIXES or p.is_dir():
        return _export_family(path)
    return "rtdetr", "detect"  # unknown kind of file: the model class reports it


def _refuse(model, task: str) -> None:
    raise ClipCEError(
        f"model={model}: {DETECTION_ONLY} (Ultralytics YOLO or RT-DETR detectors); this one is for the {task} task. "
        "Use a detection model, e.g. model=yolo11n.pt, yolo26n.yaml or rtdetr-l.pt."
    )


def load_detector(model: str | Path | None = None) -> Any:
    """The CLIP-CE model class for `model=` (a .pt checkpoint, a .yaml config, or an exported .onnx/.engine)."""
    from clipce_rtdetr.models.rtdetr.model import DEFAULT_MODEL, ClipCERTDETR, resolve_model

    try:
        path = resolve_model(model if model is not None else DEFAULT_MODEL)
    except ClipCEError:
        if _name_family(str(model))[1] != "detect":  # say what is wrong with it before where to download it
            _refuse(model, _name_family(str(model))[1])
        raise
    family, task = detector_family(path)
    if task != "detect":
        _refuse(model, task)
    if family == "yolo":
        from clipce_rtdetr.models.yolo.model import ClipCEYOLO

        return ClipCEYOLO(path)
    return ClipCERTDETR(path)
