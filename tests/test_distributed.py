"""Multi-process CLIP-CE training on torch.distributed, proven on CPU with gloo (issue 14).

Each test launches real torchrun jobs (`python -m torch.distributed.run`) on this machine: one node with two
processes, two simulated nodes on a loopback rendezvous, an interrupted job resumed under torchrun.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests import test_readonly_cache
from tests.conftest import TINY_MODEL

pytestmark = pytest.mark.distributed
readonly_dataset = test_readonly_cache.readonly_dataset  # fixture: the tiny dataset on a read-only mount
TRAIN = ["device=cpu", f"model={TINY_MODEL}", "imgsz=64", "batch=8", "workers=0", "plots=False"]

# torchrun's target for the tests that look inside the processes: the `clipce-rtdetr` entry point itself, with a
# callback (added to Ultralytics' default callbacks, so every trainer gets it) that writes, per process and epoch,
# what that process saw. STOP_EPOCH interrupts the job (rank 1 dies) after the first batch of that epoch.
RECORDER = """
import hashlib, json, os, sys
import torch
from ultralytics.utils import callbacks
from ultralytics.utils.torch_utils import unwrap_model
from clipce_rtdetr.method import embedding_cache as ec

def record(tr):
    params = torch.cat([p.detach().float().flatten() for p in unwrap_model(tr.model).parameters()])
    rec = {
        "rank": int(os.environ["RANK"]), "epoch": tr.epoch, "world": tr.world_size,
        "batch": tr.train_loader.batch_size, "indices": [int(i) for i in tr.train_loader.sampler],
        "table": tr.weight_table.tolist(), "params": hashlib.sha256(params.numpy().tobytes()).hexdigest(),
        "counts": dict(ec.COUNTS), "source": tr.weight_source, "save_dir": str(tr.save_dir),
    }
    with open(os.path.join(os.environ["RECORD_DIR"], f"rank{rec['rank']}.jsonl"), "a") as f:
        f.write(json.dumps(rec) + "\\n")

def stop(tr):
    if tr.epoch == int(os.environ.get("STOP_EPOCH", "-1")) and os.environ["RANK"] == "1":
        os._exit(3)  # a process dies mid-epoch (a lost node): the job ends, last.pt is the previous epoch's

callbacks.default_callbacks["on_train_epoch_end"].append(record)
callbacks.default_callbacks["on_train_batch_end"].append(stop)
from clipce_rtdetr.cli import entrypoint
sys.exit(entrypoint(sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path: Path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PYTEST_CURRENT_TEST")}
    env.update({"OMP_NUM_THREADS": "1", "RECORD_DIR": str(tmp_path), **extra})
    return env


def _torchrun(launch: list[str], target: list[str], args: list[str], env, cwd) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch, *target, "train", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)


def _finish(proc: subprocess.Popen, ok: bool = True) -> str:
    out, _ = proc.communicate(timeout=600)
    if ok:
        assert proc.returncode == 0, out[-4000:]
    return out


def _records(tmp_path: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / f"rank{rank}.jsonl").read_text().splitlines()]


@pytest.fixture
def own_dataset(tiny_hazy_shapes, tmp_path) -> Path:
    """A private copy of the tiny dataset (no embedding cache yet)."""
    src = Path(tiny_hazy_shapes).parent
    dst = tmp_path / "data"
    for sub in ("images", "labels"):
        shutil.copytree(src / sub, dst / sub, ignore=shutil.ignore_patterns("*.cache", "*.clipce-*"))
    text = Path(tiny_hazy_shapes).read_text().replace(f"path: {src}", f"path: {dst}")
    (dst / "data.yaml").write_text("\n".join(ln for ln in text.splitlines() if not ln.startswith(("degr", "clean"))))
    return dst / "data.yaml"


def test_one_node_two_processes(own_dataset, tiny_clip, tmp_path):
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    args = [*TRAIN, f"data={own_dataset}", "clipce=fame", f"clip={tiny_clip}", "epochs=2"]
    args += [f"project={tmp_path / 'runs'}", "name=job"]
    out = _finish(_torchrun(["--standalone", "--nproc_per_node", "2"], [str(script)], args, _env(tmp_path), tmp_path))
    r0, r1 = _records(tmp_path, 0), _records(tmp_path, 1)
    assert len(r0) == len(r1) == 2
    # the embedding cache: built by rank 0 only; rank 1 neither built nor loaded it, it received the table
    assert r0[0]["counts"] == {"built": 1, "loaded": 0} and r0[0]["source"] == "built"
    assert r1[0]["counts"] == {"built": 0, "loaded": 0} and r1[0]["source"] == "received from rank 0"
    assert out.count("CLIP-CE: cache saved to") == 1
    n_images = 24
    for a, b in zip(r0, r1):
        assert a["table"] == b["table"] and len(a["table"]) > 0  # the identical weight table
        assert a["params"] == b["params"]  # DDP synchronised the model
        assert a["world"] == b["world"] == 2 and a["batch"] == b["batch"] == 4  # global batch 8 / 2 processes
        assert not set(a["indices"]) & set(b["indices"])  # disjoint halves
        assert sorted(a["indices"] + b["indices"]) == list(range(n_images))
        assert a["save_dir"] == b["save_dir"]
    assert r0[0]["indices"] != r0[1]["indices"]  # reshuffled per epoch
    runs = list((tmp_path / "runs").iterdir())
    assert [p.name for p in runs] == ["job"]  # one run folder, written by rank 0
    ckpt = torch.load(runs[0] / "weights" / "best.pt", map_location="cpu", weights_only=False)
    det = ckpt["model"]
    assert type(det).__name__ == "RTDETRDetectionModel" and getattr(det, "criterion", None) is None
    assert det.clipce_args["clipce"] == "fame"


def test_two_nodes_readonly_labels(readonly_dataset, tiny_clip, tmp_path):
    """Two torchrun invocations (one per simulated node) on a loopback rendezvous, `-m clipce_rtdetr` as the target;
    the label folder is read-only: the cache lands under $CLIPCE_HOME, built once."""
    home = tmp_path / "home"
    port = _free_port()
    args = [*TRAIN, f"data={readonly_dataset}", "clipce=fame", f"clip={tiny_clip}", "epochs=1"]
    args += [f"project={tmp_path / 'runs'}", "name=job"]
    launch = ["--nnodes", "2", "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port)]
    env = _env(tmp_path, CLIPCE_HOME=str(home))
    nodes = [_torchrun([*launch, "--node_rank", str(i)], ["-m", "clipce_rtdetr"], args, env, tmp_path) for i in (0, 1)]
    out0, out1 = _finish(nodes[0]), _finish(nodes[1])
    assert out0.count("cache saved under $CLIPCE_HOME") == 1 and "cache saved" not in out1
    caches = list((home / "caches").rglob("*.clipce-*.pt"))
    assert len(caches) == 1
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["job"]
    assert (tmp_path / "runs" / "job" / "weights" / "best.pt").exists()
    assert "train done (fame)" in out0


def test_interrupted_job_resumes_under_torchrun(own_dataset, tiny_clip, tmp_path):
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    args = [*TRAIN, f"data={own_dataset}", "clipce=ame", f"clip={tiny_clip}", "epochs=2", "ame_alpha=0.5"]
    args += [f"project={tmp_path / 'runs'}", "name=job"]
    launch = ["--standalone", "--nproc_per_node", "2"]
    proc = _torchrun(launch, [str(script)], args, _env(tmp_path, STOP_EPOCH="1"), tmp_path)
    _finish(proc, ok=False)
    assert proc.returncode != 0
    last = tmp_path / "runs" / "job" / "weights" / "last.pt"
    assert last.exists() and torch.load(last, weights_only=False)["epoch"] == 0  # epoch 1 saved, epoch 2 lost
    resume = _torchrun(launch, [str(script)], [f"resume={last}", "device=cpu"], _env(tmp_path), tmp_path)
    out = _finish(resume)
    assert "Resuming training" in out
    rows = (tmp_path / "runs" / "job" / "results.csv").read_text().splitlines()
    assert len(rows) == 3  # header + epochs 1 and 2, in the same run folder
    r0, r1 = _records(tmp_path, 0), _records(tmp_path, 1)
    assert [r["epoch"] for r in r0] == [0, 1] and r1[-1]["epoch"] == 1 and r0[-1]["params"] == r1[-1]["params"]
    assert r0[-1]["table"] == r1[-1]["table"]
    import yaml

    assert yaml.safe_load((tmp_path / "runs" / "job" / "clipce.yaml").read_text())["ame_alpha"] == 0.5


def test_missing_clip_weights_reported_at_start(own_dataset, tmp_path):
    args = [*TRAIN, f"data={own_dataset}", "clipce=fame", f"clip=clipce-tiny:{tmp_path / 'nope.safetensors'}"]
    args += [f"project={tmp_path / 'runs'}"]
    proc = _torchrun(["--standalone", "--nproc_per_node", "2"], ["-m", "clipce_rtdetr"], args, _env(tmp_path), tmp_path)
    out = _finish(proc, ok=False)
    assert proc.returncode != 0 and "weights file not found" in out
    assert not (tmp_path / "runs").exists()  # before any run folder or data loading


# ---------------------------------------------------------------------------------------------- pieces, in-process
def test_no_device_and_no_gpu_means_the_cpu():
    """torchrun without device= on a machine without CUDA trains on the CPU (as Ultralytics does), not a traceback."""
    from clipce_rtdetr.engine import distributed

    job = distributed.DistEnv(rank=0, world_size=2, local_rank=0, local_world_size=2, node_rank=0)
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: no device= means its GPUs here")
    assert distributed.local_device_arg(None, job) == "cpu"
    assert distributed.local_device_arg("", job) == "cpu"


def test_resume_takes_the_devices_the_run_started_on(tmp_path):
    from clipce_rtdetr.engine import distributed

    ckpt = tmp_path / "last.pt"
    torch.save({"train_args": {"device": "0,1,2,3"}, "epoch": 3}, ckpt)
    assert distributed.checkpoint_device(str(ckpt)) == "0,1,2,3"
    assert distributed.checkpoint_device(True, str(ckpt)) == "0,1,2,3"  # resume=True with model=last.pt
    assert distributed.checkpoint_device(str(tmp_path / "missing.pt")) is None


def test_nan_recovery_leaves_the_ema_loss_stock():
    """Ultralytics rebuilds the EMA from the live model after a NaN recovery: its loss must not keep the last
    training batch's object weights (validation would weight, or crash on, a different batch's objects)."""
    from types import SimpleNamespace

    from ultralytics.nn.tasks import RTDETRDetectionModel
    from ultralytics.utils.torch_utils import ModelEMA

    from clipce_rtdetr.engine.trainer import ClipCETrainerMixin
    from clipce_rtdetr.models.rtdetr.loss import ClipCEDetectionLoss

    model = RTDETRDetectionModel(TINY_MODEL, nc=5, verbose=False)
    model.criterion = ClipCEDetectionLoss(nc=5)
    model.criterion.object_weights = torch.tensor([2.0, 1.5, 1.2])  # a training batch's three objects
    trainer = SimpleNamespace(ema=ModelEMA(model))
    assert trainer.ema.ema.criterion.object_weights is not None  # the copy Ultralytics makes
    ClipCETrainerMixin._stock_ema_criterion(trainer)
    assert trainer.ema.ema.criterion.object_weights is None
    assert model.criterion.object_weights is not None  # the live model's loss keeps weighting
