"""clipce=prior (METHOD.md §6): dark-channel depth, box means, weights higher in haze."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clipce_rtdetr.method.prior import (
    box_means,
    dark_channel,
    depth_map,
    prior_scores,
    prior_weights,
    prior_weights_batch,
)


def _hazy_scene(h=120, w=160, seed=0):
    """A textured clean scene hazed with a transmission of 0.9 on the left half and 0.15 on the right."""
    rng = np.random.default_rng(seed)
    J = rng.uniform(0.0, 0.6, (h, w, 3)).astype(np.float32)
    J[::7, :, :] = 0.02  # dark lines: the dark channel of a clean region is near 0
    t = np.full((h, w, 1), 0.9, np.float32)
    t[:, w // 2 :] = 0.15
    A = np.array([0.9, 0.92, 0.95], np.float32)
    return J * t + A * (1 - t)


def test_dark_channel_is_patch_min():
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 1, (30, 40, 3)).astype(np.float32)
    dc = dark_channel(img, patch=5)
    m = img.min(2)
    for y, x in [(10, 10), (15, 20), (2, 2), (29, 39)]:
        ys, xs = slice(max(0, y - 2), y + 3), slice(max(0, x - 2), x + 3)
        assert dc[y, x] == pytest.approx(m[ys, xs].min())
    assert dark_channel((img * 255).astype(np.uint8)).dtype == np.float32


def test_box_means_integral():
    v = np.arange(12 * 10, dtype=np.float32).reshape(12, 10)
    boxes = np.array([[2, 3, 6, 8], [0, 0, 10, 12], [1.2, 1.5, 4.7, 3.1], [9.5, 0, 12, 1]])
    means, valid = box_means(v, boxes)
    assert means[0] == pytest.approx(v[3:8, 2:6].mean())
    assert means[1] == pytest.approx(v.mean())
    assert means[2] == pytest.approx(v[1:4, 1:5].mean())  # rounded outward
    assert valid.tolist() == [True, True, False, False]  # 1.6 px tall; 0.5 px wide after clamping


def test_prior_weights_higher_in_haze():
    img = _hazy_scene()
    depth = depth_map(img)
    assert depth[:, 100:].mean() > depth[:, :60].mean() + 0.5
    boxes = np.array([[10, 20, 60, 100], [100, 20, 150, 100], [75, 10, 85, 110], [5, 5, 6, 60]], np.float32)
    mu, w = prior_scores(img, boxes, a=1.5)
    assert w[1] > w[2] > w[0] > 1.0  # dense haze > straddling > light haze
    assert (mu[:3] <= 1.0 + 1e-6).all()
    assert w[:3] == pytest.approx(np.exp(1.5 * mu[:3]), rel=1e-6)
    assert w[3] == 1.0 and mu[3] == 0.0  # 1 px wide: weight exactly 1
    u8 = (img * 255).round().astype(np.uint8)
    assert prior_weights(u8, boxes)[1] > prior_weights(u8, boxes)[0]


def test_prior_empty_and_batch():
    img = _hazy_scene()
    assert prior_weights(img, np.zeros((0, 4))).shape == (0,)
    batch = torch.from_numpy(np.stack([img, img[:, ::-1].copy()])).permute(0, 3, 1, 2).contiguous()
    boxes = torch.tensor([[10.0, 20.0, 60.0, 100.0], [100.0, 20.0, 150.0, 100.0], [10.0, 20.0, 60.0, 100.0]])
    bi = torch.tensor([0, 0, 1])
    w = prior_weights_batch(batch, boxes, bi, a=1.5)
    assert w.shape == (3,) and w.dtype == torch.float32
    assert w[0].item() == pytest.approx(float(prior_weights(img, boxes[:1].numpy())[0]), rel=1e-5)
    assert w[2].item() > w[0].item()  # flipped image: the left box is now in the dense haze
    assert prior_weights_batch(batch, torch.zeros(0, 4), torch.zeros(0)).shape == (0,)
    # a haze-free flat image: depth is 0 everywhere -> mu 0, w 1 (no division by zero)
    flat = np.zeros((40, 40, 3), np.float32)
    mu, w = prior_scores(flat, np.array([[5, 5, 20, 20]]))
    assert math.isfinite(mu[0]) and w[0] == pytest.approx(1.0)
