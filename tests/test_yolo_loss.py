"""CLIP-CE's YOLO loss against Ultralytics' own v8DetectionLoss / E2ELoss on the same inputs (METHOD.md §5b)."""

from __future__ import annotations

import pytest
import torch
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import DEFAULT_CFG
from ultralytics.utils.loss import E2ELoss, v8DetectionLoss

from clipce_rtdetr.method.ame import fame_weights
from clipce_rtdetr.models.yolo.loss import ClipCEE2ELoss, ClipCEYOLOLoss, build_yolo_criterion

IMGSZ = 64


@pytest.fixture(scope="module", params=["yolo11n.yaml", "yolo26n.yaml"])
def model(request):
    torch.manual_seed(0)
    m = DetectionModel(request.param, nc=3, verbose=False)
    m.args = get_cfg(DEFAULT_CFG, {"cls": 0.7})  # a cls gain other than 1, so a missing gain shows
    return m.train()


def _preds(model, bs=3, seed=0):
    torch.manual_seed(seed)
    return model(torch.rand(bs, 3, IMGSZ, IMGSZ))


def _batch(objects_per_image, seed=0):
    """Objects in Ultralytics' collate order (sorted by image); an image may have none."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.cat([torch.full((n,), i, dtype=torch.float32) for i, n in enumerate(objects_per_image)])
    n = len(idx)
    xy = 0.25 + 0.5 * torch.rand(n, 2, generator=g)
    wh = 0.25 + 0.3 * torch.rand(n, 2, generator=g)
    cls = torch.randint(0, 3, (n, 1), generator=g).float()
    return {"batch_idx": idx, "cls": cls, "bboxes": torch.cat([xy, wh], 1)}


def _branches(model, preds):
    """(stock per-branch loss, that branch's preds, its gain) for the model's stock criterion."""
    stock = model.init_criterion()
    if isinstance(stock, E2ELoss):
        return [(stock.one2many, preds["one2many"]), (stock.one2one, preds["one2one"])]
    return [(stock, preds)]


def _expected_weighted_cls(stock: v8DetectionLoss, preds, batch, weights, fame=False, gamma=1.0):
    """Independent of the implementation: the stock BCE over all (image, anchor, class) elements, each multiplied
    by an element weight tensor that is 1 except at each foreground anchor's assigned class, where it is w'."""
    seen = {}
    hook = stock.assigner.register_forward_hook(lambda mod, i, o: seen.setdefault("out", o))
    try:
        stock_loss = stock.get_assigned_targets_and_loss(preds, batch)[1]
    finally:
        hook.remove()
    labels, _, target_scores, fg, gt_idx = seen["out"]
    # slot j of image i holds the j-th object of image i in batch order
    bidx = batch["batch_idx"].long()
    slot_of = torch.cat([torch.arange((bidx == i).sum()) for i in range(target_scores.shape[0])])
    padded = torch.zeros(target_scores.shape[0], max(int(slot_of.max()) + 1, 1) if len(slot_of) else 1)
    if len(bidx):
        padded[bidx, slot_of] = weights
    logits = preds["scores"].permute(0, 2, 1).float()
    elem_w = torch.ones_like(logits)
    b, a = fg.nonzero(as_tuple=True)
    c = labels[b, a].long()
    w = padded[b, gt_idx[b, a].long()]
    if fame:
        w = fame_weights(w, logits[b, a, c].detach().sigmoid(), gamma)
    elem_w[b, a, c] = w
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target_scores, reduction="none")
    cls = (elem_w * bce).sum() / target_scores.sum().clamp(min=1) * stock.hyp.cls
    return stock_loss, cls, len(b)


@pytest.mark.parametrize("per_image", [[3, 1, 0], [0, 0, 0], [1, 4, 2]])
def test_unit_weights_equal_stock(model, per_image):
    preds, batch = _preds(model), _batch(per_image)
    stock_total, stock_items = model.init_criterion()(preds, batch)
    crit = build_yolo_criterion(model, fame=True)
    for w in (None, torch.ones(len(batch["cls"]))):
        crit.object_weights = w
        total, items = crit(preds, batch)
        assert items.keys() == stock_items.keys()
        for k in items:
            assert torch.allclose(items[k], stock_items[k], atol=1e-6, rtol=0), k
        assert torch.allclose(total, stock_total, atol=1e-6, rtol=0)


@pytest.mark.parametrize("fame", [False, True])
@pytest.mark.parametrize("per_image", [[3, 1, 0], [1, 4, 2], [0, 2, 0]])
def test_weighted_equals_stock_plus_positive_term(model, per_image, fame):
    preds, batch = _preds(model), _batch(per_image, seed=1)
    n = len(batch["cls"])
    weights = torch.linspace(0.3, 2.5, n)  # a distinct weight per object: a wrong object->slot mapping shows
    crit = build_yolo_criterion(model, fame=fame, fame_gamma=1.5)
    crit.object_weights = weights
    crit(preds, batch)  # one full call through __call__ first (E2E parses the preds itself)
    n_fg_total = 0
    for (stock, p), mine in zip(_branches(model, preds), _my_branches(crit)):
        stock_loss, expected_cls, n_fg = _expected_weighted_cls(stock, p, batch, weights, fame=fame, gamma=1.5)
        loss = mine.get_assigned_targets_and_loss(p, batch)[1]
        assert torch.allclose(loss[1], expected_cls, atol=1e-6, rtol=1e-6)
        assert torch.allclose(loss[[0, 2]], stock_loss[[0, 2]], atol=1e-7, rtol=0)  # box and DFL unchanged
        n_fg_total += n_fg
        if n_fg:
            assert not torch.allclose(loss[1], stock_loss[1])  # the weights did something
    assert n_fg_total > 0


def _my_branches(crit):
    return [crit.one2many, crit.one2one] if isinstance(crit, ClipCEE2ELoss) else [crit]


def test_gradient_flows_through_weighted_term(model):
    crit = build_yolo_criterion(model, fame=False)
    batch = _batch([2, 1, 1])
    crit.object_weights = torch.full((4,), 2.0)
    preds = _preds(model)
    total, _ = crit(preds, batch)
    model.zero_grad()
    total.sum().backward()
    grads = [p.grad for p in model.model[-1].parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_fame_moves_weights_toward_one_with_confidence(model):
    """With the class logits pushed high (p ~ 1), FAME's applied weights approach 1; AME's stay at w."""
    batch = _batch([2, 2, 1], seed=3)
    weights = torch.full((5,), 2.0)
    preds = _preds(model)

    def applied(fame, shift):
        crit = build_yolo_criterion(model, fame=fame)
        crit.object_weights = weights
        shifted = _shift_scores(preds, shift)
        crit(shifted, batch)
        return float(crit.stats["applied_sum"]) / crit.stats["n"]

    assert applied(False, 0.0) == pytest.approx(2.0)
    low, high = applied(True, 0.0), applied(True, 20.0)  # the head starts near p = 0 (bias init)
    assert 1.0 < high < low <= 2.0
    assert high < 1.01 and low > 1.9


def _shift_scores(preds, shift):
    if "one2one" in preds:
        return {k: {**v, "scores": v["scores"] + shift} for k, v in preds.items()}
    return {**preds, "scores": preds["scores"] + shift}


def test_terms_final_leaves_the_one_to_many_branch_stock():
    torch.manual_seed(0)
    m = DetectionModel("yolo26n.yaml", nc=3, verbose=False)
    m.args = get_cfg(DEFAULT_CFG)
    preds, batch = _preds(m.train()), _batch([2, 1, 0])
    crit = build_yolo_criterion(m, terms="final")
    crit.object_weights = torch.full((3,), 3.0)
    stock = E2ELoss(m)
    mine_o2m = crit.one2many.get_assigned_targets_and_loss(preds["one2many"], batch)[1]
    stock_o2m = stock.one2many.get_assigned_targets_and_loss(preds["one2many"], batch)[1]
    assert torch.equal(mine_o2m, stock_o2m)
    mine_o2o = crit.one2one.get_assigned_targets_and_loss(preds["one2one"], batch)[1]
    assert not torch.allclose(mine_o2o[1], stock.one2one.get_assigned_targets_and_loss(preds["one2one"], batch)[1][1])


def test_criterion_matches_the_head_and_checks_weight_count(model):
    crit = build_yolo_criterion(model)
    assert isinstance(crit, ClipCEE2ELoss if isinstance(model.init_criterion(), E2ELoss) else ClipCEYOLOLoss)
    crit.object_weights = torch.ones(2)
    with pytest.raises(ValueError, match="2 entries for 3 objects"):
        crit(_preds(model), _batch([2, 1, 0]))
