"""Client side of the stream tests: the CLI in a subprocess read line by line, saved videos and JSON Lines, logs.

Shared by test_stream_server.py and test_stream_cameras.py (servers: stream_server.py), with their fixtures: the
served clips and the RTSP server (import them into a test module to use them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest
from conftest import REPO
from stream_server import RtspServer, UdpRtspRelay, make_clip

MODEL = REPO / "weights" / "rtdetr-tiny-shapes.pt"  # the tiny committed model
IMGSZ = 96
CLI_TIMEOUT = 120  # seconds; every CLI run ends well before
FPS = 10  # of the served clips

@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """A folder with a 20 s clip (frame numbers 0..199) and a second one for a second camera."""
    d = tmp_path_factory.mktemp("clips")
    make_clip(d / "cam.mp4", 200, FPS)
    make_clip(d / "cam2.mp4", 200, FPS)
    return d


@pytest.fixture
def rtsp(clips, tmp_path):
    with RtspServer(clips, log=tmp_path / "rtsp.log") as server:
        yield server


NO_RELAY = "RTP over UDP relay not installed (optional; Debian: apt-get install rtsp-server-perl)"
needs_relay = pytest.mark.skipif(shutil.which(UdpRtspRelay.BINARY) is None, reason=NO_RELAY)


def count_frames(path: Path) -> int:
    cap, n = cv2.VideoCapture(str(path)), 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def saved_videos(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.suffix in (".avi", ".mp4"))


def runs(indices: list[int]) -> list[list[int]]:
    """Split a sequence of frame numbers into runs of consecutive numbers."""
    out: list[list[int]] = []
    for i in indices:
        if out and i == out[-1][-1] + 1:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def jsonl_records(folder: Path, camera: int) -> list[dict]:
    """The JSON Lines records of one camera (1-based), segment after segment."""
    files = sorted(Path(folder).glob(f"{camera}-*.jsonl"))
    return [json.loads(x) for p in files for x in p.read_text().splitlines()]


class ListHandler:
    """A logging handler that keeps the messages (Ultralytics' LOGGER does not propagate to caplog)."""

    level = 0

    def __init__(self, lines: list[str]):
        self.lines = lines

    def handle(self, record) -> None:
        self.lines.append(record.getMessage())


class Cli:
    """`python -m clipce_rtdetr ARGS` in a subprocess, its output collected line by line as it comes."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None):
        cmd = [sys.executable, "-m", "clipce_rtdetr", *args]
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})  # fmt: skip
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.t0 = time.monotonic()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def frames(self) -> int:
        """Frames processed so far (one verbose line per frame: '0: 96x96 ...')."""
        return sum(1 for x in self.lines if re.match(r"^\d+: \d+x\d+ ", x))

    def wait_frames(self, n: int) -> None:
        while self.frames() < n:
            assert self.proc.poll() is None, f"CLI ended before {n} frames:\n{self.output}"
            assert time.monotonic() - self.t0 < CLI_TIMEOUT, f"no {n} frames within {CLI_TIMEOUT} s:\n{self.output}"
            time.sleep(0.1)

    def wait(self) -> int:
        try:
            rc = self.proc.wait(timeout=max(1.0, CLI_TIMEOUT - (time.monotonic() - self.t0)))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"CLI did not end within {CLI_TIMEOUT} s:\n{self.output}")
        self.reader.join(timeout=10)
        return rc

    def summary_frames(self, status: str) -> int:
        m = re.search(rf"predict {status}: (\d+) frames", self.output)
        assert m, f"no 'predict {status}: N frames' line in:\n{self.output}"
        return int(m.group(1))


def cli_predict(source: str, tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> Cli:
    return Cli("predict", f"model={MODEL}", f"source={source}", f"imgsz={IMGSZ}", f"project={tmp_path}", "name=run",
               "stream_buffer=True", "save=True", *extra, cwd=tmp_path, env=env)  # fmt: skip


def wait_for(cli: Cli, text: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while text not in cli.output:
        assert cli.proc.poll() is None and time.monotonic() < end, f"no '{text}' in:\n{cli.output}"
        time.sleep(0.1)


