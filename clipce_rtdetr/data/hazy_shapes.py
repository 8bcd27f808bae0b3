"""Generator of the built-in demo dataset `hazy-shapes`.

Procedural outdoor-like scenes: a sky above a horizon, a textured ground plane below it, and
objects of five shape classes standing on the ground. Depth follows the ground plane, so farther
objects are smaller and, after hazing with the atmospheric scattering model (METHOD.md §7),
fainter. A clean copy and the depth map of every image are kept beside the hazed one; beta and A
are drawn per image and recorded in `haze.csv` so results can be split by haze level.

The dataset is generated on first use into a cache folder outside the repository and reused while
its recipe (RECIPE_VERSION and the generation arguments) is unchanged.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from clipce_rtdetr.data.physics import apply_haze
from clipce_rtdetr.paths import home

# Bump whenever a change here alters the images: cached copies of an older recipe are regenerated.
RECIPE_VERSION = 2
NAME = "hazy-shapes"
CLASSES = ("circle", "square", "triangle", "star", "cross")
# beta bins used to report results per haze level (upper bounds, inclusive of the lower one).
HAZE_LEVELS = (("light", 0.0, 0.08), ("medium", 0.08, 0.16), ("heavy", 0.16, float("inf")))
HEAVY_BETA = HAZE_LEVELS[-1][1]


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the generated files. Stored as recipe.json beside the data."""

    seed: int = 0
    n_train: int = 192
    n_val: int = 64
    size: int = 256
    max_objects: int = 4
    max_depth: float = 8.0  # farthest object (ground-plane depth units; the camera-nearest row is 1)
    object_scale: float = 0.22  # object radius at depth 1, as a fraction of the image size
    beta: tuple[float, float] = (0.02, 0.30)
    airlight: tuple[float, float] = (0.7, 1.0)
    version: int = RECIPE_VERSION
    classes: tuple[str, ...] = field(default=CLASSES)
    # Train split only: the fraction of images in heavy haze (beta drawn from the heavy bin, HAZE_LEVELS, within
    # `beta`; the others below it). None: beta uniform in `beta` for both splits (heavy is then ~50 %).
    heavy_fraction: float | None = None

    def __post_init__(self):
        f = self.heavy_fraction
        if f is not None and not (0.0 <= f <= 1.0 and self.beta[0] < HEAVY_BETA < self.beta[1]):
            raise ValueError(f"heavy_fraction={f} must be in [0, 1], with beta={self.beta} spanning {HEAVY_BETA}.")

    def folder_name(self) -> str:
        heavy = "" if self.heavy_fraction is None else f"-heavy{self.heavy_fraction:g}"
        return f"{NAME}-v{self.version}-s{self.seed}-n{self.n_train}+{self.n_val}-{self.size}px{heavy}"

    def as_record(self) -> dict:
        """What recipe.json holds: every field (a folder of another recipe is regenerated); heavy_fraction only
        when set, so folders made before the option existed still match their (unchanged) recipe."""
        d = json.loads(json.dumps(asdict(self)))
        if d["heavy_fraction"] is None:
            del d["heavy_fraction"]
        return d


def haze_level(beta: float) -> str:
    for name, lo, hi in HAZE_LEVELS:
        if lo <= beta < hi:
            return name
    return HAZE_LEVELS[-1][0]


def cache_root() -> Path:
    """Where generated datasets live: $CLIPCE_HOME/datasets, default ~/.cache/clipce-rtdetr/datasets."""
    return home() / "datasets"


# ----------------------------------------------------------------------------------------- scene
def _ground_depth(h: int, horizon_row: float, near: float = 1.0, far: float = 40.0) -> np.ndarray:
    """Per-row depth of a flat ground seen by a level camera; rows above the horizon are sky (far)."""
    rows = np.arange(h, dtype=np.float32) + 0.5
    below = rows - horizon_row
    d = np.where(below > 0, near * (h - horizon_row) / np.maximum(below, 1e-3), far)
    return np.clip(d, near, far).astype(np.float32)


def _texture(rng: np.random.Generator, h: int, w: int, colour: np.ndarray) -> np.ndarray:
    """A coloured patch with one of four textures (flat, stripes, checker, noise)."""
    kind = rng.integers(4)
    base = np.ones((h, w, 3), np.float32) * colour
    if kind == 0:
        return base
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(3, 8)
    if kind == 1:
        pattern = (np.sin((xx * rng.uniform(-1, 1) + yy) * 2 * np.pi / period) > 0).astype(np.float32)
    elif kind == 2:
        pattern = ((xx // period + yy // period) % 2).astype(np.float32)
    else:
        pattern = rng.random((h, w)).astype(np.float32)
    shade = 0.65 + 0.35 * pattern[..., None]
    return np.clip(base * shade, 0, 1)


def _shape_polygon(cls: int, cx: float, cy: float, r: float, rng: np.random.Generator) -> np.ndarray | None:
    """Vertices of a shape of radius r centred at (cx, cy); None for the circle (drawn natively)."""
    rot = rng.uniform(-0.25, 0.25)
    if cls == 0:
        return None
    if cls == 1:  # square
        ang = np.pi / 4 + rot + np.arange(4) * np.pi / 2
        radii = np.full(4, r)
    elif cls == 2:  # triangle, apex up
        ang = -np.pi / 2 + rot + np.arange(3) * 2 * np.pi / 3
        radii = np.full(3, r)
    elif cls == 3:  # five-pointed star
        ang = -np.pi / 2 + rot + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.42 * r)
    else:  # cross (plus sign), 12 vertices
        a, b = r, r / 3
        pts = np.array(
            [[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b], [-a, b], [-a, -b], [-b, -b]]
        )
        c, s = np.cos(rot), np.sin(rot)
        pts = pts @ np.array([[c, s], [-s, c]])
        return (pts + [cx, cy]).astype(np.float32)
    return np.stack([cx + radii * np.cos(ang), cy + radii * np.sin(ang)], 1).astype(np.float32)


def render_scene(
    rng: np.random.Generator,
    size: int,
    max_objects: int,
    n_classes: int = len(CLASSES),
    max_depth: float = 8.0,
    object_scale: float = 0.22,
):
    """Render one clean scene.

    Returns (clean float32 HxWx3 in [0,1], depth float32 HxW, labels list of (cls, x1, y1, x2, y2)).
    """
    h = w = size
    horizon = rng.uniform(0.3, 0.5) * h
    row_depth = _ground_depth(h, horizon)
    depth = np.repeat(row_depth[:, None], w, 1)

    sky_top, sky_bottom = rng.uniform(0.45, 0.75, 3), rng.uniform(0.7, 0.95, 3)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = np.broadcast_to(sky_top * (1 - t) + sky_bottom * t, (h, w, 3)).astype(np.float32).copy()
    ground = _texture(rng, h, w, rng.uniform(0.15, 0.55, 3))
    ground_mask = (np.arange(h) > horizon)[:, None, None]
    img = np.where(ground_mask, ground, img)

    # Farther objects first so nearer ones occlude them (painter's algorithm).
    n = int(rng.integers(1, max_objects + 1))
    # Row where the ground is max_depth away: depth = (h - horizon) / (row - horizon).
    base_rows = np.sort(rng.uniform(horizon + (h - horizon) / max_depth, h - 1, n))
    labels, boxes = [], []
    for base in base_rows:
        d = float(row_depth[int(base)])
        r = float(np.clip(object_scale * size / d, 4.0, 0.22 * size))  # apparent size falls as 1/depth
        cls = int(rng.integers(n_classes))
        cx = float(rng.uniform(r, w - r))
        cy = base - r
        box = np.array([cx - r, cy - r, cx + r, cy + r])
        if any(_iou(box, b) > 0.3 for b in boxes):
            continue
        mask = np.zeros((h, w), np.uint8)
        poly = _shape_polygon(cls, cx, cy, r, rng)
        shift = 4  # sub-pixel precision for cv2 drawing
        if poly is None:
            cv2.circle(mask, (round(cx * 16), round(cy * 16)), round(r * 16), 255, -1, cv2.LINE_AA, shift)
        else:
            cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 255, cv2.LINE_AA, shift)
        ys, xs = np.nonzero(mask > 127)
        if len(xs) < 4:
            continue
        alpha = (mask.astype(np.float32) / 255.0)[..., None]
        colour = rng.uniform(0.05, 1.0, 3)
        img = img * (1 - alpha) + _texture(rng, h, w, colour) * alpha
        depth = np.where(mask > 127, d, depth)
        x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        boxes.append(box)
        labels.append((cls, float(x1), float(y1), float(x2), float(y2)))
    return np.clip(img, 0, 1).astype(np.float32), depth.astype(np.float32), labels


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def make_sample(recipe: Recipe, split: str, index: int):
    """Deterministic (clean, hazy, depth, labels, beta, airlight) for one image of a split."""
    split_id = {"train": 0, "val": 1}[split]
    rng = np.random.default_rng([recipe.seed, recipe.version, split_id, index])
    clean, depth, labels = render_scene(
        rng, recipe.size, recipe.max_objects, len(recipe.classes), recipe.max_depth, recipe.object_scale
    )
    beta = draw_beta(rng, recipe, split)
    airlight = float(rng.uniform(*recipe.airlight))
    hazy = apply_haze(clean, depth, beta, airlight)
    return clean, hazy, depth, labels, beta, airlight


def draw_beta(rng: np.random.Generator, recipe: Recipe, split: str) -> float:
    """One image's beta: uniform in recipe.beta; with heavy_fraction, train images are heavy with that chance.
    The val split always draws uniformly (balanced), with the same draws as the default recipe."""
    if recipe.heavy_fraction is None or split != "train":
        return float(rng.uniform(*recipe.beta))
    heavy = rng.random() < recipe.heavy_fraction
    low, high = (HEAVY_BETA, recipe.beta[1]) if heavy else (recipe.beta[0], HEAVY_BETA)
    return float(rng.uniform(low, high))


# ----------------------------------------------------------------------------------------- files
def _to_u8(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.round(img * 255).astype(np.uint8), cv2.COLOR_RGB2BGR)


def missing_outputs(out: Path, recipe: Recipe) -> list[str]:
    """The files a complete generation owns that are not there: per image its hazy and clean copies, depth map and
    label file, and the haze record."""
    names = [
        f"{split}/{split}_{i:05d}" for split, n in (("train", recipe.n_train), ("val", recipe.n_val)) for i in range(n)
    ]
    wanted = [f"{sub}/{n}.png" for n in names for sub in ("images", "clean", "depth")] + [
        f"labels/{n}.txt" for n in names
    ]
    return [f for f in [*wanted, "haze.csv"] if not (out / f).is_file()]


def is_complete(out: Path, recipe: Recipe) -> bool:
    """A finished folder of this whole recipe (not only its version: the same out= folder asked for with another
    seed, size or count must not silently return the old images), with every file it owns still there."""
    try:
        same = json.loads((out / "recipe.json").read_text()) == recipe.as_record()
    except (OSError, ValueError):
        return False
    missing = missing_outputs(out, recipe) if same else []
    if missing:  # e.g. a label file deleted by hand: the image would silently become background
        from ultralytics.utils import LOGGER

        LOGGER.warning(f"{out}: {len(missing)} files are missing (first: {missing[0]}); generating it again.")
    return same and not missing


def generate(root: str | Path | None = None, recipe: Recipe | None = None, progress: bool = True) -> Path:
    """Generate hazy-shapes (if not already complete for this recipe); return its dataset YAML path.

    Processes that ask at once (the ranks of a torchrun job) take turns on a lock file beside the folder: the
    first generates, the others find it complete."""
    import fcntl

    recipe = recipe or Recipe()
    out = Path(root) if root is not None else cache_root() / recipe.folder_name()
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _generate_unlocked(out, recipe, progress)


def _generate_unlocked(out: Path, recipe: Recipe, progress: bool) -> Path:
    from tqdm import tqdm

    yaml_path = out / f"{NAME}.yaml"
    done = out / ".complete"
    if done.exists() and yaml_path.exists() and is_complete(out, recipe):
        return yaml_path
    if out.exists():  # incomplete or stale: only ever our own generated folder, marked by recipe.json
        if not (out / "recipe.json").exists() and any(out.iterdir()):
            raise FileExistsError(
                f"{out} exists and is not a hazy-shapes folder made by clipce-rtdetr; "
                "choose another out= folder or remove it yourself."
            )
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "recipe.json").write_text(json.dumps(recipe.as_record(), indent=2))

    rows = []
    jobs = [("train", i) for i in range(recipe.n_train)] + [("val", i) for i in range(recipe.n_val)]
    for split, i in tqdm(jobs, desc=f"Generating {NAME} in {out}", disable=not progress, unit="img"):
        clean, hazy, depth, labels, beta, airlight = make_sample(recipe, split, i)
        stem = f"{split}_{i:05d}"
        for sub, img in (("images", hazy), ("clean", clean)):
            (out / sub / split).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out / sub / split / f"{stem}.png"), _to_u8(img))
        (out / "depth" / split).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out / "depth" / split / f"{stem}.png"), np.round(depth * 1000).astype(np.uint16))
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        s = recipe.size
        lines = [
            f"{c} {(x1 + x2) / 2 / s:.6f} {(y1 + y2) / 2 / s:.6f} {(x2 - x1) / s:.6f} {(y2 - y1) / s:.6f}"
            for c, x1, y1, x2, y2 in labels
        ]
        (out / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
        rows.append(
            {
                "im_file": f"images/{split}/{stem}.png",
                "split": split,
                "beta": f"{beta:.6f}",
                "airlight": f"{airlight:.6f}",
                "level": haze_level(beta),
                "n_objects": len(labels),
            }
        )
    with open(out / "haze.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    data = {
        "path": str(out.resolve()),
        "train": "images/train",
        "val": "images/val",
        "names": dict(enumerate(recipe.classes)),
        # Degradation parameters per image, for per-level evaluation.
        "degradation": "haze.csv",
        "clean": "clean",
        "depth": "depth",
        "depth_scale": 0.001,
    }
    yaml_path.write_text(
        f"# {NAME}: generated by clipce-rtdetr (recipe v{recipe.version}); do not edit\n"
        + yaml.safe_dump(data, sort_keys=False)
    )
    done.write_text("ok\n")
    return yaml_path


def run_generate(overrides: dict) -> Path:
    """`clipce-rtdetr generate [out=DIR] [seed=N]`: write hazy-shapes; prints the dataset YAML path."""
    from ultralytics.utils import LOGGER

    from clipce_rtdetr.config import check_overrides

    ultra, proj = check_overrides(overrides)
    recipe = Recipe(seed=int(ultra.get("seed", 0)))
    out = Path(proj["out"]) if proj.get("out") else None
    try:
        yaml_path = generate(out, recipe)
    except FileExistsError as e:  # a folder the user made: a clear CLI error, not a traceback
        from clipce_rtdetr.errors import ClipCEError

        raise ClipCEError(str(e)) from None
    LOGGER.info(f"hazy-shapes ready: {yaml_path} (train with: clipce-rtdetr train data={yaml_path})")
    return yaml_path


BUILTIN = ("hazy-shapes", "hazy-shapes.yaml")
# Named variants (data=hazy-shapes-rare-heavy): the same scenes and val split, another train beta distribution.
VARIANTS = {"hazy-shapes-rare-heavy": Recipe(heavy_fraction=0.1)}  # heavy haze in ~10 % of train images
# Committed demo CLIP trained on clean hazy-shapes crops (evidence issue); until it exists a tiny random CLIP.
DEMO_CLIP_FILE = "demo-clip-hazy-shapes.safetensors"
DEMO_CLIP_MODEL = "clipce-demo"


def is_builtin(data) -> bool:
    """True for the built-in demo dataset: no data, 'hazy-shapes', or datasets/hazy-shapes.yaml."""
    from clipce_rtdetr.paths import DATASETS_DIR

    if data is None or str(data) in BUILTIN or str(data) in VARIANTS:
        return True
    return Path(data).resolve() == (DATASETS_DIR / "hazy-shapes.yaml").resolve()


def builtin_recipe(data) -> Recipe:
    """The recipe of a built-in name: a named variant's, else the default."""
    return VARIANTS.get(str(data), Recipe())


def demo_clip_spec() -> str:
    """The CLIP used when training on hazy-shapes without `clip=`: the committed demo CLIP if present,
    else a tiny randomly initialised CLIP (made once under $CLIPCE_HOME/weights), loudly flagged."""
    from ultralytics.utils import LOGGER

    from clipce_rtdetr.paths import weights_dirs

    for d in weights_dirs():
        if (d / DEMO_CLIP_FILE).exists():
            return f"{DEMO_CLIP_MODEL}:{d / DEMO_CLIP_FILE}"
    from clipce_rtdetr.clip.loader import TINY_CLIP, make_random_clip

    path = home() / "weights" / "clipce-tiny-random.pt"
    spec = (
        f"{TINY_CLIP}:{path.resolve()}" if path.exists() else make_random_clip(path, TINY_CLIP)
    )  # the same spec both ways
    LOGGER.warning(
        "CLIP-CE demo: no demo CLIP found, using a tiny CLIP with RANDOM weights. Its AME weights are "
        "uninformative (this run shows the pipeline works, not what CLIP-CE gains). "
        "Pass clip=MODEL:PRETRAINED for real scores."
    )
    return spec
