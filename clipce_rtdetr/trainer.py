"""`ClipCETrainer`: Ultralytics' RT-DETR trainer with the CLIP-CE loss (Ultralytics' custom-trainer pattern).

CLIP and the embedding cache live on the trainer, outside the detector's module tree, so they never
reach `state_dict`, EMA or checkpoints. The detector is a stock `RTDETRDetectionModel`; only its
`criterion` is replaced by `ClipCEDetectionLoss`, which checkpoints drop (`ema.criterion = None`), so
`best.pt` loads in any Ultralytics install.
"""

from __future__ import annotations

from copy import copy
from pathlib import Path
from typing import Any

import yaml
from ultralytics.models.rtdetr.train import RTDETRTrainer
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK

from clipce_rtdetr.config import check_project_values, project_defaults

# Attribute on the detector that carries the CLIP-CE keys into checkpoints (a plain dict: it unpickles
# anywhere), so `resume=True` restores them.
CKPT_ATTR = "clipce_args"


class ClipCETrainer(RTDETRTrainer):
    """RT-DETR trainer whose classification loss is weighted per object by CLIP-CE (METHOD.md)."""

    def __init__(self, cfg=DEFAULT_CFG, overrides: dict[str, Any] | None = None, _callbacks=None):
        overrides = dict(overrides or {})
        proj_keys = project_defaults()
        given = {k: overrides.pop(k) for k in list(overrides) if k in proj_keys}
        self.clipce_args = check_project_values({**proj_keys, **given})
        super().__init__(cfg, overrides, _callbacks)
        if self.resume:
            self.clipce_args = self._restore_clipce_args(given)
        if RANK in {-1, 0}:
            (Path(self.save_dir) / "clipce.yaml").write_text(yaml.safe_dump(self.clipce_args, sort_keys=False))
            LOGGER.info("CLIP-CE: " + ", ".join(f"{k}={v}" for k, v in self.clipce_args.items() if k.startswith(("clip", "ame_", "fame_", "prior_"))))

    def _restore_clipce_args(self, given: dict[str, Any]) -> dict[str, Any]:
        from ultralytics.nn.tasks import load_checkpoint

        model, _ = load_checkpoint(self.args.resume)
        saved = getattr(model, CKPT_ATTR, None)
        if saved is None:
            LOGGER.warning(f"{self.args.resume} has no CLIP-CE settings; resuming with the ones given now.")
            return self.clipce_args
        changed = [k for k, v in given.items() if saved.get(k) != v]
        if changed:
            LOGGER.warning(f"Resume ignores {changed}, using checkpoint values. Start a new run to change them.")
        return check_project_values({**project_defaults(), **saved})

    def get_model(self, cfg=None, weights=None, verbose: bool = True):
        model = super().get_model(cfg=cfg, weights=weights, verbose=verbose)
        setattr(model, CKPT_ATTR, dict(self.clipce_args))
        return model

    def get_validator(self):
        validator = super().get_validator()
        return validator
