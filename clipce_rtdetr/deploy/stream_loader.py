"""`ResilientStreams`: Ultralytics' `LoadStreams` with bounded reconnection, arrival times and a clean stop.

* A live source that drops is reopened with bounded retries and exponential backoff. Ultralytics' loader
  reopens once, feeds black frames meanwhile and ends silently when the reopen fails; here no fake frames
  reach the model or the saved video, and a stream that does not come back ends the run (`StreamLostError`).
  A finite source (a file listed in `.streams`) that stops early is reported, not reopened.
* Every frame carries the time it arrived from the camera (`batch_arrivals`), so the live figure can report
  the lag from arrival to result, the number that grows when the model cannot keep up.
* `request_stop()` (Ctrl-C, SIGTERM) ends the iteration at the next frame boundary, also while a stream waits to
  reconnect, so what was processed is exactly what was saved.
* Messages name the address as given (password masked), and when a stream cannot be opened they say whether
  the server answers at all: a wrong path or credentials is not a network problem.
"""

from __future__ import annotations

import math
import os
import socket
import time
import urllib.parse
from pathlib import Path

import cv2
import numpy as np
from ultralytics.data.loaders import LoadStreams
from ultralytics.utils import LOGGER

from clipce_rtdetr.errors import ClipCEError

STREAM_RETRIES = 5  # reconnection attempts before a lost stream ends the run
STREAM_BACKOFF = 1.0  # seconds before the first attempt; doubles each attempt
STREAM_MAX_BACKOFF = 30.0  # cap on one wait
STREAM_TIMEOUT_MS = 10000  # FFmpeg open/read timeout for network streams on reconnection
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "rtmp": 1935, "http": 80, "https": 443, "tcp": None}


class StreamLostError(ClipCEError):
    """A live source dropped and did not come back within the retry budget."""


def _has_ffmpeg() -> bool:
    try:
        return bool(cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG))
    except Exception:
        return False


def display_url(source: str | int) -> str:
    """The source as the user gave it, with the password of a URL masked (it ends up in logs)."""
    s = str(source)
    u = urllib.parse.urlsplit(s)
    if u.password:
        netloc = f"{u.username}:***@{u.hostname}" + (f":{u.port}" if u.port else "")
        return urllib.parse.urlunsplit(u._replace(netloc=netloc))
    return s


def server_answers(source: str | int, timeout: float = 2.0) -> bool | None:
    """Whether the host:port of a network source accepts a TCP connection (None: not a network source)."""
    u = urllib.parse.urlsplit(str(source))
    port = u.port or DEFAULT_PORTS.get(u.scheme.lower())
    if not u.hostname or not port:
        return None
    try:
        socket.create_connection((u.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def open_failure_hint(source: str | int) -> str:
    """What to check when a source cannot be opened, told apart by whether its server answers."""
    answers = server_answers(source)
    if answers is None:
        return "Check the camera index or device (is another program using it?)."
    u = urllib.parse.urlsplit(str(source))
    where = f"{u.hostname}:{u.port or DEFAULT_PORTS.get(u.scheme.lower())}"
    if answers:
        check = "check the path and the credentials in the address (try it in a player: ffplay/vlc)."
        hint = _transport_hint(u.scheme)
        return f"The server at {where} answers, but this stream could not be opened there: {check}{hint}"
    return (f"Nothing answers at {where}: check the address and port, that the camera is on, and the network "
            "between here and there.")  # fmt: skip


def _transport_hint(scheme: str) -> str:
    """OpenCV asks RTSP servers for RTP over TCP when OPENCV_FFMPEG_CAPTURE_OPTIONS is unset or empty (other options
    leave the transport to ffmpeg, which tries UDP); a server or relay that only sends RTP over UDP refuses TCP."""
    options = os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS", "")
    if scheme.lower() != "rtsp" or (options and "rtsp_transport;tcp" not in options):
        return ""
    return (" If the server only sends RTP over UDP (OpenCV asks for TCP), set "
            "OPENCV_FFMPEG_CAPTURE_OPTIONS='rtsp_transport;udp' in the environment.")  # fmt: skip


def _source_list(sources: str) -> list[str]:
    """The sources of a `.streams` file (whitespace-separated, as LoadStreams reads it) or the one source given."""
    if os.path.isfile(sources):
        return Path(sources).read_text(encoding="utf-8-sig", errors="replace").split()
    return [str(sources)]


class ResilientStreams(LoadStreams):
    """`LoadStreams` that reconnects dropped live sources with bounded retries and exponential backoff.

    Attributes added: `errors` {stream index: message} for streams lost for good, `ended_early`
    {index: (frames read, frames expected)} for finite sources that stopped early, `reconnects`
    {index: count} of successful reconnections, `urls` the sources as given, `batch_arrivals` the arrival
    times (time.perf_counter) of the frames last returned.
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
        self.urls = [display_url(s) for s in _source_list(sources)]  # as given (LoadStreams keeps cleaned names)
        self.batch_arrivals: list[float] = []
        self.stop_requested = False
        t0 = time.time()
        for attempt in range(self.retries + 1):  # the first open gets the same retry budget (camera still booting)
            try:
                super().__init__(sources, vid_stride=vid_stride, buffer=buffer, channels=channels)
                break
            except ConnectionError as e:
                if attempt == self.retries:
                    raise StreamLostError(f"{self._masked(e)}. Gave up after {self.retries} retries over "
                                          f"{time.time() - t0:.1f} s. {self._hint(e)}") from None  # fmt: skip
                delay = self._delay(attempt + 1)
                LOGGER.warning(f"{self._masked(e)}; retrying in {delay:.1f} s (attempt {attempt + 1}/{self.retries})")
                time.sleep(delay)
        self.opened_at = time.perf_counter()  # arrival time of the first frame of each stream (read in __init__)

    def _failed_source(self, e: Exception) -> str | None:
        """The source named in a LoadStreams ConnectionError ('i/n: SOURCE... Failed to ...')."""
        head = str(e).split("... ", 1)[0]
        return head.split(": ", 1)[1] if ": " in head else None

    def _masked(self, e: Exception) -> str:
        src = self._failed_source(e)
        return str(e).replace(src, display_url(src)) if src else str(e)

    def _hint(self, e: Exception) -> str:
        src = self._failed_source(e)
        return open_failure_hint(int(src) if src and src.isnumeric() else src) if src else ""

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

    def name(self, i: int, stream: str | int | None = None) -> str:
        """Stream i as the user wrote it (password masked), for messages."""
        if i < len(self.urls):
            return self.urls[i]
        return display_url(stream if stream is not None else self.sources[i])

    def _wait(self, seconds: float) -> bool:
        """Sleep in small steps; False when the loader was closed meanwhile."""
        end = time.time() + seconds
        while self.running and time.time() < end:
            time.sleep(min(0.05, max(0.0, end - time.time())))
        return self.running

    def _push(self, i: int, im: np.ndarray) -> None:
        if self.cv2_flag == cv2.IMREAD_GRAYSCALE and im.ndim == 3:
            im = cv2.cvtColor(im, cv2.COLOR_BGR2GRAY)[..., None]
        item = (im, time.perf_counter())
        if self.buffer:
            self.imgs[i].append(item)
        else:
            self.imgs[i] = [item]

    def _reconnect(self, i: int, stream: str | int, cap: cv2.VideoCapture):
        """Reopen stream i; return the new capture, or None when it did not come back (reason in self.errors)."""
        name = self.name(i, stream)
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
            f"attempts over {time.time() - t0:.0f} s. {open_failure_hint(stream)}"
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
            if not self.running:  # closed while reading: not a drop
                return
            if not live:  # a file: unreadable from here on, reopening would restart it
                self.ended_early[i] = (n, f)
                LOGGER.warning(f"Stream {i + 1}/{self.bs} ({self.name(i, stream)}) ended early: "
                               f"frame {n} of {f:g} is unreadable.")  # fmt: skip
                return
            cap = self._reconnect(i, stream, cap)
            if cap is None:
                return

    def request_stop(self) -> None:
        """End the iteration at the next frame boundary (safe from a signal handler: sets flags only)."""
        self.stop_requested = True
        self.running = False  # reader threads leave their loop / reconnection wait

    def _take(self, i: int) -> tuple[np.ndarray, float]:
        x = self.imgs[i]
        item = x.pop(0) if self.buffer else x.pop(-1)
        if not self.buffer:
            x.clear()
        return item if isinstance(item, tuple) else (item, self.opened_at)  # LoadStreams' first frame: no time

    def __next__(self) -> tuple[list[str], list[np.ndarray], list[str]]:
        """As `LoadStreams.__next__`, but waits quietly while a stream reconnects (the reconnect logs its own lines)
        and ends at once on `request_stop()`."""
        self.count += 1
        images, arrivals = [], []
        for i in range(self.bs):
            while not self.imgs[i] or self.stop_requested:
                if self.stop_requested or not self.threads[i].is_alive():
                    self.close()
                    raise StopIteration
                time.sleep(0.005)
            im, t = self._take(i)
            images.append(im)
            arrivals.append(t)
        self.batch_arrivals = arrivals
        return self.sources, images, [""] * self.bs
