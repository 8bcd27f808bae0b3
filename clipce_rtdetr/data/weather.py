"""Rain and snow (issue 24): falling particles seen as motion-blurred streaks or flakes, plus the extinction and
veiling light the whole precipitation volume adds with distance. Parameters and sources:
docs/method.md (Rain and snow).

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
  (Garg & Nayar 2004), i.e. its streak carries an alpha "mass" pi/4 D_px^2 spread over a box of D_px x L_px (the
  box of the layer's mean-size particle). That is a box filter of impulses per depth layer, all read from one
  integral image (cost independent of the streak length), on a half-resolution grid for wide images; wind slants
  every streak by one shear. A particle behind the scene (farther than the scene depth at its pixel) is not drawn.
  Overlapping particles combine as alpha = 1 - exp(-sum).

The image functions take float images in [0, 1] and a depth map in metres; the 8-bit path is weather_u8.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

FOV_DEG = 60.0  # assumed horizontal field of view of the camera: focal length f = W / (2 tan(FOV / 2)) pixels
APERTURE_M = 0.002  # lens aperture diameter (a 4 mm f/2 lens): defocus blur of particles close to the camera
PRIOR_METRES = 10.0  # metres per depth unit of the geometric priors (horizon prior: 10 m at the bottom, 300 m far)
LAYERS = 3  # depth layers of drawn particles (geometrically spaced between z_near and z_far)
GRID_HALF_FROM = 320  # images at least this wide get their particles on a half-resolution grid (speed)
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


@cache
def layer_bounds(prec: Precipitation) -> np.ndarray:
    """The depths (m) between the particle layers, nearest first (read-only: shared by every call)."""
    zs = np.geomspace(prec.z_near, prec.z_far, LAYERS + 1)
    zs.flags.writeable = False
    return zs


def grid_shape(h: int, w: int) -> tuple[int, int]:
    """The particle grid of an (h, w) image: half resolution from GRID_HALF_FROM pixels wide (4x fewer pixels to
    filter; cv2.pyrUp brings it back), else the image's own."""
    return ((h + 1) // 2, (w + 1) // 2) if w >= GRID_HALF_FROM else (h, w)


def to_image(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A particle-grid map at the image's (h, w): cv2.pyrUp (Gaussian interpolation) from the half-resolution grid."""
    import cv2

    return a if a.shape[:2] == tuple(shape) else cv2.pyrUp(a, dstsize=(shape[1], shape[0]))


def particle_alpha(shape: tuple[int, int], depth_m: np.ndarray, prec: Precipitation, p: dict[str, Any]) -> np.ndarray:
    """Coverage alpha (H, W) float32 in [0, 1) of the particles drawn in front of the scene."""
    clear = to_image(np.exp(-particle_optical_depth(shape, depth_m, prec, p)), shape)  # 1 - alpha
    return np.subtract(np.float32(1.0), clear, out=clear)


def particle_optical_depth(
    shape: tuple[int, int], depth_m: np.ndarray, prec: Precipitation, p: dict[str, Any]
) -> np.ndarray:
    """Sum of the particles' alpha mass per pixel of the particle grid (grid_shape); alpha = 1 - exp(-sum).
    depth_m may be at any size."""
    import cv2

    h, w = grid_shape(*shape)
    rate = p[prec.rate_key]
    if rate <= 0:
        return np.zeros((h, w), np.float32)
    f = focal_px(shape[1]) * w / shape[1]
    layer, x, y, d_mm = _draw_particles(prec, rate, int(p["particle_seed"]), (w / f) * (h / f))
    slope = math.tan(math.radians(p["wind"]))
    z_mid = layer_depths(prec)
    if nearest_scene(depth_m) <= prec.z_far:  # else no particle can be behind the scene (the priors: >= 10 m)
        keep = scene_behind(depth_m, x, y, slope * h / w, z_mid[layer])
        layer, x, y, d_mm = layer[keep], x[keep], y[keep], d_mm[keep]
    d_px = f * prec.size_factor * d_mm * 1e-3 / z_mid[layer]
    kernels = _streak_kernels(prec, p, f, rate, layer)
    if not any(kernels):
        return np.zeros((h, w), np.float32)
    total = _streaks(h, w, kernels, layer, (y * h).astype(np.intp), (x * w).astype(np.intp),
                     (prec.opacity * math.pi / 4.0) * d_px * d_px)  # fmt: skip
    if slope:  # slant every streak: row y moves sideways by slope * (y - h / 2), wrapping around
        m = np.float32([[1.0, slope, -slope * h / 2.0], [0.0, 1.0, 0.0]])
        # nearest: whole-pixel shifts of the grid's rows, smoothed by the upsampling to the image (2x cheaper)
        total = cv2.warpAffine(total, m, (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_WRAP)  # fmt: skip
    return total


def _streaks(h: int, w: int, kernels: list, layer, row, col, mass) -> np.ndarray:
    """Each particle's alpha mass spread evenly over the (width, length) box of its layer's streak, centred on its
    pixel (as cv2.blur anchors a box), summed over the particles. The box sums come from one integral image of the
    layers stacked with zero margins (a streak leaving the image is cut off), so a streak's cost does not grow with
    its length."""
    import cv2

    pad_c = max(k[0] for k in kernels if k)
    wp = w + pad_c
    heights = [h + k[1] if k else 0 for k in kernels]  # a layer's rows, with kl // 2 above and the rest below
    starts = np.cumsum([0, *heights])
    area = np.array([k[0] * k[1] if k else 1 for k in kernels], np.float64)
    top = np.array([k[1] // 2 if k else 0 for k in kernels])
    impulses = np.zeros(int(starts[-1]) * wp, np.float32)
    flat = (starts[layer] + top[layer] + row) * wp + col + pad_c // 2
    np.add.at(impulses, flat, (mass / area[layer]).astype(np.float32))  # flat float32: numpy's fast add.at
    sums = cv2.integral(impulses.reshape(-1, wp), sdepth=cv2.CV_32F)
    total = None
    for i, k in enumerate(kernels):
        if k is None:
            continue
        kw, kl = k
        rows = sums[starts[i] : starts[i] + h + kl]
        c0 = pad_c // 2 - kw // 2
        across = cv2.subtract(rows[:, c0 + kw : c0 + kw + w], rows[:, c0 : c0 + w])  # sums over kw columns
        box = cv2.subtract(across[kl:], across[:h])  # ... and kl rows
        total = box if total is None else cv2.add(total, box, dst=total)
    return total


@cache
def layer_depths(prec: Precipitation) -> np.ndarray:
    """The depth (m) each layer's particles are drawn at: the geometric middle of the layer (read-only)."""
    zs = layer_bounds(prec)
    z = np.sqrt(zs[:-1] * zs[1:])
    z.flags.writeable = False
    return z


def _draw_particles(prec: Precipitation, rate: float, seed: int, frustum: float):
    """(layer, x, y as fractions of the width and height, melted diameter in mm) of the particles of every layer;
    frustum: (width / f) * (height / f), the cross-section per metre squared of depth."""
    rng = np.random.default_rng(seed)
    lam = prec.lam * rate**prec.lam_exp
    density = prec.n0 * rate**prec.n0_exp / lam * math.exp(-lam * prec.d_min_mm)  # per m^3 with D >= d_min
    zs = layer_bounds(prec)
    counts = rng.poisson(density * frustum * (zs[1:] ** 3 - zs[:-1] ** 3) / 3.0)  # frustum slices
    counts = np.minimum(counts, np.maximum(MAX_PARTICLES - np.cumsum(counts) + counts, 0))  # nearest layers first
    n = int(counts.sum())
    d_mm = prec.d_min_mm + rng.exponential(1.0 / lam, n)
    xy = rng.random((2, n))
    return np.repeat(np.arange(LAYERS), counts), xy[0], xy[1], d_mm


def _streak_kernels(prec: Precipitation, p: dict[str, Any], f: float, rate: float, layer) -> list:
    """Per layer, the (width, length) box in grid pixels of the streak of a particle of the mean size of the
    distribution (melted diameter d_min + 1 / Lambda), or None for a layer without particles."""
    n = np.bincount(layer, minlength=LAYERS)
    mean_mm = prec.d_min_mm + 1.0 / (prec.lam * rate**prec.lam_exp)
    out = []
    for i, z in enumerate(layer_depths(prec)):
        if not n[i]:
            out.append(None)
            continue
        d_px = f * prec.size_factor * mean_mm * 1e-3 / z
        blur = f * APERTURE_M / z  # defocus: the camera is focused far beyond the particles
        kw = max(1, int(round(math.hypot(d_px, blur))))
        out.append((kw, max(kw, int(round(f * prec.speed(mean_mm) * p["exposure"] / z + d_px)))))
    return out


def nearest_scene(depth_m: np.ndarray) -> float:
    """The smallest depth of a depth map (of its one column, for a row-constant prior)."""
    from clipce_rtdetr.data.physics import row_profile

    col = row_profile(depth_m)
    return float((depth_m if col is None else col).min())


def scene_behind(depth_m: np.ndarray, u: np.ndarray, v: np.ndarray, slope: float, z) -> np.ndarray:
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


def veil_light(kind: str, p: dict[str, Any]) -> tuple[float, float, float]:
    """(beta per metre, veil A, particle radiance L) of one image's parameters."""
    prec = PRECIPITATION[kind]
    # A particle sends back a fraction of the sky light around it, so it is never brighter than the veil.
    return extinction(prec, p[prec.rate_key]), float(p["veil"]), prec.radiance * float(p["veil"])


def veil_and_alpha(shape: tuple[int, int], depth_m: np.ndarray, kind: str, p: dict[str, Any]):
    """(beta per metre, veil A, particle radiance L, alpha map) of one image."""
    return *veil_light(kind, p), particle_alpha(shape, depth_m, PRECIPITATION[kind], p)


def apply_weather(clean: np.ndarray, depth_m: np.ndarray, kind: str, p: dict[str, Any]) -> np.ndarray:
    """Float reference: clean in [0, 1] ((H, W) or (H, W, C)), depth in metres; float32 in [0, 1].

    I = (J t + A (1 - t)) (1 - alpha) + L alpha: the veil of the whole volume, then the particles in front of it."""
    from clipce_rtdetr.data.physics import apply_haze

    beta, veil, radiance, alpha = veil_and_alpha(np.shape(clean)[:2], depth_m, kind, p)
    out = apply_haze(clean, depth_m, beta, veil)
    a = alpha[..., None] if out.ndim == 3 else alpha
    return np.clip(out * (1.0 - a) + np.float32(radiance) * a, 0.0, 1.0).astype(np.float32)
