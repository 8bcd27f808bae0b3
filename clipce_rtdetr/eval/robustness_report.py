"""The robustness report: P_clean, mPC and rPC (Michaelis et al. 2019, "Benchmarking Robustness in Object
Detection") for AP50 and AP50-95, the per-cell table, CSV, JSON and a plot of AP against severity.

Definitions, for one metric P (COCO AP50 or AP50-95 from pycocotools):
  P_clean = P on the clean split;
  mPC = (1 / (N_c * N_s)) * sum over conditions c and severities s = 1..N_s of P(c, s);
  rPC = mPC / P_clean (shown in %; undefined when P_clean = 0).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

METRICS = ("AP50", "AP50-95")


def summarise(rec: dict[str, Any], conditions: list[str]) -> dict[str, Any]:
    """{metric: {"P_clean", "mPC", "rPC", "per_condition": {c: mean over severities}}} of one model's record."""
    cells = rec["cells"]
    out = {}
    for m in METRICS:
        clean = cells["clean"][m]
        per = {c: [v[m] for v in cells.values() if v["condition"] == c] for c in conditions}
        values = [x for vs in per.values() for x in vs]
        mpc = sum(values) / len(values) if values else float("nan")
        out[m] = {
            "P_clean": clean,
            "mPC": mpc,
            "rPC": mpc / clean if clean > 0 else float("nan"),
            "per_condition": {c: (sum(v) / len(v) if v else float("nan")) for c, v in per.items()},
        }
    return out


def label(rec: dict[str, Any]) -> str:
    """The model file's name with its hash; a run's weights/best.pt is named by its run folder (run/best.pt)."""
    p = Path(rec["model"])
    name = f"{p.parent.parent.name}/{p.name}" if p.parent.name == "weights" else p.name
    return f"{name} ({rec['model_sha256'][:8]})"


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f} %"


def markdown(result: dict[str, Any]) -> str:
    conds = result["conditions"]
    sums = [summarise(r, conds) for r in result["models"]]
    lines = [
        f"# Robustness: {result['data']} (split {result['split']})",
        "",
        "COCO AP from pycocotools. P_clean: AP on the clean split; mPC: mean AP over the "
        f"{len(conds)} conditions x severities 1-5; rPC = mPC / P_clean (Michaelis et al. 2019). Each figure names its "
        "AP: AP50 (IoU 0.5) or AP50-95 (mean over IoU 0.50:0.95).",
        "",
        "| model | P_clean (AP50) | mPC (AP50) | rPC (AP50) | P_clean (AP50-95) | mPC (AP50-95) | rPC (AP50-95) |",
        "|---|---|---|---|---|---|---|",
    ]
    for rec, s in zip(result["models"], sums):
        a, b = s["AP50"], s["AP50-95"]
        lines.append(f"| {label(rec)} | {a['P_clean']:.4f} | {a['mPC']:.4f} | {_pct(a['rPC'])} | "
                     f"{b['P_clean']:.4f} | {b['mPC']:.4f} | {_pct(b['rPC'])} |")  # fmt: skip
    for m in METRICS:
        lines += ["", f"## {m} per condition and severity", "",
                  "| condition | model | clean | s1 | s2 | s3 | s4 | s5 | mean s1-5 |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for c in conds:
            for rec, s in zip(result["models"], sums):
                vals = [rec["cells"]["clean"][m]] + [rec["cells"][f"{c}-s{k}"][m] for k in range(1, 6)]
                vals.append(s[m]["per_condition"][c])
                lines.append(f"| {c} | {label(rec)} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
    lines += ["", "## Severities (each component's main parameter; other parameters drawn per image as `degrade` does)",
              "", "| condition | s1 | s2 | s3 | s4 | s5 |", "|---|---|---|---|---|---|"]  # fmt: skip
    for c, sev in result["severities"].items():
        lines.append(f"| {c} | " + " | ".join(", ".join(f"{k} {v:g}" for k, v in p.items()) for p in sev) + " |")
    return "\n".join(lines) + "\n"


def csv_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model and cell, then P_clean / mPC / rPC rows (condition column) per model."""
    rows = []
    for rec in result["models"]:
        base = {"model": rec["model"], "model_sha256": rec["model_sha256"]}
        for v in rec["cells"].values():
            rows.append({**base, "condition": v["condition"], "severity": v["severity"],
                         **{m: f"{v[m]:.6f}" for m in METRICS}})  # fmt: skip
        s = summarise(rec, result["conditions"])
        for key in ("P_clean", "mPC", "rPC"):
            rows.append({**base, "condition": key, "severity": "", **{m: f"{s[m][key]:.6f}" for m in METRICS}})
    return rows


def plot(result: dict[str, Any], path: Path) -> None:
    """AP50-95 (solid) and AP50 (dashed) against severity (0 = clean), one panel per condition, a colour per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = result["conditions"]
    cols = min(4, len(conds))
    rows = math.ceil(len(conds) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False, sharey=True)
    for ax, c in zip(axes.flat, conds):
        for i, rec in enumerate(result["models"]):
            cells = rec["cells"]
            xs = list(range(6))
            for m, style in (("AP50-95", "-"), ("AP50", "--")):
                ys = [cells["clean"][m]] + [cells[f"{c}-s{k}"][m] for k in range(1, 6)]
                ax.plot(xs, ys, style, marker="o", ms=3, color=f"C{i}", label=f"{label(rec)} {m}")
        ax.set_title(c, fontsize=9)
        ax.set_xticks(range(6), ["clean", "1", "2", "3", "4", "5"], fontsize=7)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(conds) :]:
        ax.axis("off")
    axes[0, 0].set_ylabel("COCO AP")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.suptitle("AP against severity (solid: AP50-95, dashed: AP50)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * len(result["models"]), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(result: dict[str, Any], out: Path, prefix: str = "robustness") -> list[Path]:
    """<prefix>.md, .csv, .json and .png in out; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    md, cs, js, png = (out / f"{prefix}.{ext}" for ext in ("md", "csv", "json", "png"))
    md.write_text(markdown(result), encoding="utf-8")
    rows = csv_rows(result)
    with open(cs, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = {label(r): summarise(r, result["conditions"]) for r in result["models"]}
    js.write_text(json.dumps({**result, "summary": summary}, indent=2, default=str), encoding="utf-8")
    plot(result, png)
    return [md, cs, js, png]
