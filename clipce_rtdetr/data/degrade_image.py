"""degrade, one image at a time: the parameters drawn for it and the degraded pixels (METHOD.md §7; rain and snow:
data/weather.py, docs/method.md).

Parameters are drawn per image from a generator seeded with (seed, CRC32 of the image's relative path), so the
result does not depend on the process count or order.

Mixed conditions (`rain+haze`, `lowlight+haze`, ...) are named from the camera outwards and applied in the order
light travels: the scene's haze, then the rain or snow falling between it and the camera, then the sensor's low
light response (darkening and noise act on everything that reaches the sensor). Each component draws its own
parameters exactly as the kind alone would.
"""

from __future__ import annotations

import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from clipce_rtdetr.atomic import atomic_path
from clipce_rtdetr.data import physics, weather, weather_u8
from clipce_rtdetr.errors import ClipCEError

# Bump when every kind's pixels or parameter draws change: caches of degraded copies (robustness) are keyed by it.
SYNTHESIS_VERSION = 1
# One kind's own revisions (bump one when only that kind changes: only copies of kinds containing it are redone).
# snow 1: a flake's radiance is 0.9 x the sky light that lights it (it was a fixed 0.9, brighter than a dim sky).
# rain 1, snow 2: particles on a grid upsampled by cv2.pyrUp, streak boxes from one integral image, kernels from the
# distribution's mean size, a nearest-pixel wind shear; the 8-bit path composes veils and particles (weather_u8).
KIND_REVISIONS = {"rain": 1, "snow": 2}
UNRECORDED_SYNTHESIS = "1"  # the version of degrade outputs and robustness cells made before versions were recorded
SINGLE_KINDS = ("haze", "lowlight", "underwater", "rain", "snow")
# Mixed conditions, named camera-outwards: at most one of rain/snow, haze beyond it, the sensor's low light in front.
MIXED_KINDS = ("rain+haze", "snow+haze", "lowlight+haze", "lowlight+rain", "lowlight+snow", "lowlight+rain+haze",
               "lowlight+snow+haze")  # fmt: skip
KINDS = SINGLE_KINDS + MIXED_KINDS
APPLY_ORDER = ("haze", "rain", "snow", "lowlight")  # scene -> camera


def synthesis_version(kind: str) -> str:
    """The version of `kind`'s synthesis, recorded with its outputs: '1', or with component revisions '1.snow1'."""
    revs = [f"{c}{KIND_REVISIONS[c]}" for c in kind.split("+") if KIND_REVISIONS.get(c)]
    return ".".join([str(SYNTHESIS_VERSION), *revs])


def components(kind: str) -> tuple[str, ...]:
    """The single kinds of a (mixed) kind, in the order they are applied."""
    parts = kind.split("+")
    return tuple(sorted(parts, key=APPLY_ORDER.index)) if len(parts) > 1 else (kind,)


# Named levels: the range of each kind's main parameter. The recorded `level` of an image is the bin its
# sampled value falls in (so custom ranges are broken down the same way); haze bins match hazy-shapes.
LEVELS: dict[str, dict[str, tuple[float, float]]] = {
    "haze": {"light": (0.02, 0.06), "medium": (0.06, 0.11), "heavy": (0.11, 0.16)},  # beta
    "lowlight": {"light": (1.5, 2.5), "medium": (2.5, 3.5), "heavy": (3.5, 5.0)},  # gamma
    "underwater": {
        "light": (1.0, 3.0),
        "medium": (3.0, 6.0),
        "heavy": (6.0, 10.0),
    },  # distance (m) at the farthest pixel
    **weather.LEVELS,  # rain rate, snowfall (mm/h)
}
MAIN_PARAM = {"haze": "beta", "lowlight": "gamma", "underwater": "distance", "rain": "rain_rate", "snow": "snowfall"}
LEVEL_ORDER = ("light", "medium", "heavy")
# The robustness protocol's severities 1..5 (Michaelis et al. 2019 use five): each kind's main parameter, spanning
# its named levels from light to heavy; a mixed kind takes every component at the same severity.
SEVERITIES = {
    "haze": (0.02, 0.05, 0.08, 0.11, 0.15),
    "lowlight": (1.5, 2.25, 3.0, 3.75, 4.5),
    "underwater": (1.0, 3.0, 5.0, 7.5, 10.0),
    "rain": (5.0, 15.0, 30.0, 60.0, 120.0),
    "snow": (0.3, 0.8, 1.5, 2.5, 4.0),
}
AIRLIGHT = (0.7, 1.0)
NOISE = {
    "light": ((0.0005, 0.002), (0.002, 0.005)),
    "medium": ((0.001, 0.004), (0.004, 0.01)),
    "heavy": ((0.002, 0.008), (0.008, 0.02)),
}
VEIL_RGB = ((0.05, 0.20), (0.35, 0.60), (0.45, 0.75))  # blue-green veiling light
TURBIDITY = (0.8, 1.25)  # factor on physics.WATER_ATTENUATION_RGB
FIELDS = {
    "haze": ("beta", "airlight"),
    "lowlight": ("gamma", "shot", "read", "noise_seed"),
    "underwater": ("distance", "atten_r", "atten_g", "atten_b", "veil_r", "veil_g", "veil_b"),
    **weather.FIELDS,
}
# A mixed kind records every component's fields and each component's own level (`<kind>_level`).
FIELDS.update({m: tuple(f for c in components(m) for f in (*FIELDS[c], f"{c}_level")) for m in MIXED_KINDS})


# ----------------------------------------------------------------------------------------- parameters
def level_of(kind: str, value: float) -> str:
    """Named bin of a sampled main parameter (below the lowest bin: the first; above: the last)."""
    bins = list(LEVELS[kind].items())
    for name, (_, hi) in bins:
        if value < hi:
            return name
    return bins[-1][0]


def severity_ranges(kind: str, severity: int) -> dict[str, list[float]]:
    """The explicit ranges (`<param>_range` keys) that pin every component of `kind` to severity 1..5."""
    return {f"{MAIN_PARAM[c]}_range": [SEVERITIES[c][severity - 1]] * 2 for c in components(kind)}


def ranges_for(kind: str, level: str, cfg: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Sampling ranges: the named level's, replaced by any explicit *_range key (a mixed kind: all its parts')."""
    if "+" in kind:
        return {k: v for c in components(kind) for k, v in ranges_for(c, level, cfg).items()}
    explicit = {
        "haze": {"beta": cfg.get("beta_range"), "airlight": cfg.get("airlight_range")},
        "lowlight": {"gamma": cfg.get("gamma_range")},
        "underwater": {"distance": cfg.get("distance_range")},
        "rain": {"rain_rate": cfg.get("rain_rate_range")},
        "snow": {"snowfall": cfg.get("snowfall_range")},
    }[kind]
    main = MAIN_PARAM[kind]
    if level == "custom" and explicit.get(main) is None:
        raise ClipCEError(f"level=custom needs {main}_range=[min,max] for kind={kind}.")
    base = LEVELS[kind].get(level, LEVELS[kind]["medium"])
    r = {main: base, "airlight": AIRLIGHT} if kind == "haze" else {main: base}
    for k, v in explicit.items():
        if v is not None:
            lo, hi, why = RANGE_LIMITS[k]
            if not (
                isinstance(v, (list, tuple))
                and len(v) == 2
                and all(isinstance(x, (int, float)) for x in v)
                and lo <= v[0] <= v[1] <= hi
            ):
                top = f" <= {hi:g}" if hi < float("inf") else ""
                raise ClipCEError(f"'{k}_range={v}' must be [min, max] with {lo:g} <= min <= max{top} ({why}).")
            r[k] = (float(v[0]), float(v[1]))
    return r


# Physically meaningful bounds of the explicit ranges: (lowest, highest, why).
RANGE_LIMITS = {
    "beta": (0.0, float("inf"), "scattering per depth unit; 0 is no haze"),
    "airlight": (0.0, 1.0, "atmospheric light as a fraction of white"),
    "gamma": (1.0, float("inf"), "I = J ** gamma darkens only for gamma >= 1; 1 with no noise is the input"),
    "distance": (0.0, float("inf"), "metres of water at the farthest pixel"),
    **weather.RANGE_LIMITS,
}


def sample_params(kind: str, level: str, ranges: dict[str, tuple[float, float]], seed: int, rel: str) -> dict[str, Any]:
    """Deterministic parameters of one image from (seed, its relative path)."""
    if "+" in kind:
        return sample_mixed(kind, level, ranges, seed, rel)
    if kind in weather.PRECIPITATION:
        p = weather.sample(kind, ranges[MAIN_PARAM[kind]], seed, rel)
        return {**p, "level": level_of(kind, p[MAIN_PARAM[kind]])}
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(rel.encode("utf-8"))])
    main = MAIN_PARAM[kind]
    p: dict[str, Any] = {main: float(rng.uniform(*ranges[main]))}
    if kind == "haze":
        p["airlight"] = float(rng.uniform(*ranges["airlight"]))
    elif kind == "lowlight":
        shot, read = NOISE.get(level_of(kind, p[main]), NOISE["medium"])
        p["shot"], p["read"] = float(rng.uniform(*shot)), float(rng.uniform(*read))
        p["noise_seed"] = int(rng.integers(2**31))
    else:
        turb = float(rng.uniform(*TURBIDITY))
        for c, base, (lo, hi) in zip("rgb", physics.WATER_ATTENUATION_RGB, VEIL_RGB):
            p[f"atten_{c}"] = base * turb
            p[f"veil_{c}"] = float(rng.uniform(lo, hi))
    p["level"] = level_of(kind, p[main])
    return p


def sample_mixed(kind: str, level: str, ranges: dict[str, tuple[float, float]], seed: int, rel: str) -> dict[str, Any]:
    """Every component's parameters as the kind alone draws them; `level` is the heaviest component's."""
    p: dict[str, Any] = {}
    for c in components(kind):
        pc = sample_params(c, level, ranges, seed, rel)
        p[f"{c}_level"] = pc.pop("level")
        p.update(pc)
    p["level"] = max((p[f"{c}_level"] for c in components(kind)), key=LEVEL_ORDER.index)
    return p


def prompt_profile(kind: str) -> str:
    """The bundled ame_profile for training on `kind`: the kind's own; for a mix, its first-named (camera-nearest)
    kind's, which dominates how an object's crop looks (night over fog, rain streaks over the haze beyond)."""
    return kind.split("+")[0]


def metres_per_unit(depth_source: str) -> float:
    """Metres per depth unit for rain and snow: the geometric priors' units are weather.PRIOR_METRES; a depth map
    (after the dataset's depth_scale) is taken to be in metres."""
    return weather.PRIOR_METRES if depth_source in ("centre", "horizon") else 1.0


def severity_measure(kind: str, images, seed: int = 0) -> list[float]:
    """degrade's severity measure at the robustness severities 1..5: the mean over `images` ((relative path, BGR
    uint8 image, object boxes in pixels)) of the object-box SSIM to the input (physics.box_ssim), each image
    degraded as `robustness` degrades it (horizon depth prior). A heavier severity must give a lower value."""
    means = []
    for sev in range(1, 6):
        vals = []
        for rel, img, boxes in images:
            p = sample_params(kind, "custom", ranges_for(kind, "custom", severity_ranges(kind, sev)), seed, rel)
            d = prior_depth("horizon", *img.shape[:2])
            out = degrade_array(img, kind, p, d, metres_per_unit=metres_per_unit("horizon"))
            vals.append(physics.box_ssim(img, out, boxes))
        means.append(float(np.nanmean(vals)))
    return means


# ----------------------------------------------------------------------------------------- images
def read_bytes(path: Path) -> np.ndarray:
    """A file's contents as a uint8 array (np.fromfile works with non-ASCII paths)."""
    return np.fromfile(str(path), dtype=np.uint8)


def read_image(path: Path) -> np.ndarray:
    """Decode keeping bit depth, grayscale and alpha; EXIF orientation applied where no alpha is possible."""
    return decode_image(read_bytes(path), path)


def decode_image(buf: np.ndarray, path: Path) -> np.ndarray:
    """read_image of the file contents `buf` (the decode flags follow `path`'s suffix)."""
    import cv2

    flags = (
        cv2.IMREAD_UNCHANGED
        if path.suffix.lower() in (".png", ".tif", ".tiff", ".webp")
        else cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
    )
    if not buf.size:
        raise ValueError("empty file (0 bytes)")
    img = cv2.imdecode(buf, flags)
    if img is None:
        raise ValueError("cannot be decoded")
    return img


def write_image(img: np.ndarray, dst: Path) -> None:
    """Encode in dst's format and write atomically (temporary file, then rename)."""
    import cv2

    ok, enc = cv2.imencode(dst.suffix, img)
    if not ok:
        raise ValueError(f"cannot be encoded as {dst.suffix}")
    # No fsync per image: the rename already keeps a half-written file from the final name, a rerun re-checks every
    # output against its record, and a flush per image would cost degrade's throughput on slow disks.
    with atomic_path(dst, fsync=False) as tmp:  # a failed write leaves no temporary file behind
        enc.tofile(str(tmp))


@lru_cache(maxsize=8)
def prior_depth(source: str, h: int, w: int) -> np.ndarray:
    return physics.centre_distance_depth(h, w) if source == "centre" else physics.horizon_depth(h, w)


class DepthMapError(ValueError):
    """A depth map that cannot be used: reported by the map's own file name, not as a bad image."""


def load_depth(depth: str, depth_path: Path | None, h: int, w: int, scale: float) -> np.ndarray:
    if depth in ("centre", "horizon"):
        return prior_depth(depth, h, w)
    import cv2

    if depth_path is None:
        raise ValueError(f"no depth map in {depth}")
    try:
        d = np.load(depth_path, allow_pickle=False) if depth_path.suffix == ".npy" else read_image(depth_path)
    except Exception as e:  # np.load and OpenCV raise many types for a damaged file
        raise DepthMapError(f"depth map {depth_path}: cannot be read ({e})") from None
    if d.ndim not in (2, 3) or d.size == 0:
        raise DepthMapError(f"depth map {depth_path}: expected an (H, W) map, got shape {d.shape}")
    d = (d[..., 0] if d.ndim == 3 else d).astype(np.float32) * scale
    if not np.isfinite(d).all() or d.min() < 0:  # a NaN/inf or negative depth gives a silently wrong image
        raise DepthMapError(f"depth map {depth_path}: has NaN, inf or negative values; depths must be >= 0")
    return d if d.shape == (h, w) else cv2.resize(d, (w, h), interpolation=cv2.INTER_LINEAR)


@lru_cache(maxsize=8)
def _prior_max(source: str, h: int, w: int) -> float:
    return float(prior_depth(source, h, w).max())


def _fast_u8(
    colour: np.ndarray,
    kind: str,
    p: dict[str, Any],
    depth: np.ndarray | None,
    bgr: bool,
    depth_max: float | None,
    metres: float = 1.0,
    haze: tuple[float, float] | None = None,
) -> np.ndarray | None:
    """The uint8 fast path (physics.*_u8, within one grey level of the float path; rain and snow, with the haze
    `haze` behind them when given: weather_u8, within two); None where it does not apply."""
    if kind in weather.PRECIPITATION:
        return weather_u8.apply_u8(colour, depth, kind, p, metres, haze)
    if kind == "lowlight":
        return physics.lowlight_u8(colour, p["gamma"], p["shot"], p["read"], p["noise_seed"])
    if kind == "haze":
        return physics.apply_haze_u8(colour, depth, p["beta"], p["airlight"])
    if colour.ndim != 3:
        return None  # the float path raises its message
    att, veil = [p[f"atten_{c}"] for c in "rgb"], [p[f"veil_{c}"] for c in "rgb"]
    if bgr:
        att, veil = att[::-1], veil[::-1]
    m = float(np.max(depth)) if depth_max is None else depth_max
    if not m > 0:
        return colour.copy()  # a flat depth map: distance 0 everywhere
    return physics.apply_underwater_u8(colour, depth, att, veil, scale=float(np.float32(p["distance"]) / np.float32(m)))


def degrade_array(
    img: np.ndarray,
    kind: str,
    p: dict[str, Any],
    depth: np.ndarray | None,
    bgr: bool = True,
    fast: bool = True,
    depth_max: float | None = None,
    metres_per_unit: float = 1.0,
) -> np.ndarray:
    """Apply the degradation with parameters p to an 8/16-bit image (gray, BGR or BGRA); same dtype back.

    8-bit images take the uint8 fast path (within one grey level of the float reference, fast=False);
    depth_max, when given, is depth.max() (cached for the depth priors); metres_per_unit converts depth to metres
    for rain and snow (metres_per_unit()). A mixed kind applies its components in turn (components()).
    """
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{img.dtype} images are not supported; use 8- or 16-bit images")
    parts = components(kind)
    # haze then rain or snow: one pass on the 8-bit path (weather_u8 composes the veils and the particles)
    fused = fast and img.dtype == np.uint8 and parts[:1] == ("haze",) and parts[1:2] in (("rain",), ("snow",))
    haze = (p["beta"], p["airlight"]) if fused else None
    for c in parts[1:] if fused else parts:
        img = _degrade_one(img, c, p, depth, bgr, fast, depth_max, metres_per_unit, haze)
    return img


def _degrade_one(
    img: np.ndarray, kind: str, p: dict[str, Any], depth, bgr, fast, depth_max, metres_per_unit, haze=None
):
    """degrade_array for one single kind (rain or snow: with the haze `haze` behind it, on the 8-bit path)."""
    scale = 255.0 if img.dtype == np.uint8 else 65535.0
    alpha = img[..., 3:] if img.ndim == 3 and img.shape[2] == 4 else None
    colour = img[..., :3] if alpha is not None else img
    if colour.ndim == 3 and colour.shape[2] == 1:
        colour = colour[..., 0]
    fast = fast and colour.dtype == np.uint8
    haze = haze if kind in weather.PRECIPITATION else None
    res = _fast_u8(colour, kind, p, depth, bgr, depth_max, metres_per_unit, haze) if fast else None
    if res is not None:
        if alpha is not None:
            res = np.concatenate([res, alpha], axis=2)
        elif img.ndim == 3 and img.shape[2] == 1:
            res = res[..., None]
        return res
    if kind == "lowlight" and colour.dtype == np.uint8:
        out = physics.apply_lowlight_u8(colour, p["gamma"], p["shot"], p["read"], p["noise_seed"])
        j = None
    else:
        j = colour.astype(np.float32) * np.float32(1.0 / scale)
    if j is None:
        pass
    elif kind == "haze":
        out = physics.apply_haze(j, depth, p["beta"], p["airlight"])
    elif kind == "lowlight":
        out = physics.apply_lowlight(j, p["gamma"], p["shot"], p["read"], p["noise_seed"])
    elif kind in weather.PRECIPITATION:
        out = weather.apply_weather(j, weather.depth_in_metres(depth, metres_per_unit), kind, p)
    else:
        if j.ndim != 3:
            raise ValueError(
                "grayscale image: underwater needs colour (attenuation differs per channel); convert it to RGB first"
            )
        att, veil = [p[f"atten_{c}"] for c in "rgb"], [p[f"veil_{c}"] for c in "rgb"]
        if bgr:
            att, veil = att[::-1], veil[::-1]
        out = physics.apply_underwater(j, physics.normalised_depth(depth) * np.float32(p["distance"]), att, veil)
    out *= np.float32(scale)
    out += np.float32(0.5)
    res = out.astype(img.dtype)
    if alpha is not None:
        res = np.concatenate([res, alpha], axis=2)
    elif img.ndim == 3 and img.shape[2] == 1:
        res = res[..., None]
    return res
