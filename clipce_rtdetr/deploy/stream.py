"""Prediction and tracking on video files, webcams, RTSP/RTMP/HTTP streams and `.streams` lists.

Everything runs through Ultralytics' own predictor (`model.predict(stream=True)` / tracking callbacks),
with three additions hooked in rather than copied:

* `ResilientStreams` (a `LoadStreams` subclass): a live source that drops is reopened with bounded
  retries and exponential backoff. Ultralytics' loader reopens once, feeds black frames meanwhile
  and ends silently when the reopen fails; here no fake frames reach the model or the saved video,
  and a stream that does not come back ends the run with a clear message (`StreamLostError`).
  A finite source (a file listed in `.streams`) that stops early is reported, not reopened.
* `StreamPredictor` (a mixin over the model's own predictor class): installs that loader through
  `setup_source` and keeps a live FPS / latency figure (`LiveStats`), logged every few seconds.
* `run_predict` (the CLI's predict/track): saves the annotated video by default and makes sure the
  video writers are released on every exit (end of stream, lost stream, Ctrl-C, SIGTERM), so what was
  written stays playable. "Saved to" is said only when a file was written; a file or folder source
  that gives no frame is an error.
* Checks before the run whose Ultralytics errors name neither file nor fix: the tracker YAML
  (`check_tracker_cfg`) and the entries of a .txt/.csv list of sources (`check_source_list`).

Works with `.pt`, `.onnx` and `.engine` models, since Ultralytics' AutoBackend loads all three.
"""

from __future__ import annotations

import csv
import glob
import logging
import math
import signal
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from ultralytics.data.loaders import LoadImagesAndVideos, LoadStreams
from ultralytics.utils import LOGGER

from clipce_rtdetr.errors import ClipCEError

STREAM_RETRIES = 5  # reconnection attempts before a lost stream ends the run
STREAM_BACKOFF = 1.0  # seconds before the first attempt; doubles each attempt
STREAM_MAX_BACKOFF = 30.0  # cap on one wait
STREAM_TIMEOUT_MS = 10000  # FFmpeg open/read timeout for network streams on reconnection
REPORT_EVERY = 2.0  # seconds between live FPS / latency lines
_LOADER_LOCK = threading.Lock()


def _has_ffmpeg() -> bool:
    try:
        return bool(cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG))
    except Exception:
        return False


class StreamLostError(ClipCEError):
    """A live source dropped and did not come back within the retry budget."""


# ------------------------------------------------------------------------------------------------ loader
class ResilientStreams(LoadStreams):
    """`LoadStreams` that reconnects dropped live sources with bounded retries and exponential backoff.

    Attributes added: `errors` {stream index: message} for streams lost for good, `ended_early`
    {index: (frames read, frames expected)} for finite sources that stopped early, `reconnects`
    {index: count} of successful reconnections.
    """

    def __init__(
        self,
        sources: str = "file.streams",
        vid_stride: int = 1,
        buffer: bool = False,
        channels: int = 3,
        retries: int = STREAM_RETRIES,
        backoff: float = STREAM_BACKOFF,
        max_backoff: float = STREAM_MAX_BACKOFF,
    ):
        self.retries, self.backoff, self.max_backoff = int(retries), float(backoff), float(max_backoff)
        self.errors: dict[int, str] = {}
        self.ended_early: dict[int, tuple[int, float]] = {}
        self.reconnects: dict[int, int] = {}
        t0 = time.time()
        for attempt in range(self.retries + 1):  # the first open gets the same retry budget (camera still booting)
            try:
                super().__init__(sources, vid_stride=vid_stride, buffer=buffer, channels=channels)
                return
            except ConnectionError as e:
                if attempt == self.retries:
                    raise StreamLostError(
                        f"{e}. Gave up after {self.retries} retries over {time.time() - t0:.0f} s. Check the address, "
                        "credentials and network (try it in a player: ffplay/vlc), or the camera index for a webcam."
                    ) from None
                delay = self._delay(attempt + 1)
                LOGGER.warning(f"{e}; retrying in {delay:.0f} s (attempt {attempt + 1}/{self.retries})")
                time.sleep(delay)

    def _delay(self, attempt: int) -> float:
        return min(self.backoff * 2 ** (attempt - 1), self.max_backoff)

    @staticmethod
    def open_capture(stream: str | int) -> cv2.VideoCapture:
        """Open a source for reconnection; network streams get FFmpeg open/read timeouts so a dead host fails fast."""
        if isinstance(stream, str) and "://" in stream and _has_ffmpeg():
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                STREAM_TIMEOUT_MS,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                STREAM_TIMEOUT_MS,
            ]
            return cv2.VideoCapture(stream, cv2.CAP_FFMPEG, params)
        return cv2.VideoCapture(stream)

    def _wait(self, seconds: float) -> bool:
        """Sleep in small steps; False when the loader was closed meanwhile."""
        end = time.time() + seconds
        while self.running and time.time() < end:
            time.sleep(min(0.05, max(0.0, end - time.time())))
        return self.running

    def _push(self, i: int, im: np.ndarray) -> None:
        if self.cv2_flag == cv2.IMREAD_GRAYSCALE and im.ndim == 3:
            im = cv2.cvtColor(im, cv2.COLOR_BGR2GRAY)[..., None]
        if self.buffer:
            self.imgs[i].append(im)
        else:
            self.imgs[i] = [im]

    def _reconnect(self, i: int, stream: str | int, cap: cv2.VideoCapture):
        """Reopen stream i; return the new capture, or None when it did not come back (reason in self.errors)."""
        name = self.sources[i] if i < len(self.sources) else str(stream)
        t0 = time.time()
        try:
            cap.release()
        except Exception:
            pass
        LOGGER.warning(f"Stream {i + 1}/{self.bs} ({name}) dropped; reconnecting (up to {self.retries} attempts)...")
        for k in range(1, self.retries + 1):
            if not self._wait(self._delay(k)):
                return None
            new = self.open_capture(stream)
            ok, im = new.read() if new is not None and new.isOpened() else (False, None)
            if ok and im is not None:
                self.caps[i] = new
                self.reconnects[i] = self.reconnects.get(i, 0) + 1
                self._push(i, im)
                LOGGER.info(
                    f"Stream {i + 1}/{self.bs} ({name}) reconnected after {k} attempt(s), {time.time() - t0:.1f} s."
                )
                return new
            if new is not None:
                new.release()
            LOGGER.warning(f"Stream {i + 1}/{self.bs} ({name}): reconnection attempt {k}/{self.retries} failed.")
        self.errors[i] = (
            f"Stream {i + 1}/{self.bs} ({name}) dropped and did not come back after {self.retries} reconnection "
            f"attempts over {time.time() - t0:.0f} s"
        )
        LOGGER.error(self.errors[i])
        return None

    def update(self, i: int, cap: cv2.VideoCapture, stream: str | int) -> None:
        """Read frames in a daemon thread (as `LoadStreams.update`), reconnecting a dropped live source."""
        n, f = 0, self.frames[i]
        live = not math.isfinite(f) or isinstance(stream, int)
        while self.running and n < f - 1:
            if len(self.imgs[i]) >= 30:  # keep a <= 30-image buffer
                time.sleep(0.01)
                continue
            n += 1
            ok = cap.grab()
            if ok and n % self.vid_stride:
                continue
            im = None
            if ok:
                ok, im = cap.retrieve()
            if ok and im is not None:
                self._push(i, im)
                continue
            if not live:  # a file: unreadable from here on, reopening would restart it
                self.ended_early[i] = (n, f)
                LOGGER.warning(
                    f"Stream {i + 1}/{self.bs} ({self.sources[i]}) ended early: frame {n} of {f:g} is unreadable."
                )
                return
            cap = self._reconnect(i, stream, cap)
            if cap is None:
                return

    def __next__(self) -> tuple[list[str], list[np.ndarray], list[str]]:
        """As `LoadStreams.__next__`, but waits quietly while a stream reconnects (the reconnect logs its own lines)."""
        self.count += 1
        images = []
        for i in range(self.bs):
            while not self.imgs[i]:
                if not self.threads[i].is_alive():
                    self.close()
                    raise StopIteration
                time.sleep(0.005)
            x = self.imgs[i]
            if self.buffer:
                images.append(x.pop(0))
            else:
                images.append(x.pop(-1) if x else np.zeros(self.shape[i], dtype=np.uint8))
                x.clear()
        return self.sources, images, [""] * self.bs


# ------------------------------------------------------------------------------------------- live figure
class LiveStats:
    """Frames per second (wall clock, sliding window) and per-frame latency (pre + inference + post)."""

    def __init__(self, mode: str, every: float = REPORT_EVERY, window: float = 5.0):
        self.mode, self.every, self.window = mode, every, window
        self.t0 = self.last_report = time.perf_counter()
        self.frames = 0
        self.hist: deque[tuple[float, int]] = deque()
        self.latencies: list[float] = []
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
            s += f" (pre {sp.get('preprocess', 0):.1f} + inference {sp.get('inference', 0):.1f} + post {sp.get('postprocess', 0):.1f})"
        s += f" | {self.frames} frames"
        if self.mode == "track" and res is not None:
            ids = getattr(getattr(res[0], "boxes", None), "id", None) if res else None
            s += f" | {0 if ids is None else len(ids)} tracks"
        return s

    def summary(self) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        lat = np.asarray(self.latencies) if self.latencies else np.zeros(1)
        return {
            "frames": self.frames,
            "seconds": round(wall, 3),
            "fps": round(self.frames / wall, 2) if wall > 0 else 0.0,
            "latency_ms_median": round(float(np.median(lat)), 2),
            "latency_ms_p95": round(float(np.percentile(lat, 95)), 2),
        }


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
        """Ultralytics' setup_source with `ResilientStreams` in place of `LoadStreams` for live sources."""
        from ultralytics.data import build

        with _LOADER_LOCK:  # load_inference_source looks LoadStreams up in its module at call time
            orig, build.LoadStreams = build.LoadStreams, self._make_streams
            try:
                return super().setup_source(source, stride)
            finally:
                build.LoadStreams = orig

    def run_callbacks(self, event: str):
        super().run_callbacks(event)
        if event == "on_predict_start":
            self.live = LiveStats(getattr(self.args, "mode", "predict") or "predict")
        elif event == "on_predict_batch_end" and self.live is not None:
            self.live.update(self)


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


# -------------------------------------------------------------------------------------------------- lap
def ensure_lap() -> None:
    """Make Ultralytics' trackers importable without the optional `lap` package.

    Ultralytics imports `lap` at import time of its matching module and pip-installs it when missing,
    which is disabled here (YOLO_AUTOINSTALL=False). Without it, a small stand-in built on Ultralytics'
    own `linear_sum_assignment` is registered (same result as Ultralytics' use_lap=False path, slower
    on many objects). For speed: pip install 'lap>=0.5.12'.
    """
    try:
        import lap  # noqa: F401

        return
    except ImportError:
        pass
    from ultralytics.utils.ops import linear_sum_assignment

    def lapjv(cost, extend_cost=True, cost_limit=np.inf, return_cost=True):
        cost = np.asarray(cost, dtype=np.float64)
        x = -np.ones(cost.shape[0], dtype=np.int64)
        y = -np.ones(cost.shape[1], dtype=np.int64)
        if cost.size:
            rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols):
                if cost[r, c] <= cost_limit:
                    x[r], y[c] = c, r
        total = float(sum(cost[r, c] for r, c in enumerate(x) if c >= 0))
        return (total, x, y) if return_cost else (x, y)

    mod = types.ModuleType("lap")
    mod.__version__ = "0.0+clipce-fallback"
    mod.lapjv = lapjv
    sys.modules["lap"] = mod
    LOGGER.warning(
        "Package 'lap' not installed: tracking uses a slower built-in assignment. For speed: pip install 'lap>=0.5.12'"
    )


# --------------------------------------------------------------------------------------------- checks
def check_tracker_cfg(tracker: str) -> Path:
    """Resolve and validate a tracker YAML before Ultralytics reads it; return its path.

    Ultralytics fails on a broken file with a bare ValueError, and on a missing key with an AttributeError
    that blames its default.yaml. Here the message names the file (and line), and lists the keys missing
    compared with Ultralytics' bundled config of the same tracker_type, which is the file to start from.
    """
    import yaml
    from ultralytics.trackers.track import TRACKER_MAP
    from ultralytics.utils import ROOT, YAML
    from ultralytics.utils.checks import check_yaml

    bundled_dir = ROOT / "cfg" / "trackers"
    try:
        path = Path(check_yaml(tracker))
    except (FileNotFoundError, AssertionError) as e:
        raise ClipCEError(f"tracker={tracker}: {e}. Use a bundled tracker ({', '.join(sorted(TRACKER_MAP))}, "
                          f"e.g. tracker=bytetrack.yaml) or the path of your own copy of one from {bundled_dir}.") from None  # fmt: skip
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise ClipCEError(f"Tracker config {path}{where}: invalid YAML ({getattr(e, 'problem', None) or e}). "
                          f"Fix that line, or start again from a copy of {bundled_dir / 'bytetrack.yaml'}.") from None  # fmt: skip
    if not isinstance(cfg, dict):
        raise ClipCEError(f"Tracker config {path} is not a list of 'key: value' settings. "
                          f"Start from a copy of a file in {bundled_dir}, e.g. bytetrack.yaml.")  # fmt: skip
    ttype = cfg.get("tracker_type")
    if ttype not in TRACKER_MAP:
        raise ClipCEError(f"Tracker config {path}: tracker_type must be one of {', '.join(sorted(TRACKER_MAP))}, "
                          f"got {ttype!r}. Start from a copy of a file in {bundled_dir}, e.g. bytetrack.yaml.")  # fmt: skip
    bundled = bundled_dir / f"{ttype}.yaml"
    missing = [k for k in YAML.load(bundled) if k not in cfg] if bundled.is_file() else []
    if missing:
        unknown = sorted(set(cfg) - set(YAML.load(bundled)))
        extra = f" (it has keys {ttype} does not use: {', '.join(unknown)}; a typo?)" if unknown else ""
        raise ClipCEError(f"Tracker config {path} lacks {', '.join(missing)}, which tracker_type: {ttype} needs{extra}. "
                          f"Copy Ultralytics' {bundled} as a starting point and change only what you need.")  # fmt: skip
    return path


def check_tracking(model, tracker: str | None = None) -> None:
    """What Ultralytics' tracking reads, checked first: `lap` (or the stand-in) and the tracker YAML in use."""
    from ultralytics.cfg import DEFAULT_CFG

    ensure_lap()
    check_tracker_cfg(tracker or model.overrides.get("tracker") or DEFAULT_CFG.tracker)


def _listed_source_exists(entry: str, list_dir: Path) -> bool:
    """As LoadImagesAndVideos resolves a listed entry: from the current folder, else from the list's folder."""
    for p in (Path(entry).absolute(), (list_dir / entry).absolute()):
        if glob.glob(str(p), recursive=True) if "*" in str(p) else p.exists():
            return True
    return False


def check_source_list(source: Any) -> None:
    """A .txt/.csv source is a list of sources (Ultralytics reads it so without saying); check every entry.

    Ultralytics reports a missing entry as only "<entry> does not exist"; here the list file and line are named.
    """
    if (
        not isinstance(source, (str, Path))
        or Path(source).suffix.lower() not in (".txt", ".csv")
        or not Path(source).is_file()
    ):
        return
    lst = Path(source)
    lines = lst.read_text(encoding="utf-8-sig", errors="replace").splitlines()
    rows = [[x] for x in lines] if lst.suffix.lower() == ".txt" else list(csv.reader(lines))
    start = 2 if lst.suffix.lower() == ".csv" and rows[:1] == [["source"]] else 1  # csv: optional header row
    entries = [(n, e.strip()) for n, row in enumerate(rows[start - 1 :], start) for e in row if e.strip()]
    LOGGER.info(f"source={source} is a list of sources, one per line: {len(entries)} listed.")
    for n, entry in entries:
        if not _listed_source_exists(entry, lst.parent):
            hint = " Streams (rtsp://, http://, webcams) go in a .streams file, one per line." if "://" in entry else ""
            raise ClipCEError(f"{lst}, line {n}: '{entry}' does not exist (looked from {Path.cwd()} and from {lst.parent}). "
                              f"Fix or remove that line.{hint}")  # fmt: skip


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
                f"Video {path} ended at frame {read} of {declared}: the rest could not be read (truncated or corrupt file?)."
            )
    errors = getattr(ds, "errors", None)
    if errors:
        saved = saved_output(predictor)
        where = f" Annotated video so far saved to {saved}." if saved and getattr(predictor.args, "save", False) else ""
        raise StreamLostError(
            "; ".join(errors.values()) + f".{where} Check the camera and network, then run the same command again "
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


def run_predict(model, mode: str, overrides: dict[str, Any]):
    """`clipce-rtdetr predict|track`: stream through the source, log a live FPS/latency figure, save the video.

    `overrides` are validated key=value arguments (source included). Saving is on by default, as in
    `yolo predict`. Ctrl-C or SIGTERM stop the run cleanly (the saved video stays playable).
    Returns the run summary (frames, seconds, fps, latency median/p95).
    """
    ov = dict(overrides)
    source = ov.pop("source", None)
    if source is None:
        raise ClipCEError(f"'{mode}' needs a source, e.g. source=video.mp4, source=0 (webcam) or source=rtsp://...")
    ov.setdefault("save", True)
    persist = bool(ov.pop("persist", False))
    gen = stream_predict(model, source, mode=mode, persist=persist, **ov)

    def _term(signum, frame):  # SIGTERM (docker stop, systemd) -> the same clean stop as Ctrl-C
        raise KeyboardInterrupt

    prev = signal.signal(signal.SIGTERM, _term) if threading.current_thread() is threading.main_thread() else None
    status, lost = "done", None
    try:
        for _ in gen:
            pass
    except KeyboardInterrupt:
        status = "stopped"
    except StreamLostError as e:
        status, lost = "ended: stream lost", e
    finally:
        gen.close()
        if prev is not None:
            signal.signal(signal.SIGTERM, prev)
    pred = model.predictor
    live = getattr(pred, "live", None)
    summary = live.summary() if live else {}
    if summary:
        LOGGER.info(
            f"{mode} {status}: {summary['frames']} frames in {summary['seconds']:.1f} s, {summary['fps']:.1f} FPS, "
            f"latency median {summary['latency_ms_median']:.1f} ms, p95 {summary['latency_ms_p95']:.1f} ms"
        )
    if ov.get("save") and (saved := saved_output(pred)):
        LOGGER.info(f"Annotated output saved to {saved}")
    if lost is not None:
        raise lost
    return summary
