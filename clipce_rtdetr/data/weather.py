"""Rain and snow (issue 24): falling particles seen as motion-blurred streaks or flakes, plus the extinction and
veiling light the whole precipitation volume adds with distance. Parameters and sources:
docs/incoming/issue-24-weather.md.

One size distribution per kind drives both effects, so they agree: N(D) = N0 exp(-Lambda D) per m^3 per mm of
(melted) diameter D, with N0 and Lambda power laws of the precipitation rate (Marshall & Palmer 1948 for rain,
Gunn & Marshall 1958 for snow).
- Extinction: large particles remove twice their cross-section (extinction efficiency 2), so
  beta = (pi / 2) * s^2 * integral D^2 N(D) dD = pi s^2 N0 / Lambda^3 (s: apparent / melted diameter). For rain this
  is 3.6e-4 R^0.63 per metre, close in exponent to the empirical R^0.67 power law used for rain's fog-like
  attenuation in physically based rain rendering (Halder et al. 2019).
  Applied as the haze model with the sky as the veil: I = J t + A (1 - t), t = exp(-beta d).
- Particles: the near ones (z_near..z_far metres) are drawn one by one: a drop of diameter D_px pixels falling
  L_px pixels during the exposure covers each pixel of its streak for the fraction D_px / L_px of the exposure
  (Garg & Nayar 2004), i.e. its streak carries an alpha "mass" pi/4 D_px^2 spread over a box of D_px x L_px. That is
  a box filter of impulses, one filter per depth layer (cost independent of the streak length); wind slants every
  streak by one shear. A particle behind the scene (farther than the scene depth at its pixel) is not drawn.
  Overlapping particles combine as alpha = 1 - exp(-sum).

The image functions take float images in [0, 1] or uint8 images, and a depth map in metres.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

FOV_DEG = 60.0  # assumed horizontal field of view of the camera: focal length f = W / (2 tan(FOV / 2)) pixels
APERTURE_M = 0.002  # lens aperture diameter (a 4 mm f/2 lens): defocus blur of particles close to the camera
PRIOR_METRES = 10.0  # metres per depth unit of the geometric priors (horizon prior: 10 m at the bottom, 300 m far)
LAYERS = 3  # depth layers of drawn particles (geometrically spaced between z_near and z_far)
ALPHA_HALF_FROM = 320  # images at least this wide get their particle alpha at half resolution (speed)
MAX_PARTICLES = 60_000  # per image; a safety bound far above the heaviest named level at 640 x 480


@dataclass(frozen=True)
class Precipitation:
    """A precipitation type: size distribution N(D) = n0 S^n0_exp exp(-lam S^lam_exp D) (per m^3 per mm, D the
    melted diameter in mm, S the rate in mm/h), how it looks and which particles are drawn."""

    name: str
    rate_key: str  # the recorded rate parameter (mm/h)
    n0: float
    n0_exp: float
    lam: float
    lam_exp: float
    size_factor: float  # apparent diameter / melted diameter
    d_min_mm: float  # smaller particles go to the veil only (their streaks are too faint to matter)
    z_near: float  # metres
    z_far: float
    opacity: float  # fraction of the background a particle hides while it covers a pixel
    speed: Callable[[float], float]  # fall speed (m/s) of melted diameter D (mm)
    radiance: float  # particle radiance as a fraction of the sky (veil) light that lights it


# Rain: a drop refracts the sky around it (Garg & Nayar 2004), so its radiance is the sky's.
RAIN = Precipitation("rain", "rain_rate", 8000.0, 0.0, 4.1, -0.21, 1.0, 0.8, 0.3, 2.0, 1.0,
                     speed=lambda d: 200.0 * math.sqrt(d * 0.5e-3), radiance=1.0)  # fmt: skip
# Snow: Gunn & Marshall (1958) in melted diameter; aggregates ~3x their melted diameter (density ~0.04 g/cm^3),
# falling ~1 m/s (Locatelli & Hobbs 1974); fresh snow reflects ~90 % of the (overcast) sky light.
SNOW = Precipitation("snow", "snowfall", 3800.0, -0.87, 2.55, -0.48, 3.0, 0.5, 0.5, 4.0, 0.9,
                     speed=lambda d: 1.0, radiance=0.9)  # fmt: skip
PRECIPITATION = {"rain": RAIN, "snow": SNOW}

LEVELS = {
    "rain": {"light": (2.5, 10.0), "medium": (10.0, 50.0), "heavy": (50.0, 150.0)},  # mm/h
    "snow": {"light": (0.25, 1.0), "medium": (1.0, 2.5), "heavy": (2.5, 5.0)},  # mm/h water equivalent
}
EXPOSURE = (1 / 500, 1 / 60)  # seconds, log-uniform
WIND = {"rain": 15.0, "snow": 30.0}  # largest slant of the fall direction from vertical (degrees)
VEIL = (0.6, 0.9)  # sky (veil) brightness, grey
FIELDS = {k: (p.rate_key, "exposure", "wind", "veil", "particle_seed") for k, p in PRECIPITATION.items()}
RANGE_LIMITS = {
    "rain_rate": (0.0, 500.0, "rain rate in mm/h; 0 is no rain, the heaviest recorded rates are a few hundred"),
    "snowfall": (0.0, 20.0, "snowfall in mm/h of melted water; 0 is no snow"),
}


def sample(kind: str, rate_range: tuple[float, float], seed: int, rel: str) -> dict[str, Any]:
    """Deterministic parameters of one image from (seed, its relative path, the kind): its own stream, so a mixed
    condition draws the same rain (or snow) as the kind alone."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(rel.encode("utf-8")), zlib.crc32(kind.encode())])
    prec = PRECIPITATION[kind]
    lo, hi = np.log(EXPOSURE[0]), np.log(EXPOSURE[1])
    p = {
        prec.rate_key: float(rng.uniform(*rate_range)),
        "exposure": float(np.exp(rng.uniform(lo, hi))),
        "wind": float(rng.uniform(-WIND[kind], WIND[kind])),
        "veil": float(rng.uniform(*VEIL)),
    }
    # Rounded to what degradation.csv records (6 decimals), so the recorded row reproduces the image exactly.
    return {**{k: round(v, 6) for k, v in p.items()}, "particle_seed": int(rng.integers(2**31))}


# ----------------------------------------------------------------------------------------- physics
def extinction(prec: Precipitation, rate: float) -> float:
    """beta (per metre) = pi s^2 N0 / Lambda^3 (mm^2 per m^3 -> 1e-6 m^2 per m^3); 0 for no precipitation."""
    if rate <= 0:
        return 0.0
    n0 = prec.n0 * rate**prec.n0_exp
    lam = prec.lam * rate**prec.lam_exp
    return math.pi * prec.size_factor**2 * n0 / lam**3 * 1e-6


def focal_px(w: int) -> float:
    return w / (2.0 * math.tan(math.radians(FOV_DEG) / 2.0))


def layer_bounds(prec: Precipitation) -> np.ndarray:
    return np.geomspace(prec.z_near, prec.z_far, LAYERS + 1)


def particle_alpha(shape: tuple[int, int], depth_m: np.ndarray, prec: Precipitation, p: dict[str, Any]) -> np.ndarray:
    """Coverage alpha (H, W) float32 in [0, 1) of the particles drawn in front of the scene.

    Images wider than ALPHA_HALF_FROM pixels get the alpha map at half resolution, then upsampled (4x fewer pixels
    to filter; a streak is then at least 2 pixels wide)."""
    import cv2

    full_h, full_w = shape
    scale = 0.5 if full_w >= ALPHA_HALF_FROM else 1.0
    h, w = max(1, round(full_h * scale)), max(1, round(full_w * scale))
    alpha = _alpha_grid(h, w, depth_m, prec, p, focal_px(full_w) * w / full_w)
    if (h, w) != (full_h, full_w):
        alpha = cv2.resize(alpha, (full_w, full_h), interpolation=cv2.INTER_LINEAR)
    return alpha


def _alpha_grid(h: int, w: int, depth_m: np.ndarray, prec: Precipitation, p: dict[str, Any], f: float) -> np.ndarray:
    """particle_alpha on an (h, w) grid (f: focal length in grid pixels); depth_m may be at another size."""
    import cv2

    rate = p[prec.rate_key]
    rng = np.random.default_rng(int(p["particle_seed"]))
    total = np.zeros((h, w), np.float32)
    if rate <= 0:
        return total
    lam = prec.lam * rate**prec.lam_exp
    density = prec.n0 * rate**prec.n0_exp / lam * math.exp(-lam * prec.d_min_mm)  # per m^3 with D >= d_min
    slope = math.tan(math.radians(p["wind"]))
    pad = int(math.ceil(abs(slope) * h))
    zs = layer_bounds(prec)
    budget = MAX_PARTICLES
    for za, zb in zip(zs[:-1], zs[1:]):
        volume = (w / f) * (h / f) * (zb**3 - za**3) / 3.0  # frustum slice
        n = min(int(rng.poisson(density * volume)), budget)
        budget -= n
        z = math.sqrt(za * zb)
        d_mm = prec.d_min_mm + rng.exponential(1.0 / lam, n)
        x = rng.random(n) * w
        y = rng.random(n) * h
        keep = scene_behind(depth_m, x / w, y / h, slope * h / w, z)
        d_px = f * prec.size_factor * d_mm[keep] * 1e-3 / z
        if not d_px.size:
            continue
        mean_d = float(d_mm[keep].mean())
        blur = f * APERTURE_M / z  # defocus: the camera is focused far beyond the particles
        kw = max(1, int(round(math.hypot(float(d_px.mean()), blur))))
        kl = max(kw, int(round(f * prec.speed(mean_d) * p["exposure"] / z + d_px.mean())))
        mass = (prec.opacity * math.pi / 4.0) * d_px * d_px
        flat = y[keep].astype(np.intp) * w + x[keep].astype(np.intp)
        impulses = np.bincount(flat, weights=mass, minlength=h * w).astype(np.float32).reshape(h, w)
        total += cv2.blur(impulses, (kw, kl), borderType=cv2.BORDER_CONSTANT)
    if pad:  # slant every streak: row y moves sideways by slope * (y - h / 2), wrapping around
        m = np.float32([[1.0, slope, -slope * h / 2.0], [0.0, 1.0, 0.0]])
        total = cv2.warpAffine(total, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_WRAP)  # fmt: skip
    np.negative(total, out=total)
    cv2.exp(total, total)
    return np.subtract(np.float32(1.0), total, out=total)


def scene_behind(depth_m: np.ndarray, u: np.ndarray, v: np.ndarray, slope: float, z: float) -> np.ndarray:
    """Particles at (u, v) (fractions of the width and height, before the wind shear of `slope` in those units)
    whose pixel after the shear shows scene farther than z."""
    dh, dw = depth_m.shape
    xs = (((u - slope * (v - 0.5)) % 1.0) * dw).astype(np.intp)
    return depth_m[np.minimum((v * dh).astype(np.intp), dh - 1), np.minimum(xs, dw - 1)] > z


def depth_in_metres(depth: np.ndarray, metres_per_unit: float) -> np.ndarray:
    """depth * metres_per_unit, keeping a row-constant broadcast view (the horizon prior) a view."""
    from clipce_rtdetr.data.physics import row_profile

    col = row_profile(depth)
    if col is not None:
        return np.broadcast_to(col.astype(np.float32) * np.float32(metres_per_unit), depth.shape)
    return np.asarray(depth, dtype=np.float32) * np.float32(metres_per_unit)


def veil_and_alpha(shape: tuple[int, int], depth_m: np.ndarray, kind: str, p: dict[str, Any]):
    """(beta per metre, veil A, particle radiance L, alpha map) of one image."""
    prec = PRECIPITATION[kind]
    alpha = particle_alpha(shape, depth_m, prec, p)
    # A particle sends back a fraction of the sky light around it, so it is never brighter than the veil.
    radiance = prec.radiance * float(p["veil"])
    return extinction(prec, p[prec.rate_key]), float(p["veil"]), float(radiance), alpha


def apply_weather(clean: np.ndarray, depth_m: np.ndarray, kind: str, p: dict[str, Any]) -> np.ndarray:
    """Float reference: clean in [0, 1] ((H, W) or (H, W, C)), depth in metres; float32 in [0, 1].

    I = (J t + A (1 - t)) (1 - alpha) + L alpha: the veil of the whole volume, then the particles in front of it."""
    from clipce_rtdetr.data.physics import apply_haze

    beta, veil, radiance, alpha = veil_and_alpha(np.shape(clean)[:2], depth_m, kind, p)
    out = apply_haze(clean, depth_m, beta, veil)
    a = alpha[..., None] if out.ndim == 3 else alpha
    return np.clip(out * (1.0 - a) + np.float32(radiance) * a, 0.0, 1.0).astype(np.float32)


def apply_weather_u8(img: np.ndarray, depth_m: np.ndarray, kind: str, p: dict[str, Any]) -> np.ndarray:
    """apply_weather for a uint8 image (gray or colour), as uint8: the veil by physics.apply_haze_u8, the particles
    in 16-bit fixed point, round((veiled * (256 - a) + 255 L a) / 256) with a = round(256 alpha) (within one grey
    level of the float path, plus the veil's own rounding)."""
    import cv2

    from clipce_rtdetr.data.physics import apply_haze_u8

    beta, veil, radiance, alpha = veil_and_alpha(img.shape[:2], depth_m, kind, p)
    out = apply_haze_u8(img, depth_m, beta, veil)
    a = cv2.multiply(alpha, 256.0, dtype=cv2.CV_16U)  # rounds, saturates
    keep = cv2.subtract(np.full_like(a, 256), a)
    off = cv2.multiply(a, 255.0 * radiance, dtype=cv2.CV_16U)
    cv2.add(off, 128, off)
    planes = []
    for c in cv2.split(out) if out.ndim == 3 else [out]:  # planes: no 3-channel copies of keep and off
        f = cv2.multiply(c.astype(np.uint16), keep)  # same-type operands: OpenCV's mixed-type path is slower
        cv2.add(f, off, f)
        np.right_shift(f, 8, out=f)
        planes.append(f.astype(np.uint8))
    return cv2.merge(planes) if out.ndim == 3 else planes[0]
