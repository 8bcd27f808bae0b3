"""Physics of image degradation (METHOD.md §7): haze by atmospheric scattering, depth priors.

All functions work on float images in [0, 1] (H, W, 3) and return float32 in [0, 1].
"""

from __future__ import annotations

import numpy as np


def transmission(depth: np.ndarray, beta: float) -> np.ndarray:
    """t(x) = exp(-beta * d(x))."""
    return np.exp(-float(beta) * np.asarray(depth, dtype=np.float32)).astype(np.float32)


def apply_haze(clean: np.ndarray, depth: np.ndarray, beta: float, airlight: float | np.ndarray) -> np.ndarray:
    """I(x) = J(x) t(x) + A (1 - t(x)); beta = 0 returns the clean image unchanged."""
    j = np.asarray(clean, dtype=np.float32)
    t = transmission(depth, beta)[..., None] if j.ndim == 3 else transmission(depth, beta)
    a = np.asarray(airlight, dtype=np.float32)
    return np.clip(j * t + a * (1.0 - t), 0.0, 1.0).astype(np.float32)


def centre_distance_depth(h: int, w: int) -> np.ndarray:
    """IA-YOLO's depth prior: d = -0.04 * r + sqrt(max(H, W)), clamped at 0.

    r is the distance (pixels) from the image centre, computed at a scale where max(H, W) <= 640,
    then returned at (h, w).
    """
    scale = min(1.0, 640.0 / max(h, w))
    hs, ws = max(1, round(h * scale)), max(1, round(w * scale))
    yy, xx = np.mgrid[0:hs, 0:ws].astype(np.float32)
    r = np.sqrt((yy - hs / 2.0) ** 2 + (xx - ws / 2.0) ** 2)
    d = np.maximum(-0.04 * r + np.sqrt(max(hs, ws)), 0.0).astype(np.float32)
    if (hs, ws) != (h, w):
        import cv2

        d = cv2.resize(d, (w, h), interpolation=cv2.INTER_LINEAR)
    return d


def horizon_depth(h: int, w: int, horizon: float = 0.4, far: float = 30.0, near: float = 1.0) -> np.ndarray:
    """Ground-plane prior: depth grows toward the horizon row, sky (above it) is at `far`.

    Below the horizon a flat ground seen by a level camera has depth proportional to
    1 / (row - horizon_row); it is clamped to [near, far].
    """
    hr = horizon * h
    rows = np.arange(h, dtype=np.float32)
    below = rows - hr
    with np.errstate(divide="ignore"):
        d = np.where(below > 0, near * (h - hr) / np.maximum(below, 1e-6), far)
    d = np.clip(d, near, far).astype(np.float32)
    return np.repeat(d[:, None], w, axis=1)


def rms_contrast(img: np.ndarray) -> float:
    """Standard deviation of luminance: a simple, monotone-in-haze contrast measure."""
    x = np.asarray(img, dtype=np.float32)
    lum = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32) if x.ndim == 3 else x
    return float(lum.std())
