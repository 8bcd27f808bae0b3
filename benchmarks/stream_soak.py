"""Soak: a live run against the real RTSP server for >= 10 minutes, resident memory sampled all along.

The issue's goal: resident memory flat, growth <= 5 MB between minute 2 and the end of a run of at least
10 minutes at >= 60 frames/s. Light on purpose (the machine is shared): the tiny committed model exported to ONNX
at a small imgsz, one camera from tests/stream_server.py's RTSP server (a looping H.264 clip, 192x128, faster
than 60 fps), in this process through `stream_predict` with what a service writes: the annotated video in
1-minute segments under a small `save_max_gb` cap (so segments are deleted during the run) and JSON Lines.

    nice python benchmarks/stream_soak.py                  # 12 minutes
    python benchmarks/stream_soak.py --minutes 1 --quick   # smoke test

Writes benchmarks/results/stream_soak.json and .md (or --out DIR) with the RSS series, frames/s, the machine
and its load average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "benchmarks")]
from latency import setup_env  # noqa: E402
from stream_server import RtspServer, make_clip, missing_servers  # noqa: E402
from stream_throughput import machine, tiny_onnx, write_results  # noqa: E402

MODEL = REPO / "weights" / "rtdetr-tiny-shapes.pt"  # as stream_throughput.tiny_onnx exports it
IMGSZ = 64
STREAM_FPS = 120  # faster than 60: the rate processed is what the pipeline manages
SAMPLE_EVERY = 5.0  # seconds between RSS samples


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def sampler(samples: list, stop: threading.Event, t0: float, frames: list[int]) -> None:
    while not stop.wait(SAMPLE_EVERY):
        samples.append((round(time.perf_counter() - t0, 1), round(rss_mb(), 2), frames[0]))


def soak(onnx: Path, url: str, out: Path, minutes: float) -> dict:
    from clipce_rtdetr.deploy.stream import stream_predict
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    model = ClipCERTDETR(str(onnx))
    gen = stream_predict(model, url, imgsz=IMGSZ, save=True, save_jsonl=True, segment=1.0, save_max_gb=0.05,
                         verbose=False, project=str(out), name="soak")  # fmt: skip
    samples: list[tuple[float, float, int]] = []
    frames, stop, t0 = [0], threading.Event(), time.perf_counter()
    thread = threading.Thread(target=sampler, args=(samples, stop, t0, frames), daemon=True)
    thread.start()
    try:
        for _ in gen:
            frames[0] += 1
            if time.perf_counter() - t0 >= minutes * 60:
                break
    finally:
        gen.close()
        stop.set()
        thread.join()
    wall = time.perf_counter() - t0
    summary = model.predictor.stream_summary
    return {"samples": samples, "frames": frames[0], "seconds": round(wall, 1), "summary": summary}


def figures(run: dict, minutes: float) -> dict:
    s = run["samples"]
    at2 = next((x for x in s if x[0] >= 120), s[0] if s else (0, 0, 0))
    end = s[-1] if s else at2
    after2 = [x[1] for x in s if x[0] >= 120]
    rate = (end[2] - at2[2]) / (end[0] - at2[0]) if end[0] > at2[0] else 0.0
    return {"rss_mb_minute_2": at2[1], "rss_mb_end": end[1], "growth_mb": round(end[1] - at2[1], 2),
            "rss_mb_max_after_minute_2": max(after2) if after2 else None,
            "rss_mb_min_after_minute_2": min(after2) if after2 else None,
            "frames_per_s_after_minute_2": round(rate, 1), "frames": run["frames"], "seconds": run["seconds"],
            "goal_growth_mb": 5.0, "goal_fps": 60.0, "minutes_asked": minutes}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=12.0)
    ap.add_argument("--quick", action="store_true", help="smoke test: results not written to benchmarks/results")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()
    if (why := missing_servers()) is not None:
        sys.exit(why)
    work = Path(tempfile.mkdtemp(prefix="stream-soak-"))
    setup_env(work)
    onnx = tiny_onnx(work, IMGSZ)
    make_clip(work / "soak.mp4", STREAM_FPS * 10, STREAM_FPS)
    load_before = os.getloadavg()
    with RtspServer(work, log=work / "rtsp.log") as server:
        run = soak(onnx, server.url("soak.mp4"), work / "runs", args.minutes)
    result = {
        "machine": machine(load_before),
        "setup": {"model": MODEL.name, "format": "onnx", "imgsz": IMGSZ, "stream_fps": STREAM_FPS,
                  "frame_size": [192, 128], "save": True, "save_jsonl": True, "segment_min": 1.0, "save_max_gb": 0.05},
        "figures": figures(run, args.minutes),
        "rss_series": run["samples"],
        "run_summary": run["summary"],
    }  # fmt: skip
    write_results(work / "results" if args.quick else args.out, "stream_soak", result, report(result))
    shutil.rmtree(work, ignore_errors=True)


def report(r: dict) -> str:
    f, m, s = r["figures"], r["machine"], r["setup"]
    ok = f["growth_mb"] <= f["goal_growth_mb"] and f["frames_per_s_after_minute_2"] >= f["goal_fps"]
    return "\n".join([
        "# Stream soak: resident memory of a long live run",
        "",
        f"Tiny model (`{s['model']}`, ONNX, imgsz {s['imgsz']}), one camera from tests/stream_server.py's RTSP "
        f"server on 127.0.0.1 ({s['stream_fps']} fps, {s['frame_size'][0]}x{s['frame_size'][1]} H.264), annotated "
        f"video in {s['segment_min']:g}-min segments capped at {s['save_max_gb']} GB and JSON Lines. "
        f"{m['cpus']} CPU cores, {m['note']}: load average {m['loadavg_before'][0]} before, "
        f"{m['loadavg_after'][0]} after (1 min).",
        "",
        "| figure | value | goal |",
        "|---|---|---|",
        f"| run length | {f['seconds'] / 60:.1f} min | >= 10 min |",
        f"| frames/s after minute 2 | {f['frames_per_s_after_minute_2']} | >= {f['goal_fps']:g} |",
        f"| RSS at minute 2 | {f['rss_mb_minute_2']} MB | |",
        f"| RSS at the end | {f['rss_mb_end']} MB | |",
        f"| growth, minute 2 to end | {f['growth_mb']} MB | <= {f['goal_growth_mb']:g} MB |",
        f"| RSS min / max after minute 2 | {f['rss_mb_min_after_minute_2']} / {f['rss_mb_max_after_minute_2']} MB | |",
        f"| segments deleted by the cap | {r['run_summary'].get('segments_deleted')} | |",
        "",
        f"Goal met: {'yes' if ok else 'no'}. RSS sampled every {SAMPLE_EVERY:g} s (series in stream_soak.json).",
        "",
    ])


if __name__ == "__main__":
    main()
