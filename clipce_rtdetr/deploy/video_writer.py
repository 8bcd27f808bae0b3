"""A video writer that encodes on a thread of its own, so that a live stream's model does not wait for the encoder.

Ultralytics encodes each annotated frame (MJPG on Linux, 2-3 ms at 640x384 on a CPU core) in the prediction loop,
between one inference and the next. `BackgroundVideoWriter` wraps the `cv2.VideoWriter` Ultralytics made: frames
are queued and written in order by one thread; the queue is bounded, so a model faster than the encoder waits
instead of filling memory. `release()` writes what is queued, then closes the file; the predictor calls it at the end
of every run, also on Ctrl-C and errors, so every processed frame is in the video. (Not a `cv2.VideoWriter`
subclass: OpenCV's bound types crash the garbage collector when subclassed in Python.)
"""

from __future__ import annotations

import queue
import threading

import cv2
import numpy as np

QUEUE_FRAMES = 16  # at most this many annotated frames wait for the encoder (16 x 0.7 MB at 640x384)


class BackgroundVideoWriter:
    """`writer`'s frames, written in order by a background thread; `release()` drains the queue first."""

    def __init__(self, writer: cv2.VideoWriter, queue_frames: int = QUEUE_FRAMES):
        self.writer = writer
        self.frames: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=queue_frames)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._encode, name="video-writer", daemon=True)
        self.thread.start()

    def _encode(self) -> None:
        while (im := self.frames.get()) is not None:
            if self.error is None:
                try:
                    self.writer.write(im)
                except BaseException as e:  # raised in the prediction loop at the next write
                    self.error = e

    def write(self, image: np.ndarray) -> None:
        if self.error is not None:
            raise self.error
        self.frames.put(image)

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return self.writer.isOpened()

    def release(self) -> None:
        if self.thread.is_alive():
            self.frames.put(None)
            self.thread.join()
        self.writer.release()
