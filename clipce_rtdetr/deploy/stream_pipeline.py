"""The stage-overlapped pipeline of a live run, composed from Ultralytics' own pieces.

    cameras (a reader thread each) -> preprocess -> inference -> postprocess + tracking -> draw + write -> caller

Each arrow is a small bounded hand-off, each stage its own thread, so the inference engine works on one batch while
the CPU stages prepare the next and finish the last. The preprocess stage takes frames only when the engine has
room for them, and then the newest frame of every camera that has one (a live camera keeps only its newest frame:
older ones are dropped and counted; a video file listed as a source drops nothing). A camera that is reconnecting
or down is simply not in the batch. The stages call the predictor's `preprocess`, `inference` (AutoBackend) and
`postprocess`, Ultralytics' tracker callbacks (one tracker per camera) and `Results.plot`.

Every stage is timed (`StageClock`): the inference stage's busy fraction is how much of the wall time the engine
worked. Stopping (`stop()`, Ctrl-C) takes no new frame, lets the stages finish the frames they hold (every
processed frame is written), then joins every thread: the reader threads release their captures themselves.
"""

from __future__ import annotations

import queue
import threading
import time
import types
from collections.abc import Iterator

import torch
from ultralytics.utils import LOGGER

from clipce_rtdetr.deploy.stream_camera import Camera, Frame
from clipce_rtdetr.deploy.stream_outputs import RunOutputs
from clipce_rtdetr.deploy.stream_stats import LiveStats, StageClock, StreamingQuantiles

END = object()  # passed down the stages when the input ends
STAGES = ("preprocess", "inference", "postprocess", "tracker update", "annotate", "write")


class CameraSet:
    """What the predictor sees as its `dataset` in a live run: the cameras (Ultralytics' trackers read mode/bs)."""

    mode = "stream"

    def __init__(self, cameras: list[Camera]):
        self.cameras = cameras
        self.bs = len(cameras)
        self.stop_requested = False  # no new frame is taken
        self.user_stop = False  # asked by the user (Ctrl-C, SIGTERM), not by the end of the run

    def request_stop(self) -> None:  # from a signal handler: flags only
        self.user_stop = True
        self.halt()

    def halt(self) -> None:
        self.stop_requested = True
        for c in self.cameras:
            c.stop()


class CameraFigures:
    """Processed frames, their wall-clock span (FPS) and lag from arrival to written result of one camera (bounded)."""

    def __init__(self):
        self.frames = 0
        self.lag = StreamingQuantiles()
        self.first_wall: float | None = None
        self.last_latency = 0.0
        self.last_wall: float | None = None


class Pipeline:
    """Runs the stages in threads; iterate it for (Frame, Results) pairs, in the order they were written."""

    def __init__(self, predictor, cameras: list[Camera], outputs: RunOutputs, plot_args: dict, depth: int = 2):
        self.predictor, self.cameras, self.outputs, self.plot_args = predictor, cameras, outputs, plot_args
        self.dataset = CameraSet(cameras)
        self.notify = cameras[0].notify if cameras else threading.Event()
        self.track = predictor.args.mode == "track"
        self.room = threading.Semaphore(1)  # the engine's input: one batch waits while one is inferred
        self.q_post: queue.Queue = queue.Queue(depth)
        self.q_out: queue.Queue = queue.Queue(depth)
        self.q_done: queue.Queue = queue.Queue(depth + 2)
        self.q_pre: queue.Queue = queue.Queue(1)
        self.clocks = {name: StageClock(name) for name in STAGES}
        self.figures = [CameraFigures() for _ in cameras]
        self.live = LiveStats(predictor.args.mode or "predict")
        self.error: BaseException | None = None
        self.closed = False
        self.stuck: list[str] = []
        self.closed_outputs: set[int] = set()
        self.in_flight = [0] * len(cameras)  # frames of each camera taken and not yet written
        self._flight_lock = threading.Lock()
        self.threads = [threading.Thread(target=self._guard, args=(f,), name=f"stage-{f.__name__.strip('_')}",
                                         daemon=True)
                        for f in (self._preprocess, self._infer, self._postprocess, self._write)]  # fmt: skip

    # ------------------------------------------------------------------------------------------ stages
    def _guard(self, stage) -> None:
        """Run a stage; an exception ends the run (re-raised by the caller's iteration) instead of hanging it."""
        try:
            with torch.inference_mode():  # grad mode is per thread
                stage()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            self.error = self.error or e
            self.dataset.halt()
            for q in (self.q_pre, self.q_post, self.q_out, self.q_done):
                try:
                    q.put_nowait(END)
                except queue.Full:
                    pass

    def _gather(self) -> list[Frame]:
        """The newest frame of every camera that has one, the longest-waiting camera first."""
        waiting = [(t, c) for c in self.cameras if (t := c.waiting_since()) is not None]
        frames = [f for _, c in sorted(waiting, key=lambda x: x[0]) if (f := c.take()) is not None]
        with self._flight_lock:
            for f in frames:
                self.in_flight[f.camera] += 1
        return frames

    def _preprocess(self) -> None:
        clock = self.clocks["preprocess"]
        while not self.dataset.stop_requested:
            if not self.room.acquire(timeout=0.05):
                continue
            frames = []
            while not frames and not self.dataset.stop_requested:
                self.notify.clear()
                frames = self._gather()
                if not frames:
                    if all(c.done for c in self.cameras):
                        self._put(self.q_pre, END)
                        return
                    self.notify.wait(0.05)
            if not frames:
                break
            t = time.perf_counter()
            for f in frames:
                f.started = t
            im = self.predictor.preprocess([f.image for f in frames])
            clock.add(time.perf_counter() - t, len(frames))
            self._put(self.q_pre, (frames, im))
        self._put(self.q_pre, END)

    def _infer(self) -> None:
        clock = self.clocks["inference"]
        while (item := self.q_pre.get()) is not END:
            self.room.release()
            frames, im = item
            t, cpu = time.perf_counter(), time.thread_time()
            preds = self.predictor.inference(im)
            if im.device.type == "cuda":
                torch.cuda.synchronize(im.device)  # the engine's time, not the launch's
            clock.add(time.perf_counter() - t, len(frames), time.thread_time() - cpu)  # cpu: a one-thread CPU engine
            self._put(self.q_post, (frames, im, preds))
        self._put(self.q_post, END)

    def _postprocess(self) -> None:
        from ultralytics.trackers.track import on_predict_postprocess_end

        post, track = self.clocks["postprocess"], self.clocks["tracker update"]
        while (item := self.q_post.get()) is not END:
            frames, im, preds = item
            images = [f.image for f in frames]
            t = time.perf_counter()
            self.predictor.batch = ([self.cameras[f.camera].name for f in frames], images, [""] * len(frames))
            results = self.predictor.postprocess(preds, im, images)
            post.add(time.perf_counter() - t, len(frames))
            if self.track:
                t = time.perf_counter()
                shim = types.SimpleNamespace(args=self.predictor.args, dataset=types.SimpleNamespace(
                    mode="stream", bs=len(frames)), results=results, vid_path=[r.path for r in results],
                    trackers=[self.predictor.trackers[f.camera] for f in frames])  # fmt: skip
                on_predict_postprocess_end(shim, persist=True)  # Ultralytics' update, on these cameras' trackers
                results = shim.results
                track.add(time.perf_counter() - t, len(frames))
            self._put(self.q_out, (frames, results))
        self._put(self.q_out, END)

    def _write(self) -> None:
        while True:
            try:
                item = self.q_out.get(timeout=0.2)
            except queue.Empty:
                item = None
            if item is END:
                break
            if item is not None:
                self._write_batch(*item)
            self._close_lost()
        self.outputs.close()
        self._put(self.q_done, END)

    def _write_batch(self, frames: list[Frame], results: list) -> None:
        annotate, write = self.clocks["annotate"], self.clocks["write"]
        for frame, result in zip(frames, results):
            t = time.perf_counter()
            plotted = result.plot(**self.plot_args) if self.outputs.cameras[0].video else None
            t1 = time.perf_counter()
            self.outputs.write(result, frame, self.cameras[frame.camera].fps, plotted)
            t2 = time.perf_counter()
            annotate.add(t1 - t)
            write.add(t2 - t1)
            self._count(frame, t2)
            with self._flight_lock:
                self.in_flight[frame.camera] -= 1
            self._put(self.q_done, (frame, result))

    def _put(self, q: queue.Queue, item) -> None:
        """Put, waiting for room; gives up when a stage failed (its consumer may be gone)."""
        while True:
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                if self.error is not None:
                    return

    def _count(self, frame: Frame, now: float) -> None:
        fig = self.figures[frame.camera]
        fig.frames += 1
        lag = (now - frame.arrival) * 1e3
        fig.last_latency = (now - frame.started) * 1e3
        fig.lag.add(lag)
        self.live.add(1, latency_ms=fig.last_latency, lag_ms=lag, now=now)  # written frames: what the run processed
        fig.first_wall = fig.first_wall or frame.wall
        fig.last_wall = frame.wall

    def _close_lost(self) -> None:
        """A camera reported lost has its files closed (playable) once its last frames are written, once per loss."""
        for c in self.cameras:
            idle = not self.in_flight[c.index] and c.waiting_since() is None
            if c.lost and c.index not in self.closed_outputs and idle:
                self.outputs.close(c.index)
                self.closed_outputs.add(c.index)
            elif not c.lost:
                self.closed_outputs.discard(c.index)

    # ------------------------------------------------------------------------------------------ caller
    def __iter__(self) -> Iterator[tuple[Frame, object]]:
        for c in self.cameras:
            c.start()
        for t in self.threads:
            t.start()
        try:
            while True:
                try:
                    item = self.q_done.get(timeout=0.1)
                except queue.Empty:
                    self._report()
                    continue
                if item is END:
                    break
                self._report()
                yield item
        finally:
            self.close()
        if self.error is not None:
            raise self.error

    def _report(self) -> None:
        if self.live.due():
            states = " ".join(f"{c.index + 1}:{c.state}" for c in self.cameras) if len(self.cameras) > 1 else ""
            busy = self.clocks["inference"].figures()["busy_fraction"]
            LOGGER.info(self.live.line(f" | engine busy {busy:.0%}") + (f" | cameras {states}" if states else ""))

    def close(self, join_timeout: float | None = None) -> list[str]:
        """Stop taking frames, let the stages finish what they hold, join every thread; returns the names of
        threads still running after their timeout (a capture stuck in the driver), for the caller to report."""
        if self.closed:
            return self.stuck
        self.closed = True
        self.dataset.halt()
        stuck = []
        for t in self.threads:
            while t.is_alive():  # drain: the caller no longer takes results
                try:
                    self.q_done.get(timeout=0.05)
                except queue.Empty:
                    pass
            t.join()
        for c in self.cameras:
            if not c.join(join_timeout if join_timeout is not None else 2 * c.timeout + 5):
                stuck.append(c.thread.name)
        self.stuck = stuck
        return stuck

    def summary(self) -> dict:
        """The figures of `stream_summary.json`: per camera, the engine's busy fraction, per-stage times."""
        cams = []
        for c, fig in zip(self.cameras, self.figures):
            span = (fig.last_wall - fig.first_wall) if fig.frames > 1 else 0.0
            cams.append({"camera": c.index + 1, "source": c.name, "state": c.state, "transport": c.transport,
                         "frames_read": c.frames, "frames_processed": fig.frames, "dropped": c.dropped,
                         "stalls": c.stalls, "reconnects": c.reconnects, "lost": c.lost or c.error is not None,
                         "fps": round((fig.frames - 1) / span, 2) if span > 0 else 0.0,
                         "lag_ms_p50": round(fig.lag.quantile(0.5), 1), "lag_ms_p95": round(fig.lag.quantile(0.95), 1),
                         "error": c.error})  # fmt: skip
        stages = {name: clock.figures() for name, clock in self.clocks.items()}
        return {"cameras": cams, "engine_busy_fraction": stages["inference"]["busy_fraction"],
                "stages": stages, "frames": sum(f.frames for f in self.figures),
                "seconds": round(time.perf_counter() - self.live.t0, 2),
                "segments_deleted": self.outputs.cap.deleted}  # fmt: skip
