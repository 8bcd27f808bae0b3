"""Embedding-cache build throughput (issue 22): 2 processes vs 1, and 1 process vs a bare batched CLIP forward.

    python benchmarks/cache_build.py [--images 40] [--per-image 8] [--clip ViT-B-32] [--repeats 2]

A synthetic dataset of 640x480 JPEGs with `--per-image` boxes each is built in a temporary folder, and a CLIP of the
named open_clip architecture with random weights (speed does not depend on the values). Every measured process runs
one torch thread (OMP_NUM_THREADS=1), as the issue asks, and decodes in its main thread (workers=0):

- bare: the crops are made beforehand; only `bundle.encode_images` over them, `--batch` at a time, is timed;
- 1 process: the single-process build (`cache_build.merge_shards` with no shards: decode, crop, CLIP, write);
- 2 processes: two processes each build their share (`build_share`, rank 0/1 of 2) at the same time, then one
  merges the shard files (as rank 0 does); wall time from the first start to the end of the merge.

Chunks are CLIPCE_CACHE_CHUNK objects (default here: a tenth of the objects, so the two shares are equal).
Configurations alternate, `--repeats` times each; medians are reported. Results: benchmarks/results/cache_build.*
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import load, machine  # noqa: E402


def make_dataset(root: Path, n_images: int, per_image: int, seed: int = 0) -> Path:
    """640x480 JPEGs of noise with `per_image` filled boxes each; returns a JSON list of Ultralytics-style labels."""
    import cv2

    rng = np.random.default_rng(seed)
    labels = []
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        img = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        boxes = []
        for _ in range(per_image):
            w, h = rng.uniform(0.05, 0.4, 2)
            cx, cy = rng.uniform(w / 2, 1 - w / 2), rng.uniform(h / 2, 1 - h / 2)
            x1, y1 = int((cx - w / 2) * 640), int((cy - h / 2) * 480)
            colour = [int(v) for v in rng.integers(0, 255, 3)]
            cv2.rectangle(img, (x1, y1), (x1 + int(w * 640), y1 + int(h * 480)), colour, -1)
            boxes.append([cx, cy, w, h])
        path = root / "images" / f"im{i:05d}.jpg"
        cv2.imwrite(str(path), img)
        labels.append({"im_file": str(path), "shape": [480, 640], "cls": [[0]] * per_image, "bboxes": boxes})
    out = root / "labels.json"
    out.write_text(json.dumps(labels))
    return out


def read_labels(path: Path) -> list[dict]:
    return [
        {**lb, "cls": np.asarray(lb["cls"], np.float32), "bboxes": np.asarray(lb["bboxes"], np.float32)}
        for lb in json.loads(Path(path).read_text())
    ]


def role_main(args) -> None:
    """One measured process: prints a JSON line {start, end, objects}."""
    import torch

    torch.set_num_threads(1)
    from clipce_rtdetr.clip.loader import load_clip
    from clipce_rtdetr.method import cache_build
    from clipce_rtdetr.method.ame import normalise

    labels = read_labels(args.labels)
    bundle = load_clip(args.clip_spec)
    cpu0 = 0.0
    n = sum(len(lb["cls"]) for lb in labels)
    shards = Path(args.shards)
    if args.role == "bare":
        crops = torch.cat([c for c, _ in cache_build.SourceCrops(labels, bundle.image_size, 0.1)])
        x = normalise(crops, bundle.mean, bundle.std)
        bundle.encode_images(x[: args.batch], args.batch)  # warm-up
        start, cpu0 = time.time(), sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        bundle.encode_images(x, args.batch)
    elif args.role == "share":
        bundle.encode_images(torch.zeros(2, 3, bundle.image_size, bundle.image_size), 2)  # warm-up
        (shards / f"ready{args.rank}").touch()
        while not Path(args.go).exists():  # both processes start together
            time.sleep(0.01)
        start, cpu0 = time.time(), sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        cache_build.build_share(labels, bundle, 0.1, args.batch, "cpu", shards, args.rank, args.world, progress=False)
    else:  # merge: from the shards there are (none: the one-process build)
        bundle.encode_images(torch.zeros(2, 3, bundle.image_size, bundle.image_size), 2)
        start, cpu0 = time.time(), sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        cache_build.merge_shards(labels, bundle, 0.1, args.batch, "cpu", shards, shards / "m.f16", progress=False)
    cpu = sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - cpu0
    print(json.dumps({"start": start, "end": time.time(), "objects": n, "cpu_s": cpu}), flush=True)


def run_role(args, role: str, shards: Path, rank: int = 0, world: int = 1, go: Path | None = None):
    cmd = [sys.executable, __file__, "--role", role, "--labels", str(args.labels), "--clip-spec", args.clip_spec,
           "--shards", str(shards), "--rank", str(rank), "--world", str(world), "--batch", str(args.batch),
           "--go", str(go or shards / "go")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CLIPCE_CACHE_CHUNK": str(args.chunk)}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)


def result(proc) -> dict:
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"a measured process failed ({proc.returncode}): {out[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def measure(args, tmp: Path, repeat: int) -> dict:
    out = {}
    shards = tmp / f"bare{repeat}"
    r = result(run_role(args, "bare", shards))
    out["bare"] = r["objects"] / (r["end"] - r["start"])
    out["cpu_s_per_object"] = {"bare": r["cpu_s"] / r["objects"]}
    shards = tmp / f"one{repeat}"
    r = result(run_role(args, "merge", shards))
    out["one"] = r["objects"] / (r["end"] - r["start"])
    out["cpu_s_per_object"]["one"] = r["cpu_s"] / r["objects"]
    shards = tmp / f"two{repeat}"
    shards.mkdir()
    go = shards / "go"
    procs = [run_role(args, "share", shards, rank, 2, go) for rank in (0, 1)]
    while not all((shards / f"ready{r}").exists() for r in (0, 1)):  # both have loaded CLIP; they wait for `go`
        time.sleep(0.05)
    go.touch()
    shares = [result(p) for p in procs]
    merge = result(run_role(args, "merge", shards))
    wall = merge["end"] - merge["start"] + max(s["end"] for s in shares) - min(s["start"] for s in shares)
    out["two"] = merge["objects"] / wall
    out["two_shares_s"] = [round(s["end"] - s["start"], 2) for s in shares]
    out["two_merge_s"] = round(merge["end"] - merge["start"], 2)
    out["cpu_s_per_object"]["two"] = (sum(s["cpu_s"] for s in shares) + merge["cpu_s"]) / merge["objects"]
    out["cpu_share_of_wall"] = round(sum(s["cpu_s"] for s in shares) / max(s["end"] - s["start"] for s in shares), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--per-image", type=int, default=8)
    ap.add_argument("--clip", default="ViT-B-32", help="open_clip architecture (random weights)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cache_build"))
    for k in ("--role", "--labels", "--clip-spec", "--shards", "--go"):
        ap.add_argument(k, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        return role_main(args)
    from clipce_rtdetr.clip.loader import make_random_clip

    info = machine()
    with tempfile.TemporaryDirectory(prefix="cache-build-bench-") as t:
        tmp = Path(t)
        args.labels = make_dataset(tmp / "data", args.images, args.per_image)
        args.clip_spec = make_random_clip(tmp / "clip.safetensors", args.clip)
        n = args.images * args.per_image
        args.chunk = max(1, n // 10)
        runs = [measure(args, tmp, i) for i in range(args.repeats)]
    med = {k: statistics.median(r[k] for r in runs) for k in ("bare", "one", "two")}
    report = {
        "machine": {**info, "load_at_end": load()},
        "setting": {"images": args.images, "per_image": args.per_image, "objects": n, "clip": args.clip,
                    "batch": args.batch, "chunk_objects": args.chunk, "threads_per_process": 1, "workers": 0},
        "runs": runs,
        "objects_per_s_median": {k: round(v, 2) for k, v in med.items()},
        "two_vs_one": round(med["two"] / med["one"], 3),
        "one_vs_bare": round(med["one"] / med["bare"], 3),
        "goals": {"two_vs_one": 1.8, "one_vs_bare": 0.9},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
