"""Real stream servers on 127.0.0.1 for the stream tests and `benchmarks/stream_throughput.py`.

* `RtspServer`: an RTSP server (aio-rtsp-toolkit's, RTP over TCP interleaved: OpenCV's default transport) that
  serves the .mp4 clips of a folder, looping (`url(name)`) or played once (`url(name, loops=1)`). A separate
  process on a free port, so a test can stop it mid-stream (the client sees the connection go away, as with a
  camera that reboots) and start it again on the same port.
* `HttpTsServer`: ffmpeg (the static binary of the `imageio-ffmpeg` wheel) serving one clip as a live MPEG-TS
  stream over HTTP (`-listen 1`: one client).

Both come with the dev extra (`pip install -e ".[dev]"`); `missing_servers()` says what is not installed, for
the tests to skip with that reason. The clips are H.264 (PyAV's libx264) with the frame number drawn into a
strip at the top (`frame_index`), so a test can tell which frames arrived, in which order, and that none is a
black filler frame.

Run as a script, it is the RTSP server process: `python stream_server.py rtsp FOLDER PORT`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"
MARK_BITS = 12  # cell 0 white, cell 11 black (guards), cells 1..10: the frame number, 10 bits
MARK_H = 16  # height of the marker strip (pixels)


def missing_servers() -> str | None:
    """Why the real stream servers cannot run here, or None when they can."""
    missing = []
    for module, package in (("aio_rtsp_toolkit.server", "aio-rtsp-toolkit[server]"), ("av", "av"),
                            ("imageio_ffmpeg", "imageio-ffmpeg")):  # fmt: skip
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        return f"stream servers not installed ({', '.join(missing)}): pip install -e '.[dev]'"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------- clips
def draw_frame(i: int, w: int, h: int) -> np.ndarray:
    """Frame i (BGR): grey background, two moving shapes, the frame number as black/white cells at the top."""
    im = np.full((h, w, 3), 70, np.uint8)
    x = 8 + (4 * i) % max(1, w - 48)
    im[MARK_H + 12 : MARK_H + 44, x : x + 32] = (0, 200, 255)
    cy, cx = (h + MARK_H) // 2 + 10, w - 24 - (3 * i) % max(1, w - 48)
    yy, xx = np.ogrid[:h, :w]
    im[(yy - cy) ** 2 + (xx - cx) ** 2 <= 14**2] = (255, 255, 255)
    bits = [1] + [(i >> b) & 1 for b in range(MARK_BITS - 2)] + [0]
    cell = w // MARK_BITS
    for k, bit in enumerate(bits):
        im[:MARK_H, k * cell : (k + 1) * cell] = 235 if bit else 16
    return im


def frame_index(im: np.ndarray) -> int | None:
    """The frame number drawn by `draw_frame`, or None for a frame without one (e.g. a black filler frame)."""
    h, w = im.shape[:2]
    cell = w // MARK_BITS
    levels = [float(im[2 : MARK_H - 2, k * cell + 3 : (k + 1) * cell - 3].mean()) for k in range(MARK_BITS)]
    if not (levels[0] > 160 and levels[-1] < 90) or any(90 <= v <= 160 for v in levels):
        return None
    return sum(1 << b for b, v in enumerate(levels[1:-1]) if v > 160)


def make_clip(path: Path, frames: int, fps: int, size: tuple[int, int] = (192, 128), gop: int | None = None) -> Path:
    """An H.264 .mp4 of `draw_frame` frames, no B-frames, a keyframe every `gop` frames (default: every second)."""
    import av

    w, h = size
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=Fraction(fps))
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        st.options = {"g": str(gop or fps), "bf": "0", "preset": "ultrafast", "crf": "18"}
        for i in range(frames):
            vf = av.VideoFrame.from_ndarray(draw_frame(i, w, h), format="bgr24")
            out.mux(st.encode(vf))
        out.mux(st.encode())
    return path


# ---------------------------------------------------------------------------------------------- servers
class _ServerProcess:
    """A server in a child process, on its own port; stop() and start() again keep the port."""

    def __init__(self, log: Path, port: int | None = None):
        self.port = port or free_port()
        self.log = log
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> _ServerProcess:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._wait_listening(timeout)
        return self

    def _wait_listening(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{type(self).__name__} exited with {self.proc.returncode}; log: {self.log}")
            try:
                socket.create_connection((HOST, self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{type(self).__name__} did not listen on {HOST}:{self.port} within {timeout:.0f} s")

    def stop(self) -> None:
        """Kill the server (as a camera losing power: no goodbye to the clients) and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class RtspServer(_ServerProcess):
    """aio-rtsp-toolkit's RTSP server over the .mp4 files of `folder`."""

    def __init__(self, folder: Path, log: Path | None = None, port: int | None = None):
        super().__init__(log or Path(folder) / "rtsp-server.log", port)
        self.folder = Path(folder)

    def command(self) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "rtsp", str(self.folder), str(self.port)]

    def url(self, name: str, loops: int = 0) -> str:
        """rtsp:// address of a clip in the folder; loops=0 repeats it for ever, loops=N ends the stream after N."""
        return f"rtsp://{HOST}:{self.port}/{name}/play_count_{loops}"


class HttpTsServer(_ServerProcess):
    """ffmpeg serving `clip` as a live MPEG-TS stream at http://127.0.0.1:PORT/live.ts (one client)."""

    def __init__(self, clip: Path, log: Path | None = None, port: int | None = None, loop: bool = True):
        super().__init__(log or Path(clip).with_suffix(".http.log"), port)
        self.clip, self.loop = Path(clip), loop

    def command(self) -> list[str]:
        import imageio_ffmpeg

        loop = ["-stream_loop", "-1"] if self.loop else []
        return [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "warning", "-re", *loop,
                "-i", str(self.clip), "-c", "copy", "-f", "mpegts", "-listen", "1", self.url]  # fmt: skip

    def _wait_listening(self, timeout: float) -> None:
        # A test connection would be ffmpeg's one client: wait for the listening socket instead.
        end = time.monotonic() + timeout
        while time.monotonic() < end and not _listening(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"ffmpeg exited with {self.proc.returncode}; log: {self.log}")
            time.sleep(0.1)
        if not _listening(self.port):
            self.stop()
            raise RuntimeError(f"ffmpeg did not listen on {HOST}:{self.port} within {timeout:.0f} s")

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/live.ts"


class UdpRtspRelay(_ServerProcess):
    """An RTSP relay with RTP over UDP: Debian's rtsp-server-perl (apt, not pip: optional) fed by an ffmpeg publisher
    looping `clip`. It refuses RTP over TCP, which OpenCV asks for by default: clients fall back to UDP, or set
    OPENCV_FFMPEG_CAPTURE_OPTIONS="rtsp_transport;udp". `kill_publisher()` makes the camera silent with the RTSP
    session open (the stall the watchdog must notice); `start_publisher()` brings it back."""

    BINARY = "rtsp-server-perl"

    def __init__(self, clip: Path, log: Path | None = None):
        super().__init__(log or Path(clip).with_suffix(".relay.log"))
        self.clip, self.source_port, self.publisher = Path(clip), free_port(), None

    def command(self) -> list[str]:
        rtp = 20000 + 2 * (self.port % 10000)  # the relay's own UDP ports, spread by the free TCP port
        return [self.BINARY, "-c", str(self.port), "-s", str(self.source_port), "--client_listen_address", HOST,
                "--source_listen_address", HOST, "--rtp_start_port", str(rtp)]  # fmt: skip

    def start(self, timeout: float = 30.0) -> UdpRtspRelay:
        super().start(timeout)
        return self.start_publisher()

    def start_publisher(self) -> UdpRtspRelay:
        """The ffmpeg publisher (the camera's encoder): its stream becomes the relay's /live."""
        import imageio_ffmpeg

        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "warning", "-re", "-stream_loop", "-1",
               "-i", str(self.clip), "-c", "copy", "-f", "rtsp", "-rtsp_transport", "udp",
               f"rtsp://{HOST}:{self.source_port}/live"]  # fmt: skip
        with open(self.log, "ab") as log:
            self.publisher = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def kill_publisher(self) -> None:
        """The encoder stops; the relay and the RTSP sessions of its clients stay up: a silent camera. SIGTERM, so that
        the publisher says goodbye to the relay, which otherwise keeps its mount and refuses a new publisher (403)."""
        if self.publisher is not None and self.publisher.poll() is None:
            self.publisher.terminate()
            try:
                self.publisher.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.publisher.kill()
                self.publisher.wait(timeout=5)
        self.publisher = None

    def stop(self) -> None:
        self.kill_publisher()
        super().stop()

    @property
    def url(self) -> str:
        return f"rtsp://{HOST}:{self.port}/live"


def _listening(port: int) -> bool:
    """Whether a TCP socket listens on 127.0.0.1:port (read from /proc, without connecting)."""
    want = f"0100007F:{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if os.path.exists(table):
            with open(table) as f:
                if any(want in line and line.split()[3] == "0A" for line in f.readlines()[1:]):  # 0A: LISTEN
                    return True
    return False


def _serve_rtsp(folder: str, port: int) -> None:
    import asyncio

    from aio_rtsp_toolkit import server

    asyncio.run(server.serve(folder, HOST, port, control_port=None))


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "rtsp":
        sys.exit("usage: stream_server.py rtsp FOLDER PORT")
    _serve_rtsp(sys.argv[2], int(sys.argv[3]))
