"""Ablation harness aggregation on synthetic run records (no training)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipce_rtdetr.eval.ablation import aggregate, markdown_table, mean_std, plot_summary


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


def test_interrupted_grid_resumes(tmp_path, monkeypatch, tiny_hazy_shapes):
    """Runs finished before an interruption are reused when the same grid is run again; other settings retrain."""
    from clipce_rtdetr.eval import ablation

    calls = []

    def fake_run_one(method, seed, data, model, train_kwargs, project):
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
