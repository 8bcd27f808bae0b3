"""What a live run writes, bounded on disk: annotated video in segments and detections as JSON Lines.

Per camera, in the run folder (`project/name`, as Ultralytics names it):

* `<camera>-<k>.mp4` (or .avi): the annotated video (`save=True`), cut every `segment` minutes, each segment
  closed (playable on its own) when the next begins, when its camera is lost and when the run ends. The codec is
  the first the OpenCV build can write: H.264 (avc1), MPEG-4 part 2 (mp4v), else Motion JPEG.
* `<camera>-<k>.jsonl` (`save_jsonl=True`): one line per processed frame, rotated with the video segments:
  `{"camera", "source", "frame", "time", "shape", "detections": Results.summary()}` (boxes in pixels, class,
  confidence, track_id when tracking).
* `save_max_gb`: when the run folder's segments exceed it, the oldest closed segments are deleted first.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache
from glob import escape as glob_escape
from pathlib import Path

import cv2
import numpy as np
from ultralytics.utils import LOGGER

SEGMENT = re.compile(r"\d+-.+-\d{5}\.(mp4|avi|jsonl)")  # <camera>-<name>-<k>.<suffix>
CODECS = ((".mp4", "avc1"), (".mp4", "mp4v"), (".avi", "MJPG"))  # preferred first: compressed where built in
BACKLOG = 64  # annotated frames of one camera that may wait for its first writer to open


@cache
def video_codec() -> tuple[str, str]:
    """(suffix, fourcc) of the first codec of CODECS this OpenCV build writes (probed once on a tiny clip; FFmpeg's
    complaints about encoders it lacks are kept off the console meanwhile)."""
    with tempfile.TemporaryDirectory() as d, _quiet_stderr():
        for suffix, fourcc in CODECS:
            path = Path(d) / f"probe{suffix}"
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (64, 48))
            ok = writer.isOpened()
            if ok:
                for _ in range(2):
                    writer.write(np.zeros((48, 64, 3), np.uint8))
            writer.release()
            if ok and path.is_file() and path.stat().st_size > 0:
                return suffix, fourcc
    return ".avi", "MJPG"


@contextmanager
def _quiet_stderr():
    """File descriptor 2 to /dev/null (FFmpeg writes there directly, not through Python)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def last_segment(folder: Path, stem: str) -> int:
    """The highest segment number of `stem` already in `folder` (-1: none)."""
    ks = [int(m.group(1)) for p in folder.glob(f"{glob_escape(stem)}-*") if (m := re.fullmatch(
        rf"{re.escape(stem)}-(\d{{5}})\.\w+", p.name))] if folder.is_dir() else []  # fmt: skip
    return max(ks, default=-1)


def camera_stem(index: int, source: str) -> str:
    """File name stem of a camera's outputs: its number and the last part of its address or file name."""
    tail = re.split(r"[/\\]", str(source).rstrip("/"))[-1] or "stream"
    tail = Path(tail).stem if "." in tail else tail
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", tail).strip("._") or "stream"
    return f"{index + 1}-{tail if not str(source).isnumeric() else 'webcam' + str(source)}"


class DiskCap:
    """Closed segments of every camera, oldest first; deletes the oldest while the total exceeds the cap."""

    def __init__(self, max_gb: float):
        self.max_bytes = int(max_gb * 1e9) if max_gb and max_gb > 0 else 0
        self.closed: deque[list[Path]] = deque()
        self.deleted = 0
        self._lock = threading.Lock()

    def adopt(self, folder: Path) -> None:
        """The segments already in `folder` (a service restarted into its run folder), oldest first."""
        if not self.max_bytes or not folder.is_dir():
            return
        segments: dict[str, list[Path]] = {}
        for p in folder.iterdir():
            if SEGMENT.fullmatch(p.name):
                segments.setdefault(p.name.rsplit(".", 1)[0], []).append(p)
        for files in sorted(segments.values(), key=lambda fs: (min(p.stat().st_mtime for p in fs), fs[0].name)):
            self.closed.append(files)

    def add(self, files: list[Path]) -> None:
        if not self.max_bytes:
            return
        with self._lock:
            self.closed.append([p for p in files if p.is_file()])
            self._enforce()

    def _enforce(self) -> None:
        size = {id(s): sum(p.stat().st_size for p in s if p.is_file()) for s in self.closed}
        total = sum(size.values())
        if len(self.closed) == 1 and total > self.max_bytes and not self.deleted:
            LOGGER.warning(f"save_max_gb={self.max_bytes / 1e9:g}: one segment is larger than the cap; the newest "
                           "segment is always kept (use a shorter segment= or a larger cap).")  # fmt: skip
        while len(self.closed) > 1 and total > self.max_bytes:  # the newest closed segment is always kept
            oldest = self.closed.popleft()
            total -= size[id(oldest)]
            for p in oldest:
                p.unlink(missing_ok=True)
            self.deleted += 1
            LOGGER.info(f"save_max_gb: deleted the oldest segment ({', '.join(p.name for p in oldest)}) to stay "
                        f"under {self.max_bytes / 1e9:g} GB")  # fmt: skip


class CameraOutputs:
    """The annotated video segments and JSON Lines of one camera.

    OpenCV's FFmpeg backend opens captures and video writers under one process-wide lock, so a writer opened while
    another camera's capture is still opening (up to stream_timeout) would stall the whole pipeline. Writers are
    therefore opened on the run's opener thread, the next segment's ahead of time; meanwhile frames wait in a
    small backlog (a segment due for rotation simply goes on until its successor is ready).
    """

    def __init__(self, folder: Path, stem: str, source: str, video: bool, jsonl: bool, segment_min: float,
                 cap: DiskCap, opener: ThreadPoolExecutor):  # fmt: skip
        self.folder, self.stem, self.source = Path(folder), stem, source
        self.video, self.jsonl, self.cap, self.opener = video, jsonl, cap, opener
        self.segment_s = segment_min * 60 if segment_min and segment_min > 0 else 0.0
        self.k = last_segment(self.folder, stem)  # number of the last segment asked for: a rerun never overwrites
        self.started = 0.0
        self.writer: cv2.VideoWriter | None = None
        self.lines = None
        self.files: list[Path] = []
        self.pending: Future | None = None  # (k, path, writer) being opened
        self.backlog: deque[tuple[dict, np.ndarray | None]] = deque()
        self.frames_written = 0

    def _name(self, k: int, suffix: str) -> Path:
        return self.folder / f"{self.stem}-{k:05d}{suffix}"

    def _ask(self, fps: float, size: tuple[int, int]) -> None:
        """Open the next segment's writer on the opener thread."""
        self.k += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        suffix, fourcc = video_codec()
        k, path = self.k, self._name(self.k, suffix)
        self.pending = self.opener.submit(
            lambda: (k, path, cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size))
        )

    def _begin(self, wall: float, k: int, path: Path | None, writer) -> None:
        """Start segment k (its writer, when there is video, already open)."""
        self.close()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.started, self.writer, self.files = wall, writer, [path] if path else []
        if self.jsonl:
            jpath = self._name(k, ".jsonl")
            self.lines = open(jpath, "w", encoding="utf-8", buffering=1)  # line-buffered: readable as it grows
            self.files.append(jpath)

    def write(self, result, frame, fps: float, plotted: np.ndarray | None) -> None:
        record = {"camera": frame.camera + 1, "source": self.source, "frame": frame.index, "time": round(frame.wall, 3),
                  "shape": list(frame.image.shape[:2]), "detections": result.summary(decimals=2),
                  } if self.jsonl else None  # the line is built only where it is written  # fmt: skip
        fps = fps if 1 <= fps <= 240 else 30.0
        size = (frame.image.shape[1], frame.image.shape[0])
        due = self.segment_s and self.started and frame.wall - self.started >= self.segment_s
        if not self.video:
            if self.lines is None or due:
                self.k += 1
                self._begin(frame.wall, self.k, None, None)
        else:
            if self.pending is None and (self.writer is None or due or self._halfway(frame.wall)):
                self._ask(fps, size)
            if self.pending is not None and self.pending.done() and (self.writer is None or due):
                self._adopt(frame.wall)
            if self.writer is None:  # the first segment still opening: wait in the backlog (bounded)
                self.backlog.append((record, plotted))
                if len(self.backlog) >= BACKLOG:
                    self._adopt(frame.wall)  # waits for the opener
                return
        self._emit(record, plotted)

    def _halfway(self, wall: float) -> bool:
        return bool(self.segment_s) and wall - self.started >= self.segment_s / 2

    def _adopt(self, wall: float) -> None:
        k, path, writer = self.pending.result()
        self.pending = None
        self._begin(wall, k, path, writer)
        while self.backlog:
            self._emit(*self.backlog.popleft())

    def _emit(self, record: dict | None, plotted: np.ndarray | None) -> None:
        if self.writer is not None and plotted is not None:
            self.writer.write(plotted)
        if self.lines is not None:
            self.lines.write(json.dumps(record) + "\n")
        self.frames_written += 1

    def close(self) -> None:
        """Close the current segment (playable from here on) and hand it to the disk cap."""
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        if self.lines is not None:
            self.lines.close()
            self.lines = None
        if self.files:
            self.cap.add(self.files)
            self.files = []

    def finish(self) -> None:
        """End of the camera's outputs (lost, or the run ends): what waits is written, a writer opened ahead and
        unused is removed."""
        if self.backlog and self.pending is not None:
            self._adopt(time.time())
        self.close()
        if self.pending is not None:
            _, path, writer = self.pending.result()
            writer.release()
            path.unlink(missing_ok=True)
            self.pending = None
            self.k -= 1


class RunOutputs:
    """The outputs of every camera of a run, opened lazily at each camera's first written frame."""

    def __init__(self, folder: Path, sources: list[str], video: bool, jsonl: bool, segment_min: float,
                 max_gb: float):  # fmt: skip
        self.cap = DiskCap(max_gb)
        self.cap.adopt(Path(folder))  # segments of an earlier run in this folder (exist_ok=True) count too
        self.opener = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer-open")
        self.cameras = [CameraOutputs(folder, camera_stem(i, s), s, video, jsonl, segment_min, self.cap, self.opener)
                        for i, s in enumerate(sources)]  # fmt: skip
        self.any = video or jsonl
        self.t0 = time.time()

    def write(self, result, frame, fps: float, plotted: np.ndarray | None) -> None:
        if self.any:
            self.cameras[frame.camera].write(result, frame, fps, plotted)

    def close(self, camera: int | None = None) -> None:
        for i, c in enumerate(self.cameras):
            if camera is None or i == camera:
                c.finish()
        if camera is None:
            self.opener.shutdown(wait=True)
