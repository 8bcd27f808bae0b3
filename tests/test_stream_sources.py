"""Stream sources read as the user meant them (issue 21) and live figures of bounded size (issue 20).

* A `.streams` file: blank and `#` lines skipped, a video file listed is read to its end, a still image is refused
  naming the line.
* `source=http://HOST/cam.mp4` is fetched from the server even when a `./cam.mp4` exists, into a temporary folder;
  a web page served instead is refused naming the address, and nothing is left behind. The server is Python's
  http.server on 127.0.0.1.
* The live figure, the per-camera figures and the disk cap keep a fixed size however many frames pass.
"""

from __future__ import annotations

import http.server
import pickle
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO

from clipce_rtdetr.errors import ClipCEError

MODEL = REPO / "weights" / "rtdetr-tiny-shapes.pt"
W, H = 96, 64


def write_video(path: Path, n: int) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
    for i in range(n):
        im = np.full((H, W, 3), 60, np.uint8)
        cv2.rectangle(im, (4 + i, 12), (30 + i, 44), (0, 200, 255), -1)
        w.write(im)
    w.release()
    return path


def predict(source, tmp_path: Path, **kw) -> dict:
    from clipce_rtdetr.deploy.stream import run_predict
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    args = {"source": str(source), "imgsz": 64, "verbose": False, "project": str(tmp_path / "runs"), "name": "run",
            **kw}  # fmt: skip
    return run_predict(ClipCERTDETR(MODEL), "predict", args)


# ------------------------------------------------------------------------------------------ .streams
def test_streams_file_with_comments_and_a_video_file(tmp_path):
    video = write_video(tmp_path / "clip.avi", 50)
    streams = tmp_path / "cams.streams"
    streams.write_text(f"# the yard camera\n\n   \n{video}\n# {tmp_path / 'gone.avi'}\n")
    summary = predict(streams, tmp_path, save_jsonl=True)
    assert summary["frames"] == 50  # every frame of the file, not "done: 1 frames"
    (jsonl,) = (tmp_path / "runs" / "run").glob("1-clip*.jsonl")
    lines = jsonl.read_text().splitlines()
    assert len(lines) == 50


def test_streams_file_listing_an_image_is_refused_naming_the_line(tmp_path):
    image = tmp_path / "still.jpg"
    cv2.imwrite(str(image), np.full((H, W, 3), 90, np.uint8))
    streams = tmp_path / "cams.streams"
    streams.write_text(f"# cameras\n{image}\n")
    with pytest.raises(ClipCEError, match=r"cams\.streams, line 2: .*still\.jpg' is an image, not a stream"):
        predict(streams, tmp_path)
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_streams_file_with_only_comments(tmp_path):
    streams = tmp_path / "cams.streams"
    streams.write_text("# nothing yet\n\n")
    with pytest.raises(ClipCEError, match="lists no source"):
        predict(streams, tmp_path)


# ------------------------------------------------------------------------------------------- http files
class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path.startswith("/login/"):  # a camera's login page where the video was expected
            body = b"<!DOCTYPE html><html><body>Please log in</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_folder(tmp_path):
    """http.server on 127.0.0.1 (free port) serving tmp_path/served; /login/* serves an HTML page."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: _Handler(*a, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_video_is_fetched_even_when_a_local_file_has_its_name(http_folder, tmp_path, monkeypatch):
    folder, base = http_folder
    write_video(folder / "cam.mp4", 12)
    monkeypatch.chdir(tmp_path)
    local = write_video(tmp_path / "cam.mp4", 5)  # a different file of the same name in the current folder
    before = local.read_bytes()
    summary = predict(f"{base}/cam.mp4", tmp_path, save=False)
    assert summary["frames"] == 12  # the served video, not the local one
    assert local.read_bytes() == before


def test_http_page_instead_of_a_video_is_refused_and_nothing_is_left(http_folder, tmp_path, monkeypatch):
    _, base = http_folder
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ClipCEError, match=rf"source={base}/login/cam\.mp4 served a web page \(Content-Type text/html"):
        predict(f"{base}/login/cam.mp4", tmp_path)
    assert not (tmp_path / "cam.mp4").exists() and not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------------------- bounded memory
def test_live_figures_do_not_grow_with_frames():
    from clipce_rtdetr.deploy.stream_pipeline import CameraFigures
    from clipce_rtdetr.deploy.stream_stats import LiveStats, StreamingQuantiles

    rng = np.random.default_rng(0)
    stats, fig = LiveStats("predict"), CameraFigures()
    sizes = []
    for n in (10_000, 80_000):
        values = rng.lognormal(3.0, 0.6, n - stats.frames)
        for v in values:
            stats.add(1, latency_ms=float(v), lag_ms=float(v) * 2)
            fig.lag.add(float(v))
        sizes.append((len(pickle.dumps(stats)), len(pickle.dumps(fig))))
    assert stats.frames == 80_000
    assert sizes[1][0] <= sizes[0][0] + 64 and sizes[1][1] <= sizes[0][1] + 64, sizes  # no growth with frames
    q = StreamingQuantiles()
    values = rng.lognormal(3.0, 0.6, 50_000)
    for v in values:
        q.add(float(v))
    for p in (0.5, 0.95):  # within the histogram's ~1 % bins
        assert q.quantile(p) == pytest.approx(np.quantile(values, p), rel=0.02)


def test_disk_cap_deletes_the_oldest_segments_and_keeps_the_newest(tmp_path):
    from clipce_rtdetr.deploy.stream_outputs import DiskCap

    cap = DiskCap(max_gb=2500 / 1e9)
    segments = []
    for k in range(4):
        files = [tmp_path / f"1-live-{k:05d}.mp4", tmp_path / f"1-live-{k:05d}.jsonl"]
        files[0].write_bytes(b"v" * 1000)
        files[1].write_bytes(b"j" * 100)
        segments.append(files)
        cap.add(files)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["1-live-00002.jsonl", "1-live-00002.mp4", "1-live-00003.jsonl", "1-live-00003.mp4"]
    assert cap.deleted == 2
    big = DiskCap(max_gb=10 / 1e9)  # smaller than one segment: the newest is kept all the same
    big.add(segments[3])
    assert segments[3][0].exists()


def test_a_rerun_into_the_same_folder_continues_the_numbering_and_counts_the_old_segments(tmp_path):
    """exist_ok=True (a service restarted into its run folder): new segments never overwrite old ones, and the old
    ones count towards save_max_gb, oldest first."""
    from clipce_rtdetr.deploy.stream_outputs import DiskCap, last_segment

    for k in (0, 1, 3):
        (tmp_path / f"1-live-{k:05d}.mp4").write_bytes(b"v" * 1000)
    (tmp_path / "2-live-00007.jsonl").write_bytes(b"j" * 10)
    assert last_segment(tmp_path, "1-live") == 3 and last_segment(tmp_path, "2-live") == 7
    assert last_segment(tmp_path, "3-gate") == -1
    cap = DiskCap(max_gb=2500 / 1e9)
    cap.adopt(tmp_path)
    new = tmp_path / "1-live-00004.mp4"
    new.write_bytes(b"v" * 1000)
    cap.add([new])
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".mp4") == ["1-live-00003.mp4", "1-live-00004.mp4"]
