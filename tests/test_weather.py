"""Rain, snow and mixed conditions in `degrade` (issue 24): recorded parameters reproduce every image, any process
count gives the same bytes, the severity measure (object-box SSIM to the input) falls with severity, labels stay
as they were, the particles respect the scene's depth."""

from __future__ import annotations

import csv
import filecmp
import json
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from clipce_rtdetr.data import physics, weather, weather_u8
from clipce_rtdetr.data.degrade import degrade
from clipce_rtdetr.data.degrade_image import (
    FIELDS,
    KINDS,
    components,
    degrade_array,
    metres_per_unit,
    prior_depth,
    ranges_for,
    read_image,
    sample_params,
    severity_measure,
    synthesis_version,
)
from clipce_rtdetr.errors import ClipCEError


def _rows(out: Path) -> list[dict]:
    with open(out / "degradation.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _params(row: dict, kind: str) -> dict:
    """The parameters of a degradation.csv row, typed as sample_params returns them."""
    p = {}
    for k in FIELDS[kind]:
        v = row[k]
        p[k] = v if k.endswith("_level") else (int(v) if k.endswith("seed") else float(v))
    return p


@pytest.fixture(scope="module")
def val_images(tiny_hazy_shapes):
    """(relative path, BGR image, object boxes in pixels) of the tiny dataset's val images."""
    root = tiny_hazy_shapes.parent
    out = []
    for f in sorted((root / "images" / "val").glob("*.png")):
        img = cv2.imread(str(f))
        h, w = img.shape[:2]
        lb = np.loadtxt(root / "labels" / "val" / f"{f.stem}.txt", ndmin=2)
        boxes = [((x - bw / 2) * w, (y - bh / 2) * h, (x + bw / 2) * w, (y + bh / 2) * h) for _, x, y, bw, bh in lb]
        out.append((f"images/val/{f.name}", img, boxes))
    return out


@pytest.mark.parametrize("kind", ["rain", "snow", "lowlight+snow+haze"])
def test_recorded_parameters_reproduce_images_and_labels_untouched(tiny_hazy_shapes, tmp_path, kind):
    out = tmp_path / "d"
    y = degrade(tiny_hazy_shapes, out, kind=kind, level="heavy", seed=3, processes=1, progress=False)
    assert y.is_file()
    rows = _rows(out)
    root = tiny_hazy_shapes.parent
    assert len(rows) == 32 and {r["kind"] for r in rows} == {kind}
    for r in rows[::5]:  # every recorded parameter set regenerates its image
        src = read_image(root / r["im_file"])
        d = prior_depth("horizon", *src.shape[:2])
        again = degrade_array(src, kind, _params(r, kind), d, metres_per_unit=metres_per_unit("horizon"))
        got = read_image(out / r["im_file"])
        if "+" in kind:  # haze and low light record their floats to 6 decimals: a few pixels cross a rounding,
            # by a grey level, which low light's J ** gamma stretches up to gamma-fold in the highlights
            diff = np.abs(again.astype(int) - got)
            assert (diff > 0).mean() < 1e-3 and diff.max() <= math.ceil(float(r.get("gamma") or 1.0)) + 1
        else:  # rain and snow draw their floats at the recorded precision: exactly
            assert np.array_equal(again, got)
            drawn = sample_params(kind, "heavy", ranges_for(kind, "heavy", {}), 3, r["im_file"])
            assert _params(r, kind) == {k: drawn[k] for k in FIELDS[kind]}
        assert not np.array_equal(got, src)
    for lbl in (root / "labels").rglob("*.txt"):  # labels: byte for byte the source's
        assert filecmp.cmp(lbl, out / "labels" / lbl.relative_to(root / "labels"), shallow=False)


def test_parameters_by_seed_and_kind_streams():
    r = ranges_for("rain+haze", "medium", {})
    a = sample_params("rain+haze", "medium", r, 7, "images/val/a.jpg")
    assert a == sample_params("rain+haze", "medium", r, 7, "images/val/a.jpg")
    assert a != sample_params("rain+haze", "medium", r, 8, "images/val/a.jpg")
    # a mixed kind draws each component exactly as the kind alone does
    rain = sample_params("rain", "medium", ranges_for("rain", "medium", {}), 7, "images/val/a.jpg")
    haze = sample_params("haze", "medium", ranges_for("haze", "medium", {}), 7, "images/val/a.jpg")
    assert all(a[k] == v for k, v in rain.items() if k != "level")
    assert all(a[k] == v for k, v in haze.items() if k != "level")
    assert 10.0 <= a["rain_rate"] < 50.0 and a["level"] == "medium"
    assert components("lowlight+rain+haze") == ("haze", "rain", "lowlight")  # scene -> camera
    assert set(FIELDS) >= set(KINDS)


def test_process_count_invariance(tiny_hazy_shapes, tmp_path):
    outs = []
    for n in (1, 2):
        out = tmp_path / f"p{n}"
        degrade(tiny_hazy_shapes, out, kind="snow+haze", level="medium", seed=1, processes=n, progress=False)
        outs.append(out)
    imgs = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*.png"))
    assert len(imgs) == 32
    for rel in imgs:
        assert filecmp.cmp(outs[0] / rel, outs[1] / rel, shallow=False), rel
    strip = [{k: v for k, v in r.items() if k != "source_stat"} for r in _rows(outs[0])]
    assert strip == [{k: v for k, v in r.items() if k != "source_stat"} for r in _rows(outs[1])]
    # resumable: a deleted image is redone, byte for byte, and nothing else is rewritten
    gone = outs[0] / imgs[3]
    gone.unlink()
    kept = {p: p.stat().st_mtime_ns for p in outs[0].rglob("*.png")}
    degrade(tiny_hazy_shapes, outs[0], kind="snow+haze", level="medium", seed=1, processes=2, progress=False)
    assert filecmp.cmp(gone, outs[1] / imgs[3], shallow=False)
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())


@pytest.mark.parametrize("kind", ["rain", "snow", "rain+haze", "lowlight+haze"])
def test_severity_monotone_by_object_box_ssim(val_images, kind):
    """The stated measure: mean SSIM of the object boxes to the input image falls at every severity step."""
    means = severity_measure(kind, val_images)
    assert all(a > b for a, b in zip(means, means[1:])), (kind, means)
    assert means[0] < 1.0


def test_named_levels_monotone(tiny_hazy_shapes, tmp_path):
    root = tiny_hazy_shapes.parent
    scores = []
    for level in ("light", "medium", "heavy"):
        out = tmp_path / level
        degrade(tiny_hazy_shapes, out, kind="rain", level=level, seed=0, processes=1, progress=False)
        vals = []
        for r in _rows(out):
            if r["split"] != "val":
                continue
            src, deg = cv2.imread(str(root / r["im_file"])), cv2.imread(str(out / r["im_file"]))
            vals.append(physics.ssim(src, deg))
        scores.append(np.mean(vals))
    assert scores[0] > scores[1] > scores[2], scores


def test_fast_path_matches_float_and_no_rain_is_identity():
    rng = np.random.default_rng(0)
    img = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
    d = prior_depth("horizon", 60, 80)
    for kind in ("rain", "snow"):
        p = sample_params(kind, "heavy", ranges_for(kind, "heavy", {}), 0, "x.png")
        fast = degrade_array(img, kind, p, d, metres_per_unit=10.0).astype(int)
        ref = degrade_array(img, kind, p, d, fast=False, metres_per_unit=10.0).astype(int)
        assert np.abs(fast - ref).max() <= 2  # the veil's and the particles' fixed-point roundings
        zero = {**p, weather.PRECIPITATION[kind].rate_key: 0.0}
        assert np.abs(degrade_array(img, kind, zero, d).astype(int) - img).max() <= 1
    two = np.dstack([img[..., 0], img[..., 1]])  # a two-channel 8-bit image: every channel gets the same maps
    p = sample_params("rain", "heavy", ranges_for("rain", "heavy", {}), 0, "x.png")
    both = degrade_array(two, "rain", p, d, metres_per_unit=10.0)
    assert both.shape == two.shape
    assert np.abs(both[..., 0].astype(int) - degrade_array(img[..., 0], "rain", p, d, metres_per_unit=10.0)).max() == 0
    gray16 = (rng.random((60, 80)) * 65535).astype(np.uint16)  # 16-bit and gray images take the float path
    p = sample_params("snow", "heavy", ranges_for("snow", "heavy", {}), 0, "x.png")
    assert degrade_array(gray16, "snow", p, d).dtype == np.uint16


@pytest.mark.parametrize("kind", ["rain", "snow", "rain+haze", "snow+haze"])
def test_fused_8bit_path_matches_float_on_the_half_resolution_grid(kind):
    """At 640 x 480 the particles are drawn on the half-resolution grid and the 8-bit path composes haze, veil and
    particles into one gain/offset map brought up by pyrUp: within two grey levels of the float path (applied
    kind after kind) where the depth is smooth, and within a few at the horizon prior's kink."""
    rng = np.random.default_rng(1)
    img = cv2.resize((rng.random((60, 80, 3)) * 255).astype(np.uint8), (640, 480), interpolation=cv2.INTER_CUBIC)
    d = prior_depth("horizon", 480, 640)
    p = sample_params(kind, "heavy", ranges_for(kind, "heavy", {}), 0, "x.jpg")
    fast = degrade_array(img, kind, p, d, metres_per_unit=10.0).astype(int)
    ref = degrade_array(img, kind, p, d, fast=False, metres_per_unit=10.0).astype(int)
    diff = np.abs(fast - ref)
    assert np.mean(diff <= 2) > 0.998 and diff.max() <= 6, (np.mean(diff <= 2), diff.max())
    assert np.abs(fast - img).mean() > 3  # and the weather is there


def test_streak_boxes_from_the_integral_image_equal_opencv_box_filters():
    """weather._streaks sums each layer's box filter from one integral image of the stacked layers; OpenCV's own
    box filter (cv2.blur, zero border) of each layer's impulses is the reference."""
    rng = np.random.default_rng(2)
    h, w = 50, 70
    for kernels in ([(2, 9), None, (1, 4), (1, 1)], [(3, 8), (2, 3), (1, 1)], [(1, 30)]):
        layers = [i for i, k in enumerate(kernels) if k]
        n = 400
        layer, row, col, mass = rng.choice(layers, n), rng.integers(0, h, n), rng.integers(0, w, n), rng.random(n)
        ref = np.zeros((h, w), np.float32)
        for i in layers:
            impulses = np.zeros((h, w), np.float32)
            np.add.at(impulses, (row[layer == i], col[layer == i]), mass[layer == i].astype(np.float32))
            ref += cv2.blur(impulses, kernels[i], borderType=cv2.BORDER_CONSTANT)
        got = weather._streaks(h, w, kernels, layer, row, col, mass)
        np.testing.assert_allclose(got, ref, atol=1e-4)


def test_particles_respect_scene_depth():
    p = sample_params("snow", "heavy", ranges_for("snow", "heavy", {}), 0, "x.png")
    near = np.full((120, 160), 0.2, np.float32)  # a wall 20 cm from the lens: no flake can be in front of it
    far = np.full((120, 160), 100.0, np.float32)
    assert weather.particle_alpha((120, 160), near, weather.SNOW, p).max() == 0.0
    a = weather.particle_alpha((120, 160), far, weather.SNOW, p)
    assert 0.0 < a.max() < 1.0
    # heavier snowfall covers more of the image (same particle seed)
    light = weather.particle_alpha((120, 160), far, weather.SNOW, {**p, "snowfall": 0.3})
    assert light.mean() < a.mean()
    assert weather.extinction(weather.RAIN, 50.0) > weather.extinction(weather.RAIN, 5.0) > 0.0


def test_custom_ranges_checked(tiny_hazy_shapes, tmp_path):
    with pytest.raises(ClipCEError, match="rain_rate_range"):
        ranges_for("rain+haze", "custom", {"beta_range": [0.05, 0.1]})
    with pytest.raises(ClipCEError, match="rain_rate_range"):
        ranges_for("rain", "medium", {"rain_rate_range": [10, 1000]})
    r = ranges_for("snow", "custom", {"snowfall_range": [1, 2]})
    assert r["snowfall"] == (1.0, 2.0)
    with pytest.raises(ClipCEError, match="kind=hail"):
        degrade(tiny_hazy_shapes, tmp_path / "x", kind="hail", progress=False)
    assert not (tmp_path / "x").exists()


def test_prompt_profiles_for_every_kind():
    """ame_profile=rain and snow are bundled; a mixed kind uses the profile of its first-named kind."""
    from clipce_rtdetr.data.degrade_image import prompt_profile
    from clipce_rtdetr.method.prompts import available_profiles, load_profile

    assert {"rain", "snow"} <= set(available_profiles())
    assert prompt_profile("rain+haze") == "rain" and prompt_profile("lowlight+snow+haze") == "lowlight"
    for kind in KINDS:
        profile = load_profile(prompt_profile(kind))
        assert profile.negatives and profile.templates
    assert any("rain" in n for n in load_profile("rain").negatives)


def test_coco_per_level_for_new_kinds(tiny_hazy_shapes, tmp_path):
    """`val coco=True` on a rain+haze copy reports COCO mAP per recorded level, as for haze."""
    from collections import Counter

    from clipce_rtdetr.models import load_detector

    out = tmp_path / "rh"
    y = degrade(tiny_hazy_shapes, out, kind="rain+haze", level="custom", seed=0, processes=1, progress=False,
                ranges={"rain_rate_range": [5, 120], "beta_range": [0.02, 0.15]})  # fmt: skip
    want = Counter(r["level"] for r in _rows(out) if r["split"] == "val")
    assert len(want) >= 2  # the custom ranges span the named levels
    model = Path(__file__).resolve().parents[1] / "weights" / "rtdetr-tiny-shapes.pt"
    m = load_detector(str(model)).val(data=str(y), coco=True, imgsz=64, batch=8, device="cpu", workers=0,
                                      plots=False, verbose=False, project=str(tmp_path), name="v")  # fmt: skip
    got = {r["level"]: r["images"] for r in m.coco["per_level"]}
    assert got == dict(want)
    assert list(got) == [lv for lv in ("light", "medium", "heavy") if lv in got]  # in severity order


def test_particles_never_brighter_than_the_sky_that_lights_them():
    """A flake reflects ~90 % of the sky light and a drop refracts the sky: on a black scene nothing exceeds the
    veil's own brightness, at the dimmest sky (0.6) and the heaviest level."""
    black = np.zeros((120, 160, 3), np.float32)
    far = np.full((120, 160), 100.0, np.float32)
    for kind in ("snow", "rain"):
        p = {**sample_params(kind, "heavy", ranges_for(kind, "heavy", {}), 0, "x.png"), "veil": weather.VEIL[0]}
        _, veil, radiance, alpha = weather.veil_and_alpha(far.shape, far, kind, p)
        assert alpha.max() > 0.05 and radiance <= veil  # particles are drawn, and lit by the veil
        assert weather.apply_weather(black, far, kind, p).max() <= veil + 1e-6
        u8 = weather_u8.apply_u8(black.astype(np.uint8), far, kind, p, metres_per_unit=1.0)
        assert u8.max() <= round(255 * veil) + 1  # the fixed-point path's rounding


def _three_images(root: Path) -> Path:
    rng = np.random.default_rng(3)
    for split in ("train", "val"):
        for d in ("images", "labels"):
            (root / d / split).mkdir(parents=True)
        for n in ("a", "b", "c"):
            cv2.imwrite(str(root / "images" / split / f"{n}.png"), (rng.random((48, 64, 3)) * 255).astype(np.uint8))
            (root / "labels" / split / f"{n}.txt").write_text("0 0.5 0.5 0.4 0.4\n")
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: {{0: box}}\n")
    return root / "data.yaml"


def test_rerun_with_another_synthesis_version_redoes_every_image(tmp_path):
    data, out = _three_images(tmp_path / "src"), tmp_path / "out"
    degrade(data, out, kind="snow", level="heavy", progress=False)
    settings = json.loads((out / "degrade.json").read_text())
    assert settings["synthesis"] == synthesis_version("snow") != synthesis_version("rain")  # snow has a revision
    made = {f: f.read_bytes() for f in sorted(out.glob("images/*/*.png"))}
    # An output of the version before versions were recorded: no "synthesis" in degrade.json, other pixels.
    del settings["synthesis"]
    (out / "degrade.json").write_text(json.dumps(settings))
    for f in made:
        cv2.imwrite(str(f), np.zeros((48, 64, 3), np.uint8))
    degrade(data, out, kind="snow", level="heavy", progress=False)
    assert {f: f.read_bytes() for f in made} == made  # every image redone, as this version makes it
    assert json.loads((out / "degrade.json").read_text())["synthesis"] == synthesis_version("snow")
    # The same version resumes (nothing redone); other settings are still refused.
    stamp = {f: f.stat().st_mtime_ns for f in made}
    degrade(data, out, kind="snow", level="heavy", progress=False)
    assert {f: f.stat().st_mtime_ns for f in made} == stamp
    with pytest.raises(ClipCEError, match="other settings"):
        degrade(data, out, kind="snow", level="light", progress=False)


def test_mix_written_in_another_order_names_its_spelling(tmp_path):
    from clipce_rtdetr.config import check_overrides
    from clipce_rtdetr.errors import ConfigError

    hint = re.escape("Write 'haze+rain' as 'rain+haze'")
    with pytest.raises(ConfigError, match=hint):
        check_overrides({"kind": "haze+rain"})  # the CLI's check, before anything runs
    data = _three_images(tmp_path / "src")
    with pytest.raises(ClipCEError, match=hint):
        degrade(data, tmp_path / "out", kind="haze+rain", progress=False)
    assert not (tmp_path / "out").exists()
