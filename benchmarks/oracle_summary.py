"""One table and one figure for the issue-23 grid: paired differences (95 % t-interval over seeds) of every method
to `none`, and of `oracle-ranked` to `ame`, per detector and benchmark, overall and in heavy haze.

    python benchmarks/oracle_summary.py      # reads results/ablation_oracle_{rtdetr,yolo}_{balanced,rare}.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRIDS = ("rtdetr_balanced", "rtdetr_rare", "yolo_balanced", "yolo_rare")
COMPARISONS = (
    ("oracle", "none"),
    ("oracle-ranked", "none"),
    ("ame", "none"),
    ("fame", "none"),
    ("oracle-ranked", "ame"),
)


def comparisons(record: dict) -> dict[tuple[str, str], dict]:
    """(method, baseline) -> {"all": {metric: ci}, "heavy": {...}, "pairs": n} for those the grid has."""
    from clipce_rtdetr.eval.ablation_report import paired_differences

    out = {}
    for method, base in COMPARISONS:
        runs = [r for r in record["runs"] if r["method"] in (method, base)]
        paired = paired_differences(runs, baseline=base).get(method)
        if paired and paired["seeds"]:
            heavy = paired["per_level"].get("heavy", {})
            out[(method, base)] = {"pairs": len(paired["seeds"]), "all": paired, "heavy": heavy}
    return out


def _cell(ci: dict | None) -> str:
    if not ci or math.isnan(ci.get("mean", math.nan)):
        return "–"
    if math.isnan(ci["low"]):  # one pair: no interval
        return f"{ci['mean']:+.3f} (1 seed)"
    text = f"{ci['mean']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]"
    return f"**{text}**" if ci["low"] > 0 or ci["high"] < 0 else text


def markdown(found: dict[str, dict]) -> str:
    lines = [
        "# Issue 23 grid: paired differences (mean [95 % t-interval over seeds]); bold: the interval excludes 0\n",
        "| detector, benchmark | comparison | pairs | ΔmAP50 | ΔmAP50 heavy | ΔmAP50-95 | ΔmAP50-95 heavy |",
        "|---|---|---|---|---|---|---|",
    ]
    for grid, comps in found.items():
        for (method, base), c in comps.items():
            cells = [_cell(c["all"]["mAP50"]), _cell(c["heavy"].get("mAP50")), _cell(c["all"]["mAP50-95"])]
            cells.append(_cell(c["heavy"].get("mAP50-95")))
            lines.append(f"| {grid} | {method} − {base} | {c['pairs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(found: dict[str, dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(found), figsize=(3.6 * len(found), 3.8), sharey=True, squeeze=False)
    for ax, (grid, comps) in zip(axes[0], found.items()):
        labels = [f"{m} − {b}" for m, b in comps]
        for k, scope in enumerate(("all", "heavy")):
            cis = [c["all"]["mAP50"] if scope == "all" else c["heavy"].get("mAP50") for c in comps.values()]
            x = [i + (k - 0.5) * 0.3 for i in range(len(cis))]
            mean = [ci["mean"] if ci else math.nan for ci in cis]
            err = [
                [m - ci["low"] if ci else 0 for m, ci in zip(mean, cis)],
                [ci["high"] - m if ci else 0 for m, ci in zip(mean, cis)],
            ]
            ax.errorbar(x, mean, yerr=err, fmt="o", capsize=3, label="all val" if scope == "all" else "heavy haze")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlim(-0.6, len(labels) - 0.4)
        ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
        ax.set_title(grid.replace("_", ", "))
    axes[0][0].set_ylabel("ΔmAP50 (95 % CI over seeds)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    res = Path(args.results)
    found = {}
    for grid in GRIDS:
        f = res / f"ablation_oracle_{grid}.json"
        if f.is_file():
            found[grid] = comparisons(json.loads(f.read_text()))
    if not found:
        print(f"no ablation_oracle_*.json in {res}", file=sys.stderr)
        return 1
    (res / "ablation_oracle_summary.md").write_text(markdown(found))
    plot(found, res / "ablation_oracle_summary.png")
    print(markdown(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
