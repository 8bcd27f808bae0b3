"""The hazy-shapes generator: determinism, labels, recorded haze, physics, caching, safety."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from clipce_rtdetr.data import hazy_shapes as hs
from clipce_rtdetr.data.dataset import read_degradation
from clipce_rtdetr.data.hazy_shapes import CLASSES, Recipe, generate, haze_level, make_sample, render_scene
from clipce_rtdetr.data.physics import apply_haze, rms_contrast, transmission

SMALL = Recipe(seed=3, n_train=4, n_val=2, size=64, max_objects=4)


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every generated file (the YAML names its own folder, so it is left out)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix != ".yaml"
    }


def read_labels(root: Path, split: str) -> dict[str, np.ndarray]:
    out = {}
    for f in sorted((root / "labels" / split).glob("*.txt")):
        rows = [line.split() for line in f.read_text().splitlines() if line.strip()]
        out[f.stem] = np.array(rows, dtype=np.float64).reshape(-1, 5)
    return out


def load_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


# ------------------------------------------------------------------------------------ determinism
def test_make_sample_is_deterministic_and_seed_dependent():
    a = make_sample(SMALL, "train", 2)
    b = make_sample(SMALL, "train", 2)
    for x, y in zip(a[:3], b[:3]):
        assert np.array_equal(x, y)
    assert a[3:] == b[3:]  # labels, beta, airlight
    c = make_sample(dataclasses.replace(SMALL, seed=4), "train", 2)
    assert not np.array_equal(a[1], c[1])
    assert not np.array_equal(make_sample(SMALL, "val", 2)[1], a[1])  # splits do not repeat images


def test_generate_is_byte_identical_for_a_seed(tmp_path):
    y1 = generate(tmp_path / "a", SMALL, progress=False)
    y2 = generate(tmp_path / "b", SMALL, progress=False)
    d1, d2 = tree_digest(y1.parent), tree_digest(y2.parent)
    assert d1 == d2
    assert sum(k.startswith("images/") for k in d1) == SMALL.n_train + SMALL.n_val
    y3 = generate(tmp_path / "c", dataclasses.replace(SMALL, seed=SMALL.seed + 1), progress=False)
    d3 = tree_digest(y3.parent)
    assert {k: v for k, v in d3.items() if k.startswith("images/")} != {
        k: v for k, v in d1.items() if k.startswith("images/")
    }


# ------------------------------------------------------------------------------ files and labels
def test_dataset_layout_and_yaml(tiny_hazy_shapes):
    root = tiny_hazy_shapes.parent
    data = yaml.safe_load(tiny_hazy_shapes.read_text())
    assert Path(data["path"]) == root.resolve()
    assert data["names"] == dict(enumerate(CLASSES))
    for split, n in (("train", 24), ("val", 8)):
        imgs = sorted((root / data[split]).glob("*.png"))
        assert len(imgs) == n
        for sub in ("clean", "depth", "labels"):
            ext = ".txt" if sub == "labels" else ".png"
            assert sorted(p.stem for p in (root / sub / split).glob(f"*{ext}")) == [p.stem for p in imgs]
    assert (root / data["degradation"]).is_file()


def test_every_box_inside_its_image_and_class_in_range(tiny_hazy_shapes):
    root = tiny_hazy_shapes.parent
    n_boxes = 0
    for split in ("train", "val"):
        for stem, lb in read_labels(root, split).items():
            cls, x, y, w, h = lb.T
            assert np.all(cls == cls.astype(int)) and np.all((cls >= 0) & (cls < len(CLASSES))), stem
            assert np.all(w > 0) and np.all(h > 0), stem
            eps = 1e-6
            assert np.all(x - w / 2 >= -eps) and np.all(x + w / 2 <= 1 + eps), stem
            assert np.all(y - h / 2 >= -eps) and np.all(y + h / 2 <= 1 + eps), stem
            n_boxes += len(lb)
    assert n_boxes >= 32  # every image has at least one object in practice


def test_pixel_boxes_are_tight_and_inside_many_scenes():
    """Over many scenes (all classes, near and far), boxes are inside the image and cover the drawn shape."""
    seen = set()
    for i in range(40):
        rng = np.random.default_rng([7, i])
        size = 96
        clean, depth, labels = render_scene(rng, size, max_objects=5)
        assert clean.shape == (size, size, 3) and depth.shape == (size, size)
        assert labels, "a scene without objects"
        for c, x1, y1, x2, y2 in labels:
            seen.add(c)
            assert 0 <= x1 < x2 <= size and 0 <= y1 < y2 <= size
    assert seen == set(range(len(CLASSES)))


def test_haze_csv_records_beta_and_airlight_per_image(tiny_hazy_shapes):
    root = tiny_hazy_shapes.parent
    recipe = Recipe(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads((root / "recipe.json").read_text()).items()}
    )
    with open(root / "haze.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    images = sorted(str(p.relative_to(root)) for p in (root / "images").rglob("*.png"))
    assert sorted(r["im_file"] for r in rows) == images
    labels = {**read_labels(root, "train"), **read_labels(root, "val")}
    betas = []
    for r in rows:
        beta, a = float(r["beta"]), float(r["airlight"])
        assert recipe.beta[0] <= beta <= recipe.beta[1]
        assert recipe.airlight[0] <= a <= recipe.airlight[1]
        assert r["level"] == haze_level(beta)
        stem = Path(r["im_file"]).stem
        assert int(r["n_objects"]) == len(labels[stem])
        # The recorded values are the ones the image was made with (to rounding).
        _, hazy, _, _, b2, a2 = make_sample(recipe, r["split"], int(stem.split("_")[1]))
        assert beta == pytest.approx(b2, abs=1e-6) and a == pytest.approx(a2, abs=1e-6)
        betas.append(beta)
    assert len(set(betas)) == len(betas)  # drawn per image, not one value for all


def test_hazed_file_is_clean_file_hazed_with_recorded_beta_and_depth(tiny_hazy_shapes):
    root = tiny_hazy_shapes.parent
    data = yaml.safe_load(tiny_hazy_shapes.read_text())
    rows = read_degradation(root / "haze.csv")
    for stem in ("train_00000", "train_00005", "val_00003"):
        split = stem.split("_")[0]
        clean = load_rgb(root / "clean" / split / f"{stem}.png")
        hazy = load_rgb(root / "images" / split / f"{stem}.png")
        depth = (
            cv2.imread(str(root / "depth" / split / f"{stem}.png"), cv2.IMREAD_UNCHANGED).astype(np.float32)
            * data["depth_scale"]
        )
        assert depth.min() >= 1.0 - 1e-3 and depth.max() <= 40 + 1e-3
        expect = apply_haze(
            clean,
            depth,
            float(rows[f"images/{split}/{stem}.png"]["beta"]),
            float(rows[f"images/{split}/{stem}.png"]["airlight"]),
        )
        assert np.abs(expect - hazy).max() <= 2.5 / 255
        assert np.abs(clean - hazy).mean() > 0.01  # and it is really hazed


# --------------------------------------------------------------------------------------- physics
def test_transmission_and_contrast_fall_with_depth():
    rng = np.random.default_rng(0)
    texture = rng.random((32, 32, 3)).astype(np.float32)
    depths = [1.0, 3.0, 8.0, 15.0, 30.0]
    beta, airlight = 0.1, 0.9
    t = [float(transmission(np.full((32, 32), d, np.float32), beta).mean()) for d in depths]
    c = [rms_contrast(apply_haze(texture, np.full((32, 32), d, np.float32), beta, airlight)) for d in depths]
    assert all(a > b for a, b in zip(t, t[1:])), t
    assert all(a > b for a, b in zip(c, c[1:])), c
    assert t[0] == pytest.approx(np.exp(-beta * depths[0]), rel=1e-6)
    # Contrast scales exactly with t (I = J t + A (1 - t), no clipping here).
    assert c[-1] / rms_contrast(texture) == pytest.approx(t[-1], rel=1e-3)


def test_generated_scene_far_ground_loses_more_contrast_than_near_ground():
    """Per ground row (constant depth), hazed/clean contrast is t = exp(-beta d): lower toward the horizon."""
    recipe = Recipe(seed=11, size=128, max_objects=1)
    checked = 0
    for i in range(8):
        clean, hazy, depth, _, beta, _ = make_sample(recipe, "train", i)
        rows, ratios, ts = [], [], []
        for r in range(depth.shape[0]):
            ground = depth[r] == depth[r].max()  # objects are nearer than the ground behind them
            if depth[r].max() >= 40 or ground.sum() < 16:
                continue  # sky
            c = rms_contrast(clean[r][ground])
            if c < 0.02:
                continue  # flat texture: no contrast to lose
            rows.append(r)
            ratios.append(rms_contrast(hazy[r][ground]) / c)
            ts.append(float(np.exp(-beta * depth[r][ground][0])))
        if len(rows) < 6:
            continue
        checked += 1
        np.testing.assert_allclose(ratios, ts, rtol=1e-3)
        third = len(rows) // 3
        assert np.mean(ratios[:third]) < np.mean(ratios[-third:])  # far (upper) rows lose more
    assert checked >= 3


def test_farther_objects_are_smaller():
    depth_at, sizes = [], []
    for i in range(30):
        clean, depth, labels = render_scene(np.random.default_rng([5, i]), 128, max_objects=5)
        for _cls, x1, y1, x2, y2 in labels:
            row = int(y2) - 1
            depth_at.append(float(depth[row, :][depth[row, :] < 40].max()) if (depth[row, :] < 40).any() else 40.0)
            sizes.append(max(x2 - x1, y2 - y1))
    r = np.corrcoef(np.log(depth_at), np.log(sizes))[0, 1]
    assert r < -0.5, r


def test_clean_equals_hazed_at_beta_zero():
    zero = dataclasses.replace(SMALL, beta=(0.0, 0.0))
    clean, hazy, depth, labels, beta, airlight = make_sample(zero, "train", 1)
    assert beta == 0.0 and np.array_equal(clean, hazy)
    assert np.array_equal(apply_haze(clean, depth, 0.0, airlight), clean)
    # ...and with beta > 0 they differ, so the check above could fail.
    assert not np.array_equal(make_sample(SMALL, "train", 1)[1], clean)


def test_clean_and_hazed_files_match_at_beta_zero(tmp_path):
    root = generate(tmp_path / "z", dataclasses.replace(SMALL, beta=(0.0, 0.0)), progress=False).parent
    for p in (root / "images").rglob("*.png"):
        q = root / "clean" / p.relative_to(root / "images")
        assert np.array_equal(cv2.imread(str(p)), cv2.imread(str(q))), p


# --------------------------------------------------------------------------------------- caching
def test_reused_when_recipe_unchanged(tmp_path):
    y = generate(tmp_path / "d", SMALL, progress=False)
    sentinel = y.parent / "images" / "train" / "train_00000.png"
    stamp = sentinel.stat().st_mtime_ns
    (y.parent / "keep-me").write_text("x")
    assert generate(tmp_path / "d", SMALL, progress=False) == y
    assert sentinel.stat().st_mtime_ns == stamp and (y.parent / "keep-me").exists()


@pytest.mark.parametrize(
    "change", [{"version": hs.RECIPE_VERSION + 1}, {"max_objects": 2}, {"seed": 99}, {"heavy_fraction": 0.1}]
)
def test_regenerated_when_recipe_changes(tmp_path, change):
    y = generate(tmp_path / "d", SMALL, progress=False)
    (y.parent / "stale-marker").write_text("x")
    new = dataclasses.replace(SMALL, **change)
    y2 = generate(tmp_path / "d", new, progress=False)
    assert y2 == y and not (y.parent / "stale-marker").exists()
    assert json.loads((y.parent / "recipe.json").read_text()) == new.as_record()


def test_version_bump_regenerates_default_cache(tmp_path, monkeypatch):
    """A new RECIPE_VERSION (as after editing the generator) gives a fresh cache folder; the same one is reused."""
    monkeypatch.setenv("CLIPCE_HOME", str(tmp_path / "home"))
    calls = []
    real = hs.make_sample
    monkeypatch.setattr(hs, "make_sample", lambda *a: calls.append(a) or real(*a))
    y1 = generate(None, SMALL, progress=False)
    assert y1.is_relative_to(tmp_path / "home") and len(calls) == 6
    assert generate(None, SMALL, progress=False) == y1 and len(calls) == 6  # reused: nothing redrawn
    monkeypatch.setattr(hs, "RECIPE_VERSION", hs.RECIPE_VERSION + 1)
    bumped = dataclasses.replace(SMALL, version=hs.RECIPE_VERSION)
    y2 = generate(None, bumped, progress=False)
    assert y2 != y1 and len(calls) == 12
    assert json.loads((y2.parent / "recipe.json").read_text())["version"] == hs.RECIPE_VERSION


def test_incomplete_generation_is_redone(tmp_path):
    y = generate(tmp_path / "d", SMALL, progress=False)
    (y.parent / ".complete").unlink()
    (y.parent / "images" / "train" / "train_00000.png").unlink()
    y2 = generate(tmp_path / "d", SMALL, progress=False)
    assert (y2.parent / "images" / "train" / "train_00000.png").exists() and (y2.parent / ".complete").exists()


def test_complete_folder_with_a_file_deleted_is_generated_again(tmp_path):
    """Issue 11 item 4's sibling: .complete alone does not make the cached dataset whole; a label file deleted by
    hand (its image would silently turn into background) brings the whole deterministic set back."""
    y = generate(tmp_path / "d", SMALL, progress=False)
    lb = y.parent / "labels" / "train" / "train_00001.txt"
    want = lb.read_bytes()
    lb.unlink()
    assert generate(tmp_path / "d", SMALL, progress=False) == y
    assert lb.read_bytes() == want


def test_refuses_to_delete_a_folder_it_did_not_make(tmp_path):
    mine = tmp_path / "my-data"
    mine.mkdir()
    (mine / "precious.txt").write_text("do not delete")
    with pytest.raises(FileExistsError, match="not a hazy-shapes folder"):
        generate(mine, SMALL, progress=False)
    assert (mine / "precious.txt").read_text() == "do not delete"
    assert not (mine / "images").exists()


def test_generate_mode_from_cli(tmp_path, capsys, monkeypatch):
    from clipce_rtdetr.cli import entrypoint

    monkeypatch.setattr(hs, "Recipe", lambda seed=0: dataclasses.replace(SMALL, seed=seed))  # small and fast
    out = tmp_path / "cli-out"
    assert entrypoint(["generate", f"out={out}", "seed=1"]) == 0
    assert (out / "hazy-shapes.yaml").is_file() and (out / ".complete").exists()
    assert json.loads((out / "recipe.json").read_text())["seed"] == 1
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "x.txt").write_text("x")
    capsys.readouterr()
    assert entrypoint(["generate", f"out={mine}"]) == 2
    err = capsys.readouterr().err
    assert "not a hazy-shapes folder" in err and "Traceback" not in err and (mine / "x.txt").exists()


def test_data_hazy_shapes_resolves_to_generator(monkeypatch, tmp_path):
    from clipce_rtdetr.data.dataset import resolve_data

    fake = tmp_path / "hazy-shapes.yaml"
    monkeypatch.setattr(hs, "generate", lambda *a, **k: fake)
    assert resolve_data("hazy-shapes") == str(fake)
    assert resolve_data("hazy-shapes.yaml") == str(fake)


def test_processes_generating_at_once_take_turns(tmp_path):
    """The ranks of a torchrun job all resolve data=hazy-shapes at start: one generates, the others wait for it
    (before, one rank could delete the folder another was writing)."""
    import subprocess
    import sys

    out, ready = tmp_path / "shapes", tmp_path / "ready"
    ready.mkdir()
    # every process imports first and says so, then all ask for the folder in the same instant (a file barrier:
    # no fixed sleep that a loaded machine could outlast)
    code = (
        "import sys, time; from pathlib import Path; from clipce_rtdetr.data.hazy_shapes import Recipe, generate\n"
        f"ready = Path({str(ready)!r}); (ready / sys.argv[1]).touch()\n"
        "while len(list(ready.iterdir())) < 3: time.sleep(0.005)\n"
        f"print(generate({str(out)!r}, Recipe(seed=3, n_train=12, n_val=4, size=96, max_objects=3), progress=False))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(3)]  # fmt: skip
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-1500:] for _, err in results]
    assert {r[0].strip().splitlines()[-1] for r in results} == {str(out / "hazy-shapes.yaml")}
    assert hs.is_complete(out, hs.Recipe(seed=3, n_train=12, n_val=4, size=96, max_objects=3))
    assert len(list((out / "images" / "train").iterdir())) == 12
