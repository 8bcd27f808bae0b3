"""`ClipCERTDETR`: the Python API, mirroring `ultralytics.RTDETR` (train/val/predict/track/export).

Training goes through `ClipCETrainer` (CLIP-CE loss); validation, prediction, tracking and export
are stock Ultralytics RT-DETR, because a CLIP-CE checkpoint is a plain RT-DETR checkpoint.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from ultralytics import RTDETR

from clipce_rtdetr.errors import ClipCEError
from clipce_rtdetr.models import ClipCEModelMixin
from clipce_rtdetr.paths import MODELS_DIR, weights_dirs

DEFAULT_MODEL = "rtdetr-l.pt"
TINY_MODEL = "rtdetr-tiny.yaml"
ULTRA_RELEASE_URL = "https://github.com/ultralytics/assets/releases/download/v8.4.0/"


def resolve_model(model: str | Path | None) -> str:
    """Turn `model=` into a path or an Ultralytics config name, searching cfg/models/ and weights/."""
    name = str(model or DEFAULT_MODEL)
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        if p.exists():
            return str(p)
        for cand in (MODELS_DIR / p.name, MODELS_DIR / f"{p.stem}.yaml"):
            if cand.exists():
                return str(cand)
        return name  # an Ultralytics config such as rtdetr-l.yaml; Ultralytics resolves it
    if p.suffix == "" and (MODELS_DIR / f"{name}.yaml").exists():
        return str(MODELS_DIR / f"{name}.yaml")
    if p.exists():
        return check_model_format(p, name)
    from ultralytics.utils import SETTINGS

    candidates = [d.resolve() / p.name for d in weights_dirs()] + [Path(SETTINGS["weights_dir"]).resolve() / p.name]
    for cand in candidates:
        if cand.exists():
            return str(cand)
    from ultralytics.utils import ONLINE
    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES

    if p.name in GITHUB_ASSETS_NAMES and ONLINE and p.parent == Path("."):
        return name  # Ultralytics downloads its own release asset
    how = (
        f"Download it from {ULTRA_RELEASE_URL}{p.name} and put it in {weights_dirs()[0]} "
        "(see weights/README.md), or set YOLO_OFFLINE=0 on a machine with internet to let Ultralytics fetch it."
        if p.name in GITHUB_ASSETS_NAMES
        else "Check the path, or pass a model config such as model=rtdetr-tiny.yaml or model=rtdetr-l.yaml."
    )
    tried = "\n  ".join(str(c) for c in [p.resolve(), *candidates])
    raise ClipCEError(f"Model weights '{name}' not found. Tried:\n  {tried}\n{how}")


def check_model_format(p: Path, name: str) -> str:
    """An existing model= path of a kind Ultralytics can load (a .pt checkpoint or an exported model: a file with an
    export suffix, or a folder such as best_openvino_model/); anything else is refused here, before Ultralytics
    reports it with a traceback from deep inside predict or train."""
    from ultralytics.engine.exporter import export_formats

    endings = [s for s in export_formats()["Suffix"] if s != "-"] + [".pt", ".xml", ".bin"]
    if p.is_dir() or str(p).lower().endswith(tuple(e.lower() for e in endings if e.startswith("."))):
        return str(p)
    raise ClipCEError(
        f"model={name}: {p} is not a model file Ultralytics can load (a .pt checkpoint, a .yaml config, or an exported "
        "model such as .onnx, .engine or a *_openvino_model folder). Check the path; e.g. "
        "model=runs/detect/train/weights/best.pt."
    )


class ClipCERTDETR(ClipCEModelMixin, RTDETR):
    """RT-DETR trained with CLIP-CE. `ClipCERTDETR("rtdetr-l.pt").train(data=..., clipce="fame")`."""

    def __init__(self, model: str | Path = DEFAULT_MODEL) -> None:
        path = resolve_model(model) if isinstance(model, (str, Path)) else model
        try:
            super().__init__(model=path)
        except (TypeError, KeyError, ValueError, EOFError, RuntimeError, AttributeError, pickle.UnpicklingError) as e:
            if not isinstance(path, (str, Path)):
                raise
            raise ClipCEError(
                f"model={model}: {path} cannot be loaded as an RT-DETR model "
                f"({type(e).__name__}: {str(e).strip()[:300]}). Expected an Ultralytics RT-DETR checkpoint "
                "(.pt, e.g. runs/detect/train/weights/best.pt), a model config (.yaml, e.g. rtdetr-l.yaml) or, "
                "for predict/val, an exported .onnx/.engine file."
            ) from None

    @property
    def task_map(self) -> dict:
        from clipce_rtdetr.models.rtdetr.train import ClipCETrainer

        task_map = super().task_map
        task_map["detect"] = {**task_map["detect"], "trainer": ClipCETrainer}
        return task_map
