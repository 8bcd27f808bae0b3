"""`ClipCETrainer`: Ultralytics' RT-DETR trainer with the CLIP-CE loss (see `clipce_rtdetr/engine/trainer.py`)."""

from __future__ import annotations

from ultralytics.models.rtdetr.train import RTDETRTrainer

from clipce_rtdetr.engine.trainer import CKPT_ATTR, TRAIN_KEYS, WEIGHT_KEYS, ClipCETrainerMixin
from clipce_rtdetr.method.weight_table import uses_fame
from clipce_rtdetr.models.rtdetr.loss import ClipCEDetectionLoss

__all__ = ["CKPT_ATTR", "TRAIN_KEYS", "WEIGHT_KEYS", "ClipCETrainer"]


class ClipCETrainer(ClipCETrainerMixin, RTDETRTrainer):
    """RT-DETR trainer whose classification loss is weighted per object by CLIP-CE (METHOD.md §5)."""

    def build_criterion(self) -> ClipCEDetectionLoss:
        a = self.clipce_args
        return ClipCEDetectionLoss(
            nc=self.data["nc"], fame=uses_fame(self.mode), fame_gamma=a["fame_gamma"], terms=a["clipce_terms"]
        )
