"""Ablation report: mean ± std per method and the paired difference of each method to the baseline (`none`).

Runs of one seed are paired: every method sees the same seed's data order and augmentation (same `seed=`,
`deterministic=True`, `workers=0`; the harness records a hash of every training batch to prove it). The paired
difference method − baseline per seed removes the seed-to-seed spread shared by both, and its 95 % interval is a
t-interval over seeds (n − 1 degrees of freedom). Overall and per degradation level, for mAP50 and mAP50-95.
"""

from __future__ import annotations

import json
import math
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


def _t_cdf_above_zero(x: float, df: int, steps: int = 4000) -> float:
    """P(0 < T < x) for Student's t with df degrees of freedom (Simpson's rule on its density)."""
    t = np.linspace(0.0, x, steps + 1)
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    pdf = np.exp(log_norm - (df + 1) / 2 * np.log1p(t * t / df))
    return float((x / steps / 3) * (pdf[0] + pdf[-1] + 4 * pdf[1:-1:2].sum() + 2 * pdf[2:-1:2].sum()))


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 0.5) of Student's t (bisection on its CDF; scipy is not a dependency)."""
    low, high = 0.0, 1.0
    while 0.5 + _t_cdf_above_zero(high, df) < p:
        low, high = high, high * 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if 0.5 + _t_cdf_above_zero(mid, df) < p else (low, mid)
    return (low + high) / 2


def t_interval(values: Iterable[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean, sample std and the two-sided t-interval of the mean (nan bounds for fewer than 2 values)."""
    v = np.asarray(list(values), dtype=np.float64)
    mean, std = mean_std(v)
    if v.size < 2:
        return {"n": int(v.size), "mean": mean, "std": std, "low": math.nan, "high": math.nan}
    half = t_quantile(0.5 + confidence / 2, v.size - 1) * std / math.sqrt(v.size)
    return {"n": int(v.size), "mean": mean, "std": std, "low": mean - half, "high": mean + half}


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


def _seed_differences(base: dict[int, dict], other: dict[int, dict], level: str | None, metric: str) -> list[float]:
    """method − baseline for every seed both have (and, per level, where both runs scored that level)."""
    diffs = []
    for seed in sorted(set(base) & set(other)):
        a, b = base[seed], other[seed]
        if level is not None:
            a, b = a.get("per_level", {}).get(level), b.get("per_level", {}).get(level)
            if a is None or b is None:
                continue
        diffs.append(b[metric] - a[metric])
    return diffs


def paired_differences(runs: list[dict[str, Any]], baseline: str = "none", confidence: float = 0.95) -> dict:
    """Per method other than `baseline`: the paired difference to it by seed, overall and per level.

    Returns {method: {"seeds": [...], "mAP50": t_interval, "mAP50-95": ..., "per_level": {level: {metric: ...}}}};
    {} when the baseline was not run."""
    by_method: dict[str, dict[int, dict]] = {}
    for r in runs:
        by_method.setdefault(r["method"], {})[r["seed"]] = r
    base = by_method.get(baseline)
    if base is None:
        return {}
    levels = list(dict.fromkeys(lv for r in runs for lv in r.get("per_level", {})))
    out = {}
    for method, other in by_method.items():
        if method == baseline:
            continue
        entry: dict[str, Any] = {"seeds": sorted(set(base) & set(other))}
        for m in METRICS:
            entry[m] = t_interval(_seed_differences(base, other, None, m), confidence)
        entry["per_level"] = {
            lv: {m: t_interval(_seed_differences(base, other, lv, m), confidence) for m in METRICS} for lv in levels
        }
        out[method] = entry
    return out


def pairing_check(runs: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Seeds whose runs all saw the same training batches ("same"), did not ("differ"), or were not hashed."""
    seeds: dict[int, list[str | None]] = {}
    for r in runs:
        seeds.setdefault(r["seed"], []).append(r.get("data_order_sha1"))
    out: dict[str, list[int]] = {"same": [], "differ": [], "not_recorded": []}
    for seed, hashes in seeds.items():
        key = "not_recorded" if None in hashes else "same" if len(set(hashes)) == 1 else "differ"
        out[key].append(seed)
    return out


def _fmt_ms(ms: tuple[float, float], digits: int) -> str:
    return f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


def _fmt_ci(ci: dict[str, float], digits: int) -> str:
    """+0.004 [-0.010, +0.018]; bold when the interval excludes 0."""
    if math.isnan(ci["mean"]):
        return "–"
    cell = f"{ci['mean']:+.{digits}f} [{ci['low']:+.{digits}f}, {ci['high']:+.{digits}f}]"
    return f"**{cell}**" if ci["low"] > 0 or ci["high"] < 0 else cell


def markdown_table(summary: dict[str, Any], digits: int = 3, metric: str = "mAP50") -> str:
    """One row per method: overall mAP50 and mAP50-95, and `metric` per level, as mean ± std."""
    levels = list(dict.fromkeys(lv for e in summary.values() for lv in e["per_level"]))
    head = ["method", "seeds", "mAP50", "mAP50-95"] + [f"{metric} ({lv})" for lv in levels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, e in summary.items():
        cells = [method, str(e["n"]), _fmt_ms(e["mAP50"], digits), _fmt_ms(e["mAP50-95"], digits)]
        cells += [_fmt_ms(e["per_level"][lv][metric], digits) if lv in e["per_level"] else "–" for lv in levels]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(paired: dict[str, Any], metric: str, baseline: str = "none", digits: int = 3) -> str:
    """One row per method: the paired difference of `metric` to the baseline, overall and per level, with its CI."""
    levels = list(dict.fromkeys(lv for e in paired.values() for lv in e["per_level"]))
    head = ["method", "pairs", f"Δ{metric} all"] + [f"Δ{metric} ({lv})" for lv in levels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, e in paired.items():
        cells = [f"{method} − {baseline}", str(len(e["seeds"])), _fmt_ci(e[metric], digits)]
        cells += [_fmt_ci(e["per_level"][lv][metric], digits) if lv in e["per_level"] else "–" for lv in levels]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pairing_sentence(check: dict[str, list[int]]) -> str:
    if check["differ"]:
        return f"**Not paired exactly:** the methods saw different training batches for seeds {check['differ']}."
    if check["not_recorded"]:
        checked = (
            f"; for seeds {check['same']} all methods saw identical batches (hash-checked)" if check["same"] else ""
        )
        return (
            f"Pairing by seed (same `seed=`, `deterministic=True`, `workers=0`); the batches were not hashed for "
            f"seeds {check['not_recorded']} (runs made before the harness recorded them){checked}."
        )
    return f"Paired by seed: for every seed {check['same']} all methods saw identical training batches (hash-checked)."


def _interval_count(paired: dict[str, Any]) -> int:
    return sum(len(METRICS) * (1 + len(e["per_level"])) for e in paired.values())


def report_markdown(record: dict[str, Any], baseline: str = "none") -> str:
    """The whole report: settings, command, mean ± std tables, paired tables, pairing check."""
    summary, paired = record["summary"], record.get("paired", {})
    parts = [
        f"# Ablation: {', '.join(record['methods'])} over seeds {record['seeds']}\n",
        f"Data `{Path(record['data']).parent.name}/{Path(record['data']).name}`, model `{Path(record['model']).name}`, "
        f"training {json.dumps(record['train_kwargs'], default=str)}.",
    ]
    if record.get("command"):
        parts.append(f"Command: `{record['command']}`")
    parts += [
        "COCO mAP (pycocotools) on the val split.\n",
        "## Mean ± std over seeds\n",
        markdown_table(summary),
        "",
        markdown_table(summary, metric="mAP50-95"),
        "",
    ]
    vs_ame = record.get("paired_vs_ame") or {}
    if vs_ame:
        parts += [
            "## Ranking's share: paired difference to `ame` (same weight values, only their order differs for "
            "`oracle-ranked`)\n",
            paired_table(vs_ame, "mAP50", "ame"),
            "",
            paired_table(vs_ame, "mAP50-95", "ame"),
            "",
        ]
    if any(r.get("reused") for r in record["runs"]):
        reused = sorted({(r["method"], r["seed"]) for r in record["runs"] if r.get("reused")})
        parts.append(f"Runs taken from an earlier grid with the same settings (batch hash recorded): {reused}.\n")
    if paired:
        parts += [
            f"## Paired difference to `{baseline}` (mean [95 % t-interval] over seeds)\n",
            _pairing_sentence(pairing_check(record["runs"])),
            f"Bold: the interval excludes 0. There are {_interval_count(paired)} intervals and no correction for "
            "multiple comparisons: about 1 in 20 excludes 0 by chance alone when there is no effect.\n",
            paired_table(paired, "mAP50", baseline),
            "",
            paired_table(paired, "mAP50-95", baseline),
            "",
        ]
    return "\n".join(parts)


def write_report(record: dict[str, Any], out_dir: Path, prefix: str = "ablation", weights=None) -> list[Path]:
    """<prefix>.json, <prefix>.md and the plots from a record {data, model, train_kwargs, methods, seeds, runs}."""
    runs = record["runs"]
    record = {**record, "summary": aggregate(runs), "paired": paired_differences(runs)}
    record["pairing"] = pairing_check(runs)
    if {"ame", "oracle-ranked"} <= {r["method"] for r in runs}:
        vs_ame = paired_differences([r for r in runs if r["method"] in ("ame", "oracle-ranked")], baseline="ame")
        record["paired_vs_ame"] = vs_ame
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{prefix}.json").write_text(json.dumps(record, indent=2, default=str))
    (out_dir / f"{prefix}.md").write_text(report_markdown(record))
    paths = plot_summary(record["summary"], out_dir, weights, prefix)
    if record["paired"]:
        paths.append(plot_paired(record["paired"], out_dir / f"{prefix}_paired.png"))
    return [out_dir / f"{prefix}.json", out_dir / f"{prefix}.md", *paths]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grouped_bars(groups: list[str], series: dict[str, list], ylabel: str, title: str, path: Path) -> Path:
    """One group of bars per x tick; series: {label: [(mean, std) per group]}."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.5 + 1.5 * len(groups), 3.4))
    x, wbar = np.arange(len(groups)), 0.8 / max(len(series), 1)
    for k, (label, ms) in enumerate(series.items()):
        offset = (k - (len(series) - 1) / 2) * wbar
        ax.bar(x + offset, [m for m, _ in ms], wbar, yerr=[s_ for _, s_ in ms], capsize=2, label=label)
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def _weights_histogram(weights: dict[str, np.ndarray], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for me, w in weights.items():
        if len(w):
            ax.hist(w, bins=30, alpha=0.5, label=f"{me} (mean {np.mean(w):.2f})")
    ax.set_xlabel("per-object weight w (before FAME)")
    ax.set_ylabel("objects")
    ax.set_title("Weight distributions (train split)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_summary(
    summary: dict[str, Any], out_dir: Path, weights: dict[str, np.ndarray] | None = None, prefix: str = "ablation"
) -> list[Path]:
    """<prefix>_map.png (mean ± std per method), <prefix>_per_level.png (mAP50 per level), <prefix>_weights.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    methods = list(summary)
    paths = [
        _grouped_bars(
            methods,
            {m: [summary[me][m] for me in methods] for m in METRICS},
            "mAP (mean ± std over seeds)",
            "mAP per method",
            out_dir / f"{prefix}_map.png",
        )
    ]
    levels = list(dict.fromkeys(lv for e in summary.values() for lv in e["per_level"]))
    if levels:
        missing = {"mAP50": (0.0, 0.0)}
        series = {me: [summary[me]["per_level"].get(lv, missing)["mAP50"] for lv in levels] for me in methods}
        title = "mAP50 per haze level"
        paths.append(_grouped_bars(levels, series, "mAP50 (mean ± std)", title, out_dir / f"{prefix}_per_level.png"))
    if weights:
        paths.append(_weights_histogram(weights, out_dir / f"{prefix}_weights.png"))
    return paths


def plot_paired(paired: dict[str, Any], path: Path, baseline: str = "none") -> Path:
    """Paired difference to the baseline with its 95 % interval per method, overall and per level; a panel a metric."""
    plt = _pyplot()
    levels = list(dict.fromkeys(lv for e in paired.values() for lv in e["per_level"]))
    groups = ["all", *levels]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(2 + 1.6 * len(groups) * len(METRICS), 3.4), squeeze=False)
    width = 0.8 / max(len(paired), 1)
    for ax, metric in zip(axes[0], METRICS):
        for k, (method, e) in enumerate(paired.items()):
            cis = [e[metric]] + [e["per_level"].get(lv, {}).get(metric) for lv in levels]
            x = np.arange(len(groups)) + (k - (len(paired) - 1) / 2) * width
            mean = np.array([c["mean"] if c else np.nan for c in cis])
            low = np.array([c["low"] if c else np.nan for c in cis])
            high = np.array([c["high"] if c else np.nan for c in cis])
            ax.errorbar(x, mean, yerr=[mean - low, high - mean], fmt="o", capsize=3, label=f"{method} − {baseline}")
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xticks(np.arange(len(groups)), groups)
        ax.set_ylabel(f"Δ{metric} (95 % CI over seeds)")
        ax.set_title(f"Paired Δ{metric} to {baseline}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
