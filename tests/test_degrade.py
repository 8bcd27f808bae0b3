"""degrade: physics properties, recorded parameters reproduce images, resume, bit depths, refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from clipce_rtdetr.data import physics
from clipce_rtdetr.data.degrade import (
    degrade,
    degrade_array,
    prior_depth,
    ranges_for,
    read_image,
    run_degrade,
    sample_params,
)
from clipce_rtdetr.errors import ClipCEError


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(0)
    img = rng.random((48, 64, 3)).astype(np.float32)
    return img, physics.horizon_depth(48, 64)


def test_haze_physics(scene):
    img, depth = scene
    assert np.array_equal(physics.apply_haze(img, depth, 0.0, 0.8), img)
    t = physics.transmission(np.array([0.0, 1.0, 5.0, 30.0]), 0.1)
    assert t[0] == 1.0 and np.all(np.diff(t) < 0)
    # Mean contrast over rows (depth is constant along a row of the horizon prior) falls with beta.
    contrast = [
        np.mean([physics.rms_contrast(row) for row in physics.apply_haze(img, depth, b, 0.9)])
        for b in (0, 0.02, 0.05, 0.1, 0.2)
    ]
    assert np.all(np.diff(contrast) < 0)
    for out in (
        physics.apply_haze(img, depth, 0.3, 1.0),
        physics.apply_lowlight(img, 4, 0.01, 0.05, 1),
        physics.apply_underwater(img, depth, physics.WATER_ATTENUATION_RGB, (0.1, 0.5, 0.6)),
    ):
        assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    c = physics.centre_distance_depth(48, 64)
    assert c[24, 32] > c[0, 0] >= 0  # IA-YOLO: farthest at the centre


def test_lowlight_and_underwater_physics(scene):
    img, depth = scene
    assert np.allclose(physics.apply_lowlight(img, 1.0), img)
    assert physics.apply_lowlight(img, 3.0).mean() < physics.apply_lowlight(img, 1.5).mean() < img.mean()
    a = physics.apply_lowlight(img, 2.0, 0.01, 0.02, noise_seed=5)
    assert np.array_equal(a, physics.apply_lowlight(img, 2.0, 0.01, 0.02, noise_seed=5))
    assert np.allclose(physics.apply_underwater(img, np.zeros_like(depth), (0.4, 0.07, 0.04), (0.1, 0.5, 0.6)), img)
    far = physics.apply_underwater(img, np.full_like(depth, 8.0), (0.4, 0.07, 0.04), (0.1, 0.5, 0.6))
    loss = np.abs(far - img).mean(axis=(0, 1))
    assert loss[0] > loss[1] > loss[2] * 0.9  # red is lost fastest
    with pytest.raises(ValueError):
        physics.apply_underwater(img[..., 0], depth, (0.4, 0.07, 0.04), (0.1, 0.5, 0.6))


def test_params_deterministic_and_levels():
    r = ranges_for("haze", "heavy", {})
    p = sample_params("haze", "heavy", r, 7, "images/val/a.jpg")
    assert (
        p
        == sample_params("haze", "heavy", r, 7, "images/val/a.jpg")
        != sample_params("haze", "heavy", r, 8, "images/val/a.jpg")
    )
    assert 0.11 <= p["beta"] <= 0.16 and p["level"] == "heavy"
    r = ranges_for("haze", "custom", {"beta_range": [0.01, 0.02], "airlight_range": [0.5, 0.5]})
    p = sample_params("haze", "custom", r, 0, "x.png")
    assert p["airlight"] == 0.5 and p["level"] == "light"
    with pytest.raises(ClipCEError, match="beta_range"):
        ranges_for("haze", "custom", {})


@pytest.mark.parametrize("dtype,shape", [(np.uint8, (32, 40)), (np.uint16, (32, 40, 3)), (np.uint8, (32, 40, 4))])
def test_bit_depths_gray_rgba(dtype, shape):
    rng = np.random.default_rng(1)
    img = (rng.random(shape) * np.iinfo(dtype).max).astype(dtype)
    p = sample_params("haze", "medium", ranges_for("haze", "medium", {}), 0, "x")
    out = degrade_array(img, "haze", p, prior_depth("horizon", 32, 40))
    assert out.dtype == dtype and out.shape == img.shape
    if shape[-1] == 4:
        assert np.array_equal(out[..., 3], img[..., 3])  # alpha kept
    if len(shape) == 2:
        with pytest.raises(ValueError, match="grayscale"):
            degrade_array(
                img,
                "underwater",
                sample_params("underwater", "medium", ranges_for("underwater", "medium", {}), 0, "x"),
                prior_depth("horizon", 32, 40),
            )
    with pytest.raises(ValueError, match="float32"):
        degrade_array(img.astype(np.float32), "haze", p, None)


def read_rows(out: Path) -> list[dict]:
    with open(out / "degradation.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("kind", ["haze", "lowlight", "underwater"])
def test_degrade_dataset_reproducible(tiny_hazy_shapes, tmp_path, kind):
    y = degrade(tiny_hazy_shapes, tmp_path / kind, kind=kind, level="heavy", seed=1, processes=1, progress=False)
    cfg = yaml.safe_load(y.read_text())
    root = Path(tiny_hazy_shapes).parent
    assert (
        cfg["degradation"] == "degradation.csv"
        and cfg["names"] == yaml.safe_load(Path(tiny_hazy_shapes).read_text())["names"]
    )
    rows = read_rows(tmp_path / kind)
    assert len(rows) == 32 and {r["level"] for r in rows} == {"heavy"}
    # Labels copied unchanged.
    for lb in (root / "labels").rglob("*.txt"):
        assert (tmp_path / kind / lb.relative_to(root)).read_bytes() == lb.read_bytes()
    # The recorded parameters reproduce the image (to 8-bit rounding).
    r = rows[3]
    src = cv2.imread(str(root / r["im_file"]))[..., ::-1].astype(np.float32) / 255
    h, w = src.shape[:2]
    if kind == "haze":
        want = physics.apply_haze(src, physics.horizon_depth(h, w), float(r["beta"]), float(r["airlight"]))
    elif kind == "lowlight":
        want = physics.apply_lowlight(
            src[..., ::-1], float(r["gamma"]), float(r["shot"]), float(r["read"]), int(r["noise_seed"])
        )[..., ::-1]
    else:
        d = physics.normalised_depth(physics.horizon_depth(h, w)) * float(r["distance"])
        want = physics.apply_underwater(
            src, d, [float(r[f"atten_{c}"]) for c in "rgb"], [float(r[f"veil_{c}"]) for c in "rgb"]
        )
    got = cv2.imread(str(tmp_path / kind / r["im_file"]))[..., ::-1].astype(np.float32) / 255
    assert np.abs(got - want).max() <= 1.01 / 255 + 1e-6


def test_resume_and_processes(tiny_hazy_shapes, tmp_path):
    full = tmp_path / "full"
    degrade(tiny_hazy_shapes, full, kind="haze", seed=2, processes=2, progress=False)
    part = tmp_path / "part"
    threads = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        degrade(tiny_hazy_shapes, part, kind="haze", seed=2, processes=1, progress=False)
        assert cv2.getNumThreads() == 2  # in this process: the caller's OpenCV threads are given back
    finally:
        cv2.setNumThreads(threads)
    files = sorted(p.relative_to(part) for p in (part / "images").rglob("*.png"))
    # Interrupted run: some images never written, one half-written (temporary file), CSV not yet written.
    for f in files[:3]:
        (part / f).unlink()
    from clipce_rtdetr.atomic import temp_path_for  # the name write_image's temporary file has (a kill leaves it)

    temp_path_for(part / files[4]).write_bytes(b"\x89PNG half")
    (part / files[4]).unlink()
    (part / "degradation.csv").unlink()
    degrade(tiny_hazy_shapes, part, kind="haze", seed=2, processes=1, progress=False)
    for f in files:
        assert (part / f).read_bytes() == (full / f).read_bytes()
    assert (part / "degradation.csv").read_text() == (full / "degradation.csv").read_text()
    with pytest.raises(ClipCEError, match="other settings"):
        degrade(tiny_hazy_shapes, part, kind="haze", seed=3, processes=1, progress=False)


def test_refusals_and_depth_folder(tiny_hazy_shapes, tmp_path):
    root = Path(tiny_hazy_shapes).parent
    with pytest.raises(ClipCEError, match="never writes into its source"):
        degrade(tiny_hazy_shapes, root / "degraded", progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(ClipCEError, match="not an empty folder"):
        degrade(tiny_hazy_shapes, tmp_path / "busy", progress=False)
    with pytest.raises(ClipCEError, match="needs out="):
        run_degrade({"data": str(tiny_hazy_shapes)})
    # hazy-shapes ships its depth maps (16-bit PNG, depth_scale 0.001 in its YAML): depth=depth uses them.
    y = run_degrade(
        {"data": str(tiny_hazy_shapes), "out": str(tmp_path / "d"), "depth": "depth", "level": "light", "processes": 1}
    )
    r = read_rows(tmp_path / "d")[0]
    src = cv2.imread(str(root / r["im_file"])).astype(np.float32) / 255
    d = (
        cv2.imread(str(root / "depth" / Path(r["im_file"]).relative_to("images")), cv2.IMREAD_UNCHANGED).astype(
            np.float32
        )
        * 0.001
    )
    want = physics.apply_haze(src, d, float(r["beta"]), float(r["airlight"]))
    got = cv2.imread(str(tmp_path / "d" / r["im_file"])).astype(np.float32) / 255
    assert np.abs(got - want).max() <= 1.01 / 255 + 1e-6
    assert json.loads((tmp_path / "d" / "degrade.json").read_text())["depth_scale"] == 0.001
    assert y.exists() and read_image(tmp_path / "d" / r["im_file"]).dtype == np.uint8


@pytest.mark.parametrize("shape", [(48, 64, 3), (48, 64), (48, 64, 1), (48, 64, 4)])
@pytest.mark.parametrize("kind", ["haze", "lowlight", "underwater"])
@pytest.mark.parametrize("source", ["horizon", "centre"])
def test_uint8_fast_path_matches_float_path(shape, kind, source):
    """degrade's uint8 fast path (physics.*_u8) stays within one grey level of the float reference."""
    if kind == "underwater" and (len(shape) == 2 or shape[-1] == 1):
        return
    rng = np.random.default_rng(3)
    img = (rng.random(shape) * 256).astype(np.uint8)
    d = prior_depth(source, *shape[:2])
    for level in ("light", "heavy"):
        for s in range(3):
            p = sample_params(kind, level, ranges_for(kind, level, {}), s, f"img{s}.png")
            fast, ref = degrade_array(img, kind, p, d), degrade_array(img, kind, p, d, fast=False)
            assert fast.dtype == np.uint8 and fast.shape == ref.shape == img.shape
            assert np.abs(fast.astype(int) - ref.astype(int)).max() <= 1
    # apply_haze_u8 against apply_haze itself (the function hazy-shapes uses), per-channel airlight too.
    if kind == "haze" and len(shape) == 3 and shape[2] == 3:
        for a in (0.8, (0.7, 0.9, 1.0)):
            want = physics.apply_haze(img.astype(np.float32) / 255, d, 0.1, a)
            got = physics.apply_haze_u8(img, d, 0.1, a).astype(np.float32) / 255
            assert np.abs(got - want).max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize("band", [600, 1 << 16])
@pytest.mark.parametrize("airlight", [0.0, 0.8, 1.0, 1.4, (0.7, 0.9, 1.0)])
def test_row_depth_path_matches_full_map(airlight, band, monkeypatch):
    """A horizon depth (one value per row, a broadcast view) takes the per-row path; a full copy of the same map
    takes the per-pixel path: both stay within one grey level of each other and of the float physics, also
    for an airlight outside [0, 1] (saturation)."""
    monkeypatch.setattr(physics, "BAND_FLOATS", band)  # 600: bands of 3 rows, the last one shorter
    rng = np.random.default_rng(5)
    img = (rng.random((40, 56, 3)) * 256).astype(np.uint8)
    rows = physics.horizon_depth(40, 56)
    assert physics.row_profile(rows) is not None and physics.row_profile(np.ascontiguousarray(rows)) is None
    for beta in (0.0, 0.05, 0.3):
        a = physics.apply_haze_u8(img, rows, beta, airlight).astype(int)
        b = physics.apply_haze_u8(img, np.ascontiguousarray(rows), beta, airlight).astype(int)
        want = np.round(255 * physics.apply_haze(img.astype(np.float32) / 255, rows, beta, airlight))
        assert np.abs(a - b).max() <= 1 and np.abs(a - want).max() <= 1
        assert np.abs(a - want).mean() < 0.15  # the 16-bit fixed point is off by one level rarely, not per row
    att, veil = (0.04, 0.07, 0.4), (0.6, 0.5, 0.1)
    a = physics.apply_underwater_u8(img, rows, att, veil, scale=0.2).astype(int)
    b = physics.apply_underwater_u8(img, np.ascontiguousarray(rows), att, veil, scale=0.2).astype(int)
    assert np.abs(a - b).max() <= 1 and a.std() < img.std()


@pytest.mark.parametrize("band", [1000, 4096, 1 << 16])
@pytest.mark.parametrize("shape", [(37, 53, 3), (64, 96), (120, 160, 3)])
def test_lowlight_bands_draw_the_recorded_noise(monkeypatch, band, shape):
    """lowlight_u8 draws its noise band by band; whatever the band size, the image equals the one-draw
    reference (apply_lowlight_u8 with standard_noise) to within one grey level of rounding."""
    monkeypatch.setattr(physics, "BAND_FLOATS", band)
    img = (np.random.default_rng(1).random(shape) * 256).astype(np.uint8)
    got = physics.lowlight_u8(img, 2.0, 0.02, 0.03, noise_seed=11).astype(int)
    want = np.round(255 * physics.apply_lowlight_u8(img, 2.0, 0.02, 0.03, noise_seed=11)).astype(int)
    assert got.shape == img.shape and np.abs(got - want).max() <= 1
    assert np.abs(got - physics.lowlight_u8(img, 2.0, 0.02, 0.03, noise_seed=12).astype(int)).max() > 1  # seed matters


def _noise_in_worker(args):
    import cv2

    cv2.setNumThreads(1)
    return physics.standard_noise(*args)


def test_lowlight_noise_same_in_any_process():
    """The low-light noise (cv2.randn from cv2.setRNGSeed(noise_seed)) is Gaussian and the same in every process."""
    import multiprocessing as mp

    want = physics.standard_noise((120, 160, 3), 12345)
    assert want.dtype == np.float32 and abs(float(want.mean())) < 0.02 and abs(float(want.std()) - 1) < 0.02
    assert not np.array_equal(want, physics.standard_noise((120, 160, 3), 12346))
    with mp.get_context("spawn").Pool(2) as pool:
        for got in pool.map(_noise_in_worker, [((120, 160, 3), 12345)] * 3):
            assert np.array_equal(got, want)


def _small_dataset(root: Path, names=("a", "b", "c"), splits=("train", "val")) -> None:
    rng = np.random.default_rng(2)
    for split in splits:
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for n in names:
            cv2.imwrite(str(root / "images" / split / f"{n}.png"), (rng.random((24, 32, 3)) * 255).astype(np.uint8))
            (root / "labels" / split / f"{n}.txt").write_text("0 0.5 0.5 0.4 0.4\n")


def test_absolute_splits_and_list_files_point_at_the_copy(tmp_path):
    """Absolute split entries and list files: the source list is never rewritten, and the new YAML and lists
    point at the degraded copies (training on them must not silently use the clean images)."""
    src = tmp_path / "src"
    _small_dataset(src)
    (src / "train.txt").write_text("".join(f"{src}/images/train/{n}.png\n" for n in "ab"))  # absolute lines
    before = (src / "train.txt").read_bytes()
    y = tmp_path / "elsewhere" / "data.yaml"  # the YAML outside the dataset folder, out= beside the YAML
    y.parent.mkdir()
    y.write_text(
        yaml.safe_dump(
            {"path": str(src), "train": str(src / "train.txt"), "val": str(src / "images" / "val"), "names": {0: "x"}}
        )
    )
    new = degrade(y, y.parent / "hazy", progress=False)
    assert (src / "train.txt").read_bytes() == before
    cfg = yaml.safe_load(new.read_text())
    out = y.parent / "hazy"
    assert cfg["path"] == str(out.resolve()) and cfg["train"] == "train.txt" and cfg["val"] == "images/val"
    listed = [(out / line).resolve() for line in (out / "train.txt").read_text().split()]
    assert listed == [(out / "images" / "train" / f"{n}.png").resolve() for n in "ab"] and all(
        p.is_file() for p in listed
    )


def test_nested_folders_and_the_root_as_a_split_keep_their_paths(tmp_path):
    """A split folder with nested subfolders, and the dataset folder itself as a split: every image is recorded and
    written at its own path inside the dataset (the same path relative_to_root gives), labels beside it."""
    from clipce_rtdetr.data.dataset import relative_to_root

    src = tmp_path / "src"
    _small_dataset(src, splits=("train/day", "train/night"))
    y = tmp_path / "d.yaml"
    y.write_text(yaml.safe_dump({"path": str(src), "train": "images/train", "val": ".", "names": {0: "x"}}))
    out = tmp_path / "hazy"
    degrade(y, out, progress=False)
    ims = sorted((src / "images").rglob("*.png"))
    want = {relative_to_root(im, src) for im in ims}
    assert len(ims) == 6 and {r["im_file"] for r in read_rows(out)} == want
    assert all(
        (out / r).is_file() and (out / r.replace("images/", "labels/")).with_suffix(".txt").is_file() for r in want
    )


def test_linked_images_from_convert_are_degraded(tmp_path):
    """convert links images by default: degrade keeps each link's place in the dataset tree (not its target's)
    and writes real files."""
    real = tmp_path / "real"
    _small_dataset(real, splits=("train",))
    conv = tmp_path / "conv"
    (conv / "images" / "train").mkdir(parents=True)
    (conv / "labels").mkdir()
    for n in "abc":
        (conv / "images" / "train" / f"{n}.png").symlink_to(real / "images" / "train" / f"{n}.png")
    (conv / "labels" / "train").symlink_to(real / "labels" / "train", target_is_directory=True)
    y = conv / "conv.yaml"
    y.write_text(yaml.safe_dump({"path": str(conv), "train": "images/train", "val": "images/train", "names": {0: "x"}}))
    degrade(y, tmp_path / "hazy", progress=False)
    for n in "abc":
        dst = tmp_path / "hazy" / "images" / "train" / f"{n}.png"
        assert (
            dst.is_file() and not dst.is_symlink() and (tmp_path / "hazy" / "labels" / "train" / f"{n}.txt").is_file()
        )


def test_failed_images_are_reported_and_retried(tmp_path):
    """A broken image: the run finishes the others, then stops with an error naming it (exit code != 0); its COCO
    ground truth leaves it out; after a fix, rerunning the same command finishes only it."""
    src = tmp_path / "src"
    _small_dataset(src, splits=("val",))
    (src / "images" / "val" / "b.png").write_bytes(b"")  # broken
    gt = {
        "images": [{"id": i, "file_name": f"{n}.png", "width": 32, "height": 24} for i, n in enumerate("abc")],
        "annotations": [
            {"id": i, "image_id": i, "category_id": 0, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0} for i in range(3)
        ],
        "categories": [{"id": 0, "name": "x"}],
    }
    (src / "annotations").mkdir()
    (src / "annotations" / "val.json").write_text(json.dumps(gt))
    y = src / "d.yaml"
    y.write_text(
        yaml.safe_dump(
            {
                "path": str(src),
                "train": "images/val",
                "val": "images/val",
                "names": {0: "x"},
                "coco_annotations": {"val": "annotations/val.json"},
            }
        )
    )
    out = tmp_path / "hazy"
    with pytest.raises(
        ClipCEError, match=r"(?s)1 of 3 images could not be degraded.*b\.png: empty file.*rerun the same command"
    ):
        degrade(y, out, progress=False)
    assert sorted(p.name for p in (out / "images" / "val").iterdir()) == ["a.png", "c.png"]
    copied = json.loads((out / "annotations" / "val.json").read_text())
    assert [im["file_name"] for im in copied["images"]] == ["a.png", "c.png"] and len(copied["annotations"]) == 2
    assert len(read_rows(out)) == 2
    cv2.imwrite(str(src / "images" / "val" / "b.png"), np.zeros((24, 32, 3), np.uint8))
    degrade(y, out, progress=False)
    assert len(read_rows(out)) == 3 and len(json.loads((out / "annotations" / "val.json").read_text())["images"]) == 3


def test_refused_run_leaves_no_settings_and_depth_by_stem_only_when_unambiguous(tmp_path):
    from clipce_rtdetr.data.degrade import depth_index, find_depth

    src = tmp_path / "src"
    _small_dataset(src)
    y = src / "d.yaml"
    y.write_text(
        yaml.safe_dump({"path": str(src), "train": str(tmp_path / "outside"), "val": "images/val", "names": {0: "x"}})
    )
    (tmp_path / "outside").mkdir()
    cv2.imwrite(str(tmp_path / "outside" / "z.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ClipCEError, match="outside the dataset folder"):
        degrade(y, tmp_path / "hazy", progress=False)
    assert not (tmp_path / "hazy").exists()  # nothing written: a rerun with other settings is not refused
    flat = tmp_path / "depth"
    flat.mkdir()
    for n in ("a", "c"):
        cv2.imwrite(str(flat / f"{n}.png"), np.ones((24, 32), np.uint8))
    idx = depth_index(flat)
    assert find_depth(flat, idx, Path("images/train/a.png"), stem_unique=True) == flat / "a.png"
    assert find_depth(flat, idx, Path("images/train/a.png"), stem_unique=False) is None  # train/a and val/a: ambiguous
    assert find_depth(flat, idx, Path("images/val/b.png")) is None


@pytest.mark.parametrize(
    "kind,key,value",
    [
        ("lowlight", "gamma_range", [0, 0]),
        ("lowlight", "gamma_range", [0.5, 2]),
        ("haze", "airlight_range", [0.5, 3]),
        ("haze", "beta_range", [-0.1, 0.2]),
        ("underwater", "distance_range", [3, 1]),
    ],
)
def test_explicit_ranges_outside_physics_are_refused(kind, key, value):
    with pytest.raises(ClipCEError, match=rf"'{key}=.*must be \[min, max\] with"):
        ranges_for(kind, "medium", {key: value})
    assert ranges_for("lowlight", "custom", {"gamma_range": [1, 3]})["gamma"] == (1.0, 3.0)


def test_config_kind_choices_are_degrades_kinds():
    """config.CHOICES['kind'] is a copy of degrade_image.KINDS (config stays free of the image code's imports):
    a kind added to one and not the other would be refused by the CLI or crash degrade."""
    from clipce_rtdetr.config import CHOICES
    from clipce_rtdetr.data.degrade_image import KINDS

    assert CHOICES["kind"] == KINDS
