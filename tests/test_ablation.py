"""Ablation harness aggregation on synthetic run records (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clipce_rtdetr.eval.ablation_report import (
    aggregate,
    markdown_table,
    mean_std,
    paired_differences,
    paired_table,
    pairing_check,
    plot_summary,
    t_interval,
    t_quantile,
    write_report,
)


def _runs():
    rng = np.random.default_rng(0)
    runs = []
    for method, base in (("none", 0.30), ("fame", 0.36)):
        for seed in range(3):
            m50 = base + 0.01 * seed
            runs.append(
                {
                    "method": method,
                    "seed": seed,
                    "mAP50": m50,
                    "mAP50-95": m50 / 2,
                    "per_level": {
                        "light": {"mAP50": m50 + 0.1, "mAP50-95": 0.2},
                        "heavy": {"mAP50": m50 - 0.1 - rng.random() * 0, "mAP50-95": 0.1},
                    },
                }
            )
    return runs


def test_mean_std_matches_numpy():
    assert mean_std([1.0, 2.0, 4.0]) == pytest.approx((7 / 3, float(np.std([1, 2, 4], ddof=1))))
    assert mean_std([0.5]) == (0.5, 0.0)
    m, s = mean_std([])
    assert np.isnan(m) and np.isnan(s)


def test_aggregate_per_method_and_level():
    summary = aggregate(_runs())
    assert list(summary) == ["none", "fame"]
    none = summary["none"]
    assert none["n"] == 3 and none["seeds"] == [0, 1, 2]
    assert none["mAP50"] == pytest.approx(mean_std([0.30, 0.31, 0.32]))
    assert none["mAP50-95"][0] == pytest.approx(0.155)
    assert list(none["per_level"]) == ["light", "heavy"]
    assert none["per_level"]["heavy"]["mAP50"][0] == pytest.approx(0.21)
    assert summary["fame"]["mAP50"][0] == pytest.approx(0.37)


def test_aggregate_missing_level_in_one_run():
    runs = _runs()
    del runs[0]["per_level"]["heavy"]
    heavy = aggregate(runs)["none"]["per_level"]["heavy"]["mAP50"]
    assert heavy == pytest.approx(mean_std([0.21, 0.22]))  # only the runs that have the level


def test_table_and_plots(tmp_path):
    summary = aggregate(_runs())
    table = markdown_table(summary)
    lines = table.splitlines()
    assert lines[0].startswith("| method | seeds | mAP50 | mAP50-95 | mAP50 (light) | mAP50 (heavy)")
    assert "| fame | 3 | 0.370 ± 0.010 |" in table
    paths = plot_summary(summary, tmp_path, {"fame": np.array([1.0, 1.5, 2.0])})
    assert [p.name for p in paths] == ["ablation_map.png", "ablation_per_level.png", "ablation_weights.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    json.dumps(summary)  # serialisable as written to ablation.json


def test_t_quantile_matches_tables():
    # two-sided 95 % critical values from a printed t table
    for df, value in ((1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (9, 2.2622), (30, 2.0423)):
        assert t_quantile(0.975, df) == pytest.approx(value, abs=1e-4)
    assert t_quantile(0.95, 4) == pytest.approx(2.1318, abs=1e-4)


def test_t_interval_by_hand():
    ci = t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, s = sqrt(2.5), t(0.975, 4 df) = 2.776445 (table value): half-width 2.776445 * 1.581139 / sqrt(5)
    assert ci["n"] == 5 and ci["mean"] == pytest.approx(3.0) and ci["std"] == pytest.approx(2.5**0.5)
    assert (ci["low"], ci["high"]) == pytest.approx((3 - 1.963243, 3 + 1.963243), abs=1e-5)
    one = t_interval([0.2])
    assert one["mean"] == 0.2 and np.isnan(one["low"]) and np.isnan(one["high"])


def _paired_runs():
    """`none` varies a lot from seed to seed; `fame` is always `none` + 0.01..0.03 on the same seed."""
    none = [0.50, 0.60, 0.40, 0.55]
    gain = [0.02, 0.03, 0.01, 0.02]
    runs = []
    for seed, (base, g) in enumerate(zip(none, gain)):
        for method, v in (("none", base), ("fame", base + g)):
            heavy = {"mAP50": v - 0.1, "mAP50-95": v / 4}
            levels = {"light": {"mAP50": v, "mAP50-95": v / 2}, "heavy": heavy}
            runs.append({"method": method, "seed": seed, "mAP50": v, "mAP50-95": v / 2, "per_level": levels})
    runs.append({"method": "fame", "seed": 9, "mAP50": 0.0, "mAP50-95": 0.0, "per_level": {}})  # no `none` to pair
    return runs


def test_paired_differences_by_hand():
    runs = _paired_runs()
    del runs[1]["per_level"]["heavy"]  # fame seed 0 has no heavy images: that seed drops out of the heavy pair only
    fame = paired_differences(runs)["fame"]
    assert fame["seeds"] == [0, 1, 2, 3]  # seed 9 has no baseline
    d = fame["mAP50"]
    # differences 0.02, 0.03, 0.01, 0.02: mean 0.02, s = 0.0081650, t(0.975, 3 df) = 3.182446
    assert d["mean"] == pytest.approx(0.02) and d["std"] == pytest.approx(0.0081650, abs=1e-6)
    assert (d["low"], d["high"]) == pytest.approx((0.02 - 0.0129925, 0.02 + 0.0129925), abs=1e-6)
    # paired, the gain is clear; unpaired, the seed spread of `none` (std 0.085) would swamp it
    assert d["low"] > 0 and mean_std([0.50, 0.60, 0.40, 0.55])[1] > 3 * (d["high"] - d["low"])
    assert fame["mAP50-95"]["mean"] == pytest.approx(0.01)
    assert fame["per_level"]["light"]["mAP50"]["n"] == 4
    heavy = fame["per_level"]["heavy"]["mAP50"]
    assert heavy["n"] == 3 and heavy["mean"] == pytest.approx(0.02)  # seeds 1-3: 0.03, 0.01, 0.02
    assert paired_differences([r for r in runs if r["method"] != "none"]) == {}


def test_paired_table_marks_intervals_that_exclude_zero():
    runs = _paired_runs()
    runs += [{**r, "method": "prior"} for r in runs if r["method"] == "none"]
    runs[-1] = {**runs[-1], "mAP50": runs[-1]["mAP50"] + 0.05}  # prior differs on one seed only: CI spans 0
    table = paired_table(paired_differences(runs), "mAP50")
    fame_row, prior_row = table.splitlines()[2:4]
    assert fame_row.startswith("| fame − none | 4 | **+0.020 [+0.007, +0.033]** |")
    assert prior_row.startswith("| prior − none | 4 | +0.013 [") and "**" not in prior_row


def test_pairing_check_and_written_report(tmp_path):
    runs = _paired_runs()[:8]
    for r in runs:
        r["data_order_sha1"] = f"order-{r['seed']}"
    runs[7]["data_order_sha1"] = "other"  # fame seed 3 saw other batches
    assert pairing_check(runs) == {"same": [0, 1, 2], "differ": [3], "not_recorded": []}
    record = {"data": "d.yaml", "model": "m.pt", "train_kwargs": {}, "methods": ["none", "fame"], "seeds": [0, 1, 2, 3]}
    paths = write_report({**record, "runs": runs, "command": "python x"}, tmp_path, "abl")
    assert [p.name for p in paths] == ["abl.json", "abl.md", "abl_map.png", "abl_per_level.png", "abl_paired.png"]
    md = (tmp_path / "abl.md").read_text()
    assert "Not paired exactly" in md and "seeds [3]" in md and "Command: `python x`" in md
    saved = json.loads((tmp_path / "abl.json").read_text())
    assert saved["paired"]["fame"]["mAP50"]["mean"] == pytest.approx(0.02)
    runs[7]["data_order_sha1"] = "order-3"
    for r in runs[:2]:
        del r["data_order_sha1"]  # seed 0 run before the harness hashed batches
    write_report({**record, "runs": runs}, tmp_path, "abl")
    md = (tmp_path / "abl.md").read_text()
    assert "not hashed for seeds [0]" in md and "for seeds [1, 2, 3] all methods saw identical batches" in md


def test_interrupted_grid_resumes(tmp_path, monkeypatch, tiny_hazy_shapes):
    """Runs finished before an interruption are reused when the same grid is run again; other settings retrain."""
    from clipce_rtdetr.eval import ablation

    calls = []

    def fake_run_one(method, seed, data, model, train_kwargs, project, method_kwargs=None):
        calls.append((method, seed))
        if len(calls) == 3 and not getattr(fake_run_one, "resumed", False):
            raise KeyboardInterrupt
        return {
            "method": method,
            "seed": seed,
            "train_seconds": 1.0,
            "mAP50": 0.5 + seed / 10,
            "mAP50-95": 0.3,
            "per_level": {},
            "weights": np.array([1.0, 2.0], np.float32),
        }

    monkeypatch.setattr(ablation, "run_one", fake_run_one)
    args = (["none", "fame"], [0, 1], str(tiny_hazy_shapes), "m.pt")
    with pytest.raises(KeyboardInterrupt):
        ablation.run_ablation_grid(*args, {"epochs": 1}, tmp_path / "out", tmp_path / "runs")
    fake_run_one.resumed = True
    calls.clear()
    summary = ablation.run_ablation_grid(*args, {"epochs": 1}, tmp_path / "out", tmp_path / "runs")
    assert calls == [("none", 1), ("fame", 1)]  # seed 0 of both methods came from the first, interrupted run
    assert summary["none"]["mAP50"][0] == pytest.approx(0.55) and (tmp_path / "out" / "ablation.json").exists()
    calls.clear()
    ablation.run_ablation_grid(*args, {"epochs": 2}, tmp_path / "out", tmp_path / "runs")
    assert len(calls) == 4  # other training settings: nothing reused


def test_runs_of_one_seed_see_the_same_batches(tiny_hazy_shapes, tmp_path):
    """The pairing the report relies on, on the real Ultralytics pipeline: with one seed, `none` and `fame` (which
    loads a CLIP and carries object ids) train on identical batches; another seed gives other batches."""
    from clipce_rtdetr.clip.loader import make_random_clip
    from clipce_rtdetr.eval.ablation import run_one

    clip = make_random_clip(tmp_path / "clip" / "tiny-clip.safetensors")
    train_kwargs = dict(epochs=1, imgsz=64, batch=8, device="cpu", workers=0, plots=False, verbose=False, clip=clip)
    runs = [
        run_one(method, seed, str(tiny_hazy_shapes), "yolo11n.yaml", train_kwargs, tmp_path / "runs")
        for method, seed in (("none", 0), ("fame", 0), ("none", 1))
    ]
    hashes = [r["data_order_sha1"] for r in runs]
    assert hashes[0] == hashes[1] != hashes[2]
    assert pairing_check(runs) == {"same": [0, 1], "differ": [], "not_recorded": []}


# ------------------------------------------------------------------------------ grids that cannot be paired (issue 21)
def _fake_grid(monkeypatch, calls: list):
    from clipce_rtdetr.eval import ablation

    def fake_run_one(method, seed, data, model, train_kwargs, project, method_kwargs=None):
        calls.append({"method": method, "seed": seed, "train_kwargs": dict(train_kwargs), "project": project})
        return {"method": method, "seed": seed, "train_seconds": 1.0, "mAP50": 0.5 + seed / 10, "mAP50-95": 0.3,
                "per_level": {}, "weights": np.zeros(0, np.float32), "data_order_sha1": f"s{seed}"}  # fmt: skip

    monkeypatch.setattr(ablation, "run_one", fake_run_one)
    return ablation


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("ablation_seeds", [0, 1, 0], r"ablation_seeds=\[0, 1, 0\] repeats 0: give each once"),
        ("ablation_methods", ["none", "fame", "fame"], r"repeats fame: give each once"),
        ("ablation_seeds", [], r"ablation_seeds is empty"),
        ("ablation_methods", [], r"ablation_methods is empty"),
        ("ablation_methods", ["none", "orcale"], r"unknown \['orcale'\]"),
    ],
)
def test_grid_that_cannot_be_paired_is_refused_before_anything(monkeypatch, tmp_path, key, value, message):
    """A repeated seed was counted as another seed ("4 seeds, ± 0.000"); an empty list gave exit 0 and empty tables."""
    from clipce_rtdetr.errors import ConfigError

    calls = []
    ablation = _fake_grid(monkeypatch, calls)
    monkeypatch.chdir(tmp_path)
    overrides = {"ablation_methods": ["none", "fame"], "ablation_seeds": [0, 1], key: value, "project": "p"}
    with pytest.raises(ConfigError, match=message):
        ablation.run_ablation(overrides)
    assert calls == [] and list(tmp_path.iterdir()) == []


def test_cli_exit_code_for_an_empty_seed_list(tmp_path, monkeypatch):
    from clipce_rtdetr.cli import entrypoint

    monkeypatch.chdir(tmp_path)
    assert entrypoint(["ablation", "ablation_seeds=[]", "ablation_methods=[none]"]) != 0
    assert list(tmp_path.iterdir()) == []


def test_report_follows_project_and_name(monkeypatch, tmp_path, tiny_hazy_shapes):
    """project=/name= place the report and the runs (Ultralytics' project/name) and never reach each run's
    training (name= crashed with a duplicate keyword; the report ignored project=)."""
    calls = []
    ablation = _fake_grid(monkeypatch, calls)
    monkeypatch.chdir(tmp_path)
    ablation.run_ablation(
        {"data": str(tiny_hazy_shapes), "model": "m.pt", "project": str(tmp_path / "p"), "name": "grid1",
         "ablation_methods": ["none", "fame"], "ablation_seeds": [0, 1], "epochs": 1}  # fmt: skip
    )
    out = tmp_path / "p" / "grid1"
    assert (out / "ablation.md").is_file() and (out / "ablation.json").is_file()
    assert sorted(p.name for p in (out / "runs").glob("*.json")) == ["fame-s0.json", "fame-s1.json", "none-s0.json",
                                                                     "none-s1.json"]  # fmt: skip
    assert all("name" not in c["train_kwargs"] and "project" not in c["train_kwargs"] for c in calls)
    assert not (tmp_path / "ablation-results").exists()
    assert ablation.ablation_folders("o", "p", "n") == (Path("o"), Path("o/runs"))  # out= wins for the report
    assert ablation.ablation_folders(None, None, None) == (Path("ablation-results"), Path("ablation-results/runs"))


def test_hash_recorded_runs_of_an_earlier_grid_are_reused(monkeypatch, tmp_path, tiny_hazy_shapes):
    """--reuse: runs of a committed record with the same settings count as done when their batch hash is recorded;
    unhashed runs (made before the hash existed) are run again, and a record with other settings is ignored."""
    calls = []
    ablation = _fake_grid(monkeypatch, calls)
    args = (["none", "fame"], [0, 1], str(tiny_hazy_shapes), "m.pt", {"epochs": 1})
    ablation.run_ablation_grid(*args, tmp_path / "out", tmp_path / "first")
    record = json.loads((tmp_path / "out" / "ablation.json").read_text())
    record["runs"][0]["data_order_sha1"] = None  # none seed 0: unhashed
    calls.clear()
    ablation.run_ablation_grid(*args, tmp_path / "out2", tmp_path / "second", reuse=record)
    assert [(c["method"], c["seed"]) for c in calls] == [("none", 0)]
    report = (tmp_path / "out2" / "ablation.md").read_text()
    assert "Runs taken from an earlier grid" in report and "('fame', 0)" in report
    calls.clear()
    other = (["none", "fame"], [0, 1], str(tiny_hazy_shapes), "m.pt", {"epochs": 2})
    ablation.run_ablation_grid(*other, tmp_path / "out3", tmp_path / "third", reuse=record)
    assert len(calls) == 4


def test_report_from_the_runs_finished_so_far(monkeypatch, tmp_path, tiny_hazy_shapes):
    """--report-runs: an interrupted or partly run grid is reported from its run folder, methods with fewer seeds
    included; runs of other settings in the same folder are refused."""
    from clipce_rtdetr.errors import ClipCEError

    calls = []
    ablation = _fake_grid(monkeypatch, calls)
    data, out, runs = str(tiny_hazy_shapes), tmp_path / "o", tmp_path / "r"
    ablation.run_ablation_grid(["none", "fame"], [0, 1], data, "m.pt", {}, out, runs)
    ablation.run_ablation_grid(["ame"], [0], data, "m.pt", {}, out, runs)
    record, _ = ablation.record_from_runs(tmp_path / "r", "cmd")
    assert record["methods"] == ["ame", "fame", "none"] and record["seeds"] == [0, 1] and len(record["runs"]) == 5
    assert record["model"] == "m.pt" and record["command"] == "cmd"
    ablation.run_ablation_grid(["none"], [2], data, "m.pt", {"epochs": 3}, out, runs)
    with pytest.raises(ClipCEError, match="6 finished runs with 2 different settings"):
        ablation.record_from_runs(tmp_path / "r")
