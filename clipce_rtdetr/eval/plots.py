"""Plots of CLIP-CE's weights (training history; distributions are in the ame inspection mode)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path


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


def plot_weights_per_class(out: str | Path, w, cls, names: Sequence[str]) -> Path:
    """Histogram of AME weights, one panel per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    w, cls = np.asarray(w), np.asarray(cls)
    n = len(names)
    cols = min(n, 5)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.5 * rows), tight_layout=True, squeeze=False)
    bins = np.linspace(min(1.0, w.min()) if len(w) else 1.0, max(w.max(), 1.01) if len(w) else 2.0, 21)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        ax.hist(w[cls == i], bins=bins, color="tab:blue")
        ax.set_title(f"{names[i]} (n={(cls == i).sum()})", fontsize=9)
        ax.set_xlabel("AME weight w")
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


def plot_crop_grid(out: str | Path, rows: list[dict], q, d, context: float, k: int = 8) -> Path:
    """The k most and k least weakened crops (by d = 1 - q), with q and d under each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from clipce_rtdetr.method.embedding_cache import read_rgb

    d = np.asarray(d)
    order = np.argsort(-d)
    picks = [("most weakened", order[:k]), ("least weakened", order[::-1][:k])]
    fig, axes = plt.subplots(2, k, figsize=(1.6 * k, 4.0), squeeze=False)
    for r, (title, idx) in enumerate(picks):
        for c in range(k):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(idx):
                continue
            row = rows[idx[c]]
            im = read_rgb(row["im_file"])
            x1, y1, x2, y2 = (float(row[k_]) for k_ in ("x1", "y1", "x2", "y2"))
            pw, ph = (x2 - x1) * context, (y2 - y1) * context
            xa, ya = max(int(x1 - pw), 0), max(int(y1 - ph), 0)
            xb, yb = min(int(np.ceil(x2 + pw)), im.shape[1]), min(int(np.ceil(y2 + ph)), im.shape[0])
            if xb > xa and yb > ya:
                ax.imshow(im[ya:yb, xa:xb])
            ax.set_title(f"{row['name']}\nq={float(q[idx[c]]):.2f} d={float(d[idx[c]]):.2f}", fontsize=7)
        axes[r, 0].text(
            -0.1, 0.5, title, transform=axes[r, 0].transAxes, rotation=90, va="center", ha="right", fontsize=9
        )
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)
