"""Peak resident memory of loading, checking and scoring an embedding cache (issue 22).

    python benchmarks/cache_memory.py [--objects 5000000] [--dim 512] [--compare 500000]

A synthetic cache in the project's format (`torch.save` of {"key", "embeddings" (N, D) fp16, "valid" (N,)}; random
unit vectors) is written to a temporary folder, then a fresh process measures what a training run does with it:
load (`embedding_cache._load_valid`: `torch.load(mmap=True)`), check (`embeddings_problem`, in chunks) and score
(`ame.score_in_chunks`: q, w per object). Its peak resident set (which counts the cache's pages mapped in
from the file; VmHWM) is compared with the goal, 1.2 x the file size + 1 GB.

The scorer's text bank comes from a stand-in text encoder (random unit vectors, D wide: the 'haze' profile's rows),
since memory does not depend on what the prompts say; everything after it is the project's own code.
`--compare N` also runs the code as it was before issue 22 (a plain `torch.load`, `isfinite` over `emb[valid]`, one
`score_embeddings` call over all rows) and the new code on an N-object cache, side by side.
Results: benchmarks/results/cache_memory.*
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import load, machine  # noqa: E402

NAMES = ["car", "person", "bicycle", "bus", "truck"]
KEY = "benchmark"


def write_cache(path: Path, n: int, dim: int, chunk: int = 1 << 18) -> None:
    """The synthetic cache, built through a memory-mapped scratch file (as the real merge does), then saved."""
    import torch

    from clipce_rtdetr.method.cache_build import mapped_matrix

    g = torch.Generator().manual_seed(0)
    scratch = path.with_suffix(".f16")
    emb = mapped_matrix(scratch, n, dim)
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        emb[lo:hi] = torch.nn.functional.normalize(torch.randn(hi - lo, dim, generator=g), dim=1).half()
    valid = torch.rand(n, generator=g) > 0.01
    torch.save({"key": KEY, "embeddings": emb, "valid": valid}, path)
    del emb
    scratch.unlink()


class StandInText:
    """Text side of a CLIP for the scorer: random unit vectors (memory does not depend on the prompts)."""

    logit_scale = 100.0
    fingerprint = "stand-in"

    def __init__(self, dim: int):
        self.dim = dim

    def encode_texts(self, texts):
        import torch

        g = torch.Generator().manual_seed(len(texts))
        return torch.nn.functional.normalize(torch.randn(len(texts), self.dim, generator=g), dim=1)

    def describe(self):
        return "stand-in text encoder"


def status_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process. VmHWM starts afresh at exec, unlike ru_maxrss, which a child
    inherits from the parent that spawned it (here: the one that just wrote a large cache)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0


def measure_main(args) -> None:
    """One fresh process: load + check + score the cache at args.path; prints a JSON line."""
    import torch

    from clipce_rtdetr.method import embedding_cache as ec
    from clipce_rtdetr.method.ame import AMEScorer, score_in_chunks

    torch.set_num_threads(1)
    n = args.n
    scorer = AMEScorer(StandInText(args.dim), NAMES, "haze")
    cls = torch.randint(0, len(NAMES), (n,), generator=torch.Generator().manual_seed(1))
    try:
        Path("/proc/self/clear_refs").write_text("5")  # peak := now: imports' transient peak is not the cache's
    except OSError:
        pass
    base = status_bytes("VmRSS")
    t0 = time.time()
    if args.mode == "new":
        data = ec._load_valid(Path(args.path), KEY, lambda d: ec.embeddings_problem(d, n))
        assert data is not None, "the cache did not load"
        q, w = score_in_chunks(scorer, data["embeddings"], cls, data["valid"], ec.SCORE_CHUNK)
    else:  # before issue 22: a plain load, a full-copy check, one scoring call over all rows
        data = torch.load(args.path, map_location="cpu", weights_only=True)
        assert bool(torch.isfinite(data["embeddings"][data["valid"]]).all())
        q, _, w = scorer.score_embeddings(data["embeddings"], cls, data["valid"])
    seconds = time.time() - t0
    peak = status_bytes("VmHWM")
    print(json.dumps({"mode": args.mode, "objects": n, "peak_rss": peak, "rss_before": base, "seconds": seconds,
                      "mean_w": float(w.mean())}), flush=True)


def run(args, mode: str, path: Path, n: int) -> dict:
    cmd = [sys.executable, __file__, "--measure", mode, "--path", str(path), "--n", str(n), "--dim", str(args.dim)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode:
        return {"mode": mode, "objects": n, "failed": (out.stderr or out.stdout)[-1500:]}
    r = json.loads(out.stdout.strip().splitlines()[-1])
    size = path.stat().st_size
    r.update(file_bytes=size, goal_bytes=int(1.2 * size + 2**30))
    r["meets_goal"] = r["peak_rss"] <= r["goal_bytes"]
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=5_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--compare", type=int, default=500_000, help="objects for the old-vs-new comparison (0: none)")
    ap.add_argument("--dir", default=None, help="where the synthetic caches are written (default: a temp folder)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cache_memory"))
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--path", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        args.mode = args.measure
        return measure_main(args)
    info = machine()
    results = []
    with tempfile.TemporaryDirectory(prefix="cache-memory-bench-", dir=args.dir) as t:
        for n, modes in ((args.compare, ("old", "new")), (args.objects, ("new",))):
            if n <= 0:
                continue
            path = Path(t) / f"train.clipce-{n}.pt"
            t0 = time.time()
            write_cache(path, n, args.dim)
            print(f"wrote {path.stat().st_size / 1e9:.2f} GB ({n} objects) in {time.time() - t0:.0f} s", flush=True)
            for mode in modes:
                results.append(run(args, mode, path, n))
                print(json.dumps(results[-1]), flush=True)
            path.unlink()
    report = {"machine": {**info, "load_at_end": load()}, "dim": args.dim, "results": results,
              "goal": "peak RSS of load + check + score <= 1.2 x file size + 1 GB"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
