"""clip-train's report: JSON, markdown and a PNG (training curve, mean AME d and zero-shot accuracy per level)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def _fmt(v, pct=False):
    if v is None:
        return "n/a"
    return f"{100 * v:.1f} %" if pct else f"{v:.3f}"


def write_report(stem: Path, report: dict[str, Any]) -> list[Path]:
    """stem.json, stem.md and stem.png."""
    from clipce_rtdetr.atomic import atomic_path, write_text

    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".json"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    write_text(paths[0], json.dumps(report, indent=2) + "\n")  # atomic: a failed write keeps an earlier report
    write_text(paths[1], report_markdown(report, paths[2].name))
    with atomic_path(paths[2]) as tmp:
        report_plot(report, tmp)
    return paths


def report_markdown(report: dict[str, Any], png_name: str) -> str:
    """The markdown report: recipe, zero-shot accuracy before/after, AME per degradation level."""
    r, b, a = report, report["before"], report["after"]
    lines = [
        f"# clip-train report: {Path(r['out']).name}",
        "",
        f"Command: `{r['command']}`",
        "",
        f"- data: `{r['data']}` ({r['n_train_objects']} train crops from {r['train_images']}, "
        f"{r['n_val_objects']} {r['eval_split']} crops); classes: {', '.join(r['classes'])}",
        f"- model: `{r['clip']}` ({r['start']}), {r['params'] / 1e6:.2f} M parameters, trained: {r['trained']}; "
        f"input {r['image_size']} px, mean {r['mean']}, std {r['std']}",
        f"- {r['epochs']} epochs, batch {r['batch']}, lr {r['lr']}, seed {r['seed']}, "
        f"{r['train_time_s']:.0f} s on {r['device']}",
        f"- prompts: profile `{Path(r['profile']).stem}`, templates {r['templates']}, "
        f"scene negatives {r['scene_negatives']}",
        f"- file: `{r['out']}` ({r['size_bytes'] / 2**20:.2f} MiB, {r['dtype']}, sha256 {r['sha256'][:16]}...)",
        f"- AME: context {r['ame_context']}, temperature {r['ame_temperature']}, "
        f"logit scale {a['logit_scale']:.1f} (before: {b['logit_scale']:.1f})",
        "",
        f"## Zero-shot accuracy on {r['eval_split']} crops (argmax over the {len(r['classes'])} class prompts)",
        "",
        "| | clean crops | degraded crops | mean d clean | mean d degraded |",
        "|---|---|---|---|---|",
    ]
    for name, s in (("before training", b["all"]), ("after training", a["all"])):
        lines.append(
            f"| {name} | {_fmt(s.get('acc_clean'), True)} | {_fmt(s.get('acc_degraded'), True)} | "
            f"{_fmt(s.get('d_clean'))} | {_fmt(s.get('d_degraded'))} |"
        )
    if "levels" in a:
        lines += [
            "",
            f"## AME per degradation level ({r['eval_split']} split, after training)",
            "",
            "Level bins: " + ", ".join(f"{n} beta in [{lo}, {hi})" for n, lo, hi in r["level_bins"]) + ". "
            "d = 1 - q (METHOD.md §3): the higher, the weaker the crop's class semantics. The clean column scores "
            "the clean copy of the same objects.",
            "",
            "| level | objects | mean d degraded | mean d clean | mean w degraded | acc degraded | acc clean "
            "| d degraded before training |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for lv, s in a["levels"].items():
            sb = b["levels"].get(lv, {})
            lines.append(
                f"| {lv} | {s['n']} | {_fmt(s.get('d_degraded'))} | {_fmt(s.get('d_clean'))} | "
                f"{_fmt(s.get('w_degraded'))} | {_fmt(s.get('acc_degraded'), True)} | "
                f"{_fmt(s.get('acc_clean'), True)} | {_fmt(sb.get('d_degraded'))} |"
            )
        rising = r.get("d_rises_with_level")
        if rising is not None:
            lines += ["", f"Mean d on degraded crops rises with the level: **{'yes' if rising else 'NO'}**."]
    lines += ["", f"![clip-train report]({png_name})", ""]
    return "\n".join(lines)


def report_plot(report: dict[str, Any], path: Path) -> None:
    """The PNG: training loss/accuracy per epoch; mean d and zero-shot accuracy per level, before and after."""
    r, b, a = report, report["before"], report["after"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), tight_layout=True)
    h = r["history"]
    ax = axes[0]
    ax.plot([e["epoch"] for e in h], [e["loss"] for e in h], marker=".", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot([e["epoch"] for e in h], [e["acc"] for e in h], color="tab:orange", marker=".", label="train acc")
    ax2.set_ylim(0, 1.02)
    ax2.set_ylabel("train accuracy")
    ax.set_title("training")
    ax.grid(alpha=0.3)
    groups = list(a.get("levels", {}).keys()) or ["all"]
    src = a.get("levels", {"all": a["all"]})
    src_b = b.get("levels", {"all": b["all"]})
    x = np.arange(len(groups))
    for ax, key, title in ((axes[1], "d", "mean AME d"), (axes[2], "acc", "zero-shot accuracy")):
        for k, (lab, dat, suffix) in enumerate(
            (("degraded", src, "_degraded"), ("clean", src, "_clean"), ("degraded, before", src_b, "_degraded"))
        ):
            vals = [dat.get(g, {}).get(key + suffix, np.nan) for g in groups]
            ax.bar(x + (k - 1) * 0.27, vals, 0.27, label=lab, alpha=0.5 if "before" in lab else 1.0)
        ax.set_xticks(x, groups)
        ax.set_title(f"{title} per level ({r['eval_split']})")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
