"""Heartbeats between the processes of a torch.distributed job: a hung or lost process is named within
`dist_timeout` seconds instead of leaving the others silent in a collective for hours.

Each process bumps its own counter in the job's key-value store (the TCPStore that torchrun's agent, or rank 0,
serves) every few seconds from a daemon thread, and watches the other processes' counters. A counter that has not
moved for `timeout` seconds belongs to a process that is hung (SIGSTOP, a deadlock, a stuck driver) or lost (killed,
its node gone): the watcher logs which one (rank, host, pid) and ends its own process with exit status 1, so the
launcher stops the job (or restarts it, with `torchrun --max-restarts`). Clocks are never compared across machines:
only whether a counter moved, by the watcher's own clock. A process that finished cleanly says so first and is not
watched any more.

The same store carries waits that must not be bounded by the collective timeout: the ranks that finish their share
of the embedding cache first wait for the others, and every rank waits while rank 0 merges and scores it. They poll
the store while the heartbeats go on, so a slow but live process is waited for and a dead one is still named.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

from ultralytics.utils import LOGGER

POLL_S = 0.2  # how often a store wait looks again


class Heartbeat:
    """Beat for this process and watch the others (`store`: a client of the job's store, this thread's own)."""

    def __init__(self, store, rank: int, world_size: int, timeout_s: float):
        self.store, self.rank, self.world, self.timeout = store, rank, world_size, float(timeout_s)
        self.interval = max(0.5, min(5.0, self.timeout / 6))
        self._stop = threading.Event()
        self.seen: dict[int, tuple[int, float]] = {}  # rank -> (its counter, when it last moved, local clock)
        self._thread = threading.Thread(target=self._run, name="clipce-heartbeat", daemon=True)
        self.store.set(f"who/{rank}", f"pid {os.getpid()} on {socket.gethostname()}")

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self, finished: bool = True) -> None:
        """Stop beating; `finished`: tell the others this process ended cleanly (not lost)."""
        self._stop.set()
        if finished:
            try:
                self.store.set(f"done/{self.rank}", "1")
            except Exception:  # noqa: BLE001 - the store's host may already be gone at the very end
                pass

    def describe(self, rank: int) -> str:
        try:
            return f"rank {rank} ({self.store.get(f'who/{rank}').decode()})"
        except Exception:  # noqa: BLE001 - it never registered, or the store is gone
            return f"rank {rank}"

    def _counts(self) -> dict[int, int]:
        return {r: int(self.store.add(f"beat/{r}", 0)) for r in range(self.world) if r != self.rank}

    def _finished(self, rank: int) -> bool:
        return bool(self.store.check([f"done/{rank}"]))

    def _run(self) -> None:
        seen = self.seen
        store_down_since = None
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            try:
                self.store.add(f"beat/{self.rank}", 1)
                counts = self._counts()
                store_down_since = None
            except Exception as e:  # noqa: BLE001 - the store's host (torchrun's agent or rank 0) is gone
                store_down_since = store_down_since or now
                if now - store_down_since > self.timeout:
                    self._abort(f"the job's store (served by torchrun or rank 0) has not answered for "
                                f"{now - store_down_since:.0f} s ({type(e).__name__}: {e})")
                continue
            for r, c in counts.items():
                if r not in seen or seen[r][0] != c:
                    seen[r] = (c, now)
                elif now - seen[r][1] > self.timeout and not self._finished(r):
                    self._abort(f"{self.describe(r)} has given no sign of life for {now - seen[r][1]:.0f} s "
                                f"(dist_timeout={self.timeout:g}): it is hung or lost")

    def silent(self, min_s: float) -> list[str]:
        """The other processes whose heartbeat has not moved for `min_s` seconds (and did not finish cleanly)."""
        now, out = time.monotonic(), []
        for r, (_, since) in sorted(self.seen.items()):
            try:
                if now - since >= min_s and not self._finished(r):
                    out.append(f"{self.describe(r)}, silent for {now - since:.0f} s")
            except Exception:  # noqa: BLE001 - the store went with it
                out.append(f"{self.describe(r)}")
        return out

    def _abort(self, why: str) -> None:
        LOGGER.error(
            f"CLIP-CE: {why}. Stopping this process (rank {self.rank}) so the job ends instead of waiting; "
            "continue the run with `train resume=.../weights/last.pt`, or let `torchrun --max-restarts N` restart it."
        )
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(1)


def store_barrier(store, world_size: int, tag: str) -> None:
    """Every process of the job arrives here (a barrier in the store, bounded by the heartbeats, not by the
    collective timeout): for waits on long, uneven work such as building shares of the embedding cache."""
    store.add(f"arrive/{tag}", 1)
    while int(store.add(f"arrive/{tag}", 0)) < world_size:
        time.sleep(POLL_S)
