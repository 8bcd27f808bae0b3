"""The physics of `degrade` alone, per 640x480 image, as a multiple of haze's (haze alternates with each kind, image
by image, so the ratio holds on a machine whose speed drifts). Compares two versions of the code side by side:
run it once from this checkout and once with PYTHONPATH pointing at another (e.g. a `git worktree` of an older
commit), same machine, back to back.

    python benchmarks/degrade_physics.py [--kinds rain,snow,rain+haze,snow+haze] [--label new]
    PYTHONPATH=/tmp/old python benchmarks/degrade_physics.py --label old

Appends a row per kind to benchmarks/results/degrade_physics.json (CPU time: time.process_time).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np

OUT = Path(__file__).resolve().parent / "results" / "degrade_physics.json"


def scene(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = cv2.resize((rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    return cv2.add(base, (rng.random((h, w, 3)) * 30).astype(np.uint8))


def measure(kind: str, img: np.ndarray, depth, draws: int, rounds: int) -> dict[str, float]:
    """CPU ms per image of `kind` (medium, `draws` parameter sets) and of haze, alternating."""
    from clipce_rtdetr.data import degrade_image as D

    haze = D.sample_params("haze", "medium", D.ranges_for("haze", "medium", {}), 0, "x")
    params = [D.sample_params(kind, "medium", D.ranges_for(kind, "medium", {}), 0, f"x{i}") for i in range(draws)]
    t_haze = t_kind = 0.0
    for _ in range(rounds):
        for p in params:
            c0 = time.process_time()
            D.degrade_array(img, "haze", haze, depth, metres_per_unit=10.0)
            c1 = time.process_time()
            D.degrade_array(img, kind, p, depth, metres_per_unit=10.0)
            c2 = time.process_time()
            t_haze, t_kind = t_haze + c1 - c0, t_kind + c2 - c1
    n = rounds * draws
    return {"ms": 1e3 * t_kind / n, "haze_ms": 1e3 * t_haze / n, "ratio_to_haze": t_kind / t_haze}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kinds", default="rain,snow,rain+haze,snow+haze,lowlight+haze")
    ap.add_argument("--label", default="this checkout")
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=15)
    a = ap.parse_args()
    from clipce_rtdetr.data import degrade_image as D
    from clipce_rtdetr.data.degrade import _init_worker

    _init_worker()  # degrade's worker set-up: one OpenCV thread, freed image blocks reused
    img, depth = scene(480, 640), D.prior_depth("horizon", 480, 640)
    root = Path(D.__file__).resolve().parents[2]
    rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    row = {"label": a.label, "code": str(root), "commit": rev.stdout.strip(), "load_avg": os.getloadavg()}
    row["kinds"] = {k: measure(k, img, depth, a.draws, a.rounds) for k in a.kinds.split(",")}
    for k, v in row["kinds"].items():
        print(f"{a.label}: {k}: {v['ms']:.2f} ms per image, {v['ratio_to_haze']:.2f} x haze ({v['haze_ms']:.2f} ms)")
    runs = json.loads(OUT.read_text()) if OUT.exists() else []
    OUT.write_text(json.dumps(runs + [row], indent=2))


if __name__ == "__main__":
    main()
