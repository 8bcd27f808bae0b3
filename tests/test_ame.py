"""AME / FAME (METHOD.md §1-4) against hand computations; crops against hand crops; the scorer end to end."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clipce_rtdetr.errors import ClipCEError
from clipce_rtdetr.method.ame import (
    AMEScorer,
    ame_q,
    ame_weights,
    build_text_bank,
    check_params,
    crop_boxes,
    fame_weights,
    masks_for,
    normalise,
)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    from clipce_rtdetr.clip.loader import load_clip, make_random_clip

    spec = make_random_clip(tmp_path_factory.mktemp("clip") / "tiny.pt", seed=0)
    return load_clip(spec)


def _fixed_bank():
    # rows: class 0, class 1, scene negative
    text = torch.eye(3)
    pos_index, neg_mask = masks_for(2, 1)
    return text, pos_index, neg_mask


def test_masks_layout():
    pos_index, neg_mask = masks_for(3, 2)
    assert pos_index.tolist() == [0, 1, 2]
    assert neg_mask.tolist() == [
        [False, True, True, True, True],
        [True, False, True, True, True],
        [True, True, False, True, True],
    ]


@pytest.mark.parametrize("scale,temp", [(10.0, 1.0), (10.0, 2.0), (100.0, 0.5)])
def test_ame_q_hand(scale, temp):
    text, pos_index, neg_mask = _fixed_bank()
    v = F.normalize(torch.tensor([[0.8, 0.6, 0.0], [0.8, 0.6, 0.0], [0.0, 0.6, 0.8]]), dim=-1)
    cls = torch.tensor([0, 1, 1])
    q = ame_q(v, cls, text, pos_index, neg_mask, scale, temp)
    s = scale / temp
    z = [[0.8 * s, 0.6 * s, 0.0], [0.8 * s, 0.6 * s, 0.0], [0.0, 0.6 * s, 0.8 * s]]

    def hand(zr, c):
        m = max(zr)
        e = [math.exp(x - m) for x in zr]  # every other row is a negative here
        return e[c] / sum(e)

    expect = [hand(z[0], 0), hand(z[1], 1), hand(z[2], 1)]
    assert q.dtype == torch.float32
    assert q.tolist() == pytest.approx(expect, rel=1e-5, abs=1e-7)


def test_ame_q_excludes_non_negatives():
    # class 0's negatives exclude its own row: a bank where only the scene row is a negative
    text = torch.eye(3)
    pos_index = torch.tensor([0, 1])
    neg_mask = torch.tensor([[False, False, True], [False, False, True]])
    v = F.normalize(torch.tensor([[1.0, 1.0, 0.0]]), dim=-1)
    q = ame_q(v, torch.tensor([0]), text, pos_index, neg_mask, 10.0, 1.0)
    z = 10 / math.sqrt(2)
    assert q.item() == pytest.approx(math.exp(z) / (math.exp(z) + math.exp(0.0)), rel=1e-6)


def test_ame_q_stable_and_no_negatives():
    text, pos_index, neg_mask = _fixed_bank()
    v = F.normalize(torch.randn(50, 3), dim=-1)
    q = ame_q(v, torch.randint(0, 2, (50,)), text, pos_index, neg_mask, 100.0, 1e-3)  # z up to 1e5
    assert torch.isfinite(q).all() and (q >= 0).all() and (q <= 1).all()
    # one class, no scene negatives: nothing competes, q = 1 and w = 1
    q1 = ame_q(v[:4], torch.zeros(4, dtype=torch.long), torch.eye(3)[:1], *masks_for(1, 0), 100.0, 1.0)
    assert q1.tolist() == [1.0] * 4
    assert ame_weights(q1, 2.0, "exp").tolist() == [1.0] * 4


def test_ame_weights_forms():
    q = torch.tensor([1.0, 0.75, 0.2, 0.0])
    d = [0.0, 0.25, 0.8, 1.0]
    assert ame_weights(q, 1.5, "exp").tolist() == pytest.approx([math.exp(1.5 * x) for x in d], rel=1e-6)
    assert ame_weights(q, 1.5, "linear").tolist() == pytest.approx([1 + 1.5 * x for x in d], rel=1e-6)
    assert ame_weights(q, 0.0, "exp").tolist() == [1.0] * 4
    w = ame_weights(q, 1.0, "exp")
    assert (w >= 1).all() and (w <= math.e + 1e-6).all()
    with pytest.raises(ClipCEError, match="ame_form"):
        ame_weights(q, 1.0, "quadratic")


def test_fame_weights_hand():
    w = torch.tensor([2.0, 2.0, 2.0, 3.0, 1.0])
    p = torch.tensor([0.25, 0.0, 1.0, 0.5, 0.3], requires_grad=True)
    out = fame_weights(w, p, gamma=2.0)
    assert out.tolist() == pytest.approx([1 + 0.75**2, 2.0, 1.0, 1 + 2 * 0.25, 1.0], rel=1e-6)
    assert not out.requires_grad  # p is detached
    assert fame_weights(w, p, gamma=0.0).tolist() == pytest.approx(w.tolist())  # gamma 0: AME
    assert fame_weights(w, p, gamma=1.0).tolist() == pytest.approx([1 + 0.75, 2.0, 1.0, 2.0, 1.0], rel=1e-6)


def test_check_params():
    check_params(0.1, 1.0, 1.0, "exp", 1.0)
    for kw, msg in [
        (dict(context=-0.1), "ame_context"),
        (dict(temperature=0.0), "ame_temperature"),
        (dict(alpha=-1.0), "ame_alpha"),
        (dict(gamma=-1.0), "fame_gamma"),
        (dict(form="cubic"), "ame_form"),
    ]:
        args = dict(context=0.1, temperature=1.0, alpha=1.0, form="exp", gamma=1.0) | kw
        with pytest.raises(ClipCEError, match=msg):
            check_params(**args)


def _img(b=2, h=20, w=24):
    return torch.arange(b * 3 * h * w, dtype=torch.float32).view(b, 3, h, w) / (b * 3 * h * w)


def test_crop_matches_hand_crop():
    img = _img()
    boxes = torch.tensor(
        [[4.0, 2.0, 12.0, 10.0], [6.0, 4.0, 10.0, 8.0], [-5.0, -5.0, 8.0, 8.0], [4.0, 2.0, 12.0, 10.0]]
    )
    bi = torch.tensor([0, 0, 1, 1])
    crops, valid = crop_boxes(img, boxes[:1], bi[:1], size=8, context=0.0)
    assert torch.allclose(crops[0], img[0, :, 2:10, 4:12], atol=1e-6)
    # context 0.5 on a 4x4 box: 2 px on each side -> the same 8x8 region
    crops, _ = crop_boxes(img, boxes[1:2], bi[1:2], size=8, context=0.5)
    assert torch.allclose(crops[0], img[0, :, 2:10, 4:12], atol=1e-6)
    # clamped to the image; second image of the batch
    crops, valid = crop_boxes(img, boxes[2:4], bi[2:4], size=8, context=0.0)
    assert torch.allclose(crops[0], img[1, :, 0:8, 0:8], atol=1e-6)
    assert torch.allclose(crops[1], img[1, :, 2:10, 4:12], atol=1e-6)
    assert valid.tolist() == [True, True]
    # downscale by 2: each output pixel is the mean of its 2x2 block (antialiased)
    crops, _ = crop_boxes(img, boxes[:1], bi[:1], size=4, context=0.0)
    assert torch.allclose(crops[0], F.avg_pool2d(img[0:1, :, 2:10, 4:12], 2)[0], atol=1e-6)
    # aspect not kept: an 8x4 box to a square
    crops, _ = crop_boxes(img, torch.tensor([[4.0, 2.0, 12.0, 6.0]]), bi[:1], size=4, context=0.0)
    assert crops.shape == (1, 3, 4, 4)
    assert torch.allclose(crops[0], F.avg_pool2d(img[0:1, :, 2:6, 4:12], (1, 2))[0], atol=1e-6)


def test_crop_validity_and_empty():
    img = _img()
    boxes = torch.tensor([[3.0, 3.0, 4.5, 10.0], [3.0, 3.0, 10.0, 4.9], [22.5, 3.0, 40.0, 9.0], [3.0, 3.0, 5.0, 5.0]])
    _, valid = crop_boxes(img, boxes, torch.zeros(4), size=8, context=0.1)
    assert valid.tolist() == [False, False, False, True]  # 1.5 px, 1.9 px, 1.5 px after clamping, 2 px
    crops, valid = crop_boxes(img, torch.zeros(0, 4), torch.zeros(0), size=8, context=0.1)
    assert crops.shape == (0, 3, 8, 8) and valid.shape == (0,)
    u8 = (img * 255).to(torch.uint8)
    c8, _ = crop_boxes(u8, boxes[3:], torch.zeros(1), size=4)
    assert c8.dtype == torch.float32 and c8.max() <= 1.0


def test_normalise():
    x = torch.ones(2, 3, 4, 4)
    y = normalise(x, (0.5, 0.25, 0.0), (0.5, 0.25, 2.0))
    assert (
        y[:, 0].unique().tolist() == [1.0] and y[:, 1].unique().tolist() == [3.0] and y[:, 2].unique().tolist() == [0.5]
    )


def test_text_bank_averages_templates(tiny_bundle):
    from clipce_rtdetr.method.prompts import build_prompts

    prompts = build_prompts("haze", ["car", "bus"], templates=["a photo of a {}.", "a blurry photo of a {}."])
    bank = build_text_bank(tiny_bundle, prompts)
    assert bank.text.shape == (2 + 3, tiny_bundle.embed_dim)
    e = tiny_bundle.encode_texts(["a photo of a car.", "a blurry photo of a car."])
    assert torch.allclose(bank.text[0], F.normalize(e.mean(0), dim=0), atol=1e-5)
    assert torch.allclose(
        bank.text[2:],
        tiny_bundle.encode_texts(["a photo of fog.", "a photo of haze.", "a photo of the background."]),
        atol=1e-5,
    )
    assert torch.allclose(bank.text.norm(dim=1), torch.ones(5), atol=1e-5)


def test_scorer_matches_manual_pipeline(tiny_bundle):
    names = {0: "car", 1: "bus", 2: "person"}
    scorer = AMEScorer(tiny_bundle, names, "haze", context=0.1, temperature=0.5, alpha=1.5, form="linear")
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(2, 3, 96, 128, generator=g)
    boxes = torch.tensor(
        [[10.0, 10.0, 60.0, 50.0], [0.0, 0.0, 1.0, 40.0], [30.0, 20.0, 127.0, 95.0], [5.0, 5.0, 40.0, 90.0]]
    )
    bi = torch.tensor([0, 0, 1, 1])
    cls = torch.tensor([0, 1, 2, 1])
    q, d, w = scorer.score_boxes(imgs, boxes, bi, cls)
    assert q.shape == d.shape == w.shape == (4,)
    # box 1 is 1 px wide: not scored, weight exactly 1
    assert q[1].item() == 1.0 and d[1].item() == 0.0 and w[1].item() == 1.0
    crops, valid = crop_boxes(imgs, boxes, bi, tiny_bundle.image_size, 0.1)
    emb = tiny_bundle.encode_images(normalise(crops, tiny_bundle.mean, tiny_bundle.std))
    qm = ame_q(emb, cls, scorer.bank.text, scorer.bank.pos_index, scorer.bank.neg_mask, tiny_bundle.logit_scale, 0.5)
    keep = valid.nonzero().view(-1)
    assert torch.allclose(q[keep], qm[keep], atol=1e-5)
    assert torch.allclose(w[keep], 1 + 1.5 * (1 - qm[keep]), atol=1e-5)
    assert torch.allclose(d, 1 - q)
    # per-object scoring equals the batched scoring (no cross-talk between objects)
    for i in keep.tolist():
        qi, _, _ = scorer.score_boxes(imgs, boxes[i : i + 1], bi[i : i + 1], cls[i : i + 1])
        assert qi.item() == pytest.approx(q[i].item(), abs=1e-5)
    # score_crops on the normalised crops agrees
    q2, _, w2 = scorer.score_crops(normalise(crops, tiny_bundle.mean, tiny_bundle.std), cls, valid)
    assert torch.allclose(q2, q, atol=1e-5) and torch.allclose(w2, w, atol=1e-5)


def test_scorer_empty_and_info(tiny_bundle):
    scorer = AMEScorer(tiny_bundle, ["car", "motorbike"], "haze")
    q, d, w = scorer.score_boxes(torch.rand(1, 3, 32, 32), torch.zeros(0, 4), torch.zeros(0), torch.zeros(0))
    assert q.shape == d.shape == w.shape == (0,)
    q, d, w = scorer.score_crops(torch.zeros(0, 3, 64, 64), torch.zeros(0))
    assert q.shape == (0,)
    info = scorer.info
    assert info["classes"][1]["positive"] == ["a photo of a motorcycle."]
    assert info["classes"][0]["negative"] == [
        "a photo of a motorcycle.",
        "a photo of fog.",
        "a photo of haze.",
        "a photo of the background.",
    ]
    assert info["logit_scale"] == pytest.approx(tiny_bundle.logit_scale)
    for k in ("temperature", "alpha", "form", "context", "templates", "clip"):
        assert k in info
    import json

    json.dumps(info)  # prompts.json-ready
    with pytest.raises(ClipCEError, match="out of range"):
        scorer.score_embeddings(torch.zeros(1, tiny_bundle.embed_dim), torch.tensor([5]))


def _crowded_batch(n=13):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 96, 96, generator=g)
    xy = torch.rand(n, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + 8 + torch.rand(n, 2, generator=g) * 28], 1)
    return images, boxes, torch.arange(n) % 2, torch.arange(n) % 2


def test_batch_scoring_is_fp32_under_autocast(tiny_bundle):
    """Issue 13.2: inside the trainer's autocast (bf16 here, on CPU) q equals the fp32 result."""
    scorer = AMEScorer(tiny_bundle, ["circle", "square"], "haze")
    scorer.logit_scale = 100.0  # the scale of a trained CLIP: where low precision hurts q most
    images, boxes, bi, cls = _crowded_batch()
    q32, _, w32 = scorer.score_boxes(images, boxes, bi, cls)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q16, _, w16 = scorer.score_boxes(images, boxes, bi, cls)
    assert q16.dtype == torch.float32
    assert torch.allclose(q16, q32, atol=1e-4, rtol=0) and torch.allclose(w16, w32, atol=1e-4, rtol=0)


def test_batch_scoring_in_chunks(tiny_bundle, monkeypatch):
    """Issue 13.3: ame_batch crops per CLIP forward (and per crop tensor), the same result as all at once."""
    import clipce_rtdetr.method.ame as ame

    images, boxes, bi, cls = _crowded_batch()
    whole = AMEScorer(tiny_bundle, ["circle", "square"], "haze", batch_size=1000).score_boxes(images, boxes, bi, cls)
    crop_sizes, encode_sizes = [], []
    real_crop, real_encode = ame.crop_boxes, tiny_bundle.encode_images
    monkeypatch.setattr(ame, "crop_boxes", lambda *a, **k: crop_sizes.append(len(a[1])) or real_crop(*a, **k))
    monkeypatch.setattr(tiny_bundle, "encode_images", lambda x, b=64: encode_sizes.append(len(x)) or real_encode(x, b))
    chunked = AMEScorer(tiny_bundle, ["circle", "square"], "haze", batch_size=4).score_boxes(images, boxes, bi, cls)
    assert max(crop_sizes) <= 4 and sum(crop_sizes) == len(boxes) and max(encode_sizes) <= 4
    for a, b in zip(whole, chunked):
        assert torch.allclose(a, b, atol=1e-6)
