"""Cameras that run for months (issue 20), against real servers on 127.0.0.1: the stall watchdog, independent
cameras, endless retries, signals in every state, segments with a size cap, JSON Lines.

A silent camera is Debian's rtsp-server-perl relay whose ffmpeg publisher stops while the relay and the client's RTSP
session stay up (where the relay is not installed those tests skip, saying so); a camera that goes away is
aio-rtsp-toolkit's server killed; a camera that never answers its RTSP handshake is a socket that accepts and says
nothing. Timing claims are read from the frame arrival times in the JSON Lines, not from wall-clock tolerances.
"""

# ruff: noqa: F811  (the fixtures clips and rtsp are imported from stream_client: tests take them as arguments)
from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from stream_client import (  # noqa: F401  (clips, rtsp: fixtures)
    FPS,
    IMGSZ,
    MODEL,
    ListHandler,
    cli_predict,
    clips,
    count_frames,
    jsonl_records,
    needs_relay,
    rtsp,
    saved_videos,
    wait_for,
)
from stream_server import HOST, RtspServer, UdpRtspRelay, frame_index, missing_servers

pytestmark = pytest.mark.skipif(missing_servers() is not None, reason=str(missing_servers()))


@pytest.fixture
def relay(clips, tmp_path):
    with UdpRtspRelay(clips / "cam2.mp4", log=tmp_path / "relay.log") as server:
        yield server


@pytest.fixture
def mute_server():
    """A TCP server that accepts connections and never answers: an RTSP open that hangs until its timeout."""
    sock = socket.socket()
    sock.bind((HOST, 0))
    sock.listen(8)
    yield f"rtsp://{HOST}:{sock.getsockname()[1]}/live"
    sock.close()


@pytest.fixture
def log_lines():
    from ultralytics.utils import LOGGER

    lines: list[str] = []
    handler = ListHandler(lines)
    LOGGER.addHandler(handler)
    yield lines
    LOGGER.removeHandler(handler)


def live_run(source, tmp_path: Path, **kwargs):
    """stream_predict of the tiny model on a live source, into tmp_path/run; returns (model, generator)."""
    from clipce_rtdetr.deploy.stream import stream_predict
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    model = ClipCERTDETR(MODEL)
    kw = {"imgsz": IMGSZ, "verbose": False, "project": str(tmp_path), "name": "run", "stream_backoff": 0.2, **kwargs}
    return model, stream_predict(model, source, **kw)


def longest_gap(records: list[dict], start: float, end: float) -> float:
    """The longest time between consecutive frames of one camera (arrival times) within [start, end]."""
    t = [r["time"] for r in records if start <= r["time"] <= end]
    return max((b - a for a, b in zip(t, t[1:])), default=float("inf"))


# ------------------------------------------------------------------------------------------- watchdog
@needs_relay
def test_silent_camera_is_reported_stalled_and_comes_back(relay, tmp_path, log_lines):
    """The publisher stops with the RTSP session open, and is back 2.5 s later: frames before and after, one
    'stalled' report, no filler frames."""
    model, gen = live_run(relay.url, tmp_path, stream_timeout=1.5)
    indices, restart = [], None
    try:
        for r in gen:
            indices.append(frame_index(r.orig_img))
            if len(indices) == 10:
                relay.kill_publisher()
                restart = threading.Timer(2.5, relay.start_publisher)
                restart.start()
            if len(indices) == 25:
                break
    finally:
        gen.close()
        if restart is not None:
            restart.join()
    assert None not in indices  # no black filler frame reached the model
    (cam,) = model.predictor.pipeline.cameras
    assert cam.stalls >= 1 and cam.transport == "udp"
    assert any("stalled: no frame for 1.5 s" in x for x in log_lines), log_lines
    assert any("reconnected over UDP" in x for x in log_lines), log_lines


# --------------------------------------------------------------------------------------- independent
@needs_relay
def test_two_cameras_one_goes_silent_the_other_keeps_its_rate(rtsp, relay, tmp_path):
    """Camera 2's publisher stops for good (its relay stays up): camera 1's frames keep arriving at its own rate
    during camera 2's outage, read from the arrival times in camera 1's JSON Lines."""
    streams = tmp_path / "cams.streams"
    streams.write_text(f"{rtsp.url('cam.mp4')}\n{relay.url}\n")
    model, gen = live_run(str(streams), tmp_path, save_jsonl=True, stream_timeout=1.0, stream_retries=-1)
    seen, t_silent = [0, 0], None
    try:
        for r in gen:
            seen[0 if ":" + str(rtsp.port) in r.path else 1] += 1
            if t_silent is None and min(seen) >= 5:
                relay.kill_publisher()
                t_silent = time.time()
            if t_silent is not None and time.time() - t_silent > 6:
                break
    finally:
        gen.close()
    run = tmp_path / "run"
    one, two = jsonl_records(run, 1), jsonl_records(run, 2)
    during = [r for r in one if r["time"] > t_silent + 0.5]
    assert len(during) >= 5 * 0.5 * FPS, len(during)  # 5 s of outage: at least half the camera's 10 fps
    assert longest_gap(one, t_silent + 0.5, t_silent + 6) < 1.0  # never frozen, while camera 2 reconnects
    assert len([r for r in two if r["time"] > t_silent + 0.5]) < 5  # camera 2 silent (a frame or two of tail)
    cam2 = model.predictor.pipeline.cameras[1]
    assert cam2.stalls >= 1


def test_one_camera_dead_at_start(rtsp, tmp_path, log_lines):
    """Camera 2 has nothing listening at its address from the start: camera 1 runs anyway, camera 2 is reported
    lost once, the run goes on."""
    dead = f"rtsp://{HOST}:{free_tcp_port()}/live"
    streams = tmp_path / "cams.streams"
    streams.write_text(f"{dead}\n{rtsp.url('cam.mp4')}\n")
    model, gen = live_run(str(streams), tmp_path, save_jsonl=True, stream_retries=1, stream_backoff=0.1)
    n = 0
    try:
        for _ in gen:
            n += 1
            if n == 30:
                break
    finally:
        gen.close()
    cams = model.predictor.stream_summary["cameras"]
    assert len(jsonl_records(tmp_path / "run", 2)) == cams[1]["frames_processed"] >= 30
    assert not jsonl_records(tmp_path / "run", 1) and cams[0]["lost"] is True
    assert sum("Camera 1/2" in x and "could not be opened after 1" in x for x in log_lines) == 1, log_lines


def test_endless_retries_report_once_and_come_back(rtsp, tmp_path, log_lines, monkeypatch):
    """stream_retries=-1 (a service): a camera whose server goes away is reported lost once, its files closed, and
    retried at the capped interval until it is back."""
    from clipce_rtdetr.deploy import stream_camera

    monkeypatch.setattr(stream_camera, "STREAM_MAX_BACKOFF", 0.4)  # the cap (30 s in service) shortened for the test
    model, gen = live_run(rtsp.url("cam.mp4"), tmp_path, save=True, stream_retries=-1, stream_backoff=0.05)
    n, back = 0, None
    try:
        for _ in gen:
            n += 1
            if n == 10:
                rtsp.stop()
                wait_until(lambda: any("did not come back" in x for x in log_lines), 30)
                time.sleep(1.0)  # a few capped retries more
                rtsp.start()
                back = n
            if back and n >= back + 10:
                break
    finally:
        gen.close()
    assert sum("did not come back" in x for x in log_lines) == 1, log_lines
    assert any("Still retrying every 0.4 s (stream_retries=-1)" in x for x in log_lines), log_lines
    assert any(" is back over TCP" in x for x in log_lines), log_lines
    videos = saved_videos(tmp_path / "run")  # closed when lost (playable), a new segment when back
    counts = [count_frames(v) for v in videos]
    assert len(videos) == 2 and counts[0] >= 10 and counts[1] >= 5
    assert sum(counts) == model.predictor.stream_summary["cameras"][0]["frames_processed"]


def test_all_cameras_lost_ends_the_run(clips, rtsp, tmp_path):
    """Both cameras lost for good: StreamLostError (exit 2 in the CLI) naming both; files so far kept."""
    from clipce_rtdetr.deploy.stream import StreamLostError

    with RtspServer(clips, log=tmp_path / "rtsp2.log") as second:
        streams = tmp_path / "cams.streams"
        streams.write_text(f"{rtsp.url('cam.mp4')}\n{second.url('cam2.mp4')}\n")
        _, gen = live_run(str(streams), tmp_path, save_jsonl=True, stream_retries=1, stream_backoff=0.1)
        with pytest.raises(StreamLostError, match=r"Camera 1/2 .* Camera 2/2 .*Files so far in"):
            for n, _ in enumerate(gen, 1):
                if n == 10:
                    rtsp.stop()
                    second.stop()
    assert jsonl_records(tmp_path / "run", 1) or jsonl_records(tmp_path / "run", 2)


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


# -------------------------------------------------------------------------------------------- signals
@needs_relay
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_while_cameras_stall_open_and_reconnect(clips, rtsp, relay, mute_server, tmp_path, sig):
    """Ctrl-C / SIGTERM (systemd, docker stop) with camera 2 stalled (publisher gone, session open, the read waiting
    for its timeout), camera 3 still in its first open and camera 4 reconnecting (server gone, backoff): exit 0, no
    crash (a signal death reads as a negative code), every processed frame in a playable file."""
    with RtspServer(clips, log=tmp_path / "rtsp4.log") as fourth:
        streams = tmp_path / "cams.streams"
        streams.write_text(f"{rtsp.url('cam.mp4')}\n{relay.url}\n{mute_server}\n{fourth.url('cam2.mp4')}\n")
        cli = cli_predict(str(streams), tmp_path, "stream_timeout=8", "stream_backoff=2")
        for k in (1, 2, 4):
            wait_for(cli, f"Camera {k}/4 (")  # opened (camera 3 hangs in its first open meanwhile)
        cli.wait_frames(20)
        relay.kill_publisher()
        fourth.stop()
        wait_for(cli, "Camera 4/4 (" + fourth.url("cam2.mp4") + ") closed")
        time.sleep(0.5)
        cli.proc.send_signal(sig)
        rc = cli.wait()
    assert rc == 0, f"exit {rc}:\n{cli.output}"
    cams = json.loads((tmp_path / "run" / "stream_summary.json").read_text())["cameras"]
    assert cams[2]["frames_read"] == 0 and cams[0]["frames_read"] > 0  # camera 3 never got past its first open
    videos = saved_videos(tmp_path / "run")
    assert len(videos) == 3 and sum(count_frames(v) for v in videos) == cli.summary_frames("stopped")


# -------------------------------------------------------------------------------------------- outputs
CAP = 200e3  # bytes: a few segments of 0.6 s of the 192x128 clip


def test_segments_rotate_under_a_size_cap_and_jsonl_matches_the_boxes(rtsp, tmp_path):
    """segment= 0.6 s and a cap of a few segments' size: the oldest are deleted, every segment left plays and has one
    JSON line per frame; the JSON lines carry the boxes, classes, scores and track ids of the Results drawn."""
    model, gen = live_run(rtsp.url("cam.mp4"), tmp_path, mode="track", tracker="bytetrack.yaml", save=True,
                          save_jsonl=True, segment=0.01, save_max_gb=CAP / 1e9, stream_buffer=True)  # fmt: skip
    drawn = []  # stream_buffer=True: no frame dropped, so the n-th result is the camera's frame n
    try:
        for r in gen:
            assert frame_index(r.orig_img) is not None  # a real frame of the clip
            drawn.append(r.summary(decimals=2))
            if len(drawn) == 60:
                break
    finally:
        gen.close()
    run = tmp_path / "run"
    videos = saved_videos(run)
    made = max(int(v.stem.rsplit("-", 1)[1]) for v in videos) + 1
    kept = sorted(int(v.stem.rsplit("-", 1)[1]) for v in videos)
    assert model.predictor.stream_summary["segments_deleted"] == made - len(kept) >= 1
    assert kept == list(range(made - len(kept), made))  # the oldest went first, the newest stayed
    assert sum(p.stat().st_size for p in run.glob("1-*")) <= CAP or len(kept) == 1
    for video in videos:
        lines = video.with_suffix(".jsonl").read_text().splitlines()
        assert count_frames(video) == len(lines) > 0
    records = jsonl_records(run, 1)
    assert records and all(r["frame"] == k for k, r in zip(range(records[0]["frame"], 10**6), records))
    checked = [rec for rec in records if rec["frame"] < len(drawn)]
    assert len(checked) >= len(records) - 8  # all but the few written after the last one yielded
    for rec in checked:
        assert rec["detections"] == drawn[rec["frame"]], rec["frame"]
    assert sum("track_id" in d for rec in checked for d in rec["detections"]) > 0
