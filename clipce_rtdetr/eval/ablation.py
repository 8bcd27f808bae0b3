"""Ablation harness: train `clipce=none|prior|ame|fame` with everything else equal, over seeds, and report
mAP50 / mAP50-95 as mean ± std overall and per degradation level (markdown, JSON, PNG plots).

`clipce-rtdetr ablation data=... model=... epochs=... ablation_methods=[none,prior,ame,fame] ablation_seeds=[0,1,2]`
or `python benchmarks/ablation.py` (the committed results in benchmarks/results/ came from the latter).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("mAP50", "mAP50-95")


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """runs: [{method, seed, mAP50, mAP50-95, per_level: {level: {mAP50, mAP50-95}}}] -> summary per method.

    Returns {method: {"n": seeds, "mAP50": (mean, std), "mAP50-95": (mean, std), "per_level": {level: {...}}}},
    methods in first-seen order, levels in first-seen order.
    """
    out: dict[str, Any] = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        rs = [r for r in runs if r["method"] == method]
        entry: dict[str, Any] = {"n": len(rs), "seeds": [r["seed"] for r in rs]}
        for m in METRICS:
            entry[m] = mean_std(r[m] for r in rs)
        levels = list(dict.fromkeys(lv for r in rs for lv in r.get("per_level", {})))
        entry["per_level"] = {
            lv: {m: mean_std(r["per_level"][lv][m] for r in rs if lv in r.get("per_level", {})) for m in METRICS}
            for lv in levels
        }
        out[method] = entry
    return out


def markdown_table(summary: dict[str, Any], digits: int = 3) -> str:
    """One row per method: overall and per-level mAP as mean ± std."""
    levels = list(dict.fromkeys(lv for e in summary.values() for lv in e["per_level"]))
    f = lambda ms: f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"  # noqa: E731
    head = ["method", "seeds", "mAP50", "mAP50-95"] + [f"mAP50 ({lv})" for lv in levels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, e in summary.items():
        cells = [method, str(e["n"]), f(e["mAP50"]), f(e["mAP50-95"])]
        cells += [f(e["per_level"][lv]["mAP50"]) if lv in e["per_level"] else "–" for lv in levels]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_summary(summary: dict[str, Any], out_dir: Path, weights: dict[str, np.ndarray] | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    methods = list(summary)

    def grouped_bars(groups, series, ylabel, title, name):
        """One group of bars per x tick; series: {label: [(mean, std) per group]}."""
        fig, ax = plt.subplots(figsize=(1.5 + 1.5 * len(groups), 3.4))
        x, wbar = np.arange(len(groups)), 0.8 / max(len(series), 1)
        for k, (label, ms) in enumerate(series.items()):
            ax.bar(
                x + (k - (len(series) - 1) / 2) * wbar,
                [m for m, _ in ms],
                wbar,
                yerr=[s_ for _, s_ in ms],
                capsize=2,
                label=label,
            )
        ax.set_xticks(x, groups)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out_dir / name)
        fig.savefig(paths[-1], dpi=130)
        plt.close(fig)

    grouped_bars(
        methods,
        {m: [summary[me][m] for me in methods] for m in METRICS},
        "mAP (mean ± std over seeds)",
        "mAP per method",
        "ablation_map.png",
    )
    levels = list(dict.fromkeys(lv for e in summary.values() for lv in e["per_level"]))
    if levels:
        missing = {"mAP50": (0.0, 0.0)}
        grouped_bars(
            levels,
            {me: [summary[me]["per_level"].get(lv, missing)["mAP50"] for lv in levels] for me in methods},
            "mAP50 (mean ± std)",
            "mAP50 per haze level",
            "ablation_per_level.png",
        )

    if weights:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for me, w in weights.items():
            if len(w):
                ax.hist(w, bins=30, alpha=0.5, label=f"{me} (mean {np.mean(w):.2f})")
        ax.set_xlabel("per-object weight w (before FAME)")
        ax.set_ylabel("objects")
        ax.set_title("Weight distributions (train split)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out_dir / "ablation_weights.png")
        fig.savefig(paths[-1], dpi=130)
        plt.close(fig)
    return paths


def run_one(
    method: str, seed: int, data: str, model: str, train_kwargs: dict[str, Any], project: Path
) -> dict[str, Any]:
    """Train one (method, seed) and evaluate it with COCO metrics per level."""
    from clipce_rtdetr.models import load_detector

    det = load_detector(model)
    t0 = time.time()
    det.train(
        data=data,
        clipce=method,
        seed=seed,
        deterministic=True,
        project=str(project),
        name=f"{method}-s{seed}",
        exist_ok=True,
        **train_kwargs,
    )
    train_s = time.time() - t0
    table = getattr(det.trainer, "weight_table", None)
    weights = table.float().cpu().numpy() if table is not None else np.zeros(0)
    metrics = det.val(
        data=data,
        coco=True,
        imgsz=train_kwargs.get("imgsz", 640),
        batch=train_kwargs.get("batch", 16),
        device=train_kwargs.get("device"),
        project=str(project),
        name=f"{method}-s{seed}-val",
        exist_ok=True,
        plots=False,
        verbose=False,
    )
    coco = metrics.coco
    return {
        "method": method,
        "seed": seed,
        "train_seconds": round(train_s, 1),
        "mAP50": coco["stats"]["AP50"],
        "mAP50-95": coco["stats"]["AP"],
        "ultralytics_mAP50": float(metrics.box.map50),
        "ultralytics_mAP50-95": float(metrics.box.map),
        "per_level": {
            r["level"]: {"mAP50": r["mAP50"], "mAP50-95": r["mAP50-95"], "images": r["images"]}
            for r in coco.get("per_level", [])
        },
        "weights": weights,
    }


def _run_file(project: Path, method: str, seed: int) -> Path:
    return Path(project) / f"{method}-s{seed}.json"


def finished_run(project: Path, method: str, seed: int, settings: str) -> dict[str, Any] | None:
    """The record of a (method, seed) run finished earlier with the same settings (an interrupted grid resumes)."""
    f = _run_file(project, method, seed)
    try:
        rec = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    if rec.get("settings") != settings:
        return None
    return {**rec["run"], "weights": np.asarray(rec["run"]["weights"], dtype=np.float32)}


def save_run(project: Path, method: str, seed: int, settings: str, run: dict[str, Any]) -> None:
    f = _run_file(project, method, seed)
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".json.tmp")
    tmp.write_text(
        json.dumps({"settings": settings, "run": {**run, "weights": np.asarray(run["weights"]).tolist()}}, default=str)
    )
    tmp.replace(f)


def run_ablation_grid(
    methods: list[str],
    seeds: list[int],
    data: str,
    model: str,
    train_kwargs: dict[str, Any],
    out_dir: Path,
    project: Path,
) -> dict[str, Any]:
    """Every (method, seed); writes ablation.json, ablation.md and plots to out_dir; returns the summary.

    Each finished run is recorded in `project/<method>-s<seed>.json`; rerunning the same grid reuses those."""
    from clipce_rtdetr.data.dataset import resolve_run_data

    resolved = resolve_run_data({**train_kwargs, "data": data}, needs_clip=bool({"ame", "fame"} & set(methods)))
    data = resolved.pop("data")
    train_kwargs = resolved
    settings = json.dumps(
        {"data": str(data), "model": str(model), "train_kwargs": train_kwargs}, sort_keys=True, default=str
    )
    runs, weights = [], {}
    for seed in seeds:
        for method in methods:
            r = finished_run(project, method, seed, settings)
            if r is None:
                r = run_one(method, seed, data, model, train_kwargs, project)
                save_run(project, method, seed, settings, r)
            else:
                print(f"[ablation] {method} seed={seed}: finished earlier with the same settings, reused.", flush=True)
            w = r.pop("weights")
            if len(w) and method not in weights:
                weights[method] = w
            runs.append(r)
            print(
                f"[ablation] {method} seed={seed}: mAP50={r['mAP50']:.4f} mAP50-95={r['mAP50-95']:.4f} "
                f"({r['train_seconds']}s)",
                flush=True,
            )
    summary = aggregate(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "data": data,
        "model": model,
        "train_kwargs": train_kwargs,
        "methods": methods,
        "seeds": seeds,
        "runs": runs,
        "summary": summary,
    }
    (out_dir / "ablation.json").write_text(json.dumps(record, indent=2, default=str))
    table = markdown_table(summary)
    (out_dir / "ablation.md").write_text(
        f"# Ablation: {', '.join(methods)} over seeds {seeds}\n\n"
        f"Data `{Path(data).name}`, model `{Path(model).name}`, training {json.dumps(train_kwargs, default=str)}.\n"
        f"COCO mAP (pycocotools) on the val split, mean ± std over seeds.\n\n{table}\n"
    )
    plot_summary(summary, out_dir, weights)
    print(table, flush=True)
    return summary


def run_ablation(overrides: dict[str, Any]) -> dict[str, Any]:
    """`clipce-rtdetr ablation ...` (CLI entry)."""
    from clipce_rtdetr.config import CHOICES, check_overrides
    from clipce_rtdetr.errors import ConfigError

    ultra, proj = check_overrides(overrides)
    bad = [m for m in proj["ablation_methods"] if m not in CHOICES["clipce"]]
    if bad:
        raise ConfigError(f"ablation_methods: unknown {bad}; valid methods are {', '.join(CHOICES['clipce'])}.")
    data = ultra.pop("data", None) or "hazy-shapes"
    model = ultra.pop("model", None) or "rtdetr-tiny.yaml"
    out_dir = Path(proj["out"] or "ablation-results")
    project = Path(ultra.pop("project", None) or out_dir / "runs")
    given_proj = {k: v for k, v in overrides.items() if k in proj and not k.startswith("ablation_") and k != "out"}
    return run_ablation_grid(
        list(proj["ablation_methods"]),
        [int(s) for s in proj["ablation_seeds"]],
        data,
        model,
        {**ultra, **given_proj},
        out_dir,
        project,
    )
