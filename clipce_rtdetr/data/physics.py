"""Physics of image degradation (METHOD.md §7): haze by atmospheric scattering, depth priors.

The image functions take float images in [0, 1] ((H, W) or (H, W, C)) and return float32 in [0, 1]; the *_u8
functions take and return uint8 images; the depth priors return depths (arbitrary units, larger is farther).
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
    # A read-only view that repeats one column: the 8-bit fast paths see the row structure (stride 0) and
    # compute one transmission per row instead of per pixel.
    return np.broadcast_to(d[:, None], (h, w))


def rms_contrast(img: np.ndarray) -> float:
    """Standard deviation of luminance: a simple, monotone-in-haze contrast measure."""
    x = np.asarray(img, dtype=np.float32)
    lum = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32) if x.ndim == 3 else x
    return float(lum.std())


# ------------------------------------------------------------------------------------ low light
def apply_lowlight(
    clean: np.ndarray, gamma: float, shot: float = 0.0, read: float = 0.0, noise_seed: int | None = None
) -> np.ndarray:
    """IA-YOLO's low light, I = J ** gamma, plus Poisson-Gaussian sensor noise (METHOD.md §7).

    Noise is Gaussian with variance `shot * I + read ** 2` (the usual heteroscedastic approximation of
    photon shot noise plus read noise), drawn by `standard_noise` (OpenCV's Gaussian generator) from `noise_seed`
    so a recorded seed reproduces the image.
    gamma = 1 with shot = read = 0 returns the input.
    """
    i = np.power(np.asarray(clean, dtype=np.float32), np.float32(gamma))
    if shot > 0 or read > 0:
        i += sensor_noise(i, shot, read, noise_seed)
    return np.clip(i, 0.0, 1.0, out=i)


def standard_noise(shape, seed: int | None) -> np.ndarray:
    """Standard normal float32 samples of `shape`, drawn by OpenCV (cv2.randn, a ziggurat Gaussian, several times
    faster than numpy's) from cv2.setRNGSeed(seed), so a recorded seed reproduces them (same OpenCV version).

    Filled as one single-channel 2-D matrix, one thread, row by row: the same values in any process. seed None draws
    a fresh seed. The calling thread's OpenCV RNG is reseeded.
    """
    import cv2

    shape = tuple(int(x) for x in (shape if isinstance(shape, (tuple, list)) else (shape,)))
    rows = shape[0] if len(shape) > 1 else 1
    z = np.empty((rows, int(np.prod(shape)) // max(rows, 1)), dtype=np.float32)
    _seed_noise(seed)
    if z.size:
        cv2.randn(z, 0.0, 1.0)
    return z.reshape(shape)


# Values per band of rows in the 8-bit paths: bounds their temporaries on large images. Measured on a 640x480 RGB
# image, one band (the whole image) ran faster than cache-sized bands (per-band call overhead outweighs the cache).
BAND_FLOATS = 1 << 20


def _seed_noise(seed: int | None) -> None:
    import cv2

    cv2.setRNGSeed(int(np.random.SeedSequence().generate_state(1)[0] & 0x7FFFFFFF) if seed is None else int(seed))


def sensor_noise(signal: np.ndarray, shot: float, read: float, seed: int | None) -> np.ndarray:
    """Zero-mean Gaussian noise with standard deviation sqrt(shot * signal + read^2), same shape as signal."""
    std = np.sqrt(np.float32(shot) * np.maximum(signal, 0) + np.float32(read) ** 2)
    return standard_noise(signal.shape, seed) * std


def apply_lowlight_u8(
    img: np.ndarray, gamma: float, shot: float = 0.0, read: float = 0.0, noise_seed: int | None = None
) -> np.ndarray:
    """apply_lowlight for a uint8 image, through 256-entry look-up tables (same values as
    apply_lowlight(img.astype(float32) * float32(1 / 255), ...), several times faster)."""
    levels = np.arange(256, dtype=np.float32) * np.float32(1.0 / 255)
    lut = np.power(levels, np.float32(gamma))
    i = lut[img]
    if shot > 0 or read > 0:
        std = np.sqrt(np.float32(shot) * np.maximum(lut, 0) + np.float32(read) ** 2)[img]
        i += standard_noise(img.shape, noise_seed) * std
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
        raise ValueError(
            f"underwater needs an (H, W, {len(attenuation)}) colour image and {len(attenuation)} veil values, "
            f"got {j.shape}"
        )
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


# ------------------------------------------------------------------------------------ 8-bit fast paths
# The functions below take and return uint8 images (gray (H, W) or colour (H, W, C)) and agree with
# round(255 * f(img / 255, ...)) of their float counterparts above to within one grey level (float32
# evaluation order, round-half-to-even). They exist for throughput (`degrade`): a depth constant along rows
# (the horizon prior) gives one transmission per row, blended in 16-bit fixed point; a per-pixel depth map gets
# the transmission once with cv2.exp and each channel is blended by OpenCV (multiply, then add with rounding and
# saturation straight to uint8). No float copy of the whole image either way.
# The float functions above stay the reference (hazy-shapes' generator uses apply_haze).
def row_profile(depth: np.ndarray) -> np.ndarray | None:
    """The (H, 1) column of a depth map that is constant along rows (a broadcast view such as horizon_depth's),
    else None."""
    return depth[:, :1] if depth.ndim == 2 and depth.shape[1] > 1 and depth.strides[1] == 0 else None


def _blend_rows_u8(rows: np.ndarray, column: np.ndarray, k: float, v: float) -> np.ndarray:
    """round(c * t + 255 * v * (1 - t)) for a uint8 (H, N) array whose depth is one value per row (column (H, 1)).

    Numpy broadcasts the per-row t along each row: no H x W map is built. The usual case (t <= 1, veil in [0, 1])
    runs in 16-bit fixed point, about twice as fast as float32: t and the offset carry 8 fraction bits, the offset
    also absorbs t's rounding error at mid-grey, so a pixel is off the float result by at most 0.25 + 1/512 grey
    levels before rounding (within one level after)."""
    t = np.exp(column.astype(np.float64) * float(k))
    b = (1.0 - t) * (255.0 * v) + 0.5  # + 0.5: the casts below truncate
    out = np.empty(rows.shape, np.uint8)
    if 0.0 <= v <= 1.0 and np.all(t <= 1.0):  # then c * t8 + b8 < 2 ** 16: no overflow
        t8 = np.rint(t * 256.0)
        b8 = np.rint((b + 127.5 * (t - t8 / 256.0)) * 256.0).clip(0, 65535 - 255 * t8).astype(np.uint16)
        t8 = t8.astype(np.uint16)
        for band, f in row_bands(rows, np.uint16):
            np.multiply(rows[band], t8[band], out=f)
            f += b8[band]
            f >>= 8
            out[band] = f
        return out
    t, b = t.astype(np.float32), b.astype(np.float32)
    for band, f in row_bands(rows):
        np.multiply(rows[band], t[band], out=f)
        f += b[band]
        np.clip(f, 0.0, 255.0, out=f)
        out[band] = f
    return out


def row_bands(rows: np.ndarray, dtype=np.float32):
    """(slice of whole rows, `dtype` buffer of that band's shape): bands of about BAND_FLOATS values, so the
    temporaries of the 8-bit paths stay bounded on large images. One buffer serves every band."""
    n = max(1, BAND_FLOATS // max(rows.shape[1], 1))
    buf = np.empty((min(n, rows.shape[0]), rows.shape[1]), dtype)
    for r in range(0, rows.shape[0], n):
        yield slice(r, r + n), buf[: min(n, rows.shape[0] - r)]


def _blend_u8(channels, depth: np.ndarray, ks, veils) -> list[np.ndarray]:
    """For each uint8 channel c with its k and veil v: round(c * t + 255 * v * (1 - t)), t = exp(k * depth).

    Channels sharing k (haze) share one transmission map."""
    import cv2

    column = row_profile(depth)
    if column is not None:
        return [_blend_rows_u8(c, column, k, v) for c, k, v in zip(channels, ks, veils)]
    out, ts, bs = [], {}, {}
    for c, k, v in zip(channels, ks, veils):
        if k not in ts:
            ts[k] = t = np.multiply(depth, np.float32(k), dtype=np.float32)
            cv2.exp(t, t)
        t = ts[k]
        if (k, v) not in bs:
            bs[k, v] = b = np.subtract(np.float32(1.0), t, dtype=np.float32)
            b *= np.float32(255.0 * float(v))
        b = bs[k, v]
        out.append(cv2.add(cv2.multiply(np.ascontiguousarray(c), t, dtype=cv2.CV_32F), b, dtype=cv2.CV_8U))
    return out


def apply_haze_u8(img: np.ndarray, depth: np.ndarray, beta: float, airlight) -> np.ndarray:
    """apply_haze for a uint8 image, returned as uint8 (airlight scalar or one value per channel)."""
    import cv2

    d = np.asarray(depth, dtype=np.float32)
    if img.ndim == 2:
        return _blend_u8([img], d, [-float(beta)], [float(np.asarray(airlight).reshape(-1)[0])])[0]
    a = np.broadcast_to(np.asarray(airlight, dtype=np.float64).reshape(-1), (img.shape[2],))
    if row_profile(d) is not None and np.all(a == a[0]):  # one pass over the interleaved rows, no split/merge
        return _blend_u8([np.ascontiguousarray(img).reshape(img.shape[0], -1)], d, [-float(beta)], [float(a[0])])[
            0
        ].reshape(img.shape)
    return cv2.merge(_blend_u8(cv2.split(np.ascontiguousarray(img)), d, [-float(beta)] * img.shape[2], list(a)))


def apply_underwater_u8(img: np.ndarray, depth: np.ndarray, attenuation, veil, scale: float = 1.0) -> np.ndarray:
    """apply_underwater(img / 255, depth * scale, attenuation, veil) for a uint8 colour image, as uint8;
    one H x W exp and blend per channel."""
    import cv2

    if img.ndim != 3 or img.shape[2] != len(attenuation) or len(veil) != len(attenuation):
        raise ValueError(
            f"underwater needs an (H, W, {len(attenuation)}) colour image and {len(attenuation)} veil values, "
            f"got {img.shape}"
        )
    d = np.asarray(depth, dtype=np.float32)
    return cv2.merge(
        _blend_u8(cv2.split(np.ascontiguousarray(img)), d, [-float(scale) * float(b) for b in attenuation], list(veil))
    )


def lowlight_u8(
    img: np.ndarray, gamma: float, shot: float = 0.0, read: float = 0.0, noise_seed: int | None = None
) -> np.ndarray:
    """apply_lowlight_u8 returned as uint8 (the same noise draws, look-ups by cv2.LUT, one rounding pass)."""
    import cv2

    levels = np.arange(256, dtype=np.float32) * np.float32(1.0 / 255)
    lut = np.power(levels, np.float32(gamma))
    src = np.ascontiguousarray(img)
    if not (shot > 0 or read > 0):
        return cv2.LUT(src, (np.clip(lut, 0.0, 1.0) * np.float32(255) + np.float32(0.5)).astype(np.uint8))
    std = (np.sqrt(np.float32(shot) * np.maximum(lut, 0) + np.float32(read) ** 2) * np.float32(255)).astype(np.float32)
    mean = (lut * np.float32(255)).astype(np.float32)
    # Bands of rows bound the float temporaries on large images; drawn from one seeded generator band after band,
    # the noise equals standard_noise(src.shape, noise_seed) (tested).
    rows = src.reshape(src.shape[0], -1) if src.ndim > 1 else src.reshape(1, -1)
    out = np.empty_like(rows)
    _seed_noise(noise_seed)
    for band, z in row_bands(rows):
        if z.size:
            cv2.randn(z, 0.0, 1.0)
        z *= cv2.LUT(rows[band], std)
        out[band] = cv2.add(z, cv2.LUT(rows[band], mean), dtype=cv2.CV_8U)  # rounds, saturates
    return out.reshape(src.shape)


# ------------------------------------------------------------------------------------ severity measure
def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean structural similarity (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03) of the
    luminance of two images in [0, 1] (float) or uint8."""
    import cv2

    def lum(x):
        x = np.asarray(x, dtype=np.float32) * np.float32(1 / 255 if np.asarray(x).dtype == np.uint8 else 1)
        return x @ np.array([0.114, 0.587, 0.299], dtype=np.float32) if x.ndim == 3 else x  # BGR

    x, y = lum(a), lum(b)
    c1, c2 = 0.01**2, 0.03**2

    def blur(z):
        return cv2.GaussianBlur(z, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def box_ssim(clean: np.ndarray, degraded: np.ndarray, boxes) -> float:
    """The severity measure of `degrade`: mean SSIM to the clean image over the object boxes (x1, y1, x2, y2 in
    pixels), each box enlarged to at least 11 pixels a side; nan without boxes."""
    h, w = clean.shape[:2]
    vals = []
    for x1, y1, x2, y2 in boxes:
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        hw, hh = max((x2 - x1) / 2, 5.5), max((y2 - y1) / 2, 5.5)
        xa, xb = max(0, int(cx - hw)), min(w, int(np.ceil(cx + hw)))
        ya, yb = max(0, int(cy - hh)), min(h, int(np.ceil(cy + hh)))
        if xb > xa and yb > ya:
            vals.append(ssim(clean[ya:yb, xa:xb], degraded[ya:yb, xa:xb]))
    return float(np.mean(vals)) if vals else float("nan")
