"""Multi-process CLIP-CE training on torch.distributed, proven on CPU with gloo (issues 14, 21, 22).

Each test launches real torchrun jobs (`python -m torch.distributed.run`) on this machine: one node with two
processes on a mostly object-free dataset (the embedding cache built in shares), two simulated nodes on a loopback
rendezvous, a hung process, a killed process under `--max-restarts 1`, and arguments refused before any work.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests import test_readonly_cache
from tests.conftest import TINY_MODEL

pytestmark = pytest.mark.distributed
readonly_dataset = test_readonly_cache.readonly_dataset  # fixture: the tiny dataset on a read-only mount
TRAIN = ["device=cpu", f"model={TINY_MODEL}", "imgsz=64", "batch=2", "workers=0", "plots=False", "val=False"]
N_TRAIN = 12  # training images in the copies these tests train on
CACHE_FILE = re.compile(r"train\.clipce-[0-9a-f]{12}\.pt")  # the embedding cache (not its scores file)

# torchrun's target for the tests that look inside the processes: the `clipce-rtdetr` entry point itself, with a
# callback (added to Ultralytics' default callbacks, so every trainer gets it) that writes, per process and epoch,
# what that process saw. FAULT ("kill" or "hang") strikes rank 1 after the first batch of epoch FAULT_EPOCH, in the
# job's first attempt only (a torchrun restart runs clean).
RECORDER = """
import hashlib, json, os, signal, sys
import torch
from ultralytics.utils import callbacks
from ultralytics.utils.torch_utils import unwrap_model
from clipce_rtdetr.method import embedding_cache as ec

def record(tr):
    params = torch.cat([p.detach().float().flatten() for p in unwrap_model(tr.model).parameters()])
    rec = {
        "rank": int(os.environ["RANK"]), "epoch": tr.epoch, "world": tr.world_size,
        "attempt": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
        "batch": tr.train_loader.batch_size, "indices": [int(i) for i in tr.train_loader.sampler],
        "table": tr.weight_table.tolist(), "params": hashlib.sha256(params.numpy().tobytes()).hexdigest(),
        "counts": dict(ec.COUNTS), "source": tr.weight_source, "save_dir": str(tr.save_dir),
    }
    with open(os.path.join(os.environ["RECORD_DIR"], f"rank{rec['rank']}.jsonl"), "a") as f:
        f.write(json.dumps(rec) + "\\n")

def fault(tr):
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if tr.epoch == int(os.environ.get("FAULT_EPOCH", "-1")) and os.environ["RANK"] == "1" and first_attempt:
        os.kill(os.getpid(), signal.SIGSTOP if os.environ["FAULT"] == "hang" else signal.SIGKILL)

callbacks.default_callbacks["on_train_epoch_end"].append(record)
callbacks.default_callbacks["on_train_batch_end"].append(fault)
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


def _epochs(run: Path) -> list[int]:
    rows = (run / "results.csv").read_text().splitlines()[1:]
    return [int(float(r.split(",")[0])) for r in rows]


def _copy_dataset(tiny_hazy_shapes, dst: Path, keep_every: int = 1, n_train: int = N_TRAIN) -> Path:
    """A private copy of the tiny dataset (no caches) with its first `n_train` training images (fewer steps: these
    tests are about processes, not learning); only every `keep_every`-th of them keeps its objects."""
    src = Path(tiny_hazy_shapes).parent
    for sub in ("images", "labels"):
        shutil.copytree(src / sub, dst / sub, ignore=shutil.ignore_patterns("*.cache", "*.clipce-*"))
    for i, im in enumerate(sorted((dst / "images" / "train").iterdir())):
        label = dst / "labels" / "train" / f"{im.stem}.txt"
        if i >= n_train:
            im.unlink()
            label.unlink(missing_ok=True)
        elif i % keep_every:
            label.write_text("")
    text = Path(tiny_hazy_shapes).read_text().replace(f"path: {src}", f"path: {dst}")
    (dst / "data.yaml").write_text("\n".join(ln for ln in text.splitlines() if not ln.startswith(("degr", "clean"))))
    return dst / "data.yaml"


@pytest.fixture
def own_dataset(tiny_hazy_shapes, tmp_path) -> Path:
    return _copy_dataset(tiny_hazy_shapes, tmp_path / "data")


@pytest.fixture
def negatives_dataset(tiny_hazy_shapes, tmp_path) -> Path:
    """80 % of the training images without objects: with one image per process per step, a process often gets a
    batch with none while the other has some (the hang the reference RT-DETR fixed in 2026)."""
    return _copy_dataset(tiny_hazy_shapes, tmp_path / "data", keep_every=5)


def one_process_build(data_yaml: Path, clip: str, monkeypatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The same crops embedded by this process alone, every chunk its own, one thread as in the job's processes."""
    from clipce_rtdetr.clip.loader import load_clip
    from clipce_rtdetr.method import embedding_cache as ec
    from tests.test_cache_build import train_labels

    monkeypatch.setenv("CLIPCE_CACHE_CHUNK", "2")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return ec.compute_embeddings(train_labels(data_yaml)[0], load_clip(clip), 0.1, 64, progress=False)
    finally:
        torch.set_num_threads(threads)


def test_one_node_two_processes(negatives_dataset, tiny_clip, tmp_path, monkeypatch):
    """RT-DETR (denoising on), clipce=fame, one image per process per step on a mostly object-free dataset: the job
    finishes; the cache is built in shares by both processes and equals a one-process build bit for bit."""
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    args = [*TRAIN, f"data={negatives_dataset}", "clipce=fame", f"clip={tiny_clip}", "epochs=2"]
    args += [f"project={tmp_path / 'runs'}", "name=job"]
    env = _env(tmp_path, CLIPCE_CACHE_CHUNK="2")  # the few objects make several chunks, so both processes build
    out = _finish(_torchrun(["--standalone", "--nproc_per_node", "2"], [str(script)], args, env, tmp_path))
    r0, r1 = _records(tmp_path, 0), _records(tmp_path, 1)
    assert len(r0) == len(r1) == 2
    # the embedding cache: each process embedded its share into shard files; rank 0 merged them (computing none)
    assert r0[0]["counts"]["shards"] > 0 and r1[0]["counts"]["shards"] > 0 and r0[0]["counts"]["merge_computed"] == 0
    assert r0[0]["counts"]["built"] == 1 and r1[0]["counts"]["built"] == r1[0]["counts"]["loaded"] == 0
    assert r0[0]["source"] == "built" and r1[0]["source"] == "received from rank 0"
    assert out.count("CLIP-CE: cache saved to") == 1
    (cache,) = [p for p in (negatives_dataset.parent / "labels").iterdir() if CACHE_FILE.fullmatch(p.name)]
    assert not list(cache.parent.glob("*.shards"))  # merged and removed
    built = torch.load(cache, weights_only=True)
    single_emb, single_valid = one_process_build(negatives_dataset, tiny_clip, monkeypatch)
    assert torch.equal(built["embeddings"], single_emb) and torch.equal(built["valid"], single_valid)
    n_images = N_TRAIN
    for a, b in zip(r0, r1):
        assert a["table"] == b["table"] and len(a["table"]) > 0  # the identical weight table
        assert a["params"] == b["params"]  # DDP synchronised the model
        assert a["world"] == b["world"] == 2 and a["batch"] == b["batch"] == 1  # global batch 2 / 2 processes
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
    the label folder is read-only: the shares and the cache land under $CLIPCE_HOME, built once."""
    home = tmp_path / "home"
    port = _free_port()
    args = [*TRAIN, f"data={readonly_dataset}", "clipce=fame", f"clip={tiny_clip}", "epochs=1"]
    args += [f"project={tmp_path / 'runs'}", "name=job"]
    launch = ["--nnodes", "2", "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port)]
    env = _env(tmp_path, CLIPCE_HOME=str(home), CLIPCE_CACHE_CHUNK="8")
    nodes = [_torchrun([*launch, "--node_rank", str(i)], ["-m", "clipce_rtdetr"], args, env, tmp_path) for i in (0, 1)]
    out0, out1 = _finish(nodes[0]), _finish(nodes[1])
    assert out0.count("cache saved under $CLIPCE_HOME") == 1 and "cache saved" not in out1
    caches = [p for p in (home / "caches").rglob("*.pt") if CACHE_FILE.fullmatch(p.name)]
    assert len(caches) == 1 and not list((home / "caches").rglob("*.shards"))
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["job"]
    assert (tmp_path / "runs" / "job" / "weights" / "best.pt").exists()
    assert "train done (fame)" in out0


def test_hung_process_is_named_and_the_run_resumes(own_dataset, tiny_clip, tmp_path):
    """Rank 1 stops answering (SIGSTOP) in epoch 2 without torchrun restarts: rank 0 names it within dist_timeout
    and the job ends non-zero (not after hours); `resume=` then finishes the run, every epoch once in results.csv."""
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    args = [*TRAIN, f"data={own_dataset}", "clipce=ame", f"clip={tiny_clip}", "epochs=2", "ame_alpha=0.5"]
    args += [f"project={tmp_path / 'runs'}", "name=job", "dist_timeout=10", "batch=4"]
    launch = ["--standalone", "--nproc_per_node", "2"]
    proc = _torchrun(launch, [str(script)], args, _env(tmp_path, FAULT="hang", FAULT_EPOCH="1"), tmp_path)
    out = _finish(proc, ok=False)
    assert proc.returncode != 0
    named = re.search(r"rank 1 \(pid \d+ on [^)]+\) has given no sign of life for (\d+) s", out)
    assert named and 10 <= int(named.group(1)) < 60, out[-3000:]
    run = tmp_path / "runs" / "job"
    last = run / "weights" / "last.pt"
    assert last.exists() and torch.load(last, weights_only=False)["epoch"] == 0  # epoch 1 saved, epoch 2 lost
    out = _finish(_torchrun(launch, [str(script)], [f"resume={last}", "device=cpu"], _env(tmp_path), tmp_path))
    assert "Resuming training" in out and _epochs(run) == [1, 2]
    r0, r1 = _records(tmp_path, 0), _records(tmp_path, 1)
    assert [r["epoch"] for r in r0] == [0, 1] and r1[-1]["epoch"] == 1 and r0[-1]["params"] == r1[-1]["params"]
    assert r0[-1]["table"] == r1[-1]["table"]
    import yaml

    assert yaml.safe_load((run / "clipce.yaml").read_text())["ame_alpha"] == 0.5


def test_killed_process_restarts_and_resumes(negatives_dataset, tiny_clip, tmp_path):
    """YOLO, clipce=fame, mostly object-free images, one per process per step; rank 1 is killed (SIGKILL) in epoch
    2: `torchrun --max-restarts 1` brings the job back, it resumes from last.pt by itself (same command), and the
    finished run's results.csv holds every epoch exactly once."""
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    args = [*TRAIN, "model=yolo11n.yaml", f"data={negatives_dataset}", "clipce=fame", f"clip={tiny_clip}", "epochs=2"]
    args += [f"project={tmp_path / 'runs'}", "name=job"]
    launch = ["--standalone", "--nproc_per_node", "2", "--max-restarts", "1"]
    out = _finish(_torchrun(launch, [str(script)], args, _env(tmp_path, FAULT="kill", FAULT_EPOCH="1"), tmp_path))
    run = tmp_path / "runs" / "job"
    assert "torchrun restart 1: continuing" in out and "Resuming training" in out
    assert _epochs(run) == [1, 2] and [p.name for p in (tmp_path / "runs").iterdir()] == ["job"]
    r0 = _records(tmp_path, 0)
    assert [(r["attempt"], r["epoch"]) for r in r0] == [(0, 0), (1, 1)]
    assert type(torch.load(run / "weights" / "last.pt", weights_only=False)["model"]).__name__ == "DetectionModel"


def test_bad_arguments_stop_every_process_with_one_line(readonly_dataset, own_dataset, tmp_path):
    """A batch that does not divide among the processes is refused before any work (it silently trained a smaller
    global batch); a read-only project= stops the job with its one clear line, no gloo traceback from the others."""
    launch = ["--standalone", "--nproc_per_node", "2"]
    args = [*TRAIN, f"data={own_dataset}", "clipce=none", f"project={tmp_path / 'runs'}", "batch=3"]
    proc = _torchrun(launch, ["-m", "clipce_rtdetr"], args, _env(tmp_path), tmp_path)
    out = _finish(proc, ok=False)
    assert proc.returncode != 0 and "batch=3 does not divide among the job's 2 processes" in out
    assert "Use batch=2 or batch=4" in out and not (tmp_path / "runs").exists()
    project = readonly_dataset.parent / "runs"
    args = [*TRAIN, f"data={own_dataset}", "clipce=none", f"project={project}"]
    proc = _torchrun(launch, ["-m", "clipce_rtdetr"], args, _env(tmp_path), tmp_path)
    out = _finish(proc, ok=False)
    assert proc.returncode != 0 and out.count("error: cannot write") == 1, out[-3000:]
    assert "gloo" not in out.lower() and "clipce_rtdetr/" not in out  # no worker traceback, only torchrun's summary



def test_nodes_with_different_labels_both_stop(own_dataset, tiny_hazy_shapes, tmp_path):
    """Two simulated nodes whose node-local copies of the dataset differ in one label: both stop before any heavy
    work, naming the training images' path (object ids would index another dataset's weight table)."""
    other = _copy_dataset(tiny_hazy_shapes, tmp_path / "other")
    label = sorted((other.parent / "labels" / "train").glob("*.txt"))[0]
    label.write_text(label.read_text().replace("0.", "0.0", 1))  # one box a little elsewhere
    port = _free_port()
    launch = ["--nnodes", "2", "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port)]
    start = time.monotonic()
    nodes = []
    for i, data in enumerate((own_dataset, other)):
        args = [*TRAIN, f"data={data}", "clipce=prior", f"project={tmp_path / 'runs'}", "name=job", "epochs=1"]
        nodes.append(_torchrun([*launch, "--node_rank", str(i)], ["-m", "clipce_rtdetr"], args, _env(tmp_path),
                               tmp_path))
    outs = [_finish(p, ok=False) for p in nodes]
    assert all(p.returncode != 0 for p in nodes) and time.monotonic() - start < 300
    for out in outs:
        assert "the processes of this job read different training labels" in out, out[-3000:]
        assert "images/train" in out


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


def test_batch_is_checked_against_the_world_size():
    from clipce_rtdetr.engine.distributed import check_batch
    from clipce_rtdetr.errors import ClipCEError

    check_batch(8, 2)
    check_batch(-1, 2)  # auto batch: Ultralytics' own handling
    check_batch(5, 1)
    with pytest.raises(ClipCEError, match="batch=1 is smaller than the job's 2 processes"):
        check_batch(1, 2)  # crashed every process (batch_size=0)
    with pytest.raises(ClipCEError, match="a global batch of 4, not 5. Use batch=4 or batch=6"):
        check_batch(5, 2)


def test_object_free_batch_loss_is_stock():
    """A process whose batch has no objects (the negatives run above) computes the stock RT-DETR loss (denoising
    on) with CLIP-CE weights of length 0, as its trainer passes them."""
    from ultralytics.models.utils.loss import RTDETRDetectionLoss
    from ultralytics.nn.tasks import RTDETRDetectionModel

    from clipce_rtdetr.models.rtdetr.loss import ClipCEDetectionLoss

    torch.manual_seed(0)
    model = RTDETRDetectionModel(TINY_MODEL, nc=5, verbose=False).train()
    empty = {
        "img": torch.rand(2, 3, 64, 64), "cls": torch.zeros(0, 1), "bboxes": torch.zeros(0, 4),
        "batch_idx": torch.zeros(0),
    }
    totals = []
    for criterion, weights in ((RTDETRDetectionLoss(nc=5, use_vfl=True), None), (ClipCEDetectionLoss(nc=5), None)):
        model.criterion = criterion
        criterion.object_weights = torch.ones(0) if isinstance(criterion, ClipCEDetectionLoss) else weights
        torch.manual_seed(1)
        totals.append(model.loss(empty)[0].detach())
    assert torch.isfinite(totals[0]).all() and torch.allclose(totals[0], totals[1], atol=1e-6, rtol=0)


def test_heartbeat_names_a_silent_process():
    """The watchdog's view of a peer that stops beating (a real TCPStore on loopback; the peer is this test)."""
    from datetime import timedelta

    import torch.distributed as dist

    from clipce_rtdetr.engine.watchdog import Heartbeat

    store = dist.TCPStore("127.0.0.1", _free_port(), is_master=True, timeout=timedelta(seconds=10), use_libuv=True)
    store.set("who/1", "pid 42 on elsewhere")
    beat = Heartbeat(store, rank=0, world_size=2, timeout_s=3.0)
    beat.seen[1] = (0, time.monotonic() - 5)  # rank 1's counter has not moved for 5 s
    assert beat.silent(2.0) == ["rank 1 (pid 42 on elsewhere), silent for 5 s"]
    store.set("done/1", "1")  # a process that finished cleanly is not silent
    assert beat.silent(2.0) == []


def test_restart_drops_a_results_row_without_its_checkpoint(tmp_path):
    """Lost between writing epoch 3's row and its checkpoint: the restart resumes from epoch 2's last.pt and will
    write epoch 3 again, so the row goes (every epoch once)."""
    from clipce_rtdetr.engine.distributed import keep_epochs_up_to

    csv = tmp_path / "results.csv"
    csv.write_text("epoch,time,metrics/mAP50(B)\n1,5.1,0.1\n2,5.0,0.2\n3,4.9,0.3\n")
    keep_epochs_up_to(csv, 2)
    assert csv.read_text() == "epoch,time,metrics/mAP50(B)\n1,5.1,0.1\n2,5.0,0.2\n"
    keep_epochs_up_to(csv, 2)  # nothing to drop: untouched
    assert csv.read_text().count("\n") == 3
