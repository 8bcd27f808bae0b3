"""One-command GPU check (issue 13): what only a GPU can show, in one run, with no downloads.

    python benchmarks/gpu_check.py                 # full check, ~5-8 min on one datacentre GPU
    python benchmarks/gpu_check.py --dry-run       # small sizes (tiny RT-DETR, tiny CLIP, 128 px): a smoke run

Parts (each writes its own section; a part that needs CUDA reports "skipped: no CUDA" on a machine without it):
  machine     GPU, driver, CUDA, versions of torch / Ultralytics / open_clip / TensorRT / ONNX Runtime
  train_step  training time, CLIP-CE (ame_crops=source: the cache; ame_crops=batch: online) vs stock, rtdetr-l at
              640, batch 16, without and with AMP: epoch and paired-iteration ratios (goal <= 1.02). Reuses
              benchmarks/train_overhead.py's lockstep trainer (the trainings alternate iteration by iteration).
  cache       embedding-cache build crops/s vs a bare batched CLIP forward (goal >= 0.9), train_overhead's
              cache_throughput with CLIP on the GPU.
  amp_train   a short AMP training (clipce=fame, ame_crops=batch) on hazy-shapes: every loss finite.
  export      `export format=engine` FP32, FP16 and INT8 (calibrated on hazy-shapes) with the built-in output
              check, and latency rows (TensorRT beside ONNX Runtime and PyTorch; latency.py's interleaved timer).
  stream      stream_predict throughput with the FP16 engine on a generated video.

Weights are random where they do not matter (detector and CLIP for timing; the output check compares an
engine with its own PyTorch model). Writes benchmarks/results/gpu_check.json and .md (or --out DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
NO_CUDA = "skipped: no CUDA"
PARTS = ("machine", "train_step", "cache", "amp_train", "export", "stream")
FULL = SimpleNamespace(model="rtdetr-l.yaml", imgsz=640, batch=16, n_train=96, epochs=3, clip_model="ViT-B-32",
                       cache_batch=256, frames=300, amp_epochs=3)  # fmt: skip
SMALL = SimpleNamespace(model=str(REPO / "cfg" / "models" / "rtdetr-tiny.yaml"), imgsz=128, batch=4, n_train=8,
                        epochs=2, clip_model="clipce-tiny", cache_batch=16, frames=12, amp_epochs=1)  # fmt: skip


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------- parts
def part_machine(ctx) -> dict:
    import open_clip
    import torch
    import ultralytics

    out = {"status": "ran", "python": platform.python_version(), "platform": platform.platform()}
    out.update(torch=torch.__version__, torch_cuda=torch.version.cuda, ultralytics=ultralytics.__version__)
    out.update(open_clip=open_clip.__version__, cuda_available=cuda())
    for mod in ("tensorrt", "onnxruntime"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001  (optional: reported, not needed)
            out[mod] = f"not installed ({type(e).__name__})"
    if cuda():
        p = torch.cuda.get_device_properties(0)
        out.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}")
        out["driver"] = _driver_version()
    return out


def _driver_version() -> str:
    import subprocess

    try:
        q = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        return subprocess.run(q, capture_output=True, text=True, timeout=20).stdout.strip() or "unknown"
    except Exception:  # noqa: BLE001
        return "unknown (no nvidia-smi)"


@contextmanager
def trainings_on(device: str, amp: bool):
    """train_overhead's lockstep trainings on `device` with `amp`: its make_model wrapped so every model.train gets
    them, and on CUDA a synchronize at each batch end, so queued GPU work is not timed in the next training."""
    import torch
    import train_overhead

    made = train_overhead.make_model

    def make(name, args, clip_spec):
        m, extra = made(name, args, clip_spec)
        train = m.train
        m.train = lambda **kw: train(**{**kw, "device": device, "amp": amp})
        if device != "cpu":
            m.add_callback("on_train_batch_end", lambda trainer: torch.cuda.synchronize())
        return m, extra

    train_overhead.make_model = make
    try:
        yield
    finally:
        train_overhead.make_model = made


def part_train_step(ctx) -> dict:
    if not ctx.cuda:
        return {"status": NO_CUDA}
    import train_overhead

    s = ctx.sizes
    rows = []
    for amp in (False, True):
        args = SimpleNamespace(model=s.model, epochs=s.epochs, imgsz=s.imgsz, batch=s.batch, seed=0)
        with trainings_on("0", amp):
            runs, _ = train_overhead.train_lockstep(list(train_overhead.CONFIGS), args, ctx.data, ctx.clip, ctx.work)
        summary = train_overhead.summarise_training(runs)
        for name in ("source", "batch"):
            o = summary[name]
            rows.append({"amp": amp, "config": name, "epoch_ratio": o["epoch_ratio"],
                         "iter_ratio_paired_median": o["iter_ratio_paired_median"],
                         "iter_ratio_paired_gmean_ci95": o["iter_ratio_paired_gmean_ci95"],
                         "stock_iter_s": summary["stock"]["iter_s_median"], "iter_s": o["iter_s_median"],
                         "goal_met": o["iter_ratio_paired_median"] <= 1.02})  # fmt: skip
    return {"status": "ran", "model": Path(s.model).name, "imgsz": s.imgsz, "batch": s.batch, "rows": rows}


def part_cache(ctx) -> dict:
    import train_overhead

    from clipce_rtdetr.clip import loader

    device = "cuda:0" if ctx.cuda else "cpu"
    load = loader.load_clip
    loader.load_clip = lambda spec, **kw: load(spec, device=device)  # CLIP where training puts it
    threads = min(4, os.cpu_count() or 1)
    try:
        out = train_overhead.cache_throughput(ctx.data, ctx.clip, ctx.sizes.cache_batch, 3, threads, 0.10)
    finally:
        loader.load_clip = load
    return {"status": "ran", "device": device, **out, "goal_met": out["cache_build_vs_bare"] >= 0.9}


def part_amp_train(ctx) -> dict:
    if not ctx.cuda:
        return {"status": NO_CUDA}
    import math

    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    s, losses = ctx.sizes, []
    m = ClipCERTDETR(s.model)
    m.add_callback("on_train_batch_end", lambda tr: losses.append([float(v) for v in tr.loss_items.detach().cpu()]))
    m.train(data=ctx.data, epochs=s.amp_epochs, imgsz=s.imgsz, batch=s.batch, device=0, amp=True, workers=2,
            clipce="fame", ame_crops="batch", clip=ctx.clip, val=False, plots=False, project=str(ctx.work / "amp"),
            name="amp", exist_ok=True, verbose=False)  # fmt: skip
    bad = [i for i, ls in enumerate(losses) if not all(math.isfinite(v) for v in ls)]
    ctx.trained = Path(m.trainer.last)
    return {"status": "ran", "batches": len(losses), "nonfinite_batches": len(bad), "first_bad": bad[:5],
            "amp_used": bool(getattr(m.trainer, "amp", False)), "goal_met": bool(losses) and not bad}  # fmt: skip


def part_export(ctx) -> dict:
    if not ctx.cuda:
        return {"status": NO_CUDA}
    import latency
    import torch
    from ultralytics.nn.autobackend import AutoBackend

    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    s = ctx.sizes
    pt = ctx.trained or _random_checkpoint(ctx)
    engines, checks = {}, {}
    for label, kw in (("fp32", {}), ("fp16", {"half": True}), ("int8", {"int8": True, "data": ctx.data})):
        try:
            m = ClipCERTDETR(str(pt))
            f = m.export(format="engine", imgsz=s.imgsz, batch=1, device=0, verbose=False, **kw)
            dst = pt.with_name(f"{pt.stem}-{label}.engine")
            Path(f).replace(dst)
            engines[label] = str(dst)
            checks[label] = getattr(m, "export_report", None)
        except Exception as e:  # noqa: BLE001  (one precision failing must not hide the others)
            checks[label] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    ctx.engine = engines.get("fp16") or engines.get("fp32")
    onnx = latency.export(pt, "onnx", s.imgsz, 1)
    cells = [("pytorch", "cuda", str(pt))] + [(f"tensorrt-{k}", "cuda", v) for k, v in engines.items()]
    cells += [("onnxruntime", "cpu", onnx), ("pytorch", "cpu", str(pt))]
    rows = []
    for device in ("cuda", "cpu"):
        group = [(b, w) for b, d, w in cells if d == device]
        dev = torch.device("cuda:0" if device == "cuda" else "cpu")
        bes = [AutoBackend(w, device=dev, fuse=True, verbose=False) for _, w in group]
        x = torch.rand(1, 3, s.imgsz, s.imgsz, device=dev)
        for (backend, _), r in zip(group, latency.time_interleaved(bes, x, 50, 20.0)):
            rows.append({"backend": backend, "device": device, "imgsz": s.imgsz, "batch": 1, **r})
    return {"status": "ran", "checks": checks, "latency": rows}


def _random_checkpoint(ctx) -> Path:
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    pt = ctx.work / "random.pt"
    ClipCERTDETR(ctx.sizes.model).save(pt)
    return pt


def part_stream(ctx) -> dict:
    """Frames per second of stream_predict on a generated video: the FP16 engine on CUDA; on a machine without
    CUDA the same code path with the PyTorch model, labelled as such (not a GPU figure)."""
    from clipce_rtdetr.deploy.stream import stream_predict
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    s = ctx.sizes
    if ctx.cuda and not ctx.engine:
        return {"status": "skipped: no engine was built (see export)"}
    weights = ctx.engine if ctx.cuda else str(_random_checkpoint(ctx))
    video = make_video(ctx.data, ctx.work / "stream.mp4", s.frames, s.imgsz)
    m = ClipCERTDETR(weights)
    kw = {"device": 0} if ctx.cuda else {"device": "cpu"}
    n, t = 0, time.perf_counter()
    for _ in stream_predict(m, str(video), imgsz=s.imgsz, save=False, verbose=False, **kw):
        n += 1
        t = t if n > 1 else time.perf_counter()  # from the first frame: model load and warm-up left out
    fps = (n - 1) / max(time.perf_counter() - t, 1e-9) if n > 1 else 0.0
    backend = "tensorrt-fp16" if ctx.cuda else "pytorch (cpu, not a GPU figure)"
    return {"status": "ran", "backend": backend, "frames": n, "fps": round(fps, 1), "imgsz": s.imgsz}


def make_video(data_yaml: str, path: Path, frames: int, size: int) -> Path:
    """An mp4 of the dataset's val images (repeated), size x size, 30 fps."""
    import cv2
    import yaml

    d = yaml.safe_load(Path(data_yaml).read_text())
    images = sorted((Path(d["path"]) / d["val"]).glob("*.*"))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, (size, size))
    for i in range(frames):
        writer.write(cv2.resize(cv2.imread(str(images[i % len(images)])), (size, size)))
    writer.release()
    return path


# ---------------------------------------------------------------------------------------------- report
def markdown(res: dict) -> str:
    m = res["parts"].get("machine", {})
    lines = ["# GPU check", "", f"Command: `{res['command']}`; {res['wall_s']:.0f} s.", "",
             f"Machine: {m.get('gpu', 'no CUDA GPU')}, driver {m.get('driver', '-')}, torch {m.get('torch')} "
             f"(CUDA {m.get('torch_cuda')}), Ultralytics {m.get('ultralytics')}, open_clip {m.get('open_clip')}, "
             f"TensorRT {m.get('tensorrt')}, ONNX Runtime {m.get('onnxruntime')}.", ""]  # fmt: skip
    if res["dry_run"]:
        lines += ["**Dry run**: small sizes (tiny RT-DETR, tiny CLIP, 128 px); figures are not the check's.", ""]
    for name in PARTS[1:]:
        p = res["parts"].get(name, {"status": "not run"})
        lines += [f"## {name}", "", f"Status: {p.get('status')}", ""]
        if p.get("status") == "ran":
            lines += _part_lines(name, p)
    return "\n".join(lines) + "\n"


def _part_lines(name: str, p: dict) -> list[str]:
    if name == "train_step":
        out = [f"{p['model']}, {p['imgsz']} px, batch {p['batch']}.", "",
               "| AMP | config | epoch ratio | paired iteration ratio (median) | 95% CI | goal <= 1.02 |",
               "|---|---|---|---|---|---|"]  # fmt: skip
        for r in p["rows"]:
            out.append(f"| {r['amp']} | {r['config']} | {r['epoch_ratio']} | {r['iter_ratio_paired_median']} | "
                       f"{r['iter_ratio_paired_gmean_ci95']} | {'met' if r['goal_met'] else 'NOT met'} |")  # fmt: skip
        return out + [""]
    if name == "cache":
        return [f"{p['crops']} crops on {p['device']}: cache build {p['cache_build_crops_per_s']} crops/s, bare "
                f"CLIP forward {p['bare_forward_crops_per_s']} crops/s: ratio {p['cache_build_vs_bare']} "
                f"(goal >= 0.9: {'met' if p['goal_met'] else 'NOT met'}).", ""]  # fmt: skip
    if name == "amp_train":
        return [
            f"{p['batches']} batches, {p['nonfinite_batches']} with a NaN/inf loss (AMP used: {p['amp_used']}).",
            "",
        ]
    if name == "export":
        out = ["| precision | output check |", "|---|---|"]
        out += [f"| {k} | {json.dumps(v, default=str)[:300]} |" for k, v in p["checks"].items()]
        out += ["", "| backend | device | median ms | p95 ms | img/s |", "|---|---|---|---|---|"]
        out += [
            f"| {r['backend']} | {r['device']} | {r['median_ms']} | {r['p95_ms']} | {r['fps']} |" for r in p["latency"]
        ]
        return out + [""]
    if name == "stream":
        return [f"{p['frames']} frames at {p['imgsz']} px, {p['backend']}: {p['fps']} frames/s.", ""]
    return []


# ---------------------------------------------------------------------------------------------- main
def prepare(ctx) -> None:
    """Offline folders, the hazy-shapes data and the random CLIP weights file."""
    import train_overhead

    train_overhead.setup_env(ctx.work)
    train_overhead.quiet()
    from clipce_rtdetr.clip.loader import make_random_clip
    from clipce_rtdetr.data.hazy_shapes import Recipe, generate

    s = ctx.sizes
    recipe = Recipe(seed=0, n_train=s.n_train, n_val=8, size=max(256, s.imgsz), max_objects=6)
    ctx.data = str(generate(ctx.work / "hazy-shapes", recipe, progress=False))
    ctx.clip = make_random_clip(ctx.work / f"{s.clip_model}-random.pt", s.clip_model)


def run_parts(ctx, parts: list[str]) -> dict:
    out = {}
    for name in parts:
        t = time.perf_counter()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            out[name] = globals()[f"part_{name}"](ctx)
        except Exception as e:  # noqa: BLE001  (a failing part is reported; the others still run)
            out[name] = {"status": f"failed: {type(e).__name__}: {str(e)[:500]}", "traceback": traceback.format_exc()}
        out[name]["seconds"] = round(time.perf_counter() - t, 1)
        print(f"[gpu_check] {name}: {out[name]['status']} ({out[name]['seconds']} s)", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="small sizes: a quick smoke run (CPU parts in ~1 min)")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--cpu", action="store_true", help="act as if no CUDA were present (tests)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="clipce-gpu-check-") as tmp:
        ctx = SimpleNamespace(work=Path(tmp), sizes=SMALL if args.dry_run else FULL, trained=None, engine=None)
        prepare(ctx)
        ctx.cuda = cuda() and not args.cpu
        parts = run_parts(ctx, ["machine"] + [p for p in args.parts if p != "machine"])
    cmd = "python benchmarks/gpu_check.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    res = {"command": cmd, "dry_run": args.dry_run, "cuda": ctx.cuda, "wall_s": round(time.perf_counter() - t0, 1),
           "parts": parts}  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    (out / "gpu_check.md").write_text(markdown(res))
    print(f"[gpu_check] wrote {out / 'gpu_check.json'} and .md ({res['wall_s']:.0f} s)", flush=True)
    return res


if __name__ == "__main__":
    main()
