"""Does the stage-overlapped live pipeline keep the inference engine busy? Pipeline vs the bare engine, one run.

The accelerator's stand-in is ONNX Runtime limited to one intra-op thread (and one inter-op thread): on a 2-core
machine it takes one core, as an engine on a Jetson takes the GPU, and the other core runs every other stage
(reading and decoding, preprocessing, postprocessing, tracking, drawing, encoding, JSON Lines). Side by side,
alternating so that both see the same machine load:

* bare: the one-thread engine alone, `InferenceSession.run` on ready input tensors, round and round: the rate the
  engine can reach;
* pipeline: `stream_predict` (predict, then track with ByteTrack) reading the test suite's RTSP server on
  127.0.0.1 (tests/stream_server.py), a 640x384 stream faster than the engine, with the annotated video and the JSON
  Lines written, the engine being the same one-thread ONNX Runtime session type (Ultralytics' AutoBackend).

Reported, from the pipeline's own stage clocks after a warm-up: the engine's busy fraction (time inside inference /
wall time; goal >= 0.90 predict, >= 0.85 track), the frame rate as a fraction of the bare engine's (goal >= 0.90 /
0.85), ms per frame of every stage, dropped frames, lag p50/p95, and the RTSP server's CPU share on the same cores.

    python benchmarks/stream_throughput.py            # ~2 min
    python benchmarks/stream_throughput.py --quick    # short runs, a smoke test (results not written)

Writes benchmarks/results/stream_throughput.json and .md (or --out DIR) with the machine and its load average.
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
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "benchmarks")]
from latency import setup_env  # noqa: E402
from stream_server import RtspServer, make_clip, missing_servers  # noqa: E402

MODEL = REPO / "weights" / "rtdetr-tiny-shapes.pt"
IMGSZ = 320
SIZE = (640, 384)  # frame size of the served clip
STREAM_FPS = 120  # faster than the one-thread engine here
GOALS = {"predict": (0.90, 0.90), "track": (0.85, 0.85)}  # (engine busy, ratio to bare)


def one_thread_ort() -> None:
    """Every ONNX Runtime session of this process (Ultralytics' AutoBackend's too) on one intra-op thread."""
    import onnxruntime as ort

    real = ort.InferenceSession
    if getattr(real, "one_thread", False):
        return

    def session(path, sess_options=None, *args, **kwargs):
        options = sess_options or ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        return real(path, options, *args, **kwargs)

    session.one_thread = True
    ort.InferenceSession = session


def tiny_onnx(work: Path, imgsz: int) -> Path:
    """The tiny committed model exported to ONNX at imgsz, in work/."""
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    shutil.copy(MODEL, work / "tiny.pt")
    return Path(ClipCERTDETR(str(work / "tiny.pt")).export(format="onnx", imgsz=imgsz, export_check=False))


def machine(load_before: tuple[float, float, float]) -> dict:
    from ultralytics import __version__ as ultra_version

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "ultralytics": ultra_version,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "note": "shared machine: other work ran on the same cores (see load averages)"}  # fmt: skip


def bare(onnx: Path, seconds: float) -> dict:
    """The one-thread engine alone on a ready input, round and round: its frame rate."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    assert session.get_session_options().intra_op_num_threads == 1
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).random((1, 3, IMGSZ, IMGSZ), np.float32)}
    session.run(None, feed)
    n, t0, cpu0 = 0, time.perf_counter(), time.thread_time()
    while time.perf_counter() - t0 < seconds:
        session.run(None, feed)
        n += 1
    wall, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
    return {"frames": n, "seconds": round(wall, 2), "fps": round(n / wall, 2), "ms_per_frame": round(1e3 * wall / n, 2),
            "cpu_ms_per_frame": round(1e3 * cpu / n, 2), "cpu_fraction": round(cpu / wall, 3)}  # fmt: skip


def pipeline(onnx: Path, url: str, mode: str, seconds: float, out: Path, server_pid: int, warmup: float = 4.0) -> dict:
    """stream_predict on the RTSP url: after `warmup` s the stage clocks restart; figures over the next `seconds`."""
    from clipce_rtdetr.deploy.stream import stream_predict
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    model = ClipCERTDETR(str(onnx))
    tracker = "bytetrack.yaml" if mode == "track" else None
    gen = stream_predict(model, url, mode=mode, imgsz=IMGSZ, save=True, save_jsonl=True, verbose=False,
                         project=str(out), name=mode, tracker=tracker)  # fmt: skip
    t0, start = time.perf_counter(), None
    try:
        for _ in gen:
            now = time.perf_counter()
            p = model.predictor.pipeline
            if start is None and now - t0 >= warmup:
                for clock in p.clocks.values():
                    clock.restart()
                start = (now, p.live.frames, p.cameras[0].dropped, process_cpu(server_pid))
            elif start is not None and now - start[0] >= seconds:
                break
        frames, dropped = p.live.frames - start[1], p.cameras[0].dropped - start[2]
        wall = time.perf_counter() - start[0]
        server_cpu = (process_cpu(server_pid) - start[3]) / wall * 100
        stages = {k: c.figures() for k, c in p.clocks.items()}
    finally:
        gen.close()
    cam = model.predictor.stream_summary["cameras"][0]
    return {"frames": frames, "seconds": round(wall, 2), "fps": round(frames / wall, 2), "dropped": dropped,
            "engine_busy": stages["inference"]["busy_fraction"],
            "engine_cpu_fraction": stages["inference"]["cpu_fraction"],
            "engine_cpu_ms_per_frame": round(1e3 * p.clocks["inference"].cpu / max(p.clocks["inference"].items, 1), 2),
            "ms_per_frame": {k: v["ms_per_frame"] for k, v in stages.items()},
            "busy_fraction": {k: v["busy_fraction"] for k, v in stages.items()},
            "lag_ms_p50": cam["lag_ms_p50"], "lag_ms_p95": cam["lag_ms_p95"],
            "server_cpu_percent": round(server_cpu, 1)}  # fmt: skip


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="measured length of each pipeline run")
    ap.add_argument("--quick", action="store_true", help="short runs (smoke test); results not written")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()
    seconds = 6.0 if args.quick else args.seconds
    if (why := missing_servers()) is not None:
        sys.exit(why)
    work = Path(tempfile.mkdtemp(prefix="stream-throughput-"))
    setup_env(work)
    one_thread_ort()
    onnx = tiny_onnx(work, IMGSZ)
    make_clip(work / "fast.mp4", STREAM_FPS * 10, STREAM_FPS, SIZE)
    load_before = os.getloadavg()
    with RtspServer(work, log=work / "rtsp.log") as server:
        url, pid = server.url("fast.mp4"), server.proc.pid
        runs = {"bare": [bare(onnx, seconds / 2)]}
        for mode in ("predict", "track"):
            runs[mode] = pipeline(onnx, url, mode, seconds, work / "runs", pid)
            runs["bare"].append(bare(onnx, seconds / 2))
    bare_fps = float(np.mean([b["fps"] for b in runs["bare"]]))
    result = {
        "machine": machine(load_before),
        "setup": {"model": MODEL.name, "format": "onnx", "engine": "onnxruntime CPU, 1 intra-op + 1 inter-op thread",
                  "imgsz": IMGSZ, "frame_size": SIZE, "stream_fps": STREAM_FPS, "seconds": seconds,
                  "quick": args.quick},
        "bare": runs["bare"], "bare_fps_mean": round(bare_fps, 2),
        **{m: {**runs[m], "ratio_to_bare": round(runs[m]["fps"] / bare_fps, 3)} for m in ("predict", "track")},
    }  # fmt: skip
    write_results(work / "results" if args.quick else args.out, "stream_throughput", result, report(result))
    shutil.rmtree(work, ignore_errors=True)


def write_results(out: Path, name: str, result: dict, text: str) -> None:
    """`<name>.json` (the figures) and `<name>.md` (the report, also printed) under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.md").write_text(text)
    print(text)


def report(r: dict) -> str:
    m, s = r["machine"], r["setup"]
    rows = [f"| {mode} | {r[mode]['engine_busy']:.3f} (>= {GOALS[mode][0]}) | {r[mode]['fps']} | "
            f"{r[mode]['ratio_to_bare']:.3f} (>= {GOALS[mode][1]}) | {r[mode]['dropped']} | "
            f"{r[mode]['lag_ms_p50']} / {r[mode]['lag_ms_p95']} |" for mode in ("predict", "track")]  # fmt: skip
    stages = list(r["predict"]["ms_per_frame"])
    p, t = r["predict"], r["track"]
    stage_rows = [f"| {k} | {p['ms_per_frame'][k]} | {t['ms_per_frame'][k]} | {p['busy_fraction'][k]} | "
                  f"{t['busy_fraction'][k]} |" for k in stages]  # fmt: skip
    return "\n".join([
        "# Stream throughput: the live pipeline vs the bare one-thread engine",
        "",
        f"Tiny model (`{s['model']}`, ONNX, imgsz {s['imgsz']}); engine: {s['engine']}, the accelerator's stand-in. "
        f"A {s['frame_size'][0]}x{s['frame_size'][1]} H.264 stream at {s['stream_fps']} fps from "
        f"tests/stream_server.py's RTSP server on 127.0.0.1, annotated video and JSON Lines written. "
        f"{m['cpus']} CPU cores, {m['note']}: load "
        f"average {m['loadavg_before'][0]} before, {m['loadavg_after'][0]} after (1 min). "
        f"{s['seconds']:g} s measured per run after a warm-up.{' Quick (smoke) run.' if s['quick'] else ''}",
        "",
        f"Bare engine: {r['bare_fps_mean']} FPS (mean of {', '.join(str(b['fps']) for b in r['bare'])}; runs before, "
        "between and after the pipeline runs).",
        "",
        "On a busy machine the engine's thread also waits for a core while inside inference, which counts as busy. "
        "The CPU it actually got is the load-independent check: CPU ms per frame inside inference, bare "
        f"{np.mean([b['cpu_ms_per_frame'] for b in r['bare']]):.1f} (CPU share of the wall time "
        f"{np.mean([b['cpu_fraction'] for b in r['bare']]):.2f}), pipeline predict "
        f"{r['predict']['engine_cpu_ms_per_frame']} ({r['predict']['engine_cpu_fraction']:.2f}), track "
        f"{r['track']['engine_cpu_ms_per_frame']} ({r['track']['engine_cpu_fraction']:.2f}).",
        "",
        "| mode | engine busy (goal) | FPS | ratio to bare (goal) | dropped (newest frame kept) | lag p50 / p95 ms |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "Per stage (ms per frame, and the share of the wall time each stage's thread worked):",
        "",
        "| stage | predict ms | track ms | predict busy | track busy |",
        "|---|---|---|---|---|",
        *stage_rows,
        f"| RTSP server process, % of a core | {p['server_cpu_percent']} | {t['server_cpu_percent']} | | |",
        "",
    ])


if __name__ == "__main__":
    main()
