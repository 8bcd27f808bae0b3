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


# ------------------------------------------------------------------------------------ low light
def apply_lowlight(clean: np.ndarray, gamma: float, shot: float = 0.0, read: float = 0.0,
                   noise_seed: int | None = None) -> np.ndarray:
    """IA-YOLO's low light, I = J ** gamma, plus Poisson-Gaussian sensor noise (METHOD.md §7).

    Noise is Gaussian with variance `shot * I + read ** 2` (the usual heteroscedastic approximation of
    photon shot noise plus read noise), drawn from `noise_seed` so a recorded seed reproduces the image.
    gamma = 1 with shot = read = 0 returns the input.
    """
    i = np.power(np.asarray(clean, dtype=np.float32), np.float32(gamma))
    if shot > 0 or read > 0:
        i += sensor_noise(i, shot, read, noise_seed)
    return np.clip(i, 0.0, 1.0, out=i)


def sensor_noise(signal: np.ndarray, shot: float, read: float, seed: int | None) -> np.ndarray:
    """Zero-mean noise with standard deviation sqrt(shot * signal + read^2), same shape as signal."""
    rng = np.random.default_rng(seed)
    std = np.sqrt(np.float32(shot) * np.maximum(signal, 0) + np.float32(read) ** 2)
    return rng.standard_normal(signal.shape, dtype=np.float32) * std


def apply_lowlight_u8(img: np.ndarray, gamma: float, shot: float = 0.0, read: float = 0.0,
                      noise_seed: int | None = None) -> np.ndarray:
    """apply_lowlight for a uint8 image, through 256-entry look-up tables (same values as
    apply_lowlight(img.astype(float32) * float32(1 / 255), ...), several times faster)."""
    levels = np.arange(256, dtype=np.float32) * np.float32(1.0 / 255)
    lut = np.power(levels, np.float32(gamma))
    i = lut[img]
    if shot > 0 or read > 0:
        std = np.sqrt(np.float32(shot) * np.maximum(lut, 0) + np.float32(read) ** 2)[img]
        i += np.random.default_rng(noise_seed).standard_normal(img.shape, dtype=np.float32) * std
    return np.clip(i, 0.0, 1.0, out=i)


# ------------------------------------------------------------------------------------ underwater
# Per-metre attenuation (R, G, B) of clear ocean water, red fastest (Jerlov type I-II order of magnitude).
WATER_ATTENUATION_RGB = (0.40, 0.07, 0.04)


def apply_underwater(clean: np.ndarray, distance: np.ndarray, attenuation, veil) -> np.ndarray:
    """Underwater image formation: I_c = J_c exp(-b_c d) + B_c (1 - exp(-b_c d)) for each channel c.

    `attenuation` (b_c, per metre) and `veil` (the veiling / background light B_c) are given per channel in
    the channel order of `clean`; `distance` (H, W) is in metres. distance = 0 returns the input.
    """
    j = np.asarray(clean, dtype=np.float32)
    if j.ndim != 3 or j.shape[2] != len(attenuation) or len(veil) != len(attenuation):
        raise ValueError(f"underwater needs an (H, W, {len(attenuation)}) colour image and {len(attenuation)} veil values, got {j.shape}")
    d = np.asarray(distance, dtype=np.float32)[..., None]
    t = np.exp(-d * np.asarray(attenuation, dtype=np.float32))
    out = j * t
    out += np.asarray(veil, dtype=np.float32) * (1.0 - t)
    return np.clip(out, 0.0, 1.0, out=out)


def normalised_depth(depth: np.ndarray) -> np.ndarray:
    """Depth rescaled to [0, 1] by its maximum (a flat map stays 0)."""
    d = np.asarray(depth, dtype=np.float32)
    m = float(d.max()) if d.size else 0.0
    return d / m if m > 0 else np.zeros_like(d)
