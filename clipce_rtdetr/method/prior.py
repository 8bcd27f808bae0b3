"""`clipce=prior` (METHOD.md §6): the CLIP-free physics prior of the authors' earlier detector.

Degradation map = depth estimate from the dark-channel prior (He et al., CVPR 2009):
    dark(I)(x) = min over a 15x15 patch around x of min over channels of I      (cv2.erode)
    A          = per-channel mean of I over the brightest 0.1 % pixels of dark(I)  (airlight)
    t(x)       = 1 - omega * dark(I / A)(x),   omega = 0.95, clamped to [t0, 1], t0 = 0.1
    depth(x)   = -log t(x)                     (scattering model t = exp(-beta d): depth up to 1/beta)
Per box i: mu_i = mean of depth inside b_i / max of depth over the image, w_i = exp(a * mu_i), a = 1.5.
Boxes under 2 px on a side (after clamping to the image) get w = 1, as in AME. Box means come from an
integral image: vectorised over the boxes of an image.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from clipce_rtdetr.method.ame import MIN_BOX

PATCH, OMEGA, TOP, T0 = 15, 0.95, 0.001, 0.1


def _as_float_hwc(img) -> np.ndarray:
    """HxWx3 numpy (uint8 or float in [0,1]) or a (3,H,W) tensor -> HxWx3 float32 in [0,1]."""
    if isinstance(img, torch.Tensor):
        img = img.detach().float().cpu()
        img = img.permute(1, 2, 0).numpy() if img.ndim == 3 and img.shape[0] in (1, 3) else img.numpy()
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[..., None]
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    return np.clip(img.astype(np.float32), 0.0, 1.0)


def dark_channel(img: np.ndarray, patch: int = PATCH) -> np.ndarray:
    """(H,W) min over channels, then min over a patch x patch window (cv2.erode, border replicated)."""
    img = _as_float_hwc(img)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (patch, patch))
    return cv2.erode(np.ascontiguousarray(img.min(axis=2)), kernel, borderType=cv2.BORDER_REPLICATE)


def airlight(img: np.ndarray, dark: np.ndarray, top: float = TOP) -> np.ndarray:
    """(C,) mean colour of the image over the brightest `top` fraction (at least 1 pixel) of the dark channel."""
    img = _as_float_hwc(img)
    flat = dark.reshape(-1)
    k = max(1, int(round(flat.size * top)))
    idx = np.argpartition(flat, flat.size - k)[flat.size - k :]
    return img.reshape(-1, img.shape[2])[idx].mean(axis=0)


def transmission(
    img: np.ndarray, patch: int = PATCH, omega: float = OMEGA, top: float = TOP, t0: float = T0
) -> np.ndarray:
    """t = 1 - omega * dark(I / A), clamped to [t0, 1]."""
    img = _as_float_hwc(img)
    A = np.maximum(airlight(img, dark_channel(img, patch), top), 1e-3).astype(np.float32)
    t = 1.0 - omega * dark_channel(img / A, patch)
    return np.clip(t, t0, 1.0).astype(np.float32)


def depth_map(
    img: np.ndarray, patch: int = PATCH, omega: float = OMEGA, top: float = TOP, t0: float = T0
) -> np.ndarray:
    """(H,W) float32 relative depth = -log t (>= 0): larger where the haze is denser."""
    return (-np.log(transmission(img, patch, omega, top, t0))).astype(np.float32)


def box_means(values: np.ndarray, boxes_xyxy) -> tuple[np.ndarray, np.ndarray]:
    """Mean of `values` (H,W) inside each box (N,4 pixels, rounded outward, clamped) by an integral image.
    Returns (means (N,), valid (N,) bool: box clamped to the image is at least 2 px on each side)."""
    H, W = values.shape
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    if b.shape[0] == 0:
        return np.zeros(0, np.float32), np.zeros(0, bool)
    c = b.copy()
    c[:, [0, 2]] = c[:, [0, 2]].clip(0, W)
    c[:, [1, 3]] = c[:, [1, 3]].clip(0, H)
    valid = ((c[:, 2] - c[:, 0]) >= MIN_BOX) & ((c[:, 3] - c[:, 1]) >= MIN_BOX)
    x1 = np.floor(c[:, 0]).astype(int)
    y1 = np.floor(c[:, 1]).astype(int)
    x2 = np.maximum(np.ceil(c[:, 2]).astype(int), x1 + 1).clip(max=W)
    y2 = np.maximum(np.ceil(c[:, 3]).astype(int), y1 + 1).clip(max=H)
    x1, y1 = np.minimum(x1, x2 - 1).clip(min=0), np.minimum(y1, y2 - 1).clip(min=0)
    ii = cv2.integral(values.astype(np.float64))  # (H+1, W+1)
    s = ii[y2, x2] - ii[y1, x2] - ii[y2, x1] + ii[y1, x1]
    area = np.maximum((x2 - x1) * (y2 - y1), 1)
    return (s / area).astype(np.float32), valid


def prior_scores(img, boxes_xyxy, a: float = 1.5, **kw) -> tuple[np.ndarray, np.ndarray]:
    """One image (HxWx3 uint8/float, or (3,H,W) tensor) and its boxes (N,4 pixels) -> (mu (N,), w (N,))."""
    depth = depth_map(img, **kw)
    means, valid = box_means(depth, boxes_xyxy)
    mx = float(depth.max()) if depth.size else 0.0
    mu = means / mx if mx > 0 else np.zeros_like(means)
    mu = np.where(valid, mu, 0.0).astype(np.float32)
    w = np.where(valid, np.exp(a * mu), 1.0).astype(np.float32)
    return mu, w


def prior_weights(img, boxes_xyxy, a: float = 1.5, **kw) -> np.ndarray:
    """w_i = exp(a * mu_i) for the boxes of one image."""
    return prior_scores(img, boxes_xyxy, a, **kw)[1]


def prior_weights_batch(
    images: torch.Tensor, boxes_xyxy: torch.Tensor, batch_idx: torch.Tensor, a: float = 1.5, **kw
) -> torch.Tensor:
    """A batch (B,3,H,W) in [0,1], boxes (N,4) pixels, batch_idx (N,) -> w (N,) fp32 on the images' device.
    One depth map per image (loop over images, vectorised over boxes)."""
    n = boxes_xyxy.shape[0]
    w = torch.ones(n, dtype=torch.float32)
    if n == 0:
        return w.to(images.device)
    bi = batch_idx.reshape(-1).long().cpu()
    boxes = boxes_xyxy.detach().float().cpu().numpy()
    for b in torch.unique(bi).tolist():
        sel = (bi == b).nonzero().view(-1)
        w[sel] = torch.from_numpy(prior_weights(images[b], boxes[sel.numpy()], a, **kw))
    return w.to(images.device)


__all__ = [
    "dark_channel",
    "airlight",
    "transmission",
    "depth_map",
    "box_means",
    "prior_scores",
    "prior_weights",
    "prior_weights_batch",
]
