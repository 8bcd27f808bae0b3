"""Latency benchmark: PyTorch vs ONNX Runtime (and TensorRT when an NVIDIA GPU is present).

Measures the model's forward pass as `clipce-rtdetr predict` runs it (Ultralytics' AutoBackend: fused
PyTorch model / onnxruntime session / TensorRT engine) on a preprocessed batch, per model, image size
and batch: median and p95 latency per batch, and images per second (batch / median). Pre- and
post-processing are the same code for every backend and are left out.

Models have random weights (no downloads): the tiny config and rtdetr-l (Ultralytics' rtdetr-l.yaml).
Latency does not depend on the weights' values. A second part trains the tiny model for one epoch with
CLIP-CE (clipce=fame, the random-weights test CLIP 'clipce-tiny') and with stock RT-DETR (clipce=none)
and shows that both export to the same ONNX graph (node and op counts) with the same latency.

    python benchmarks/latency.py                      # default grid, ~5-10 min on 2 CPU cores
    python benchmarks/latency.py --quick              # tiny model only, a smoke run
    python benchmarks/latency.py --models tiny rtdetr-l --imgsz 320 640 --batch 1 4 --iters 30

Writes benchmarks/results/latency.json and latency.md (or --out DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "cfg" / "models" / "rtdetr-tiny.yaml")
MODELS = {"tiny": TINY, "rtdetr-l": "rtdetr-l.yaml"}
# Default grid: (model, imgsz, batch). rtdetr-l at 640/batch 1 is the deployment reference point.
DEFAULT_GRID = [
    ("tiny", 320, 1),
    ("tiny", 640, 1),
    ("tiny", 640, 4),
    ("rtdetr-l", 320, 1),
    ("rtdetr-l", 640, 1),
    ("rtdetr-l", 640, 2),
]
QUICK_GRID = [("tiny", 320, 1), ("tiny", 640, 1)]
# Cells that also time PyTorch with one thread, as `clipce-rtdetr predict` runs it on CPU (see OneThread).
ONE_THREAD_CELLS = {("rtdetr-l", 640, 1), ("tiny", 640, 1)}


def setup_env(work: Path) -> None:
    """Offline, every Ultralytics folder in a temp dir (as the tests do), before ultralytics is imported."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(work / "ultralytics-config"))
    os.environ.setdefault("CLIPCE_HOME", str(work / "clipce-home"))
    os.environ.setdefault("MPLBACKEND", "Agg")
    from ultralytics.utils import SETTINGS

    import clipce_rtdetr  # noqa: F401  (offline settings)

    SETTINGS.update(
        {"runs_dir": str(work / "runs"), "datasets_dir": str(work / "datasets"), "weights_dir": str(work / "weights")}
    )


def quiet() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("ultralytics").setLevel(logging.ERROR)


def time_interleaved(backends: list, x, iters: int, budget_s: float, warmup: int = 2) -> list[dict[str, float]]:
    """Time several backends on the same input in alternating rounds (A, B, A, B, ...).

    Why interleave: on a shared machine the load changes over a run; alternating gives every backend the
    same conditions, so their ratio is meaningful even when absolute numbers are noisy.
    """
    import numpy as np
    import torch

    times: list[list[float]] = [[] for _ in backends]
    with torch.inference_mode():
        for be in backends:
            for _ in range(warmup):
                be(x)
        t_start = time.perf_counter()
        while len(times[0]) < iters and (len(times[0]) < 5 or time.perf_counter() - t_start < budget_s):
            for be, ts in zip(backends, times):
                t = time.perf_counter()
                be(x)
                if x.device.type == "cuda":
                    torch.cuda.synchronize()
                ts.append((time.perf_counter() - t) * 1e3)
    out = []
    for ts in times:
        t = np.asarray(ts)
        med = float(np.median(t))
        out.append(
            {
                "median_ms": round(med, 2),
                "p95_ms": round(float(np.percentile(t, 95)), 2),
                "fps": round(x.shape[0] * 1e3 / med, 2),
                "iters": len(t),
            }
        )
    return out


def onnx_graph_stats(path: str) -> dict:
    import onnx

    g = onnx.load(path).graph
    ops = Counter(n.op_type for n in g.node)
    return {"nodes": len(g.node), "initializers": len(g.initializer), "ops": dict(sorted(ops.items()))}


def export(pt: Path, fmt: str, imgsz: int, batch: int, **kw) -> str:
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    f = ClipCERTDETR(pt).export(format=fmt, imgsz=imgsz, batch=batch, export_check=False, verbose=False, **kw)
    dst = pt.with_name(f"{pt.stem}-{imgsz}-b{batch}{Path(f).suffix}")
    Path(f).replace(dst)
    return str(dst)


class OneThread:
    """Run a backend with one PyTorch thread: what `clipce-rtdetr predict` gets on CPU, because Ultralytics sets
    OMP_NUM_THREADS=1 at import when it is unset."""

    def __init__(self, backend):
        self.backend = backend

    def __call__(self, x):
        import torch

        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self.backend(x)
        finally:
            torch.set_num_threads(n)


def backends_for(pt: Path, imgsz: int, batch: int, gpu: bool, one_thread: bool = False):
    """(name, device, weights path) for each backend of one grid cell."""
    out = [("pytorch", "cpu", str(pt)), ("onnxruntime", "cpu", export(pt, "onnx", imgsz, batch))]
    if one_thread:
        out.insert(1, ("pytorch-1thread", "cpu", str(pt)))
    if gpu:
        out.insert(1, ("pytorch", "cuda", str(pt)))
        try:
            out.append(("tensorrt-fp16", "cuda", export(pt, "engine", imgsz, batch, quantize=16, device=0)))
        except Exception as e:  # noqa: BLE001  (tensorrt missing: report and go on)
            print(f"  TensorRT skipped: {e}", flush=True)
    return out


def run_grid(grid, work: Path, iters: int, budget_s: float, gpu: bool) -> list[dict]:
    import torch
    from ultralytics.nn.autobackend import AutoBackend

    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    rows, ckpts = [], {}
    for name, imgsz, batch in grid:
        if name not in ckpts:
            ckpts[name] = work / f"{name}.pt"
            ClipCERTDETR(MODELS[name]).save(ckpts[name])
        cells = backends_for(ckpts[name], imgsz, batch, gpu, one_thread=(name, imgsz, batch) in ONE_THREAD_CELLS)
        for device in dict.fromkeys(d for _, d, _ in cells):  # CPU backends together, then GPU backends
            group = [(b, w) for b, d, w in cells if d == device]
            dev = torch.device("cuda:0" if device == "cuda" else "cpu")
            bes = [AutoBackend(w, device=dev, fuse=True, verbose=False) for _, w in group]
            bes = [OneThread(be) if b == "pytorch-1thread" else be for (b, _), be in zip(group, bes)]
            x = torch.rand(batch, 3, imgsz, imgsz, device=dev)
            for (backend, _), r in zip(group, time_interleaved(bes, x, iters, budget_s)):
                rows.append({"model": name, "imgsz": imgsz, "batch": batch, "backend": backend, "device": device, **r})
                print(
                    f"  {name:9s} {imgsz:4d} b{batch} {backend:14s} {device:4s} median {r['median_ms']:9.1f} ms  "
                    f"p95 {r['p95_ms']:9.1f} ms  {r['fps']:7.2f} img/s  ({r['iters']} iters)",
                    flush=True,
                )
            del bes
    return rows


def clipce_vs_stock(work: Path, iters: int, budget_s: float, imgsz: int = 320) -> dict:
    """Train the tiny model 1 epoch with CLIP-CE and stock; compare ONNX graphs and ONNX Runtime latency."""
    import torch
    from ultralytics.nn.autobackend import AutoBackend

    from clipce_rtdetr.data.hazy_shapes import Recipe, generate
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    data = generate(
        work / "hazy-shapes-bench", Recipe(seed=0, n_train=16, n_val=8, size=128, max_objects=3), progress=False
    )
    common = {
        "data": str(data),
        "epochs": 1,
        "imgsz": 64,
        "batch": 8,
        "device": "cpu",
        "workers": 0,
        "plots": False,
        "val": False,
        "seed": 0,
        "deterministic": True,
        "exist_ok": True,
        "project": str(work / "runs"),
        "verbose": False,
    }
    variants = {
        "clipce (fame, clip=clipce-tiny)": {"clipce": "fame", "clip": "clipce-tiny"},
        "stock (clipce=none)": {"clipce": "none"},
    }
    out, onnx_files = {}, {}
    for label, extra in variants.items():
        m = ClipCERTDETR(TINY)
        m.train(name=extra["clipce"], **common, **extra)
        onnx_files[label] = export(Path(m.trainer.last), "onnx", imgsz, 1)
    bes = [AutoBackend(f, device=torch.device("cpu"), verbose=False) for f in onnx_files.values()]
    lats = time_interleaved(bes, torch.rand(1, 3, imgsz, imgsz), iters, budget_s)
    for (label, f), lat in zip(onnx_files.items(), lats):
        stats = onnx_graph_stats(f)
        out[label] = {
            "checkpoint": Path(f).name,
            "imgsz": imgsz,
            **{k: stats[k] for k in ("nodes", "initializers")},
            "ops": stats["ops"],
            "onnxruntime_cpu": lat,
        }
        print(
            f"  {label:32s} nodes {stats['nodes']}  median {lat['median_ms']:.1f} ms  p95 {lat['p95_ms']:.1f} ms",
            flush=True,
        )
    a, b = out.values()
    out["same_graph"] = a["nodes"] == b["nodes"] and a["ops"] == b["ops"] and a["initializers"] == b["initializers"]
    out["latency_ratio"] = round(a["onnxruntime_cpu"]["median_ms"] / b["onnxruntime_cpu"]["median_ms"], 3)
    return out


def machine() -> dict:
    import onnxruntime
    import torch
    import ultralytics

    info = {
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "ultralytics": ultralytics.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        "# Latency benchmark",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), GPU: {m['gpu'] or 'none'}; "
        f"torch {m['torch']}, onnxruntime {m['onnxruntime']}, ultralytics {m['ultralytics']}. {res['date']}.",
        "Random weights (latency does not depend on weight values). Forward pass through Ultralytics' AutoBackend on a "
        "preprocessed batch; latency per batch, img/s = batch / median. Backends of one row group are timed in "
        "alternating "
        f"rounds, so they share the machine's load (1/5/15-min load average at start {m['load_avg_start']}, at end "
        f"{m.get('load_avg_end')}; a load above the core count means other processes competed for the CPU).",
        "",
        "| model | imgsz | batch | backend | device | median ms | p95 ms | img/s | speed-up vs PyTorch (same device) |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    lines.insert(
        5,
        f"PyTorch rows use {m['torch_threads']} threads; `pytorch-1thread` is PyTorch as `clipce-rtdetr predict` runs "
        "it "
        "on CPU (Ultralytics sets OMP_NUM_THREADS=1 at import when it is unset). ONNX Runtime uses all cores.",
    )
    lines.insert(6, "")
    base = {
        (r["model"], r["imgsz"], r["batch"], r["device"]): r["median_ms"]
        for r in res["rows"]
        if r["backend"] == "pytorch"
    }
    for r in res["rows"]:
        ref = base.get((r["model"], r["imgsz"], r["batch"], r["device"])) or base.get(
            (r["model"], r["imgsz"], r["batch"], "cpu")
        )
        sp = f"{ref / r['median_ms']:.2f}x" if ref else ""
        lines.append(
            f"| {r['model']} | {r['imgsz']} | {r['batch']} | {r['backend']} | {r['device']} | "
            f"{r['median_ms']:.1f} | {r['p95_ms']:.1f} | {r['fps']:.2f} | {sp} |"
        )
    eq = res.get("clipce_vs_stock")
    if eq and "error" not in eq:
        (la, a), (lb, b) = [(k, v) for k, v in eq.items() if isinstance(v, dict)]
        lines += [
            "",
            "## CLIP-CE checkpoint vs stock RT-DETR checkpoint (tiny config, 1 epoch each, ONNX at "
            f"{a['imgsz']}, ONNX Runtime CPU, batch 1)",
            "",
            "| checkpoint | ONNX nodes | initializers | distinct ops | median ms | p95 ms |",
            "|---|---:|---:|---:|---:|---:|",
            f"| {la} | {a['nodes']} | {a['initializers']} | {len(a['ops'])} | "
            f"{a['onnxruntime_cpu']['median_ms']:.1f} | {a['onnxruntime_cpu']['p95_ms']:.1f} |",
            f"| {lb} | {b['nodes']} | {b['initializers']} | {len(b['ops'])} | "
            f"{b['onnxruntime_cpu']['median_ms']:.1f} | {b['onnxruntime_cpu']['p95_ms']:.1f} |",
            "",
            f"Same graph (node count, op counts, initializers): **{eq['same_graph']}**; latency ratio CLIP-CE / stock: "
            f"{eq['latency_ratio']:.3f} (1.0 = same; the CLIP-CE loss exists only at training time).",
        ]
    elif eq:
        lines += ["", f"CLIP-CE vs stock comparison not run: {eq['error']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=list(MODELS), help="models (default: the default grid)")
    ap.add_argument("--imgsz", nargs="+", type=int, help="image sizes (with --models)")
    ap.add_argument("--batch", nargs="+", type=int, help="batch sizes (with --models)")
    ap.add_argument("--iters", type=int, default=20, help="timed iterations per cell (at least 5)")
    ap.add_argument("--budget", type=float, default=20.0, help="seconds per cell after 5 iterations")
    ap.add_argument("--quick", action="store_true", help="tiny model only, few iterations")
    ap.add_argument("--torch-threads", type=int, default=0, help="PyTorch CPU threads (default: all cores)")
    ap.add_argument("--no-equivalence", action="store_true", help="skip the CLIP-CE vs stock checkpoint comparison")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="output folder")
    a = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="clipce-latency-"))
    setup_env(work)
    quiet()
    import torch

    if a.models:
        grid = [(m, s, b) for m in a.models for s in (a.imgsz or [320, 640]) for b in (a.batch or [1])]
    else:
        grid = QUICK_GRID if a.quick else DEFAULT_GRID
    iters = 5 if a.quick else a.iters
    # Ultralytics sets OMP_NUM_THREADS=1 at import when unset, which leaves PyTorch on one CPU thread while
    # ONNX Runtime uses every core; give PyTorch the same cores for a fair comparison.
    torch.set_num_threads(a.torch_threads or os.cpu_count() or 1)
    gpu = torch.cuda.is_available()
    t0 = time.time()
    print(f"Grid: {grid}  (GPU: {gpu})", flush=True)
    res = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "rows": run_grid(grid, work, iters, a.budget, gpu)}
    if not a.no_equivalence:
        print("CLIP-CE vs stock checkpoint:", flush=True)
        try:
            res["clipce_vs_stock"] = clipce_vs_stock(work, max(iters, 20), a.budget)
        except Exception as e:  # noqa: BLE001  (the trainer is another module's; report, do not lose the grid)
            res["clipce_vs_stock"] = {"error": f"{type(e).__name__}: {e}"}
            print(f"  failed: {res['clipce_vs_stock']['error']}", flush=True)
    shutil.rmtree(work, ignore_errors=True)  # exported models: hundreds of MB for the full grid
    res["seconds"] = round(time.time() - t0, 1)
    res["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "latency.md").write_text(markdown(res))
    print(f"\n{markdown(res)}\nWritten to {out / 'latency.json'} and {out / 'latency.md'} ({res['seconds']:.0f} s)")
    return res


if __name__ == "__main__":
    main()
    sys.exit(0)
