"""Prediction and tracking on video files, webcams, RTSP/RTMP/HTTP streams and `.streams` lists.

Everything runs through Ultralytics' own predictor (`model.predict(stream=True)` / tracking callbacks),
with these additions hooked in rather than copied:

* `ResilientStreams` (stream_loader.py, a `LoadStreams` subclass): dropped live sources are reopened with
  bounded retries and backoff, no filler frames, a clear `StreamLostError` when a stream does not come back.
* `StreamPredictorMixin` (over the model's own predictor class): installs that loader through `setup_source`,
  reads an http(s) MPEG-TS address as the live stream it is (Ultralytics would try to download it, for ever),
  and keeps a live figure (`LiveStats`): FPS, latency per frame, and the lag from a frame's arrival to its
  result, logged every few seconds.
* `run_predict` (the CLI's predict/track): saves the annotated video by default. Ctrl-C or SIGTERM stop the run
  at the next frame boundary (a second one stops it at once), and the video writers are released on every exit,
  so what was processed is what was written and the file stays playable. "Saved to" is said only when a file
  was written; a file or folder source that gives no frame is an error.
* Checks before the run (stream_checks.py): the tracker YAML and the entries of a .txt/.csv list of sources.

Works with `.pt`, `.onnx` and `.engine` models, since Ultralytics' AutoBackend loads all three.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import types
import urllib.parse
from collections import deque
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from ultralytics.data.loaders import LoadImagesAndVideos
from ultralytics.utils import LOGGER

from clipce_rtdetr.deploy.stream_checks import (  # noqa: F401  (re-exported: the public names of this module)
    check_source_list,
    check_tracker_cfg,
    check_tracking,
    ensure_lap,
)
from clipce_rtdetr.deploy.stream_loader import (  # noqa: F401  (re-exported)
    STREAM_BACKOFF,
    STREAM_RETRIES,
    ResilientStreams,
    StreamLostError,
)
from clipce_rtdetr.errors import ClipCEError

REPORT_EVERY = 2.0  # seconds between live FPS / latency lines
LIVE_HTTP_SUFFIXES = (".ts",)  # http(s) addresses of these are live streams (MPEG-TS), not files to download
_LOADER_LOCK = threading.Lock()


# ------------------------------------------------------------------------------------------- live figure
class LiveStats:
    """Frames per second (wall clock, sliding window), per-frame latency (pre + inference + post) and, for live
    streams, the lag from a frame's arrival from the camera to its result (annotated and written included)."""

    def __init__(self, mode: str, every: float = REPORT_EVERY, window: float = 5.0):
        self.mode, self.every, self.window = mode, every, window
        self.t0 = self.last_report = time.perf_counter()
        self.frames = 0
        self.hist: deque[tuple[float, int]] = deque()
        self.latencies: list[float] = []
        self.lags: list[tuple[float, float]] = []  # (time of the result, ms from the frame's arrival to it)
        self.fps = 0.0
        self.latency_ms = 0.0
        self.videos: dict[str, tuple[int, int]] = {}  # video path -> (frames read, frames declared)

    def update(self, predictor) -> None:
        now = time.perf_counter()
        results = getattr(predictor, "results", None) or []
        self.frames += len(results)
        self.hist.append((now, self.frames))
        while len(self.hist) > 2 and now - self.hist[0][0] > self.window:
            self.hist.popleft()
        t_first, f_first = self.hist[0]
        span = now - t_first if len(self.hist) > 1 else now - self.t0
        self.fps = (self.frames - (f_first if len(self.hist) > 1 else 0)) / span if span > 0 else 0.0
        if results and getattr(results[0], "speed", None):
            sp = results[0].speed
            self.latency_ms = sum(v for v in sp.values() if v is not None)
            self.latencies.append(self.latency_ms)
        arrivals = getattr(getattr(predictor, "dataset", None), "batch_arrivals", None)
        if arrivals:
            self.lags.append((now, (now - min(arrivals)) * 1e3))
        ds = getattr(predictor, "dataset", None)
        if getattr(ds, "mode", None) == "video" and hasattr(ds, "frames"):
            path = predictor.batch[0][0] if getattr(predictor, "batch", None) else ""
            self.videos[str(path)] = (int(getattr(ds, "frame", 0)), int(ds.frames))
        predictor.live_fps, predictor.live_latency_ms = self.fps, self.latency_ms
        if now - self.last_report >= self.every:
            self.last_report = now
            LOGGER.info(self.line(predictor))

    def line(self, predictor=None) -> str:
        s = f"{self.mode}: {self.fps:.1f} FPS | latency {self.latency_ms:.1f} ms/frame"
        res = getattr(predictor, "results", None)
        if res and getattr(res[0], "speed", None):
            sp = res[0].speed
            pre, inference, post = (sp.get(k, 0) for k in ("preprocess", "inference", "postprocess"))
            s += f" (pre {pre:.1f} + inference {inference:.1f} + post {post:.1f})"
        if self.lags:
            s += f" | lag {self.lags[-1][1]:.0f} ms"
        s += f" | {self.frames} frames"
        if self.mode == "track" and res is not None:
            ids = getattr(getattr(res[0], "boxes", None), "id", None) if res else None
            s += f" | {0 if ids is None else len(ids)} tracks"
        return s

    def summary(self) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        lat = np.asarray(self.latencies) if self.latencies else np.zeros(1)
        out = {
            "frames": self.frames,
            "seconds": round(wall, 3),
            "fps": round(self.frames / wall, 2) if wall > 0 else 0.0,
            "latency_ms_median": round(float(np.median(lat)), 2),
            "latency_ms_p95": round(float(np.percentile(lat, 95)), 2),
        }
        if self.lags:
            lag = np.asarray([x for _, x in self.lags])
            out["lag_ms_median"] = round(float(np.median(lag)), 2)
            out["lag_ms_p95"] = round(float(np.percentile(lag, 95)), 2)
        return out


# ---------------------------------------------------------------------------------------------- predictor
class StreamPredictorMixin:
    """Mixed over the model's predictor class: resilient stream loader + live FPS/latency figure."""

    stream_retries = STREAM_RETRIES
    stream_backoff = STREAM_BACKOFF
    live: LiveStats | None = None
    live_fps = 0.0
    live_latency_ms = 0.0

    def _make_streams(self, source, vid_stride=1, buffer=False, channels=3):
        return ResilientStreams(source, vid_stride=vid_stride, buffer=buffer, channels=channels,
                                retries=self.stream_retries, backoff=self.stream_backoff)  # fmt: skip

    def setup_source(self, source, stride=None):
        """Ultralytics' setup_source with `ResilientStreams` in place of `LoadStreams` for live sources, and
        http(s) MPEG-TS addresses read as streams (Ultralytics' check_source would download them: for ever)."""
        from ultralytics.data import build

        loader, check = build.LoadStreams, build.check_source

        def check_source(src):
            if is_live_http(src):
                return src, True, False, False, False, False  # webcam-like: a live stream
            return check(src)

        with _LOADER_LOCK:  # load_inference_source looks both names up in its module at call time
            build.LoadStreams, build.check_source = self._make_streams, check_source
            try:
                return super().setup_source(source, stride)
            finally:
                build.LoadStreams, build.check_source = loader, check

    def run_callbacks(self, event: str):
        super().run_callbacks(event)
        if event == "on_predict_start":
            self.live = LiveStats(getattr(self.args, "mode", "predict") or "predict")
        elif event == "on_predict_batch_end" and self.live is not None:
            self.live.update(self)


def is_live_http(source: Any) -> bool:
    """An http(s) address of a live stream format (MPEG-TS), which Ultralytics would take for a file to download."""
    if not isinstance(source, (str, Path)) or not str(source).lower().startswith(("http://", "https://")):
        return False
    return urllib.parse.urlsplit(str(source)).path.lower().endswith(LIVE_HTTP_SUFFIXES)


@cache
def stream_predictor_class(base: type) -> type:
    """`StreamPredictorMixin` over `base` (cached: Ultralytics rebuilds the predictor when the class changes)."""
    return types.new_class(f"Stream{base.__name__}", (StreamPredictorMixin, base))


def _stream_settings(overrides: dict[str, Any]) -> tuple[dict[str, Any], int, float]:
    """Pop stream_retries / stream_backoff (project keys, when the config defines them) from the overrides."""
    ov = dict(overrides)
    retries = ov.pop("stream_retries", None)
    backoff = ov.pop("stream_backoff", None)
    retries = STREAM_RETRIES if retries is None else int(retries)
    backoff = STREAM_BACKOFF if backoff is None else float(backoff)
    if retries < 0 or backoff < 0:
        raise ClipCEError(f"stream_retries={retries} and stream_backoff={backoff} must be >= 0.")
    return ov, retries, backoff


def saved_output(predictor) -> Path | None:
    """The predictor's save_dir when this run wrote at least one file into it, else None."""
    d = getattr(predictor, "save_dir", None)
    return Path(d) if d and Path(d).is_dir() and any(p.is_file() for p in Path(d).rglob("*")) else None


class _NothingSavedFilter(logging.Filter):
    """Drops Ultralytics' closing "Results saved to ..." line when the run wrote nothing (e.g. an unreadable image)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def filter(self, record: logging.LogRecord) -> bool:
        return not (str(record.msg).startswith("Results saved to") and saved_output(self.model.predictor) is None)


# ------------------------------------------------------------------------------------------------ public
def stream_predict(model, source=None, mode: str = "predict", persist: bool = False, **kwargs: Any) -> Iterator:
    """Generator of Ultralytics `Results` with reconnecting streams and a live FPS figure.

    The Python counterpart of `clipce-rtdetr predict/track`: `for r in stream_predict(model, "rtsp://...", "track"):`.
    `model` is a `ClipCERTDETR` (.pt, .onnx or .engine). After the source ends, a stream that was lost for good
    raises `StreamLostError` (everything before it was yielded and saved). `model.predictor.live_fps` and
    `.live_latency_ms` hold the live figure.
    """
    if mode not in ("predict", "track"):
        raise ClipCEError(f"mode must be 'predict' or 'track', got '{mode}'.")
    kwargs, retries, backoff = _stream_settings(kwargs)
    kwargs.pop("stream", None)  # always streamed: `stream=True` on the command line is accepted and implied
    base = model._smart_load("predictor")
    cls = stream_predictor_class(base)
    if mode == "track":  # what Model.track does, with our predictor class (Model.track takes no predictor=)
        from ultralytics.trackers import register_tracker

        check_tracking(model, kwargs.get("tracker"))
        register_tracker(model, persist)
        kwargs["conf"] = 0.1 if kwargs.get("conf") is None else kwargs["conf"]
        kwargs["batch"] = kwargs.get("batch") or 1
        kwargs["mode"] = "track"
    gen = model.predict(source=source, stream=True, predictor=cls, **kwargs)
    model.predictor.stream_retries, model.predictor.stream_backoff = retries, backoff
    quiet = _NothingSavedFilter(model)
    LOGGER.addFilter(quiet)
    try:
        yield from gen
    finally:
        gen.close()  # releases the video writers and the capture threads, also on break / exceptions
        LOGGER.removeFilter(quiet)
    _report_end(model.predictor, source)


def _report_end(predictor, source) -> None:
    """Warnings for sources that ended early; StreamLostError for a stream that did not come back;
    ClipCEError for a file or folder source that gave no frame at all."""
    ds = getattr(predictor, "dataset", None)
    live = getattr(predictor, "live", None)
    for path, (read, declared) in live.videos.items() if live else []:
        if declared and read < declared:
            LOGGER.warning(
                f"Video {path} ended at frame {read} of {declared}: the rest could not be read "
                "(truncated or corrupt file?)."
            )
    errors = getattr(ds, "errors", None)
    if errors:
        saved = saved_output(predictor)
        where = f" Annotated video so far saved to {saved}." if saved and getattr(predictor.args, "save", False) else ""
        raise StreamLostError(
            " ".join(errors.values()) + f"{where} Run the same command again when the stream is back "
            "(raise stream_retries / stream_backoff to wait longer)."
        )
    if isinstance(ds, LoadImagesAndVideos) and not predictor.seen and not predictor.args.embed:  # embed skips `seen`
        _no_frames(predictor, source, ds.files)


def _no_frames(predictor, source, files: list[str]) -> None:
    """ClipCEError for a file/folder source that gave no frame; removes the empty output folder made for it."""
    d = getattr(predictor, "save_dir", None)
    if d and Path(d).is_dir() and not any(Path(d).iterdir()):
        Path(d).rmdir()
    why = (f"{files[0]} could not be decoded" if len(files) == 1
           else f"none of its {len(files)} images/videos could be decoded (e.g. {files[0]})")  # fmt: skip
    raise ClipCEError(
        f"source={source} gave no frame: {why}; corrupt, truncated, or not really the format its name says. "
        "Nothing was saved. Check that the file opens in an image viewer or video player."
    )


class StopOnSignal:
    """Ctrl-C / SIGTERM (docker stop, systemd) during a run: the first asks it to stop at the next frame boundary
    (the stream loader ends its iteration, also while it waits for a stream to come back), a second stops it at
    once. Before frames flow (model loading, first connection) the first one stops at once."""

    def __init__(self, model):
        self.model, self.requested = model, False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # signal handlers: main thread only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # sets flags only: no logging or joining inside a signal handler
        predictor = getattr(self.model, "predictor", None)
        dataset = getattr(predictor, "dataset", None)
        if self.requested or dataset is None or getattr(predictor, "live", None) is None:
            raise KeyboardInterrupt
        self.requested = True
        if hasattr(dataset, "request_stop"):
            dataset.request_stop()

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def run_predict(model, mode: str, overrides: dict[str, Any]):
    """`clipce-rtdetr predict|track`: stream through the source, log a live FPS/latency figure, save the video.

    `overrides` are validated key=value arguments (source included). Saving is on by default, as in
    `yolo predict`. Ctrl-C or SIGTERM stop the run cleanly (`StopOnSignal`): every processed frame is in the
    saved video, which stays playable. Returns the run summary (frames, seconds, fps, latency and lag median/p95).
    """
    ov = dict(overrides)
    source = ov.pop("source", None)
    if source is None:
        raise ClipCEError(f"'{mode}' needs a source, e.g. source=video.mp4, source=0 (webcam) or source=rtsp://...")
    ov.setdefault("save", True)
    persist = bool(ov.pop("persist", False))
    gen = stream_predict(model, source, mode=mode, persist=persist, **ov)
    status, lost = "done", None
    with StopOnSignal(model) as stop:
        try:
            for _ in gen:
                if stop.requested:
                    break
        except KeyboardInterrupt:
            status = "stopped"
        except StreamLostError as e:
            status, lost = "ended: stream lost", e
        finally:
            gen.close()
        status = "stopped" if stop.requested else status
    summary = _log_summary(model.predictor, mode, status)
    if ov.get("save") and (saved := saved_output(model.predictor)):
        LOGGER.info(f"Annotated output saved to {saved}")
    if lost is not None:
        raise lost
    return summary


def _log_summary(predictor, mode: str, status: str) -> dict[str, float]:
    live = getattr(predictor, "live", None)
    summary = live.summary() if live else {}
    if summary:
        lag = (f", lag from arrival median {summary['lag_ms_median']:.0f} ms, p95 {summary['lag_ms_p95']:.0f} ms"
               if "lag_ms_median" in summary else "")  # fmt: skip
        LOGGER.info(
            f"{mode} {status}: {summary['frames']} frames in {summary['seconds']:.1f} s, {summary['fps']:.1f} FPS, "
            f"latency median {summary['latency_ms_median']:.1f} ms, p95 {summary['latency_ms_p95']:.1f} ms{lag}"
        )
    return summary
