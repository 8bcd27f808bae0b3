"""Prediction and tracking on video files, images, webcams, RTSP/RTMP/HTTP streams and `.streams` lists.

Two paths, both built from Ultralytics' own pieces:

* Live sources (cameras: a `.streams` file, rtsp/rtmp/live-http addresses, webcams) run the stage-overlapped
  pipeline (stream_pipeline.py): each camera reads, reconnects and fails on its own (stream_camera.py), the
  engine takes whichever cameras have a fresh frame, outputs are bounded on disk (segments with a size cap;
  stream_outputs.py) and `stream_summary.json` is written to the run folder. The annotated video is opt-in
  (`save=True`), detections go to JSON Lines with `save_jsonl=True`.
* Files, folders and images run through Ultralytics' predictor (`model.predict(stream=True)`) with a bounded live
  figure, and the annotated video saved by the CLI as `yolo predict` does. An http(s) address of a file is
  downloaded into a temporary folder and checked first (stream_sources.py).

Ctrl-C or SIGTERM stop a run at the next frame boundary (a second one stops a file run at once); every processed
frame is in a playable file. Works with `.pt`, `.onnx` and `.engine` models (Ultralytics' AutoBackend).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import types
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ultralytics.data.loaders import LoadImagesAndVideos
from ultralytics.utils import LOGGER

from clipce_rtdetr.deploy import stream_camera
from clipce_rtdetr.deploy.stream_camera import (  # noqa: F401  (re-exported)
    STREAM_BACKOFF,
    STREAM_RETRIES,
    STREAM_TIMEOUT,
    Camera,
)
from clipce_rtdetr.deploy.stream_checks import (  # noqa: F401  (re-exported: the public names of this module)
    check_source_list,
    check_tracker_cfg,
    check_tracking,
    ensure_lap,
)
from clipce_rtdetr.deploy.stream_outputs import RunOutputs, video_codec
from clipce_rtdetr.deploy.stream_pipeline import Pipeline
from clipce_rtdetr.deploy.stream_sources import is_live_http, live_sources, local_copy  # noqa: F401
from clipce_rtdetr.deploy.stream_stats import LiveStats
from clipce_rtdetr.errors import ClipCEError

SUMMARY_FILE = "stream_summary.json"


class StreamLostError(ClipCEError):
    """Every camera of a live run was lost (did not come back within its retry budget)."""


@dataclass
class StreamSettings:
    """The project's keys of a predict/track run (cfg/default.yaml), popped before Ultralytics sees the rest."""

    retries: int = STREAM_RETRIES
    backoff: float = STREAM_BACKOFF
    timeout: float = STREAM_TIMEOUT
    segment: float = 10.0
    max_gb: float = 5.0
    jsonl: bool = False

    @classmethod
    def pop(cls, kwargs: dict[str, Any]) -> StreamSettings:
        keys = {"stream_retries": "retries", "stream_backoff": "backoff", "stream_timeout": "timeout",
                "segment": "segment", "save_max_gb": "max_gb", "save_jsonl": "jsonl"}  # fmt: skip
        given = {field: kwargs.pop(key) for key, field in keys.items() if kwargs.get(key) is not None}
        kwargs.pop("stream", None)  # always streamed: `stream=True` on the command line is accepted and implied
        s = cls(**given)
        s.retries = int(s.retries)
        if s.retries < -1 or s.backoff < 0 or s.timeout <= 0 or s.segment < 0 or s.max_gb < 0:
            raise ClipCEError(
                f"stream_retries={s.retries} (>= 0, or -1: for ever), stream_backoff={s.backoff} (>= 0), "
                f"stream_timeout={s.timeout} (> 0), segment={s.segment} (>= 0), save_max_gb={s.max_gb} (>= 0)."
            )
        return s


# ------------------------------------------------------------------------------------ files: Ultralytics
class StreamPredictorMixin:
    """Mixed over the model's predictor class for file sources: a live figure of bounded size."""

    live: LiveStats | None = None
    live_fps = 0.0
    live_latency_ms = 0.0

    def run_callbacks(self, event: str):
        super().run_callbacks(event)
        if event == "on_predict_start":
            self.live = LiveStats(getattr(self.args, "mode", "predict") or "predict")
        elif event == "on_predict_batch_end" and self.live is not None:
            self._update_live()

    def _update_live(self) -> None:
        results = getattr(self, "results", None) or []
        speed = getattr(results[0], "speed", None) if results else None
        self.live.add(len(results), latency_ms=sum(v for v in speed.values() if v is not None) if speed else None)
        ds = getattr(self, "dataset", None)
        if getattr(ds, "mode", None) == "video" and hasattr(ds, "frames") and getattr(self, "batch", None):
            self.live.videos[str(self.batch[0][0])] = (int(getattr(ds, "frame", 0)), int(ds.frames))
        self.live_fps, self.live_latency_ms = self.live.fps, self.live.latency_ms
        if self.live.due():
            LOGGER.info(self.live.line())


@cache
def stream_predictor_class(base: type) -> type:
    """`StreamPredictorMixin` over `base` (cached: Ultralytics rebuilds the predictor when the class changes)."""
    return types.new_class(f"Stream{base.__name__}", (StreamPredictorMixin, base))


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


def _file_predict(model, source, mode: str, persist: bool, kwargs: dict[str, Any]) -> Iterator:
    keep: list = []  # temporary folders of downloaded sources, removed when the run ends
    local = local_copy(source, keep)
    cls = stream_predictor_class(model._smart_load("predictor"))
    if mode == "track":  # what Model.track does, with our predictor class (Model.track takes no predictor=)
        from ultralytics.trackers import register_tracker

        check_tracking(model, kwargs.get("tracker"))
        register_tracker(model, persist)
        kwargs["conf"] = 0.1 if kwargs.get("conf") is None else kwargs["conf"]
        kwargs["batch"] = kwargs.get("batch") or 1
        kwargs["mode"] = "track"
    gen = model.predict(source=local, stream=True, predictor=cls, **kwargs)
    quiet = _NothingSavedFilter(model)
    LOGGER.addFilter(quiet)
    try:
        yield from gen
    finally:
        gen.close()  # releases the video writers, also on break / exceptions
        LOGGER.removeFilter(quiet)
        for folder in keep:
            folder.cleanup()
    _report_end(model.predictor, source)


def _report_end(predictor, source) -> None:
    """Warnings for videos that ended early; ClipCEError for a file or folder source that gave no frame at all."""
    live = getattr(predictor, "live", None)
    for path, (read, declared) in live.videos.items() if live else []:
        if declared and read < declared:
            LOGGER.warning(
                f"Video {path} ended at frame {read} of {declared}: the rest could not be read "
                "(truncated or corrupt file?)."
            )
    ds = getattr(predictor, "dataset", None)
    if isinstance(ds, LoadImagesAndVideos) and not predictor.seen and not predictor.args.embed:  # embed skips `seen`
        d = getattr(predictor, "save_dir", None)
        if d and Path(d).is_dir() and not any(Path(d).iterdir()):
            Path(d).rmdir()
        files = ds.files
        why = (f"{files[0]} could not be decoded" if len(files) == 1
               else f"none of its {len(files)} images/videos could be decoded (e.g. {files[0]})")  # fmt: skip
        raise ClipCEError(
            f"source={source} gave no frame: {why}; corrupt, truncated, or not really the format its name says. "
            "Nothing was saved. Check that the file opens in an image viewer or video player."
        )


# ------------------------------------------------------------------------------------- live: pipeline
def live_predictor(model, mode: str, kwargs: dict[str, Any]):
    """The model's own predictor, set up as Model.predict sets it up (args, AutoBackend, imgsz from the export's
    metadata and stride, warm-up), without a source: the live pipeline feeds it."""
    custom = {"conf": 0.1 if mode == "track" else 0.25, "batch": 1, "save": False, "mode": mode, "rect": True}
    args = {**model.overrides, **custom, **kwargs}
    predictor = model._smart_load("predictor")(overrides=args, _callbacks=model.callbacks)
    predictor.setup_model(model=model.model, verbose=False)
    predictor.setup_source(np.zeros((32, 32, 3), np.uint8))  # Ultralytics' imgsz checks; the source is replaced
    predictor.model.warmup(imgsz=(1, getattr(predictor.model, "ch", 3), *predictor.imgsz))
    with torch.inference_mode():  # one real pass (CPU models too): the cameras' first frames do not wait for it
        predictor.inference(predictor.preprocess([np.zeros((*predictor.imgsz, 3), np.uint8)]))
    model.predictor = predictor
    return predictor


def _live_predict(model, sources: list[str], mode: str, st: StreamSettings, kwargs: dict[str, Any]) -> Iterator:
    if mode == "track":
        check_tracking(model, kwargs.get("tracker"))
    predictor = live_predictor(model, mode, kwargs)
    notify = threading.Event()
    cameras = [Camera(i, len(sources), s, timeout=st.timeout, retries=st.retries, backoff=st.backoff,
                      max_backoff=stream_camera.STREAM_MAX_BACKOFF, vid_stride=predictor.args.vid_stride,
                      buffer=bool(predictor.args.stream_buffer), notify=notify)
               for i, s in enumerate(sources)]  # fmt: skip
    if predictor.args.save:
        video_codec()  # probed before the cameras start (it takes a moment)
    outputs = RunOutputs(Path(predictor.save_dir), [c.name for c in cameras], bool(predictor.args.save), st.jsonl,
                         st.segment, st.max_gb)  # fmt: skip
    a = predictor.args
    plot = {"line_width": a.line_width, "boxes": a.show_boxes, "conf": a.show_conf, "labels": a.show_labels}
    pipeline = Pipeline(predictor, cameras, outputs, plot)
    predictor.dataset, predictor.pipeline, predictor.live = pipeline.dataset, pipeline, pipeline.live
    if mode == "track":
        from ultralytics.trackers.track import on_predict_start

        on_predict_start(predictor)  # one tracker per camera (reads dataset.bs)
    _log_outputs(predictor, st, len(cameras))
    try:
        for frame, result in pipeline:
            if predictor.args.verbose:  # Ultralytics' line per frame, the camera's number first
                h, w = frame.image.shape[:2]
                LOGGER.info(f"{frame.camera + 1}: {h}x{w} {result.verbose() or '(no detections), '}"
                            f"{pipeline.figures[frame.camera].last_latency:.1f}ms")  # fmt: skip
            yield result
    finally:
        stuck = pipeline.close()
        write_summary(predictor, pipeline, st)
        if stuck:  # a capture stuck in the driver past its timeouts: said, not waited for
            LOGGER.warning(f"{', '.join(stuck)} did not end within its open/read timeout; left to the process exit.")
    errors = [c.error for c in cameras if c.error]
    if len(errors) == len(cameras) and not pipeline.dataset.user_stop:
        where = f" Files so far in {predictor.save_dir}." if outputs.any else ""
        again = ("Run the same command again when the stream is back (raise stream_retries / stream_backoff to "
                 "wait longer, or stream_retries=-1).")  # fmt: skip
        raise StreamLostError(" ".join(errors) + f"{where} {again}")


def _log_outputs(predictor, st: StreamSettings, n: int) -> None:
    a = predictor.args
    seg = f"{st.segment:g}-min segments" if st.segment else "one file per camera"
    cap = f", oldest deleted beyond {st.max_gb:g} GB (save_max_gb)" if st.max_gb else ""
    video = f"annotated video in {seg}{cap}" if a.save else "no annotated video (save=True to record it)"
    jsonl = "detections as JSON Lines" if st.jsonl else "no detections file (save_jsonl=True)"
    LOGGER.info(f"{a.mode}: {n} live source(s), stream_timeout={st.timeout:g} s, stream_retries={st.retries}; "
                f"{video}; {jsonl}; summary in {Path(predictor.save_dir) / SUMMARY_FILE}")  # fmt: skip


def write_summary(predictor, pipeline: Pipeline, st: StreamSettings) -> Path:
    """`stream_summary.json` in the run folder: per camera, engine busy fraction, per-stage times."""
    summary = {"mode": predictor.args.mode, "settings": st.__dict__, **pipeline.summary()}
    folder = Path(predictor.save_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SUMMARY_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    predictor.stream_summary = summary
    return path


# ------------------------------------------------------------------------------------------------ public
def stream_predict(model, source=None, mode: str = "predict", persist: bool = False, **kwargs: Any) -> Iterator:
    """Generator of Ultralytics `Results`: the Python counterpart of `clipce-rtdetr predict/track`.

    `for r in stream_predict(model, "rtsp://...", "track"):`. `model` is a `ClipCERTDETR` or `ClipCEYOLO` (.pt, .onnx
    or .engine). Live sources run the camera pipeline; after it ends, `StreamLostError` is raised when every
    camera was lost (everything before was yielded and written). Project keys (stream_retries, stream_backoff,
    stream_timeout, segment, save_max_gb, save_jsonl) are accepted with Ultralytics' own.
    """
    if mode not in ("predict", "track"):
        raise ClipCEError(f"mode must be 'predict' or 'track', got '{mode}'.")
    kwargs = dict(kwargs)
    st = StreamSettings.pop(kwargs)
    sources = live_sources(source)
    if sources is None:
        yield from _file_predict(model, source, mode, persist, kwargs)
    else:
        yield from _live_predict(model, sources, mode, st, kwargs)


class StopOnSignal:
    """Ctrl-C / SIGTERM (docker stop, systemd) during a run: the first asks it to stop at the next frame boundary
    (live runs: also while cameras open or reconnect), a second stops a file run at once."""

    def __init__(self, model):
        self.model, self.requested = model, False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # signal handlers: main thread only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # sets flags only: no logging, locking or joining in a signal handler
        predictor = getattr(self.model, "predictor", None)
        dataset = getattr(predictor, "dataset", None)
        live_run = getattr(predictor, "pipeline", None) is not None
        if not live_run and (self.requested or dataset is None or getattr(predictor, "live", None) is None):
            raise KeyboardInterrupt
        self.requested = True
        if hasattr(dataset, "request_stop"):
            dataset.request_stop()

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def run_predict(model, mode: str, overrides: dict[str, Any]):
    """`clipce-rtdetr predict|track`: run through the source, log a live figure, save what was asked.

    Files: the annotated video is saved by default, as in `yolo predict`. Live sources: `save=True` records the
    annotated video (segments), `save_jsonl=True` the detections; `stream_summary.json` always. Ctrl-C or SIGTERM
    stop the run cleanly (`StopOnSignal`). Returns the run summary (frames, seconds, fps, latency/lag)."""
    ov = dict(overrides)
    source = ov.pop("source", None)
    if source is None:
        raise ClipCEError(f"'{mode}' needs a source, e.g. source=video.mp4, source=0 (webcam) or source=rtsp://...")
    live = live_sources(source) is not None  # a .streams file is read (and refused) here, before anything is written
    ov.setdefault("save", not live)
    persist = bool(ov.pop("persist", False))
    model.predictor = None  # a predictor of an earlier run must not receive this run's signals
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
            status, lost = "ended: every camera lost", e
        finally:
            gen.close()
        status = "stopped" if stop.requested else status
    summary = _log_summary(model.predictor, mode, status)
    saved = saved_output(model.predictor)
    if saved and live and not summary.get("frames"):
        LOGGER.info(f"No frame was processed; the run summary is in {saved / SUMMARY_FILE}")
    elif saved and (live or ov.get("save")):
        LOGGER.info(f"Results saved to {saved}")
    if lost is not None:
        raise lost
    return summary


def _log_summary(predictor, mode: str, status: str) -> dict[str, float]:
    live = getattr(predictor, "live", None)
    summary = live.summary() if live else {}
    pipeline = getattr(predictor, "pipeline", None)
    if pipeline is not None and summary:
        for c in pipeline.summary()["cameras"]:
            LOGGER.info(f"  camera {c['camera']} ({c['source']}): {c['frames_processed']} frames processed, "
                        f"{c['dropped']} dropped, {c['stalls']} stalls, {c['reconnects']} reconnects, "
                        f"state {c['state']}{', lost' if c['lost'] else ''}")  # fmt: skip
    if summary:
        lag = (f", lag from arrival median {summary['lag_ms_median']:.0f} ms, p95 {summary['lag_ms_p95']:.0f} ms"
               if "lag_ms_median" in summary else "")  # fmt: skip
        LOGGER.info(
            f"{mode} {status}: {summary['frames']} frames in {summary['seconds']:.1f} s, {summary['fps']:.1f} FPS, "
            f"latency median {summary['latency_ms_median']:.1f} ms, p95 {summary['latency_ms_p95']:.1f} ms{lag}"
        )
    return summary
