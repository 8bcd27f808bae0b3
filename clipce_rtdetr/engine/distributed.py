"""torch.distributed for CLIP-CE training, under torchrun/SLURM (any number of nodes) or Ultralytics' own launcher.

Ultralytics' trainer reads RANK/LOCAL_RANK at import (global and local rank under torchrun) but sizes its process
group and batch split by the *local* device count, and picks the run folder in every process on its own. The
trainer mixin fixes those few places with the helpers here: the global world size and rank come from the launcher's
environment (WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE), each process drives its local device (a GPU, or the
CPU with the gloo backend: how the tests prove the path without a GPU), and rank 0's decisions (run folder, weight
table) are broadcast to the others.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from clipce_rtdetr.errors import ClipCEError

TIMEOUT = timedelta(hours=3)  # as Ultralytics: rank 0 may build a large embedding cache while the others wait


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


def init_process_group(device: torch.device) -> None:
    """Join the job's process group (env:// rendezvous from the launcher); gloo on CPU, NCCL on CUDA."""
    if dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")  # as Ultralytics: enforce the timeout
    backend = "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"
    dist.init_process_group(backend=backend, timeout=TIMEOUT)


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
