"""Oracle object weights for hazy-shapes, and how well CLIP's d tracks the truth (issue 23).

hazy-shapes records beta (haze.csv) and per-pixel depth (depth/) for every image, so each object's mean
transmission t over its box is known. This script writes the weight tables of the ablation's positive control
(clipce_rtdetr/eval/ablation_oracle.py):
    oracle.csv         w = exp(ame_alpha * (1 - t)): AME's formula with the true degradation in place of d
    oracle-ranked.csv  AME's own w values re-assigned in the oracle's order of degradation (only the ranking differs)
(train with them: clipce-rtdetr train data=... clipce=table weights=.../oracle.csv), and reports the Spearman rank
correlation between the demo CLIP's d and the true 1 - t, per object, overall and per class, with a plot.

    python benchmarks/oracle_weights.py                          # hazy-shapes, the committed demo CLIP
    python benchmarks/oracle_weights.py --data hazy-shapes-rare-heavy --name oracle_rare
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def spearman_table(d: np.ndarray, degradation: np.ndarray, cls: np.ndarray, names: list[str]) -> list[dict]:
    """Spearman's rho (scipy.stats) of d against the true degradation, overall and per class."""
    from scipy.stats import spearmanr

    rows = []
    for label, mask in [("all", np.ones(len(d), bool))] + [(n, cls == c) for c, n in enumerate(names)]:
        n = int(mask.sum())
        res = spearmanr(d[mask], degradation[mask]) if n > 2 else None
        rho = float(res.statistic) if res is not None else float("nan")
        p = float(res.pvalue) if res is not None else float("nan")
        rows.append({"class": label, "objects": n, "spearman_rho": rho, "p_value": p})
    return rows


def plot_correlation(d, degradation, cls, names, rows, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for c, n in enumerate(names):
        m = cls == c
        axes[0].scatter(degradation[m], d[m], s=8, alpha=0.6, label=n)
    axes[0].set_xlabel("true degradation 1 − t (mean over the box)")
    axes[0].set_ylabel("demo CLIP's d = 1 − q")
    axes[0].set_title(f"per object (Spearman ρ = {rows[0]['spearman_rho']:.2f}, n = {rows[0]['objects']})")
    axes[0].legend(fontsize=7, markerscale=2)
    labels = [r["class"] for r in rows]
    axes[1].bar(labels, [r["spearman_rho"] for r in rows], color=["black"] + [f"C{i}" for i in range(len(names))])
    axes[1].axhline(0, color="grey", lw=0.8)
    axes[1].set_ylim(-1, 1)
    axes[1].set_ylabel("Spearman ρ (d vs 1 − t)")
    axes[1].set_title("rank agreement, overall and per class")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def markdown(rec: dict) -> str:
    lines = [
        f"# Oracle weights and CLIP's d against the truth ({rec['data_name']}, train split)\n",
        f"Data `{rec['data']}`, CLIP `{rec['clip']}`, {rec['objects']} objects. Written by "
        f"`{rec['command']}`.\n",
        "| | mean | min | max |",
        "|---|---|---|---|",
    ]
    for key in ("t", "w_oracle", "w_ame", "d_ame"):
        s = rec["stats"][key]
        lines.append(f"| {key} | {s['mean']:.3f} | {s['min']:.3f} | {s['max']:.3f} |")
    lines += ["", "Spearman ρ between CLIP's d and the true degradation 1 − t (scipy.stats.spearmanr):\n"]
    lines += ["| class | objects | ρ | p |", "|---|---|---|---|"]
    lines += [
        f"| {r['class']} | {r['objects']} | {r['spearman_rho']:+.3f} | {r['p_value']:.2g} |" for r in rec["spearman"]
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="hazy-shapes", help="hazy-shapes, hazy-shapes-rare-heavy or a generated YAML")
    ap.add_argument("--clip", default=None, help="CLIP spec; default for hazy-shapes: the committed demo CLIP")
    ap.add_argument("--tables", default=None, help="folder for oracle.csv / oracle-ranked.csv (default: --out)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--name", default="oracle", help="report prefix: <name>.md, .json, _spearman.png")
    args = ap.parse_args(argv)

    from ultralytics.data.utils import check_det_dataset

    from clipce_rtdetr.config import check_project_values, project_defaults
    from clipce_rtdetr.data.dataset import resolve_run_data
    from clipce_rtdetr.eval.ablation_oracle import make_oracle_tables

    given = {"data": args.data, **({"clip": args.clip} if args.clip else {})}
    resolved = resolve_run_data(given, needs_clip=True)
    a = check_project_values({**project_defaults(), "clip": resolved["clip"]})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = make_oracle_tables(resolved["data"], a, Path(args.tables or out / f"{args.name}_tables"))
    names = list(check_det_dataset(resolved["data"], autodownload=False)["names"].values())
    degradation = 1.0 - res["t"]
    rows = spearman_table(res["d_ame"], degradation, res["cls"], names)
    rec = {
        "data": resolved["data"],
        "data_name": Path(resolved["data"]).parent.name,
        "clip": a["clip"],
        "objects": int(len(res["t"])),
        "command": " ".join(["python", "benchmarks/oracle_weights.py", *(sys.argv[1:] if argv is None else argv)]),
        "tables": {k: str(v) for k, v in res["tables"].items()},
        "stats": {
            k: {"mean": float(np.mean(res[k])), "min": float(np.min(res[k])), "max": float(np.max(res[k]))}
            for k in ("t", "w_oracle", "w_ame", "d_ame")
        },
        "spearman": rows,
    }
    (out / f"{args.name}.json").write_text(json.dumps(rec, indent=2))
    (out / f"{args.name}.md").write_text(markdown(rec))
    png = plot_correlation(res["d_ame"], degradation, res["cls"], names, rows, out / f"{args.name}_spearman.png")
    print(markdown(rec))
    print(f"wrote {out / args.name}.md, .json, {png.name}; tables: {', '.join(rec['tables'].values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
