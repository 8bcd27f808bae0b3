"""The background video writer: frames in order, nothing lost at release, encoder errors surface."""

import cv2
import numpy as np
import pytest

from clipce_rtdetr.deploy.video_writer import BackgroundVideoWriter


def frame(i: int) -> np.ndarray:
    return np.full((64, 96, 3), 5 * i, np.uint8)


def test_frames_written_in_order_and_all_at_release(tmp_path):
    path = tmp_path / "v.avi"
    inner = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 64))
    writer = BackgroundVideoWriter(inner, queue_frames=2)  # a short queue: write() waits for the encoder
    for i in range(40):
        writer.write(frame(i))
    writer.release()
    assert not writer.thread.is_alive()
    cap, levels = cv2.VideoCapture(str(path)), []
    while (got := cap.read())[0]:
        levels.append(float(got[1].mean()))
    cap.release()
    assert len(levels) == 40
    assert np.allclose(levels, [5 * i for i in range(40)], atol=2)
    writer.release()  # a second release (Ultralytics and our predictor may both end a run) is harmless


class FailingWriter:
    """Stand-in for an encoder that fails mid-video (a full disk); a real cv2.VideoWriter cannot be made to."""

    def __init__(self):
        self.released = False

    def write(self, im):
        raise OSError("No space left on device")

    def release(self):
        self.released = True


def test_encoder_error_raised_at_the_next_write():
    writer = BackgroundVideoWriter(FailingWriter())
    writer.write(frame(0))
    writer.thread.join(timeout=0.5)  # the thread stays alive, waiting for more frames
    with pytest.raises(OSError, match="No space left"):
        for i in range(1, 100):
            writer.write(frame(i))
    writer.release()
    assert writer.writer.released and not writer.thread.is_alive()
