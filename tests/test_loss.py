"""CLIP-CE loss: parity with stock RT-DETR at weight 1, and weights acting only where METHOD.md says."""

from __future__ import annotations

import math

import pytest
import torch
from ultralytics.models.utils.loss import RTDETRDetectionLoss
from ultralytics.nn.tasks import RTDETRDetectionModel

from clipce_rtdetr.models.rtdetr.loss import ClipCEDetectionLoss
from tests.conftest import TINY_MODEL

NC = 5


def _batch(seed=0, counts=(3, 0, 2)):
    g = torch.Generator().manual_seed(seed)
    bs = len(counts)
    n = sum(counts)
    batch_idx = torch.cat([torch.full((c,), i, dtype=torch.float32) for i, c in enumerate(counts)])
    xy = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    wh = torch.rand(n, 2, generator=g) * 0.2 + 0.05
    return {
        "img": torch.rand(bs, 3, 64, 64, generator=g),
        "cls": torch.randint(0, NC, (n, 1), generator=g).float(),
        "bboxes": torch.cat([xy, wh], 1),
        "batch_idx": batch_idx,
    }


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    m = RTDETRDetectionModel(TINY_MODEL, nc=NC, verbose=False)
    m.nc = NC
    m.train()
    return m


def _terms(model, criterion, batch, weights=None, seed=0):
    """All 12 loss terms for the same inputs (denoising noise fixed by the seed)."""
    model.criterion = criterion
    criterion.object_weights = weights
    captured = {}
    forward = criterion.forward

    def spy(*a, **k):
        out = forward(*a, **k)
        captured.update(out)
        return out

    criterion.forward = spy
    torch.manual_seed(seed)
    total, _ = model.loss(batch)
    criterion.forward = forward
    return total, captured


def test_parity_with_stock_when_weights_are_one(detector):
    batch = _batch()
    total_s, stock = _terms(detector, RTDETRDetectionLoss(nc=NC, use_vfl=True), batch)
    for fame in (True, False):
        w = torch.ones(len(batch["cls"]))
        total_c, ours = _terms(detector, ClipCEDetectionLoss(nc=NC, fame=fame), batch, w)
        assert set(ours) == set(stock) and len(stock) == 12
        for k in stock:
            assert torch.allclose(ours[k], stock[k], atol=1e-6, rtol=0), k
        assert abs(float(total_c.detach()) - float(total_s.detach())) < 1e-6
    # No weights at all (validation / EMA): identical too.
    total_n, _ = _terms(detector, ClipCEDetectionLoss(nc=NC), batch, None)
    assert abs(float(total_n.detach()) - float(total_s.detach())) < 1e-6


def test_weights_change_only_classification_terms(detector):
    batch = _batch(1)
    _, base = _terms(detector, ClipCEDetectionLoss(nc=NC, fame=False), batch, torch.ones(len(batch["cls"])))
    _, heavy = _terms(detector, ClipCEDetectionLoss(nc=NC, fame=False), batch, torch.full((len(batch["cls"]),), 2.5))
    for k in base:
        if k.startswith("loss_class"):
            assert heavy[k] > base[k], k  # every classification term (final, aux+encoder, dn, aux dn) grows
        else:
            assert torch.equal(heavy[k], base[k]), k


def test_final_terms_only(detector):
    batch = _batch(2)
    w = torch.full((len(batch["cls"]),), 2.0)
    _, base = _terms(detector, ClipCEDetectionLoss(nc=NC, fame=False, terms="final"), batch, torch.ones_like(w))
    _, fin = _terms(detector, ClipCEDetectionLoss(nc=NC, fame=False, terms="final"), batch, w)
    assert fin["loss_class"] > base["loss_class"]
    for k in ("loss_class_aux", "loss_class_dn", "loss_class_aux_dn"):
        assert torch.equal(fin[k], base[k]), k


def test_weighted_term_matches_hand_computation():
    """One image, one object, matched query known: the loss equals the stock loss with the positive element x w'."""
    torch.manual_seed(0)
    nq, nc = 4, 3
    crit = ClipCEDetectionLoss(nc=nc, fame=True, fame_gamma=2.0)
    stock = RTDETRDetectionLoss(nc=nc, use_vfl=True)
    scores = torch.randn(1, nq, nc)
    targets = torch.full((1, nq), nc, dtype=torch.long)
    targets[0, 2] = 1
    gt_scores = torch.zeros(1, nq)
    gt_scores[0, 2] = 0.7
    crit.object_weights = torch.tensor([1.8])
    crit._match = [(torch.tensor([2]), torch.tensor([0]))]
    ours = crit._get_loss_class(scores, targets, gt_scores, 1)["loss_class"]
    base = stock._get_loss_class(scores, targets, gt_scores, 1)["loss_class"]
    p = torch.sigmoid(scores[0, 2, 1])
    w = 1 + 0.8 * (1 - p) ** 2
    bce = -(0.7 * math.log(p) + 0.3 * math.log(1 - p))
    expected = base + (w - 1) * 0.7 * bce / nq / (1 / nq)
    assert torch.allclose(ours, expected, atol=1e-6)


def test_gradients_reach_detector(detector):
    batch = _batch(3)
    detector.zero_grad()
    total, _ = _terms(detector, ClipCEDetectionLoss(nc=NC), batch, torch.full((len(batch["cls"]),), 2.0))
    total.backward()
    grads = [p.grad for p in detector.parameters() if p.requires_grad]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > len(grads) // 2


def test_criterion_adds_nothing_to_state_dict(detector):
    before = set(detector.state_dict())
    detector.criterion = ClipCEDetectionLoss(nc=NC)
    assert set(detector.state_dict()) == before
