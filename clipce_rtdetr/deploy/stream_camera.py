"""One camera of a live run: its own reader thread, stall watchdog, reconnection and transport fallback.

Each camera reads, reconnects and fails on its own, so a camera that is down never delays the others:

* Opening has a timeout (`stream_timeout`), the first open as well as reconnections; so has every read, so a
  camera whose RTSP session stays open while its encoder went silent is noticed: no frame for `stream_timeout`
  seconds is reported as "stalled" (distinct from "closed") and the camera is reopened, whatever its socket says.
* A dropped camera is reopened with exponential backoff (`stream_backoff`, doubling, capped at 30 s). After
  `stream_retries` failed attempts it is reported lost, once. With `stream_retries=-1` it keeps being retried
  at the capped interval (a service that never gives up) and says so when it is back.
* RTSP: OpenCV asks the server for RTP over TCP; a server that refuses is tried over UDP before the camera
  counts as failed, and the log names the transport in use.
* Only the reader thread touches its `cv2.VideoCapture` (releasing a capture another thread reads from is
  what crashed the process at Ctrl-C before); `stop()` + `join()` end it within one open/read timeout.
* A live camera keeps only its newest frame (older ones are counted as dropped); a video file listed as a source
  is read to its end and never drops a frame, nor does a camera with `stream_buffer=True` (Ultralytics' meaning).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np
from ultralytics.utils import LOGGER

STREAM_RETRIES = 5  # reconnection attempts before a camera is reported lost
STREAM_BACKOFF = 1.0  # seconds before the first attempt; doubles each attempt
STREAM_MAX_BACKOFF = 30.0  # cap on one wait (also the interval of the endless retries of stream_retries=-1)
STREAM_TIMEOUT = 5.0  # seconds without a frame (or to open) before a camera counts as stalled
BUFFER = 30  # frames read ahead from a video file listed as a source, or with stream_buffer=True (as Ultralytics)
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "rtmp": 1935, "http": 80, "https": 443, "tcp": None}
CAPTURE_OPTIONS = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_OPEN_LOCK = threading.Lock()  # opens that set CAPTURE_OPTIONS (read by OpenCV at open time) take turns


@dataclass
class Frame:
    camera: int  # index of the camera in the run
    index: int  # frames read from this camera before this one (over reconnections)
    arrival: float  # time.perf_counter() when it was read
    wall: float  # time.time() when it was read
    image: np.ndarray
    started: float = 0.0  # time.perf_counter() when the pipeline began preprocessing it


# ------------------------------------------------------------------------------------------- messages
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
        return f"The server at {where} answers, but this stream could not be opened there: {check}"
    return (f"Nothing answers at {where}: check the address and port, that the camera is on, and the network "
            "between here and there.")  # fmt: skip


# -------------------------------------------------------------------------------------------- opening
def user_transport() -> str | None:
    """The RTSP transport the user set in OPENCV_FFMPEG_CAPTURE_OPTIONS, if any."""
    options = os.environ.get(CAPTURE_OPTIONS, "")
    for pair in options.split("|"):
        key, _, value = pair.partition(";")
        if key.strip() == "rtsp_transport":
            return value.strip()
    return None


def transports(source: str | int) -> list[str | None]:
    """The RTSP transports to try in order: TCP (what OpenCV asks for when the options are unset or empty) then UDP;
    None (leave it to OpenCV/ffmpeg) for other sources or when the user's options decide."""
    if not str(source).lower().startswith(("rtsp://", "rtsps://")) or os.environ.get(CAPTURE_OPTIONS):
        return [None]
    return ["tcp", "udp"]


def open_capture(source: str | int, timeout: float, transport: str | None = None) -> cv2.VideoCapture:
    """A capture of `source` whose open and every read time out after `timeout` s (network sources); `transport`
    "udp" asks an RTSP server for RTP over UDP (OpenCV reads it from the environment at open time)."""
    if isinstance(source, int) or "://" not in str(source):
        return cv2.VideoCapture(source)
    ms = int(timeout * 1000)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
    with _OPEN_LOCK:
        previous = os.environ.get(CAPTURE_OPTIONS)
        if transport == "udp":
            os.environ[CAPTURE_OPTIONS] = "rtsp_transport;udp"
        try:
            return cv2.VideoCapture(str(source), cv2.CAP_FFMPEG, params)
        finally:
            if transport == "udp":
                if previous is None:
                    os.environ.pop(CAPTURE_OPTIONS, None)
                else:
                    os.environ[CAPTURE_OPTIONS] = previous


def network_answers(source: str | int, timeout: float) -> bool:
    """Whether an RTSP server answers an OPTIONS request, asked outside OpenCV: OpenCV's FFmpeg backend opens every
    capture and writer under one process-wide lock, so a camera that hangs its open would hold up the others' opens
    and video writers for the whole timeout. Other sources: True (not asked: an http camera or server may take one
    client only, which a probe would use up)."""
    u = urllib.parse.urlsplit(str(source))
    if isinstance(source, int) or u.scheme.lower() != "rtsp" or not u.hostname:
        return True
    try:
        with socket.create_connection((u.hostname, u.port or DEFAULT_PORTS["rtsp"]), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(f"OPTIONS {source} RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: clipce-rtdetr\r\n\r\n".encode())
            return sock.recv(16).startswith(b"RTSP/")
    except OSError:
        return False


def transport_words(source: str | int, transport: str | None) -> str:
    if transport == "tcp":
        return " over TCP"
    if transport == "udp":
        return " over UDP (the server refused TCP)"
    if (t := user_transport()) and str(source).lower().startswith("rtsp"):
        return f" over {t.upper()} ({CAPTURE_OPTIONS})"
    return ""


# --------------------------------------------------------------------------------------------- camera
class Camera:
    """One source of a live run, read by its own thread. `take()` returns its newest unread frame, or None."""

    def __init__(self, index: int, count: int, source: str, timeout: float = STREAM_TIMEOUT,
                 retries: int = STREAM_RETRIES, backoff: float = STREAM_BACKOFF,
                 max_backoff: float = STREAM_MAX_BACKOFF, vid_stride: int = 1, buffer: bool = False,
                 notify: threading.Event | None = None):  # fmt: skip
        self.index, self.count = index, count
        self.source: str | int = int(source) if str(source).isnumeric() else str(source)
        self.name = display_url(source)
        self.timeout, self.retries, self.backoff, self.max_backoff = timeout, retries, backoff, max_backoff
        self.vid_stride = max(1, int(vid_stride))
        self.notify = notify or threading.Event()
        self.finite = not isinstance(self.source, int) and "://" not in str(self.source)  # a video file
        self.state = "opening"  # opening | live | stalled | closed | reconnecting | lost | ended | stopped
        self.transport: str | None = None
        self.error: str | None = None  # why it was lost (set once, when it is reported)
        self.frames = self.dropped = self.stalls = self.reconnects = self.lost_reports = 0
        self.lost = False  # reported lost and not back (yet)
        self.fps = 0.0  # as the source declares it
        self.last_frame = time.perf_counter()
        self.stopping = False  # set by stop(): a plain flag, safe to set from a signal handler
        self.keep_all = self.finite or buffer  # a file, or stream_buffer=True: wait rather than drop
        self._slot: deque[Frame] = deque(maxlen=BUFFER if self.keep_all else 1)
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"camera-{index + 1}", daemon=True)

    @property
    def label(self) -> str:
        return f"Camera {self.index + 1}/{self.count} ({self.name})"

    def start(self) -> Camera:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping = True

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the reader thread (it ends within one open/read timeout of stop()); True when it ended."""
        if self.thread.ident is not None:
            self.thread.join(timeout)
        return not self.thread.is_alive()

    @property
    def done(self) -> bool:
        """No frame will come from it any more (ended, stopped, or lost without endless retries)."""
        return not self.thread.is_alive() and not self._slot

    def take(self) -> Frame | None:
        with self._lock:
            return self._slot.popleft() if self._slot else None

    def waiting_since(self) -> float | None:
        """Arrival time of its oldest unread frame (None: nothing unread)."""
        with self._lock:
            return self._slot[0].arrival if self._slot else None

    # ------------------------------------------------------------------------------------ reader thread
    def _push(self, image: np.ndarray) -> None:
        frame = Frame(self.index, self.frames, time.perf_counter(), time.time(), image)
        while self.keep_all and len(self._slot) >= BUFFER and not self.stopping:  # a file never drops a frame
            time.sleep(0.002)
        with self._lock:
            if not self.keep_all and self._slot:
                self.dropped += 1  # the newer frame replaces one nobody took: the model is slower than the camera
            self._slot.append(frame)
        self.frames += 1
        self.last_frame = frame.arrival
        self.notify.set()

    def _open(self) -> cv2.VideoCapture | None:
        if not network_answers(self.source, self.timeout):
            return None
        order = transports(self.source)
        if self.transport in order:  # the transport that worked before goes first
            order = [self.transport] + [t for t in order if t != self.transport]
        for transport in order:
            if self.stopping:
                return None
            cap = open_capture(self.source, self.timeout, transport)
            if cap.isOpened():
                self.transport = transport
                return cap
            cap.release()
        return None

    def _read(self, cap: cv2.VideoCapture) -> str:
        """Read until the source fails; returns why: stopped | ended | stalled | closed."""
        last, k = time.monotonic(), 0
        while not self.stopping:
            ok, im = cap.grab(), None
            k += 1
            if ok and k % self.vid_stride:
                continue
            if ok:
                ok, im = cap.retrieve()
            now = time.monotonic()
            if ok and im is not None:
                last = now
                self._push(im)
                continue
            if self.stopping:
                break
            if self.finite:
                return "ended"
            return "stalled" if now - last >= 0.8 * self.timeout else "closed"
        return "stopped"

    def _wait(self, seconds: float) -> bool:
        end = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < end:
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        return not self.stopping

    def _delay(self, attempt: int) -> float:
        return min(self.backoff * 2 ** max(attempt - 1, 0), self.max_backoff)

    def _run(self) -> None:
        failures, t_down = 0, time.monotonic()
        while not self.stopping:
            cap = self._open()
            if cap is not None:
                self._opened(cap, failures, t_down)
                before = self.frames
                why = self._read(cap)
                cap.release()  # in this thread, which is the only one that reads it
                if why in ("stopped", "ended"):
                    self._ended(why)
                    return
                self._dropped(why)
                if self.frames > before:  # it delivered: reopen at once, with a fresh retry budget
                    failures, t_down = 0, time.monotonic()
                    continue
            if self.stopping:
                break
            failures += 1
            if not self._failed(failures, t_down):
                return
            if not self.lost:
                self.state = "reconnecting" if self.frames else "opening"
            if not self._wait(self._delay(failures)):
                break
        self.state = "stopped"

    def _opened(self, cap: cv2.VideoCapture, failures: int, t_down: float) -> None:
        was = self.state
        self.state = "live"
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        how = transport_words(self.source, self.transport)
        if was == "opening" and not self.frames:
            size = f"{int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))}x{int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))}"
            n = cap.get(cv2.CAP_PROP_FRAME_COUNT) if self.finite else 0
            what = f"a video file: {int(n)} frames, read to its end" if n > 0 else f"{self.fps:.0f} fps"
            LOGGER.info(f"{self.label}: opened{how} ({size}, {what})")
        elif self.lost:
            self.lost = False
            LOGGER.info(f"{self.label} is back{how} after {time.monotonic() - t_down:.0f} s.")
        else:
            self.reconnects += 1
            LOGGER.info(f"{self.label} reconnected{how} at attempt {failures + 1}, "
                        f"{time.monotonic() - t_down:.1f} s.")  # fmt: skip

    def _ended(self, why: str) -> None:
        self.state = why
        if why == "ended":
            LOGGER.info(f"{self.label} ended: the video file was read to its end ({self.frames} frames).")

    def _dropped(self, why: str) -> None:
        self.state = why
        if why == "stalled":
            self.stalls += 1
            LOGGER.warning(f"{self.label} stalled: no frame for {self.timeout:g} s (stream_timeout) while its "
                           "connection stayed open; reconnecting.")  # fmt: skip
        else:
            LOGGER.warning(f"{self.label} closed: the stream ended or the connection dropped; reconnecting.")

    def _failed(self, failures: int, t_down: float) -> bool:
        """After a failed open: report, and decide whether to go on (False: lost for good)."""
        budget = self.retries if self.retries >= 0 else STREAM_RETRIES
        if failures <= budget:
            LOGGER.warning(f"{self.label}: could not be opened (attempt {failures}/{budget}); "
                           f"next in {self._delay(failures):.1f} s.")  # fmt: skip
            return True
        if not self.lost:
            self.lost = True
            what = "dropped and did not come back after" if self.frames else "could not be opened after"
            self.error = (f"{self.label} {what} {budget} reconnection attempts over "
                          f"{time.monotonic() - t_down:.0f} s. {open_failure_hint(self.source)}")  # fmt: skip
            self.lost_reports += 1
            self.state = "lost"
            endless = self.retries < 0
            more = f" Still retrying every {self.max_backoff:g} s (stream_retries=-1)." if endless else ""
            LOGGER.error(self.error + more)
        return self.retries < 0
