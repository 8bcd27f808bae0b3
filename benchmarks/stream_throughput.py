"""Stream pipeline throughput and lag: `stream_predict` reading a real RTSP server vs bare ONNX Runtime inference.

The tiny committed model (weights/rtdetr-tiny-shapes.pt) is exported to ONNX at 320 and run on the CPU two ways,
side by side in one run, alternating so that both see the same machine load:

* pipeline: `clipce_rtdetr.deploy.stream.stream_predict` (predict, and track with ByteTrack) reading
  rtsp://127.0.0.1 from the test suite's RTSP server (tests/stream_server.py), decoding, inferring, annotating and
  writing the annotated video, with the default settings a user gets (latest frame, no buffering);
* bare: `onnxruntime.InferenceSession.run` on the same frames (decoded from the served clip beforehand), with the
  minimal preprocessing the model needs (resize, RGB, 0..1, NCHW).

Part 1, the stream faster than the model (120 fps): ratio pipeline FPS / bare FPS (goal >= 0.9), and where the
gap goes: per frame, the pipeline's pre/inference/post (Ultralytics' own timers), annotating (Results.plot) and
encoding (the video writer), the tracker's update, the decoding done by the reader thread (timed alone on the same
clip), and the CPU the RTSP server process takes on the same two cores (a real camera is another machine).
Part 2, the stream slower than the model (5 fps) for `--seconds`: the lag from a frame's arrival to its result
(annotated and written), p50/p95 over the run and in its first and last 10 s: flat means no growing lag.

    python benchmarks/stream_throughput.py                 # ~4 min on 2 CPU cores
    python benchmarks/stream_throughput.py --quick         # short runs, a smoke test

Writes benchmarks/results/stream_throughput.json and .md (or --out DIR). The machine's load average is recorded:
other work on the same cores moves the absolute figures, the side-by-side ratio much less.
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
SIZE = (640, 384)  # frame size of the served clips
FAST_FPS, SLOW_FPS = 120, 5  # 120 fps: faster than the bare model runs here (~65 FPS on 2 idle cores)


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float) if values else np.zeros(1)
    return {"p50": round(float(np.percentile(a, 50)), 1), "p95": round(float(np.percentile(a, 95)), 1)}


def decode_frames(url: str, n: int) -> list[np.ndarray]:
    """n frames read from the server with OpenCV: the frames the bare runs infer on."""
    import cv2

    cap, frames = cv2.VideoCapture(url), []
    while len(frames) < n:
        ok, im = cap.read()
        if not ok:
            raise RuntimeError(f"could not read {url}")
        frames.append(im)
    cap.release()
    return frames


def decode_ms(clip: Path, n: int = 300) -> float:
    """Decoding alone (what the reader thread does per frame), on the served clip file."""
    import cv2

    cap, t0, k = cv2.VideoCapture(str(clip)), time.perf_counter(), 0
    while k < n and cap.grab() and cap.retrieve()[0]:
        k += 1
    cap.release()
    return (time.perf_counter() - t0) * 1e3 / max(k, 1)


def bare_ort(onnx: Path, frames: list[np.ndarray], seconds: float) -> dict:
    """Bare ONNX Runtime on the frames, round and round for `seconds`: frames per second."""
    import cv2
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])  # as Ultralytics' AutoBackend
    name = session.get_inputs()[0].name
    n, t0, t_run = 0, time.perf_counter(), 0.0
    while time.perf_counter() - t0 < seconds:
        im = cv2.resize(frames[n % len(frames)], (IMGSZ, IMGSZ))[..., ::-1]
        x = np.ascontiguousarray(im.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
        t = time.perf_counter()
        session.run(None, {name: x})
        t_run += time.perf_counter() - t
        n += 1
    wall = time.perf_counter() - t0
    return {
        "frames": n,
        "seconds": round(wall, 2),
        "fps": round(n / wall, 2),
        "inference_ms": round(1e3 * t_run / n, 2),
    }


class StageTimer:
    """Times annotating (Results.plot), encoding (the predictor's save_predicted_images) and, when tracking, the
    tracker's update (Ultralytics runs it in a callback, outside its own postprocess timer) per frame."""

    def __init__(self, predictor):
        self.annotate_ms: list[float] = []
        self.encode_ms: list[float] = []
        self.track_ms: list[float] = []
        write, save, callbacks = predictor.write_results, predictor.save_predicted_images, predictor.run_callbacks

        def timed_callbacks(event: str):
            t = time.perf_counter()
            callbacks(event)
            if event == "on_predict_postprocess_end":
                self.track_ms.append((time.perf_counter() - t) * 1e3)

        def timed_save(*a, **k):
            t = time.perf_counter()
            out = save(*a, **k)
            self.encode_ms.append((time.perf_counter() - t) * 1e3)
            return out

        def timed_write(*a, **k):
            t, n = time.perf_counter(), len(self.encode_ms)
            out = write(*a, **k)
            total = (time.perf_counter() - t) * 1e3
            self.annotate_ms.append(total - sum(self.encode_ms[n:]))  # write_results = plot + save
            return out

        predictor.write_results, predictor.save_predicted_images = timed_write, timed_save
        predictor.run_callbacks = timed_callbacks


def pipeline(onnx: Path, url: str, mode: str, seconds: float, out: Path, server_pid: int, warmup: float = 3.0) -> dict:
    """stream_predict on the RTSP url for `seconds` after `warmup` s: FPS, per-stage ms per frame, lag, and the
    server's CPU use meanwhile (% of one core)."""
    from clipce_rtdetr.deploy.stream import stream_predict
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    model = ClipCERTDETR(str(onnx))
    gen = stream_predict(model, url, mode=mode, imgsz=IMGSZ, save=True, verbose=False, project=str(out), name=mode,
                         tracker="bytetrack.yaml" if mode == "track" else None)  # fmt: skip
    speeds, stages, t_start, n, t0 = [], None, None, 0, time.perf_counter()
    try:
        for r in gen:
            if stages is None:
                stages = StageTimer(model.predictor)
            now = time.perf_counter()
            if t_start is None and now - t0 >= warmup:
                t_start, lag_from, enc_from = now, len(model.predictor.live.lags), len(stages.encode_ms)
                cpu_from, track_from = process_cpu(server_pid), len(stages.track_ms)
            elif t_start is not None:
                n += 1
                speeds.append(r.speed)
                if now - t_start >= seconds:
                    break
        server_cpu = (process_cpu(server_pid) - cpu_from) / (time.perf_counter() - t_start) * 100
    finally:
        gen.close()
    wall = time.perf_counter() - t_start
    lags = model.predictor.live.lags[lag_from:]
    stage_ms = {k: round(float(np.mean([s[k] for s in speeds])), 2) for k in ("preprocess", "inference", "postprocess")}
    stage_ms["annotate"] = round(float(np.mean(stages.annotate_ms[enc_from:])), 2)
    stage_ms["encode"] = round(float(np.mean(stages.encode_ms[enc_from:])), 2)
    stage_ms["tracker update"] = round(float(np.mean(stages.track_ms[track_from:])), 2)  # ~0 when predicting
    return {"frames": n, "seconds": round(wall, 2), "fps": round(n / wall, 2), "ms_per_frame": stage_ms,
            "server_cpu_percent": round(server_cpu, 1),
            "lag_ms": percentiles([x for _, x in lags]), "lag_ms_first_10s": percentiles(window(lags, 0, 10)),
            "lag_ms_last_10s": percentiles(window(lags, -10, None))}  # fmt: skip


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def window(lags: list[tuple[float, float]], start: float, end: float | None) -> list[float]:
    """Lags of the results in [start, end) seconds from the first result (negative start: from the last)."""
    if not lags:
        return []
    t_first, t_last = lags[0][0], lags[-1][0]
    lo = t_last + start if start < 0 else t_first + start
    hi = t_last + 1e-9 if end is None else t_first + end
    return [x for t, x in lags if lo <= t < hi]


def part_fast(work: Path, onnx: Path, server: RtspServer, seconds: float) -> dict:
    url, pid = server.url("fast.mp4"), server.proc.pid
    frames = decode_frames(url, 120)
    bare1 = bare_ort(onnx, frames, seconds / 2)
    predict = pipeline(onnx, url, "predict", seconds, work / "runs", pid)
    bare2 = bare_ort(onnx, frames, seconds / 2)
    track = pipeline(onnx, url, "track", seconds, work / "runs", pid)
    bare3 = bare_ort(onnx, frames, seconds / 2)
    bare_fps = float(np.mean([b["fps"] for b in (bare1, bare2, bare3)]))
    bare_extra = float(np.mean([1e3 / b["fps"] - b["inference_ms"] for b in (bare1, bare2, bare3)]))  # resize etc.
    return {"stream_fps": FAST_FPS, "bare": [bare1, bare2, bare3], "bare_fps_mean": round(bare_fps, 2),
            "predict": predict, "track": track,
            "decode_ms_per_frame": round(decode_ms(work / "fast.mp4"), 2),
            "ratio_predict": round(predict["fps"] / bare_fps, 3), "ratio_track": round(track["fps"] / bare_fps, 3),
            "bare_ms_per_frame": round(1e3 / bare_fps, 2),
            "ratio_same_inference": {m: same_inference_ratio(x, bare_extra) for m, x in (("predict", predict),
                                                                                       ("track", track))}}  # fmt: skip


def same_inference_ratio(run: dict, bare_extra_ms: float) -> float:
    """Pipeline FPS / bare FPS if both spent the pipeline's measured inference time per frame: the share of the
    per-frame time that the stages around inference (pre, post, annotate, encode) cost, load noise taken out."""
    ms = run["ms_per_frame"]
    return round((ms["inference"] + bare_extra_ms) / sum(ms.values()), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the slow-stream (lag) run")
    ap.add_argument("--fast-seconds", type=float, default=20.0, help="length of each fast-stream pipeline run")
    ap.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.fast_seconds = 12.0, 6.0
    if (why := missing_servers()) is not None:
        sys.exit(why)
    work = Path(tempfile.mkdtemp(prefix="stream-throughput-"))
    setup_env(work)
    from ultralytics import __version__ as ultra_version

    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    shutil.copy(MODEL, work / "tiny.pt")
    onnx = Path(ClipCERTDETR(str(work / "tiny.pt")).export(format="onnx", imgsz=IMGSZ, export_check=False))
    make_clip(work / "fast.mp4", FAST_FPS * 10, FAST_FPS, SIZE)
    make_clip(work / "slow.mp4", SLOW_FPS * 20, SLOW_FPS, SIZE)
    load_before = os.getloadavg()
    with RtspServer(work, log=work / "rtsp.log") as server:
        fast = part_fast(work, onnx, server, args.fast_seconds)
        slow = pipeline(onnx, server.url("slow.mp4"), "predict", args.seconds, work / "runs", server.proc.pid)
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "ultralytics": ultra_version,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },  # fmt: skip
        "setup": {"model": MODEL.name, "format": "onnx", "imgsz": IMGSZ, "frame_size": SIZE, "quick": args.quick},
        "fast_stream": fast,
        "slow_stream": {"stream_fps": SLOW_FPS, **slow},
    }
    write_results(result, args.out)
    shutil.rmtree(work, ignore_errors=True)


def write_results(r: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "stream_throughput.json").write_text(json.dumps(r, indent=2) + "\n")
    (out / "stream_throughput.md").write_text(report(r))
    print(report(r))


def report(r: dict) -> str:
    f, s, m = r["fast_stream"], r["slow_stream"], r["machine"]
    runs2 = (f["predict"], f["track"])
    rows = [f"| {k} | " + " | ".join(str(x["ms_per_frame"][k]) for x in runs2) + " |"
            for k in ("preprocess", "inference", "postprocess", "annotate", "encode", "tracker update")]  # fmt: skip
    rows.append("| RTSP server process, % of a core | " + " | ".join(str(x.get("server_cpu_percent", "-"))
                                                               for x in runs2) + " |")  # fmt: skip
    runs = (("slow, predict", s), ("fast, predict", f["predict"]), ("fast, track", f["track"]))
    lag = [f"| {name} | {x['lag_ms']['p50']} / {x['lag_ms']['p95']} | {x['lag_ms_first_10s']['p50']} / "
           f"{x['lag_ms_first_10s']['p95']} | {x['lag_ms_last_10s']['p50']} / {x['lag_ms_last_10s']['p95']} |"
           for name, x in runs]  # fmt: skip
    same = f["ratio_same_inference"]
    return "\n".join(
        [
            "# Stream throughput: pipeline from a real RTSP server vs bare ONNX Runtime",
            "",
            f"Tiny model (`{r['setup']['model']}`, ONNX, imgsz {r['setup']['imgsz']}), CPU, {m['cpus']} cores shared "
            f"with other work: load average {m['loadavg_before'][0]} before, {m['loadavg_after'][0]} after (1 min). "
            f"Frames {r['setup']['frame_size'][0]}x{r['setup']['frame_size'][1]} H.264 from tests/stream_server.py's "
            f"RTSP server on 127.0.0.1, on the same cores.{' Quick (smoke) run.' if r['setup']['quick'] else ''}",
            "",
            f"## Stream faster than the model ({f['stream_fps']} fps)",
            "",
            "| | FPS | ratio to bare |",
            "|---|---|---|",
            f"| bare ONNX Runtime (mean of 3 runs around the pipeline runs: "
            f"{', '.join(str(b['fps']) for b in f['bare'])}) | {f['bare_fps_mean']} | 1 |",
            f"| pipeline, predict | {f['predict']['fps']} | {f['ratio_predict']} |",
            f"| pipeline, track | {f['track']['fps']} | {f['ratio_track']} |",
            "",
            "Same-inference estimate (both at the pipeline's own inference time per frame; the rest as measured): "
            f"predict {same['predict']}, track {same['track']}.",
            "",
            f"Per frame, ms (bare: {f['bare_ms_per_frame']} ms per frame, of which inference "
            f"{np.mean([b['inference_ms'] for b in f['bare']]):.2f} ms; the pipeline's reader "
            f"thread decodes {f['decode_ms_per_frame']} ms per frame, at the stream's rate):",
            "",
            "| stage | predict | track |",
            "|---|---|---|",
            *rows,
            "",
            f"## Lag from a frame's arrival to its result (ms, p50 / p95); slow stream: {s['stream_fps']} fps for "
            f"{s['seconds']:.0f} s, {s['frames']} frames processed",
            "",
            "| run | whole run | first 10 s | last 10 s |",
            "|---|---|---|---|",
            *lag,
            "",
        ]
    )


if __name__ == "__main__":
    main()
