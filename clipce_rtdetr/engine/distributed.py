"""torch.distributed for CLIP-CE training, under torchrun/SLURM (any number of nodes) or Ultralytics' own launcher.

Ultralytics' trainer reads RANK/LOCAL_RANK at import (global and local rank under torchrun) but sizes its process
group and batch split by the *local* device count, and picks the run folder in every process on its own. The
trainer mixin fixes those few places with the helpers here: the global world size and rank come from the launcher's
environment (WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE), each process drives its local device (a GPU, or the
CPU with the gloo backend: how the tests prove the path without a GPU), and rank 0's decisions (run folder, weight
table) are broadcast to the others.

Faults: collectives give up after `dist_timeout` seconds (600 by default, as torch's own default order of magnitude;
Ultralytics uses 3 hours because its rank 0 once built caches alone), and heartbeats (`watchdog.py`) name a hung or
lost process within that time. Under `torchrun --max-restarts N` every restart attempt gets its own namespace in
torchrun's store: the agent keeps one store for the whole job, and a restarted process that read the previous
attempt's gloo addresses failed with "Gloo connectFullMesh failed ... Connection refused".
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ultralytics.utils import LOGGER

from clipce_rtdetr.errors import ClipCEError

DEFAULT_TIMEOUT_S = 600.0  # `dist_timeout`: long waits on uneven work go through the store, not collectives
RUN_ID_FILE = ".torchrun-id"  # in a run folder started by torchrun: its job id (TORCHELASTIC_RUN_ID)
_JOB: dict[str, Any] = {}  # this process's job store (waits) and heartbeat, once the process group is joined


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torch.distributed job, as the launcher (torchrun, SLURM + torchrun) set it."""

    rank: int  # global
    world_size: int  # global
    local_rank: int
    local_world_size: int
    node_rank: int


def dist_env() -> DistEnv | None:
    """The job this process belongs to (None: a plain single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "0")) or world
    return DistEnv(
        rank=int(os.environ["RANK"]),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world_size=local_world,
        node_rank=int(os.environ.get("GROUP_RANK", "0")),
    )


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main() -> bool:
    """Global rank 0 (or no job): the process that builds caches and writes the run folder."""
    return not is_distributed() or dist.get_rank() == 0


def local_device_arg(device: Any, env: DistEnv) -> str:
    """The `device=` value of this process: the CPU stays the CPU; `0,1,2,3` gives local rank i its i-th GPU;
    no device means one GPU per local process (0..nproc_per_node-1)."""
    text = "" if device is None else str(device).strip().lower().replace("cuda:", "")
    if text in ("cpu", "mps"):
        return text
    if not text and not torch.cuda.is_available():
        return "cpu"  # as Ultralytics: no device given and no GPU means the CPU
    devices = [d for d in text.split(",") if d.strip() != ""]
    if not devices:
        devices = [str(i) for i in range(env.local_world_size)]
    if len(devices) < env.local_world_size:
        raise ClipCEError(
            f"device={device} lists {len(devices)} GPU(s) but this node runs {env.local_world_size} processes "
            f"(torchrun --nproc_per_node {env.local_world_size}): list one GPU per process, e.g. "
            f"device={','.join(str(i) for i in range(env.local_world_size))}, or use device=cpu."
        )
    return ",".join(devices)


def checkpoint_device(resume: Any, model: Any = None) -> str | None:
    """The `device=` a resumed run was started with (its checkpoint's train_args), or None if unreadable."""
    path = resume if isinstance(resume, (str, os.PathLike)) else model
    try:
        return torch.load(path, map_location="cpu", weights_only=False).get("train_args", {}).get("device")
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is reported by Ultralytics' own resume check
        return None


def torch_device(device_arg: str, env: DistEnv) -> torch.device:
    if device_arg in ("cpu", "mps"):
        return torch.device(device_arg)
    return torch.device("cuda", int(device_arg.split(",")[env.local_rank]))


def restart_attempt() -> int:
    """How many times torchrun has restarted this job's processes (0: the first attempt, or no torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def job_store(timeout: timedelta) -> dist.Store | None:
    """A new client of the job's store, in a namespace of this restart attempt (None: the launcher hosts none, e.g.
    Ultralytics' own DDP launcher or a plain env:// job, where rank 0's process hosts it during init)."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        return None
    store = dist.TCPStore(addr, int(port), is_master=False, timeout=timeout, use_libuv=True)
    return dist.PrefixStore(f"clipce/attempt{restart_attempt()}/", store)


def init_process_group(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Join the job's process group (env:// rendezvous from the launcher); gloo on CPU, NCCL on CUDA. Under torchrun
    the group is formed in this restart attempt's namespace of the agent's store; then the heartbeats start."""
    if dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")  # as Ultralytics: enforce the timeout
    backend = "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"
    timeout = timedelta(seconds=float(timeout_s))
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = job_store(timeout) if agent else None
    if store is not None:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        dist.init_process_group(backend=backend, timeout=timeout, store=store, rank=rank, world_size=world)
    else:
        dist.init_process_group(backend=backend, timeout=timeout)
        store = job_store(timeout)  # rank 0's process hosts it now
    if store is not None:
        start_heartbeat(store, timeout)


def start_heartbeat(store: dist.Store, timeout: timedelta) -> None:
    from clipce_rtdetr.engine.watchdog import Heartbeat

    _JOB["store"] = store
    own = job_store(timeout)  # the heartbeat thread's own connection
    _JOB["heartbeat"] = Heartbeat(own, dist.get_rank(), dist.get_world_size(), timeout.total_seconds()).start()


def wait_all(tag: str) -> None:
    """All processes meet here; a long, uneven wait (heartbeats bound it, not the collective timeout)."""
    if not is_distributed():
        return
    if "store" not in _JOB:
        dist.barrier()
        return
    from clipce_rtdetr.engine.watchdog import store_barrier

    store_barrier(_JOB["store"], dist.get_world_size(), tag)


PEER_FAILURE = re.compile(
    r"Connection (closed|reset|refused)|Timed out|timed out|[Gg]loo|NCCL|DistBackendError|Broken pipe", re.S
)


def is_peer_failure(error: BaseException) -> bool:
    """A collective that failed because another process of the job stopped, hung or vanished."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    if isinstance(error, getattr(dist, "DistBackendError", ())):
        return True
    return isinstance(error, RuntimeError) and bool(PEER_FAILURE.search(str(error)))


def peer_failure_message(error: BaseException) -> str:
    """One line for a collective that failed because of another process: which one went silent (from the
    heartbeats, after a short wait for them to tell), and what to do."""
    import time

    rank = dist.get_rank() if dist.is_initialized() else "?"
    beat = _JOB.pop("heartbeat", None)
    silent = []
    if beat is not None:
        time.sleep(2.5 * beat.interval)  # a process that just died has missed at least two beats by then
        silent = beat.silent(2 * beat.interval)
        beat.stop(finished=False)
    first = next((ln.strip() for ln in str(error).splitlines() if ln.strip()), type(error).__name__)
    first = re.sub(r"\[[^\]]*\]\s*", "", first) or type(error).__name__  # torch's source-file tags
    lost = f"lost: {'; '.join(silent)}" if silent else "another process of the job stopped (its own message says why)"
    return (
        f"the job lost a process ({lost}); this process (rank {rank}) stops too. Continue the run with "
        f"`train resume=.../weights/last.pt` (torchrun --max-restarts N does it by itself). [{first[:200]}]"
    )


def restarted_run(cfg: dict, overrides: dict[str, Any]) -> dict[str, Any] | None:
    """On a torchrun restart (--max-restarts): the overrides that continue this job's run (resume from its last.pt,
    or, when the first attempt died before finishing an epoch, start again in the same folder); None: no run of
    this job (its id, TORCHELASTIC_RUN_ID, is recorded in the run folder) is there."""
    from ultralytics.cfg import get_cfg, get_save_dir

    folder = Path(get_save_dir(get_cfg(cfg, {**overrides, "exist_ok": True})))
    marker = folder / RUN_ID_FILE
    if not marker.is_file() or marker.read_text().strip() != os.environ.get("TORCHELASTIC_RUN_ID"):
        return None
    last = folder / "weights" / "last.pt"
    LOGGER.info(f"CLIP-CE: torchrun restart {restart_attempt()}: continuing {folder}")
    if not last.is_file():
        return {"save_dir": str(folder)}
    done = int(torch.load(last, map_location="cpu", weights_only=False)["epoch"]) + 1  # epochs it holds
    keep_epochs_up_to(folder / "results.csv", done)
    return {"resume": str(last)}


def keep_epochs_up_to(results_csv: Path, epochs: int) -> None:
    """Drop results.csv rows after the checkpoint's last epoch: a process lost between Ultralytics' writing of an
    epoch's row and of its checkpoint leaves a row the resumed run writes again (each epoch must appear once)."""
    from clipce_rtdetr.atomic import write_text

    if not results_csv.is_file():
        return
    lines = results_csv.read_text().splitlines()
    rows = [ln for ln in lines[1:] if ln.strip() and float(ln.split(",")[0]) <= epochs]
    if len(rows) != len(lines) - 1:
        write_text(results_csv, "\n".join([lines[0], *rows]) + "\n")


def check_batch(batch: Any, world_size: int) -> None:
    """The global `batch` splits evenly over the job's processes (Ultralytics gives each `batch // world_size`)."""
    if world_size <= 1 or not isinstance(batch, int) or isinstance(batch, bool) or batch <= 0:
        return  # auto batch (-1) and fractions are Ultralytics' to handle
    if batch < world_size:
        raise ClipCEError(
            f"batch={batch} is smaller than the job's {world_size} processes: each would get 0 images. batch is the "
            f"global batch size under torchrun; use batch={world_size} or more (a multiple of {world_size})."
        )
    if batch % world_size:
        lo, hi = batch // world_size * world_size, -(-batch // world_size) * world_size
        raise ClipCEError(
            f"batch={batch} does not divide among the job's {world_size} processes: each would take "
            f"{batch // world_size} images, a global batch of {lo}, not {batch}. Use batch={lo} or batch={hi}."
        )


def broadcast_object(obj: Any = None) -> Any:
    """Rank 0's `obj` in every process (pickled; for small objects: paths, weight tables, hashes)."""
    if not is_distributed():
        return obj
    box = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool) -> bool:
    """True in every process when it is true in any (so every rank takes the same branch)."""
    if not is_distributed():
        return bool(flag)
    box = [None] * dist.get_world_size()
    dist.all_gather_object(box, bool(flag))
    return any(box)


class _CPUDistributedDataParallel(torch.nn.parallel.DistributedDataParallel):
    """DDP that accepts Ultralytics' `device_ids=[device.index]`, i.e. `[None]`, for a module on the CPU."""

    def __init__(self, module, device_ids=None, *args, **kwargs):
        super().__init__(module, None if device_ids == [None] else device_ids, *args, **kwargs)


@contextmanager
def cpu_ddp() -> Iterator[None]:
    """While Ultralytics' `_setup_train` wraps the model: DDP of a CPU module (gloo) instead of a ValueError.
    Ultralytics passes `device_ids=[self.device.index]`, which DDP refuses for CPU modules; its own launcher never
    runs on the CPU. Swapped back at once, so nothing else sees the subclass."""
    original = torch.nn.parallel.DistributedDataParallel
    torch.nn.parallel.DistributedDataParallel = _CPUDistributedDataParallel
    try:
        yield
    finally:
        torch.nn.parallel.DistributedDataParallel = original


def barrier_and_destroy() -> None:
    """Leave the process group at the end of training (all processes together), so the launcher sees a clean exit."""
    if "heartbeat" in _JOB:
        _JOB.pop("heartbeat").stop(finished=True)
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


class _NoAccelerator:
    @staticmethod
    def current_device() -> int:
        return 0


@contextmanager
def cpu_final_eval() -> Iterator[None]:
    """While Ultralytics validates best.pt at the end of a CPU (gloo) job: its validator places the model of every
    DDP process on `torch.device("cuda", current_device())` (it has no CPU case for DDP; its own launcher is GPU
    only). Here that device is the CPU; everything else (sharded loader, gathered statistics) runs as it is."""
    import ultralytics.engine.validator as v

    backend, autobackend = v.get_torch_device_backend, v.AutoBackend

    def on_cpu(*args, **kwargs):
        return autobackend(*args, **{**kwargs, "device": torch.device("cpu")})

    v.get_torch_device_backend, v.AutoBackend = (lambda _type: _NoAccelerator), on_cpu
    try:
        yield
    finally:
        v.get_torch_device_backend, v.AutoBackend = backend, autobackend
