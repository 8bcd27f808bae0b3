"""CLIP-CE: RT-DETR's detection loss with per-object weights on the classification terms (METHOD.md §4-5).

The weighted loss is the stock varifocal classification loss plus, for each matched query, an extra
`(w' - 1) x` its positive element. That is algebraically the stock loss with the positive element
multiplied by w', so with every weight 1 the extra term is exactly zero and the loss equals
`RTDETRDetectionLoss` bit for bit; and only N matched elements are touched, not (batch, query, class).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from ultralytics.models.utils.loss import RTDETRDetectionLoss
from ultralytics.utils.torch_utils import autocast

from clipce_rtdetr.method.ame import fame_weights


class ClipCEDetectionLoss(RTDETRDetectionLoss):
    """`RTDETRDetectionLoss` whose positive classification elements are weighted per ground-truth object.

    Set `object_weights` (N,) — one AME/prior weight per ground-truth object of the batch, in the order of
    `batch["cls"]` — before the forward pass; `None` (validation, EMA) means weight 1 everywhere.
    With `fame=True` each weight is moved toward 1 by the confidence of that term's own matched query.
    The criterion holds no parameters or buffers, so it never changes a state_dict.
    """

    def __init__(self, nc: int = 80, fame: bool = True, fame_gamma: float = 1.0, terms: str = "all"):
        super().__init__(nc=nc, use_vfl=True)
        self.object_weights: torch.Tensor | None = None
        self.fame, self.fame_gamma, self.terms = fame, float(fame_gamma), terms
        self._match = None  # match indices of the term being computed
        self._in_aux = False
        self.reset_stats()

    def reset_stats(self) -> None:
        """Sums over the final-layer term of the weights actually applied (for per-epoch logging)."""
        self.stats = {"applied_sum": 0.0, "n": 0}

    def _get_loss_aux(self, *args, **kwargs):
        self._in_aux = True
        try:
            return super()._get_loss_aux(*args, **kwargs)
        finally:
            self._in_aux = False

    def _get_loss(self, pred_bboxes, pred_scores, gt_bboxes, gt_cls, gt_groups, postfix="", match_indices=None):
        if self.object_weights is None:
            return super()._get_loss(pred_bboxes, pred_scores, gt_bboxes, gt_cls, gt_groups, postfix, match_indices)
        if match_indices is None:  # match here (once) so the class term can see which query got which object
            match_indices = self.matcher(pred_bboxes, pred_scores, gt_bboxes, gt_cls, gt_groups)
        self._match = match_indices
        try:
            return super()._get_loss(pred_bboxes, pred_scores, gt_bboxes, gt_cls, gt_groups, postfix, match_indices)
        finally:
            self._match = None

    def _get_loss_class(self, pred_scores, targets, gt_scores, num_gts, postfix=""):
        out = super()._get_loss_class(pred_scores, targets, gt_scores, num_gts, postfix)
        final = not self._in_aux and postfix == ""
        if self._match is None or not num_gts or (self.terms == "final" and not final):
            return out
        (b, q), gt_idx = self._get_index(self._match)
        if not len(gt_idx):
            return out
        b, q, gt_idx = torch.stack([b, q, gt_idx]).to(pred_scores.device, non_blocking=True)  # one copy per term
        w = self.object_weights.to(pred_scores.device)[gt_idx].float()
        nq = pred_scores.shape[1]
        with autocast(enabled=False, device=pred_scores.device.type):
            logit = pred_scores[b, q, targets[b, q]].float()
            if self.fame:
                w = fame_weights(w, logit.detach().sigmoid(), self.fame_gamma)  # METHOD.md §4
            gts = gt_scores[b, q].float()  # varifocal weight of a positive element is its IoU target
            extra = ((w - 1.0) * gts * F.binary_cross_entropy_with_logits(logit, gts, reduction="none")).sum() / nq
            extra = extra / (max(num_gts, 1) / nq) * self.loss_gain["class"]
        name = f"loss_class{postfix}"
        out[name] = out[name] + extra
        if final:
            self.stats["applied_sum"] = self.stats["applied_sum"] + w.detach().sum()  # no host sync per batch
            self.stats["n"] += len(w)
        return out
