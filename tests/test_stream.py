"""Predict and track on video files and scripted live streams (FakeCamera): frame counts, saved video, drops,
reconnects. Real servers: test_stream_server.py."""

from __future__ import annotations

import inspect
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import TINY_MODEL

from clipce_rtdetr.errors import ClipCEError

W, H = 96, 64
RealCapture = cv2.VideoCapture  # the tests below replace cv2.VideoCapture with a fake camera


def write_video(path: Path, n: int, fps: float = 10) -> Path:
    """An MJPG .avi with a square moving across a grey background."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (W, H))
    for i in range(n):
        im = np.full((H, W, 3), 60, np.uint8)
        cv2.rectangle(im, (4 + 3 * i, 12), (30 + 3 * i, 44), (0, 200, 255), -1)
        w.write(im)
    w.release()
    return path


def count_frames(path: Path) -> int:
    cap, n = RealCapture(str(path)), 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def saved_video(predictor) -> Path:
    vids = sorted(Path(predictor.save_dir).glob("*.avi")) + sorted(Path(predictor.save_dir).glob("*.mp4"))
    assert len(vids) == 1, f"expected one saved video in {predictor.save_dir}"
    return vids[0]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """Tiny checkpoint (.pt), its ONNX export, a 12-frame video and a truncated 20-frame video."""
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    d = tmp_path_factory.mktemp("stream")
    pt = d / "tiny.pt"
    ClipCERTDETR(TINY_MODEL).save(pt)
    onnx = ClipCERTDETR(pt).export(format="onnx", imgsz=64, export_check=False)
    full = write_video(d / "long.avi", 20)
    data = full.read_bytes()
    trunc = d / "truncated.avi"
    trunc.write_bytes(data[: len(data) // 2])  # header says 20 frames, about half can be decoded
    return {"pt": pt, "onnx": Path(onnx), "video": write_video(d / "clip.avi", 12), "truncated": trunc}


def test_predict_video_pt(media):
    from clipce_rtdetr.deploy.stream import run_predict
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    model = ClipCERTDETR(media["pt"])
    summary = run_predict(
        model, "predict", {"source": str(media["video"]), "imgsz": 64, "verbose": False, "stream": True}
    )
    assert summary["frames"] == 12 and summary["fps"] > 0 and summary["latency_ms_median"] > 0
    assert count_frames(saved_video(model.predictor)) == 12
    assert model.predictor.live_fps > 0


def test_track_video_onnx(media):
    from clipce_rtdetr.deploy.stream import stream_predict
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    model = ClipCERTDETR(media["onnx"])
    gen = stream_predict(
        model, str(media["video"]), mode="track", imgsz=64, save=True, verbose=False, tracker="bytetrack.yaml"
    )
    assert inspect.isgenerator(gen)
    results = list(gen)
    assert len(results) == 12 and all(r.orig_shape == (H, W) for r in results)
    assert model.predictor.args.mode == "track" and model.predictor.trackers
    assert count_frames(saved_video(model.predictor)) == 12


def test_python_api_stays_a_generator(media):
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    gen = ClipCERTDETR(media["pt"]).predict(str(media["video"]), stream=True, imgsz=64, verbose=False)
    assert inspect.isgenerator(gen)
    assert next(gen).orig_shape == (H, W)
    gen.close()


def test_truncated_video_ends_early_and_output_is_playable(media):
    from clipce_rtdetr.deploy.stream import run_predict
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    model = ClipCERTDETR(media["pt"])
    summary = run_predict(model, "predict", {"source": str(media["truncated"]), "imgsz": 64, "verbose": False})
    assert 0 < summary["frames"] < 20
    ((read, declared),) = model.predictor.live.videos.values()
    assert read == summary["frames"] and declared == 20
    assert count_frames(saved_video(model.predictor)) == summary["frames"]


class FakeCamera:
    """A cv2.VideoCapture stand-in for a live stream (unknown frame count) that drops on a script.

    `script` lists, per open, how many frames that connection delivers (None: never opens).
    Kept only for what a real server cannot produce on cue: a drop after exactly N frames followed by a
    reconnection attempt that fails and the next one that succeeds, without timing races. The same
    behaviours against a real RTSP/HTTP server (killed mid-stream, restarted, never back, wrong path,
    two cameras, Ctrl-C/SIGTERM) are in test_stream_server.py.
    """

    script: list[int | None] = []
    opens = 0

    def __init__(self, *args, **kwargs):
        cls = type(self)
        plan = cls.script[cls.opens] if cls.opens < len(cls.script) else None
        cls.opens += 1
        self.left, self.opened, self.i = plan or 0, plan is not None, 0

    def isOpened(self):
        return self.opened

    def get(self, prop):
        return {cv2.CAP_PROP_FRAME_WIDTH: W, cv2.CAP_PROP_FRAME_HEIGHT: H, cv2.CAP_PROP_FPS: 25}.get(prop, 0)

    def grab(self):
        if self.left <= 0:
            return False
        self.left -= 1
        self.i += 1
        return True

    def retrieve(self):
        im = np.full((H, W, 3), 60, np.uint8)
        cv2.circle(im, (10 + self.i % 70, 32), 8, (255, 255, 255), -1)
        return True, im

    def read(self):
        return (True, self.retrieve()[1]) if self.grab() else (False, None)

    def release(self):
        self.opened = False

    open = __init__


@pytest.fixture
def camera(monkeypatch):
    FakeCamera.opens = 0
    monkeypatch.setattr(cv2, "VideoCapture", FakeCamera)
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")  # one open per attempt (no UDP retry)
    from clipce_rtdetr.deploy import stream_camera

    monkeypatch.setattr(stream_camera, "network_answers", lambda *a: True)  # the fake camera is the only gate
    return FakeCamera


def test_stream_reconnects_then_ends_with_clear_message(media, camera):
    from clipce_rtdetr.deploy.stream import StreamLostError, run_predict
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    # 6 frames, drop; the reopen at once fails, the next gives 5 frames, drop; never comes back.
    camera.script = [6, None, 5]
    model = ClipCERTDETR(media["pt"])
    args = {"source": "rtsp://127.0.0.1:1/live", "imgsz": 64, "verbose": False, "stream_buffer": True,
            "stream_retries": 2, "stream_backoff": 0.01, "save": True}  # fmt: skip
    with pytest.raises(StreamLostError, match="dropped and did not come back after 2 reconnection attempts") as e:
        run_predict(model, "predict", args)
    assert f"Files so far in {model.predictor.save_dir}" in str(e.value)
    (cam,) = model.predictor.pipeline.cameras
    assert cam.reconnects == 1 and camera.opens == 6  # open, reopen (fails), reopen, reopen + 2 retries (fail)
    frames = model.predictor.live.frames
    assert frames == 11  # every delivered frame, no black filler frames while reconnecting
    assert count_frames(saved_video(model.predictor)) == frames  # released: playable


def test_stream_that_never_opens(media, camera):
    from clipce_rtdetr.deploy.stream import StreamLostError, run_predict
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    camera.script = []
    args = {"source": "rtsp://127.0.0.1:1/live", "imgsz": 64, "stream_retries": 1, "stream_backoff": 0.01}
    with pytest.raises(StreamLostError, match="could not be opened after 1 reconnection attempts.*Nothing answers at "
                       "127.0.0.1:1"):  # fmt: skip
        run_predict(ClipCERTDETR(media["pt"]), "track", args)


def test_bad_inputs(media, tmp_path):
    from clipce_rtdetr.cli import entrypoint
    from clipce_rtdetr.deploy.stream import run_predict, stream_predict
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    assert entrypoint(["predict", f"model={tmp_path / 'missing.pt'}", f"source={media['video']}"]) == 2
    with pytest.raises(FileNotFoundError):
        run_predict(ClipCERTDETR(media["pt"]), "predict", {"source": str(tmp_path / "missing.mp4"), "imgsz": 64})
    with pytest.raises(ClipCEError, match="needs a source"):
        run_predict(ClipCERTDETR(media["pt"]), "track", {"imgsz": 64})
    with pytest.raises(ClipCEError, match="mode must be"):
        next(stream_predict(ClipCERTDETR(media["pt"]), str(media["video"]), mode="segment"))


@pytest.fixture
def ultra_log(caplog):
    """Ultralytics' LOGGER does not propagate: hand its records to caplog for the test."""
    from ultralytics.utils import LOGGER

    LOGGER.addHandler(caplog.handler)
    yield caplog
    LOGGER.removeHandler(caplog.handler)


def test_bad_tracker_configs_name_the_file(media, tmp_path):
    from clipce_rtdetr.deploy.stream import stream_predict
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    garbled = tmp_path / "garb.yaml"
    garbled.write_text("tracker_type: bytetrack\nfoo: [1, 2\n  bar: :\n")
    partial = tmp_path / "partial.yaml"
    partial.write_text("tracker_type: bytetrack\ntrack_bufer: 30\n")
    model = ClipCERTDETR(media["pt"])
    with pytest.raises(ClipCEError, match=r"garb\.yaml, line 3: invalid YAML"):
        next(stream_predict(model, str(media["video"]), mode="track", imgsz=64, tracker=str(garbled)))
    with pytest.raises(
        ClipCEError, match=r"partial\.yaml lacks track_high_thresh.*track_buffer.*track_bufer.*trackers/bytetrack\.yaml"
    ):
        next(stream_predict(model, str(media["video"]), mode="track", imgsz=64, tracker=str(partial)))


def test_nothing_saved_is_never_reported_as_saved(media, tmp_path, camera, ultra_log):
    from clipce_rtdetr.deploy.stream import StreamLostError, run_predict
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    model = ClipCERTDETR(media["pt"])
    with pytest.raises(ClipCEError, match=r"source=.*broken\.jpg gave no frame: .*broken\.jpg could not be decoded"):
        run_predict(model, "predict", {"source": str(broken), "imgsz": 64, "verbose": False})
    assert not Path(model.predictor.save_dir).exists()  # the empty folder made for it is gone
    camera.script = []  # a webcam / RTSP stream that never opens
    with pytest.raises(StreamLostError, match="could not be opened"):
        run_predict(ClipCERTDETR(media["pt"]), "predict",
                    {"source": "rtsp://127.0.0.1:1/live", "imgsz": 64, "stream_retries": 0})  # fmt: skip
    assert not [r for r in ultra_log.records if "saved to" in r.getMessage()]


def test_txt_source_names_list_file_and_line(media, tmp_path):
    from clipce_rtdetr.deploy.stream import run_predict
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    lst = tmp_path / "sources.txt"
    lst.write_text(f"{media['video']}\n\nmissing.jpg\n")
    with pytest.raises(ClipCEError, match=r"sources\.txt, line 3: 'missing\.jpg' does not exist"):
        run_predict(ClipCERTDETR(media["pt"]), "predict", {"source": str(lst), "imgsz": 64})
    ok = media["video"].parent / "list.txt"
    ok.write_text(f"{media['video'].name}\n")  # relative to the list's folder, as Ultralytics resolves it
    summary = run_predict(
        ClipCERTDETR(media["pt"]), "predict", {"source": str(ok), "imgsz": 64, "save": False, "verbose": False}
    )
    assert summary["frames"] == 12


def test_python_api_checks_source_lists_and_trackers(media, tmp_path):
    """model.predict / model.track (not only the CLI and stream_predict) name the list file and line, and the
    broken tracker file."""
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    lst = tmp_path / "sources.txt"
    lst.write_text(f"{media['video']}\nmissing.jpg\n")
    model = ClipCERTDETR(media["pt"])
    with pytest.raises(ClipCEError, match=r"sources\.txt, line 2: 'missing\.jpg' does not exist"):
        model.predict(source=str(lst), imgsz=64)
    with pytest.raises(ClipCEError, match=r"sources\.txt, line 2"):
        model.track(source=str(lst), imgsz=64)
    garbled = tmp_path / "garb.yaml"
    garbled.write_text("tracker_type: bytetrack\nfoo: [1, 2\n  bar: :\n")
    with pytest.raises(ClipCEError, match=r"garb\.yaml, line 3: invalid YAML"):
        model.track(source=str(media["video"]), imgsz=64, tracker=str(garbled))
    results = model.track(source=str(media["video"]), imgsz=64, tracker="bytetrack.yaml", verbose=False)
    assert len(results) == 12


def test_per_frame_tracking_checks_the_tracker_once(media, monkeypatch):
    """Ultralytics' frame loop, model.track(frame, persist=True): the tracker file is checked when Ultralytics reads
    it (the first frame), not on every frame."""
    import numpy as np

    from clipce_rtdetr.deploy import stream_checks
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    calls = []
    real = stream_checks.check_tracker_cfg
    monkeypatch.setattr(stream_checks, "check_tracker_cfg", lambda t: calls.append(t) or real(t))
    model = ClipCERTDETR(media["pt"])
    frame = np.full((64, 64, 3), 90, np.uint8)
    for _ in range(3):
        model.track(frame, persist=True, imgsz=64, verbose=False)
    assert len(calls) == 1
    model.track(frame, imgsz=64, verbose=False)  # without persist Ultralytics reads the file again: so do we
    assert len(calls) == 2
