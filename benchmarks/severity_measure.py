"""The severity measure of `degrade` (issue 24): mean SSIM of the object boxes to the input image, at the
robustness severities 1-5, for each kind. A heavier severity must lower it (tests/test_weather.py checks the order
on the test dataset; this writes the table the degrade docs show).

    python benchmarks/severity_measure.py [--images 8] [--kinds haze,rain,snow,rain+haze,snow+haze,lowlight+haze]

Uses the first N val images of the built-in hazy-shapes demo (generated on first use, 256 px). Writes
benchmarks/results/severity_measure.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import cv2
import numpy as np
import yaml

OUT = Path(__file__).resolve().parent / "results"


def val_images(n: int) -> list[tuple[str, np.ndarray, list]]:
    """(relative path, BGR image, object boxes in pixels) of the first n hazy-shapes val images."""
    from clipce_rtdetr.data.dataset import resolve_data

    y = Path(resolve_data("hazy-shapes", check_labels=False))
    cfg = yaml.safe_load(y.read_text())
    root = Path(cfg.get("path") or y.parent)
    out = []
    for f in sorted((root / cfg["val"]).glob("*.*"))[:n]:
        img = cv2.imread(str(f))
        h, w = img.shape[:2]
        label = Path(str(f).replace(f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}")).with_suffix(".txt")
        lb = np.loadtxt(label, ndmin=2) if label.stat().st_size else np.zeros((0, 5))
        boxes = [((x - bw / 2) * w, (y - bh / 2) * h, (x + bw / 2) * w, (y + bh / 2) * h) for _, x, y, bw, bh in lb]
        out.append((str(f.relative_to(root)), img, boxes))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--kinds", default="haze,rain,snow,rain+haze,snow+haze,lowlight+haze")
    a = ap.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from clipce_rtdetr.data.degrade_image import severity_measure, synthesis_version

    images = val_images(a.images)
    rows = {k: severity_measure(k, images) for k in a.kinds.split(",")}
    record = {
        "images": len(images),
        "measure": "mean SSIM of object boxes (>= 11 px) to the input, physics.box_ssim",
        "synthesis": {k: synthesis_version(k) for k in rows},
        "ssim": rows,
        "monotone": {k: all(x > y for x, y in zip(v, v[1:])) for k, v in rows.items()},
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "severity_measure.json").write_text(json.dumps(record, indent=2))
    lines = [
        f"# Severity measure: object-box SSIM to the input ({len(images)} hazy-shapes val images, 256 px)",
        "",
        "| kind | synthesis | s1 | s2 | s3 | s4 | s5 | falls at every step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, v in rows.items():
        cells = " | ".join(f"{x:.3f}" for x in v)
        lines.append(f"| {k} | {record['synthesis'][k]} | {cells} | {'yes' if record['monotone'][k] else 'NO'} |")
    (OUT / "severity_measure.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
