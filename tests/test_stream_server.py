"""predict / track against real stream servers on 127.0.0.1: an RTSP server and an HTTP (MPEG-TS) server.

The servers (tests/stream_server.py) come with the dev extra; where they are not installed these tests skip
with the reason. Faults are real: the server process is killed mid-stream (and started again on the same port),
never comes back, or is asked for a path it does not have. Every test is bounded: the CLI runs get a timeout,
the servers are killed at the end of each test.
"""

# ruff: noqa: F811  (the fixtures clips and rtsp are imported from stream_client: tests take them as arguments)
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from stream_client import (  # noqa: F401  (clips, rtsp: fixtures)
    IMGSZ,
    MODEL,
    ListHandler,
    cli_predict,
    clips,
    count_frames,
    jsonl_records,
    needs_relay,
    rtsp,
    runs,
    saved_videos,
)
from stream_server import HttpTsServer, RtspServer, UdpRtspRelay, frame_index, missing_servers

pytestmark = pytest.mark.skipif(missing_servers() is not None, reason=str(missing_servers()))


# ------------------------------------------------------------------------------------------ in-process runs
def first_frames(model, source: str, n: int, tmp_path: Path, **kwargs) -> list[int | None]:
    """Frame numbers of the first n results of stream_predict (every frame buffered, the video saved in run/)."""
    from clipce_rtdetr.deploy.stream import stream_predict

    gen = stream_predict(model, source, imgsz=IMGSZ, stream_buffer=True, verbose=False, save=True,
                         project=str(tmp_path), name="run", **kwargs)  # fmt: skip
    indices = []
    try:
        for r in gen:
            indices.append(frame_index(r.orig_img))
            if len(indices) == n:
                break
    finally:
        gen.close()
    return indices


def test_rtsp_track_reads_every_frame_in_order(rtsp, tmp_path):
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    model = ClipCERTDETR(MODEL)
    indices = first_frames(model, rtsp.url("cam.mp4"), 25, tmp_path, mode="track", tracker="bytetrack.yaml")
    assert indices == list(range(25))  # every frame, in order, no filler
    assert model.predictor.pipeline.cameras[0].reconnects == 0
    assert model.predictor.live.summary()["lag_ms_median"] > 0  # arrival -> result is measured
    (video,) = saved_videos(tmp_path / "run")  # the frames yielded, and those in flight when the loop stopped
    assert count_frames(video) == model.predictor.stream_summary["frames"] >= 25


def test_rtsp_server_restarts_within_retry_window(rtsp, tmp_path):
    """The server process dies after 12 frames and is back 1.5 s later: the run goes on by itself."""
    from ultralytics.utils import LOGGER

    from clipce_rtdetr.deploy.stream import stream_predict
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    lines: list[str] = []
    handler = ListHandler(lines)
    LOGGER.addHandler(handler)
    model = ClipCERTDETR(MODEL)
    gen = stream_predict(model, rtsp.url("cam.mp4"), imgsz=IMGSZ, stream_buffer=True, verbose=False, save=True,
                         project=str(tmp_path), name="run", stream_retries=4, stream_backoff=0.5)  # fmt: skip
    indices, restart = [], None
    try:
        for r in gen:
            indices.append(frame_index(r.orig_img))
            if len(indices) == 12:
                rtsp.stop()
                restart = threading.Timer(1.5, rtsp.start)
                restart.start()
            if len(indices) > 12 and indices[-1] == 11:  # twelve frames after the reconnection
                break
    finally:
        gen.close()
        LOGGER.removeHandler(handler)
        if restart is not None:
            restart.join()
    assert None not in indices  # no black filler frame reached the model while the server was away
    before, after = runs(indices)  # the new connection starts the clip again at frame 0
    assert before[0] == 0 and len(before) >= 12 and after == list(range(12))
    assert model.predictor.pipeline.cameras[0].reconnects == 1
    assert any("closed: the stream ended" in x for x in lines) and any(" reconnected over TCP" in x for x in lines)
    (video,) = saved_videos(tmp_path / "run")  # released: every processed frame is in a playable file
    assert count_frames(video) == model.predictor.stream_summary["frames"] >= len(indices)


def test_http_stream(clips, tmp_path):
    """An http:// MPEG-TS address is read as the live stream it is (Ultralytics alone would try to download it)."""
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    model = ClipCERTDETR(MODEL)
    with HttpTsServer(clips / "cam.mp4", log=tmp_path / "http.log") as server:
        indices = first_frames(model, server.url, 15, tmp_path)
    assert indices == list(range(15))
    (video,) = saved_videos(tmp_path / "run")
    assert count_frames(video) == model.predictor.stream_summary["frames"] >= 15
    assert not list(Path.cwd().glob(".live.ts*")) and not list(tmp_path.glob(".live.ts*"))  # nothing downloaded


# --------------------------------------------------------------------------------------------- CLI runs
def test_cli_server_never_returns(rtsp, tmp_path, capsys):
    """The CLI's entry point, in this process (a subprocess would add its start-up): exit code 2, the error naming the
    camera and the files kept."""
    import re

    from ultralytics.utils import LOGGER

    from clipce_rtdetr.cli import entrypoint

    lines: list[str] = []
    handler = ListHandler(lines)
    LOGGER.addHandler(handler)

    def kill_after_10_frames():
        while sum(bool(re.match(r"^1: \d+x\d+ ", x)) for x in list(lines)) < 10:
            time.sleep(0.05)
        rtsp.stop()

    killer = threading.Thread(target=kill_after_10_frames, daemon=True)
    killer.start()
    try:
        rc = entrypoint(["predict", f"model={MODEL}", f"source={rtsp.url('cam.mp4')}", f"imgsz={IMGSZ}",
                         f"project={tmp_path}", "name=run", "save=True", "stream_retries=2", "stream_backoff=0.5"])
    finally:
        LOGGER.removeHandler(handler)
    out = "\n".join(lines) + capsys.readouterr().err
    assert rc == 2, out
    assert "dropped and did not come back after 2 reconnection attempts" in out, out
    assert f"Files so far in {tmp_path / 'run'}" in out, out
    (video,) = saved_videos(tmp_path / "run")
    summary = re.search(r"predict ended: every camera lost: (\d+) frames", out)
    assert summary and count_frames(video) == int(summary.group(1)) >= 10, out


def test_wrong_path(rtsp, tmp_path):
    from clipce_rtdetr.deploy.stream import StreamLostError, run_predict
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    url = rtsp.url("no-such-camera.mp4")
    args = {"source": url, "imgsz": IMGSZ, "project": str(tmp_path), "name": "run", "save": True,
            "stream_retries": 1, "stream_backoff": 0.2}  # fmt: skip
    with pytest.raises(StreamLostError) as e:
        run_predict(ClipCERTDETR(MODEL), "predict", args)
    assert url in str(e.value) and f"127.0.0.1:{rtsp.port} answers" in str(e.value) and "path" in str(e.value)
    assert not saved_videos(tmp_path)  # not "check the network"


def test_one_camera_lost_for_good_the_run_goes_on(clips, rtsp, tmp_path):
    """Camera 2 of a .streams file is lost for good: reported once, its files closed (playable, one JSON line per
    frame in its video), camera 1 goes on."""
    from ultralytics.utils import LOGGER

    from clipce_rtdetr.deploy.stream import stream_predict
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    lines: list[str] = []
    handler = ListHandler(lines)
    LOGGER.addHandler(handler)
    model = ClipCERTDETR(MODEL)
    with RtspServer(clips, log=tmp_path / "rtsp2.log") as second:
        streams = tmp_path / "cams.streams"
        streams.write_text(f"{rtsp.url('cam.mp4')}\n{second.url('cam2.mp4')}\n")
        gen = stream_predict(model, str(streams), imgsz=IMGSZ, verbose=False, save=True, save_jsonl=True,
                             project=str(tmp_path), name="run", stream_retries=1, stream_backoff=0.3)  # fmt: skip
        n, lost_at = 0, None
        try:
            for _ in gen:
                n += 1
                if n == 20:
                    second.stop()
                if lost_at is None and any("did not come back" in x for x in lines):
                    lost_at = n
                if lost_at and n >= lost_at + 15:  # camera 1 keeps going after camera 2 is lost
                    break
        finally:
            gen.close()
            LOGGER.removeHandler(handler)
    assert lost_at, lines
    assert sum("did not come back" in x for x in lines) == 1 and "Camera 2/2 (" in str(lines)  # reported once
    run = tmp_path / "run"
    for k in (1, 2):
        (video,) = [v for v in saved_videos(run) if v.name.startswith(f"{k}-")]
        assert count_frames(video) == len(jsonl_records(run, k)) >= (10 if k == 1 else 1), (k, video)
    cams = model.predictor.stream_summary["cameras"]
    assert [c["lost"] for c in cams] == [False, True]
    last_of_2 = max(r["time"] for r in jsonl_records(run, 2))
    assert len([r for r in jsonl_records(run, 1) if r["time"] > last_of_2]) >= 10  # camera 1 went on after 2


@needs_relay
def test_udp_only_relay_falls_back_to_udp(clips, tmp_path, monkeypatch):
    """The issue's recipe (RTSP relay, RTP over UDP, ffmpeg publisher, 10 fps) with OpenCV's default options, which
    ask for TCP: the relay refuses it, the camera is opened over UDP, and the log says so."""
    from ultralytics.utils import LOGGER

    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    monkeypatch.delenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", raising=False)  # unset: OpenCV asks for TCP, as by default
    lines: list[str] = []
    handler = ListHandler(lines)
    LOGGER.addHandler(handler)
    model = ClipCERTDETR(MODEL)
    try:
        with UdpRtspRelay(clips / "cam.mp4", log=tmp_path / "relay.log") as relay:
            indices = first_frames(model, relay.url, 30, tmp_path)
    finally:
        LOGGER.removeHandler(handler)
    assert None not in indices and len(indices) == 30
    assert any("opened over UDP (the server refused TCP)" in x for x in lines), lines
    assert not any("stalled" in x or "closed" in x for x in lines), lines
    assert model.predictor.stream_summary["cameras"][0]["transport"] == "udp"
