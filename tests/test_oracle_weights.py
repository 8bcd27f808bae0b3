"""The ablation's positive control (issue 23): oracle weights from hazy-shapes' recorded truth, the rare-heavy recipe
option, and benchmarks/oracle_weights.py on a tiny generated hazy-shapes."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clipce_rtdetr.data import hazy_shapes as hs
from clipce_rtdetr.eval.ablation_oracle import box_transmission, make_oracle_tables, ranked_weights
from clipce_rtdetr.method.weight_table import read_table, table_weights
from tests.conftest import REPO

SMALL = hs.Recipe(seed=0, n_train=12, n_val=4, size=64, max_objects=3)


def test_box_transmission_is_the_mean_over_the_box():
    t = np.arange(100, dtype=np.float64).reshape(10, 10)
    boxes = np.array([[2.0, 3.0, 5.0, 4.0], [2.4, 3.6, 4.2, 5.1], [-3, -3, 0.2, 0.2], [9.9, 9.9, 12, 12]])
    assert box_transmission(t, boxes).tolist() == [
        t[3:4, 2:5].mean(),
        t[3:6, 2:5].mean(),  # rounded outward to whole pixels
        t[0, 0],  # clamped to the image, at least one pixel
        t[9, 9],
    ]


def test_ranked_weights_keep_the_values_and_follow_the_order():
    w = np.array([1.0, 2.5, 1.2, 1.9])
    degradation = np.array([0.9, 0.1, 0.5, 0.3])
    out = ranked_weights(w, degradation)
    assert sorted(out) == sorted(w)  # the same values (AME's distribution)
    assert out.tolist() == [2.5, 1.0, 1.9, 1.2]  # the most degraded object gets the largest


def test_oracle_tables_from_the_recorded_truth(tiny_hazy_shapes, tiny_clip, tmp_path):
    """t from beta and the depth maps: in (0, 1], brute force for one object; oracle w = exp(1 - t); the tables
    load through `clipce=table`'s reader and match the train split object for object."""
    import cv2

    from clipce_rtdetr.config import check_project_values, project_defaults
    from clipce_rtdetr.eval.ame_inspect import load_split_labels

    a = check_project_values({**project_defaults(), "clip": tiny_clip})
    res = make_oracle_tables(str(tiny_hazy_shapes), a, tmp_path / "tables")
    t = res["t"]
    assert len(t) == len(res["w_ame"]) > 10 and np.all((t > 0) & (t <= 1))
    np.testing.assert_allclose(res["w_oracle"], np.exp(1.0 - t))
    # one object by hand: its image's beta (haze.csv), its depth map, its label box in pixels
    root = Path(tiny_hazy_shapes).parent
    row = next(csv.DictReader(open(root / "haze.csv")))
    depth = cv2.imread(str(root / "depth" / "train" / "train_00000.png"), cv2.IMREAD_UNCHANGED) * 0.001
    cls, cx, cy, w, h = map(float, (root / "labels" / "train" / "train_00000.txt").read_text().split()[:5])
    s = depth.shape[0]
    x1, y1, x2, y2 = (cx - w / 2) * s, (cy - h / 2) * s, (cx + w / 2) * s, (cy + h / 2) * s
    rows, cols = slice(int(np.floor(y1)), int(np.ceil(y2))), slice(int(np.floor(x1)), int(np.ceil(x2)))
    box = np.exp(-float(row["beta"]) * depth)[rows, cols]
    assert row["im_file"].endswith("train_00000.png") and t[0] == pytest.approx(box.mean(), rel=1e-6)
    # oracle-ranked: AME's values, in the oracle's order
    ranked = np.array([float(r["w"]) for r in csv.DictReader(open(res["tables"]["oracle-ranked"]))])
    np.testing.assert_allclose(np.sort(ranked), np.sort(res["w_ame"]), rtol=1e-5)
    order = np.argsort(1 - t, kind="stable")
    assert np.all(np.diff(ranked[order]) >= -1e-6)
    labels = load_split_labels(str(tiny_hazy_shapes), "train")[1]
    for name in ("oracle", "oracle-ranked"):
        w = table_weights(read_table(res["tables"][name]), labels)
        np.testing.assert_allclose(w.numpy(), res["w_oracle"] if name == "oracle" else ranked, rtol=1e-5)


def test_oracle_script_writes_tables_spearman_and_plot(tiny_hazy_shapes, tiny_clip, tmp_path):
    pytest.importorskip("scipy", reason="benchmarks/oracle_weights.py uses scipy.stats (pip install scipy)")
    cmd = [sys.executable, str(REPO / "benchmarks" / "oracle_weights.py"), "--data", str(tiny_hazy_shapes),
           "--clip", tiny_clip, "--out", str(tmp_path), "--name", "o"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rec = json.loads((tmp_path / "o.json").read_text())
    classes = [r["class"] for r in rec["spearman"]]
    assert classes[0] == "all" and classes[1:] == list(hs.CLASSES)
    assert -1 <= rec["spearman"][0]["spearman_rho"] <= 1 and rec["spearman"][0]["objects"] == rec["objects"]
    assert (tmp_path / "o_spearman.png").stat().st_size > 5000 and "Spearman" in (tmp_path / "o.md").read_text()
    assert {Path(p).name for p in rec["tables"].values()} == {"oracle.csv", "oracle-ranked.csv"}


# ------------------------------------------------------------------------------------------ the rare-heavy recipe
def test_heavy_fraction_draws_heavy_train_images_at_that_rate():
    rare = dataclasses.replace(SMALL, heavy_fraction=0.1)
    rng = np.random.default_rng(0)
    betas = np.array([hs.draw_beta(rng, rare, "train") for _ in range(4000)])
    heavy = betas >= hs.HEAVY_BETA
    assert 0.08 < heavy.mean() < 0.12 and betas.min() >= rare.beta[0] and betas.max() <= rare.beta[1]
    default = np.array([hs.draw_beta(rng, SMALL, "train") for _ in range(4000)])
    assert 0.45 < (default >= hs.HEAVY_BETA).mean() < 0.55  # the balanced default: heavy is about half


def test_rare_heavy_keeps_the_scenes_and_the_balanced_val_split():
    rare = dataclasses.replace(SMALL, heavy_fraction=0.1)
    for i in range(3):
        a, b = hs.make_sample(SMALL, "val", i), hs.make_sample(rare, "val", i)
        assert np.array_equal(a[1], b[1]) and a[4] == b[4]  # the same val images
        a, b = hs.make_sample(SMALL, "train", i), hs.make_sample(rare, "train", i)
        assert np.array_equal(a[0], b[0]) and a[3] == b[3]  # the same clean train scenes and labels


def test_recipe_option_gets_its_own_folder_and_keeps_old_folders_valid(tmp_path):
    rare = dataclasses.replace(SMALL, heavy_fraction=0.1)
    assert rare.folder_name() != SMALL.folder_name() and rare.folder_name().endswith("-heavy0.1")
    assert "heavy_fraction" not in SMALL.as_record() and rare.as_record()["heavy_fraction"] == 0.1
    y = hs.generate(tmp_path / "d", rare, progress=False)
    assert json.loads((y.parent / "recipe.json").read_text())["heavy_fraction"] == 0.1
    assert not hs.is_complete(y.parent, SMALL)  # the same folder asked for with the default recipe: regenerated
    with pytest.raises(ValueError, match="heavy_fraction=1.5"):
        dataclasses.replace(SMALL, heavy_fraction=1.5)
    assert hs.is_builtin("hazy-shapes-rare-heavy") and hs.builtin_recipe("hazy-shapes-rare-heavy").heavy_fraction == 0.1
    assert hs.builtin_recipe("hazy-shapes") == hs.Recipe()


def test_summary_of_the_grid_from_records(tmp_path):
    """benchmarks/oracle_summary.py on synthetic grid records: oracle − none and oracle-ranked − ame, by hand."""
    runs = []
    for seed in range(3):
        for method, gain in (("none", 0.0), ("oracle", 0.01 + 0.001 * seed), ("ame", 0.002), ("oracle-ranked", 0.004)):
            level = {"heavy": {"mAP50": 0.4 + gain, "mAP50-95": 0.2}}
            runs.append({"method": method, "seed": seed, "mAP50": 0.5 + gain, "mAP50-95": 0.3, "per_level": level})
    (tmp_path / "ablation_oracle_yolo_rare.json").write_text(json.dumps({"runs": runs}))
    cmd = [sys.executable, str(REPO / "benchmarks" / "oracle_summary.py"), "--results", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    table = (tmp_path / "ablation_oracle_summary.md").read_text()
    assert "| yolo_rare | oracle − none | 3 | **+0.011 [+0.009, +0.013]** |" in table
    assert "| yolo_rare | oracle-ranked − ame | 3 | **+0.002 [+0.002, +0.002]** |" in table
    assert (tmp_path / "ablation_oracle_summary.png").stat().st_size > 5000
