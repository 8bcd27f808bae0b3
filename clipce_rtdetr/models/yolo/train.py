"""`ClipCEYOLOTrainer`: Ultralytics' YOLO detection trainer with the CLIP-CE loss (see `engine/trainer.py`)."""

from __future__ import annotations

from torch import nn
from ultralytics.models.yolo.detect.train import DetectionTrainer
from ultralytics.utils.loss import E2ELoss
from ultralytics.utils.torch_utils import unwrap_model

from clipce_rtdetr.engine.trainer import ClipCETrainerMixin
from clipce_rtdetr.method.object_ids import split_object_ids
from clipce_rtdetr.method.weight_table import uses_fame
from clipce_rtdetr.models.yolo.loss import build_yolo_criterion


class ClipCEYOLOTrainer(ClipCETrainerMixin, DetectionTrainer):
    """YOLOv8/YOLO11/YOLO26 trainer whose classification loss is weighted per object by CLIP-CE (METHOD.md §5b).

    Ultralytics' YOLO loss reads `model.args` (the gains), the class weights and the device when it is built, and
    the trainer sets those only in `_setup_train`; so the CLIP-CE criterion is attached there, after the EMA copy
    (which keeps a stock criterion for validation) and after `resume_training` (whose end-to-end loss schedule it
    takes over).
    """

    def build_criterion(self):
        if not isinstance(self.model, nn.Module):
            return None  # the mixin asks while the model is being built (no args, not on its device yet)
        a = self.clipce_args
        return build_yolo_criterion(
            unwrap_model(self.model), fame=uses_fame(self.mode), fame_gamma=a["fame_gamma"], terms=a["clipce_terms"]
        )

    def _setup_train(self):
        super()._setup_train()
        if self.mode != "none":
            self._attach_criterion()

    def _attach_criterion(self) -> None:
        model = unwrap_model(self.model)
        previous = getattr(model, "criterion", None)  # resume_training builds a stock E2ELoss at the resumed step
        criterion = self.build_criterion()
        if isinstance(previous, E2ELoss) and isinstance(criterion, E2ELoss):
            criterion.updates, criterion.o2m, criterion.o2o = previous.updates, previous.o2m, previous.o2o
        model.criterion = criterion

    def preprocess_batch(self, batch: dict) -> dict:
        if self.mode != "none" and getattr(unwrap_model(self.model), "criterion", None) is None:
            # Batches before _attach_criterion (Ultralytics' QAT calibration inside _setup_train): the stock loss.
            batch = DetectionTrainer.preprocess_batch(self, batch)
            split_object_ids(batch)
            return batch
        return super().preprocess_batch(batch)
