"""CLIP-CE for Ultralytics YOLO heads (YOLOv8, YOLO11, YOLO26): per-object weights on the positive BCE elements.

METHOD.md §5b. The stock class loss is BCE over (image, anchor, class) against TaskAlignedAssigner's soft
targets, summed and divided by the sum of target scores. CLIP-CE multiplies the positive element of each
foreground anchor (that anchor at its assigned object's class) by the object's weight. Computed as the stock
loss plus `sum_fg (w' - 1) * BCE(positive element) / target_scores_sum * cls gain`: with every weight 1 the
extra term is exactly zero, and only the foreground anchors are touched, not (batch, anchor, class).

Hooks, not copies: the weights ride through Ultralytics' own `preprocess` (so they are padded exactly as the
targets are, empty images and empty slots included), and a forward hook on the assigner records its targets.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from ultralytics.utils.loss import E2ELoss, v8DetectionLoss
from ultralytics.utils.torch_utils import autocast

from clipce_rtdetr.method.ame import fame_weights


class ClipCEYOLOLoss(v8DetectionLoss):
    """`v8DetectionLoss` whose positive classification elements are weighted per ground-truth object.

    Set `object_weights` (N,) — one AME/prior weight per object of the batch, in `batch["cls"]` order — before
    the forward pass; `None` (validation, EMA) means the stock loss. With `fame=True` each anchor's weight is
    moved toward 1 by that anchor's own detached confidence for its object's class.
    """

    def __init__(self, model, tal_topk: int = 10, tal_topk2: int | None = None, fame: bool = True, fame_gamma=1.0):
        super().__init__(model, tal_topk=tal_topk, tal_topk2=tal_topk2)
        self.object_weights: torch.Tensor | None = None
        self.fame, self.fame_gamma = fame, float(fame_gamma)
        self.weighted = True  # False: this branch stays stock (E2E with clipce_terms=final)
        self._padded_weights = None  # (B, max objects) weights, padded as `preprocess` pads the targets
        self._assigned = None  # the assigner's last output
        self.assigner.register_forward_hook(self._record_assignment)
        self.reset_stats()

    def reset_stats(self) -> None:
        """Sums of the weights actually applied, per object with foreground anchors (for per-epoch logging)."""
        self.stats = {"applied_sum": 0.0, "n": 0}

    def _record_assignment(self, module, inputs, output) -> None:
        self._assigned = output

    @property
    def active(self) -> bool:
        return self.weighted and self.object_weights is not None

    def preprocess(self, targets: torch.Tensor, batch_size: int, scale_tensor: torch.Tensor) -> torch.Tensor:
        """Stock padding; the weights go through it as one more column, so they land in the same slots."""
        if not self.active:
            return super().preprocess(targets, batch_size, scale_tensor)
        w = self.object_weights.to(targets.device, torch.float32).view(-1, 1)
        if len(w) != len(targets):
            raise ValueError(f"object_weights has {len(w)} entries for {len(targets)} objects in the batch.")
        out = super().preprocess(torch.cat([targets.float(), w], 1), batch_size, scale_tensor)
        self._padded_weights = out[..., 5]
        return out[..., :5]

    def get_assigned_targets_and_loss(self, preds: dict, batch: dict, **assign_kwargs) -> tuple:
        if not self.active:
            return super().get_assigned_targets_and_loss(preds, batch, **assign_kwargs)
        try:
            assigned, loss, _ = super().get_assigned_targets_and_loss(preds, batch, **assign_kwargs)
            target_labels, _, target_scores, fg_mask, target_gt_idx = self._assigned
            extra = self._weighted_positive_term(preds, target_labels, target_scores, fg_mask, target_gt_idx)
        finally:
            self._padded_weights = self._assigned = None
        loss = loss + torch.stack([extra.new_zeros(()), extra * self.hyp.cls, extra.new_zeros(())])
        return assigned, loss, dict(zip(self.loss_names, loss.detach()))

    def _weighted_positive_term(self, preds, target_labels, target_scores, fg_mask, target_gt_idx) -> torch.Tensor:
        """sum over foreground anchors of (w' - 1) * BCE(positive element), divided by the sum of target scores."""
        scores = preds["scores"]  # (B, nc, anchors) logits
        b, a = fg_mask.nonzero(as_tuple=True)
        if not len(b):
            return scores.sum() * 0.0  # no foreground: zero, still in the graph
        c, slot = target_labels[b, a].long(), target_gt_idx[b, a].long()
        w = self._padded_weights[b, slot].float()
        with autocast(enabled=False, device=scores.device.type):
            logit = scores[b, c, a].float()
            if self.fame:
                w = fame_weights(w, logit.detach().sigmoid(), self.fame_gamma)  # METHOD.md §4
            target = target_scores[b, a, c].float()
            bce = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
            if self.class_weights is not None:  # stock multiplies every BCE element by its class weight
                bce = bce * self.class_weights.view(-1)[c].float()
            extra = ((w - 1.0) * bce).sum() / target_scores.sum().clamp(min=1).float()
        self._add_stats(w.detach(), b * self._padded_weights.shape[1] + slot)
        return extra

    def _add_stats(self, w: torch.Tensor, object_key: torch.Tensor) -> None:
        """Per object, the mean applied weight over its foreground anchors (an object has several), so that the
        logged mean compares with the per-object AME mean."""
        _, inverse, counts = torch.unique(object_key, return_inverse=True, return_counts=True)
        self.stats["applied_sum"] = self.stats["applied_sum"] + (w / counts[inverse]).sum()
        self.stats["n"] += len(counts)


class ClipCEE2ELoss(E2ELoss):
    """YOLO26's end-to-end loss (one-to-many + one-to-one branches), both branches weighted by CLIP-CE.

    `terms="final"` weights only the one-to-one branch, the one YOLO26 predicts with.
    """

    def __init__(self, model, fame: bool = True, fame_gamma: float = 1.0, terms: str = "all"):
        super().__init__(model, loss_fn=partial(ClipCEYOLOLoss, fame=fame, fame_gamma=fame_gamma))
        self.one2many.weighted = terms != "final"

    @property
    def object_weights(self) -> torch.Tensor | None:
        return self.one2one.object_weights

    @object_weights.setter
    def object_weights(self, w: torch.Tensor | None) -> None:
        self.one2many.object_weights = self.one2one.object_weights = w

    @property
    def stats(self) -> dict:
        """Applied weights over the foreground anchors of both weighted branches."""
        s1, s2 = self.one2many.stats, self.one2one.stats
        return {"applied_sum": s1["applied_sum"] + s2["applied_sum"], "n": s1["n"] + s2["n"]}

    def reset_stats(self) -> None:
        self.one2many.reset_stats()
        self.one2one.reset_stats()


def build_yolo_criterion(model, fame: bool = True, fame_gamma: float = 1.0, terms: str = "all"):
    """The CLIP-CE loss matching the stock one `model.init_criterion()` would build (E2E head or not)."""
    if getattr(model.model[-1], "one2one_cv2", None) is not None:
        return ClipCEE2ELoss(model, fame=fame, fame_gamma=fame_gamma, terms=terms)
    return ClipCEYOLOLoss(model, fame=fame, fame_gamma=fame_gamma)
