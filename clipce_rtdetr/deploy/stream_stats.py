"""Live figures of bounded size for runs that last months: streaming quantiles, windowed rates, stage clocks.

Nothing here grows with the number of frames: a quantile is read from a fixed log-spaced histogram (about 1 %
relative resolution), a rate from a fixed-length window of timestamps, a stage's time from running sums.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque

import numpy as np

REPORT_EVERY = 2.0  # seconds between live FPS / latency lines


class StreamingQuantiles:
    """Quantiles of a stream of positive values (ms) from a fixed histogram: memory does not grow with the count.

    Bins are log-spaced from `lo` to `hi` with `per_decade` bins per decade (230 per decade: ~1 % wide); values
    outside fall into the end bins. A quantile is the geometric centre of the bin holding it.
    """

    def __init__(self, lo: float = 0.01, hi: float = 1e7, per_decade: int = 230):
        self.lo, self.per_decade = lo, per_decade
        self.counts = np.zeros(int(math.ceil(math.log10(hi / lo) * per_decade)) + 1, np.int64)
        self.n, self.total = 0, 0.0

    def add(self, value: float) -> None:
        k = int(math.log10(max(value, self.lo) / self.lo) * self.per_decade) if value > 0 else 0
        self.counts[min(k, len(self.counts) - 1)] += 1
        self.n += 1
        self.total += value

    def quantile(self, q: float) -> float:
        if self.n == 0:
            return 0.0
        k = int(np.searchsorted(np.cumsum(self.counts), q * self.n, side="left"))
        return self.lo * 10 ** ((k + 0.5) / self.per_decade)

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    def figures(self, name: str) -> dict[str, float]:
        return {f"{name}_p50": round(self.quantile(0.5), 2), f"{name}_p95": round(self.quantile(0.95), 2)}


class RateWindow:
    """Events per second over the last `window` seconds (at most `maxlen` timestamps kept)."""

    def __init__(self, window: float = 5.0, maxlen: int = 4096):
        self.window = window
        self.times: deque[float] = deque(maxlen=maxlen)

    def tick(self, now: float | None = None, n: int = 1) -> None:
        now = time.perf_counter() if now is None else now
        self.times.extend([now] * n)

    def rate(self, now: float | None = None) -> float:
        now = time.perf_counter() if now is None else now
        while self.times and now - self.times[0] > self.window:
            self.times.popleft()
        if len(self.times) < 2:
            return 0.0
        span = now - self.times[0]
        return len(self.times) / span if span > 0 else 0.0


class StageClock:
    """Busy time and count of one pipeline stage (thread-safe); `busy_fraction` over the wall time since `start`."""

    def __init__(self, name: str):
        self.name = name
        self.busy = self.cpu = 0.0
        self.count = 0
        self.items = 0
        self._lock = threading.Lock()
        self.t0 = time.perf_counter()

    def add(self, seconds: float, items: int = 1, cpu: float = 0.0) -> None:
        """`seconds` of wall time in the stage for `items` frames; `cpu`: the CPU time its thread used meanwhile."""
        with self._lock:
            self.busy += seconds
            self.cpu += cpu
            self.count += 1
            self.items += items

    def restart(self) -> None:
        """Forget what was measured so far (the warm-up)."""
        with self._lock:
            self.busy, self.cpu, self.count, self.items, self.t0 = 0.0, 0.0, 0, 0, time.perf_counter()

    def figures(self) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        return {
            "ms_per_call": round(1e3 * self.busy / self.count, 3) if self.count else 0.0,
            "ms_per_frame": round(1e3 * self.busy / self.items, 3) if self.items else 0.0,
            "busy_fraction": round(self.busy / wall, 4) if wall > 0 else 0.0,
            "cpu_fraction": round(self.cpu / wall, 4) if wall > 0 else 0.0,
        }


class LiveStats:
    """Frames per second (sliding window), latency per frame (pre + inference + post) and, for live sources, the
    lag from a frame's arrival to its result; bounded in memory (streaming quantiles, fixed windows)."""

    def __init__(self, mode: str, every: float = REPORT_EVERY, window: float = 5.0):
        self.mode, self.every = mode, every
        self.t0 = self.last_report = time.perf_counter()
        self.frames = 0
        self.rate = RateWindow(window)
        self.latency = StreamingQuantiles()
        self.lag = StreamingQuantiles()
        self.fps = 0.0
        self.latency_ms = 0.0
        self.last_lag_ms: float | None = None
        self.videos: dict[str, tuple[int, int]] = {}  # video path -> (frames read, frames declared): one per file

    def add(self, n: int, latency_ms: float | None = None, lag_ms: float | None = None,
            now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        self.frames += n
        self.rate.tick(now, n)
        self.fps = self.rate.rate(now)
        if latency_ms is not None:
            self.latency_ms = latency_ms
            self.latency.add(latency_ms)
        if lag_ms is not None:
            self.last_lag_ms = lag_ms
            self.lag.add(lag_ms)

    def due(self) -> bool:
        now = time.perf_counter()
        if now - self.last_report < self.every:
            return False
        self.last_report = now
        return True

    def line(self, extra: str = "") -> str:
        s = f"{self.mode}: {self.fps:.1f} FPS | latency {self.latency_ms:.1f} ms/frame{extra}"
        if self.last_lag_ms is not None:
            s += f" | lag {self.last_lag_ms:.0f} ms"
        return s + f" | {self.frames} frames"

    def summary(self) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        out = {
            "frames": self.frames,
            "seconds": round(wall, 3),
            "fps": round(self.frames / wall, 2) if wall > 0 else 0.0,
            "latency_ms_median": round(self.latency.quantile(0.5), 2),
            "latency_ms_p95": round(self.latency.quantile(0.95), 2),
        }
        if self.lag.n:
            out["lag_ms_median"] = round(self.lag.quantile(0.5), 2)
            out["lag_ms_p95"] = round(self.lag.quantile(0.95), 2)
        return out
