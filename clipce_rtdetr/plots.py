"""Plots of CLIP-CE's weights (training history; distributions are in the ame inspection mode)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence


def plot_weight_history(csv_file: str | Path, keys: Sequence[str], on_plot: Callable | None = None) -> Path | None:
    """results.csv -> clipce_weights.png: mean AME and FAME weight and the fraction w > 1.5 per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    csv_file = Path(csv_file)
    if not csv_file.exists():
        return None
    df = pd.read_csv(csv_file)
    df.columns = [c.strip() for c in df.columns]
    present = [k for k in keys if k in df.columns]
    if not present:
        return None
    fig, axes = plt.subplots(1, len(present), figsize=(4 * len(present), 3.2), tight_layout=True)
    for ax, k in zip(axes if len(present) > 1 else [axes], present):
        ax.plot(df["epoch"], df[k], marker="o")
        ax.set_title(k.replace("clipce/", ""))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    out = csv_file.with_name("clipce_weights.png")
    fig.savefig(out, dpi=150)
    plt.close(fig)
    if on_plot:
        on_plot(out)
    return out
