"""The embedding cache built in shares and chunks (issue 22): a killed build resumes from its shards, the merged cache
equals a single-process build bit for bit, the cache is memory-mapped, scoring in chunks equals scoring at once, and
the scores are saved beside the cache. The multi-process build itself runs in tests/test_distributed.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clipce_rtdetr.method import cache_build
from clipce_rtdetr.method import embedding_cache as ec

CHUNK = "5"  # objects per chunk: the tiny dataset's ~38 objects make several chunks

KILLED_BUILD = """
import os, signal, sys
from clipce_rtdetr.clip.loader import load_clip
from clipce_rtdetr.method import cache_build
from tests.test_cache_build import train_labels

labels, _ = train_labels(sys.argv[1])
real, calls = cache_build.encode_chunk, [0]

def encode_then_die(*args, **kwargs):
    calls[0] += 1
    if calls[0] == 3:  # two chunks are on disk: the process is killed in the middle of the third
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)

cache_build.encode_chunk = encode_then_die
cache_build.build_share(labels, load_clip(sys.argv[2]), 0.1, 8, "cpu", sys.argv[3], 1, 2, progress=False)
"""


def train_labels(data_yaml: str):
    from ultralytics.data import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(data_yaml))
    ds = YOLODataset(img_path=data["train"], data=data, augment=False, imgsz=64)
    return ds.labels, ds.label_files


@pytest.fixture
def one_thread():
    """Single-threaded torch, as every process of the build runs (so their numbers can be compared bit for bit)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_killed_share_resumes_and_merge_equals_one_process(
    tiny_hazy_shapes, tiny_clip, tmp_path, monkeypatch, one_thread
):
    from clipce_rtdetr.clip.loader import load_clip

    monkeypatch.setenv("CLIPCE_CACHE_CHUNK", CHUNK)
    labels, _ = train_labels(tiny_hazy_shapes)
    bundle = load_clip(tiny_clip)
    chunks = cache_build.plan_chunks(labels)
    odd = [j for j in range(len(chunks)) if j % 2 == 1]  # rank 1's share of a 2-process job
    assert len(odd) >= 3 and sum(cache_build.chunk_sizes(labels)) == sum(len(lb["cls"]) for lb in labels)
    shards = tmp_path / "shards"
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "CLIPCE_CACHE_CHUNK": CHUNK, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_BUILD, str(tiny_hazy_shapes), tiny_clip, str(shards)],
        cwd=repo, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]  # really killed mid-build
    assert sorted(p.name for p in shards.glob("chunk-*.pt")) == [f"chunk-{j:06d}.pt" for j in odd[:2]]
    before = dict(ec.COUNTS)
    done = cache_build.build_share(labels, bundle, 0.1, 8, "cpu", shards, 1, 2, progress=False)
    assert done == len(odd) - 2  # resumed: the two finished chunks were not computed again
    emb, valid = cache_build.merge_shards(labels, bundle, 0.1, 8, "cpu", shards, tmp_path / "m.f16", progress=False)
    assert ec.COUNTS["merge_computed"] - before["merge_computed"] == len(chunks) - len(odd)  # rank 0's share
    ref_emb, ref_valid = ec.compute_embeddings(labels, bundle, 0.1, 8, progress=False)  # one process, every chunk
    assert torch.equal(emb, ref_emb) and torch.equal(valid, ref_valid)


def test_damaged_shard_is_computed_again(tiny_hazy_shapes, tiny_clip, tmp_path, monkeypatch, one_thread):
    from clipce_rtdetr.clip.loader import load_clip

    monkeypatch.setenv("CLIPCE_CACHE_CHUNK", CHUNK)
    labels, _ = train_labels(tiny_hazy_shapes)
    bundle = load_clip(tiny_clip)
    shards = tmp_path / "shards"
    n_chunks = cache_build.build_share(labels, bundle, 0.1, 8, "cpu", shards, 0, 1, progress=False)
    first = cache_build.shard_path(shards, 1)
    first.write_bytes(first.read_bytes()[:100])  # a disk that lost the end of a file
    assert cache_build.build_share(labels, bundle, 0.1, 8, "cpu", shards, 0, 1, progress=False) == 1
    assert n_chunks == len(cache_build.plan_chunks(labels))


def _mapped_files() -> str:
    return Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""


def test_cache_is_memory_mapped_and_scores_are_kept(tiny_hazy_shapes, tiny_clip, tmp_path, monkeypatch):
    from clipce_rtdetr.method import ame

    if not _mapped_files():
        pytest.skip("needs /proc/self/maps (Linux) to see the mapping")
    labels, _ = train_labels(tiny_hazy_shapes)
    files = [str(tmp_path / "labels" / "train" / "a.txt")]
    (tmp_path / "labels" / "train").mkdir(parents=True)
    a = {
        "clip": tiny_clip, "ame_profile": "haze", "ame_templates": None, "ame_context": 0.1, "ame_temperature": 1.0,
        "ame_alpha": 1.0, "ame_form": "exp", "ame_batch": 8,
    }
    names = ["circle", "square", "triangle", "star", "cross"]
    q1, d1, w1, _ = ec.score_dataset(labels, files, names, a, "cpu", progress=False)
    (cache,) = [p for p in (tmp_path / "labels").glob("train.clipce-*.pt") if ".scores-" not in p.name]
    scores = list((tmp_path / "labels").glob("train.clipce-*.scores-*.pt"))
    assert len(scores) == 1 and not list((tmp_path / "labels").glob("*.shards"))  # shards removed once merged
    monkeypatch.setattr(ame, "score_in_chunks", lambda *a, **k: pytest.fail("scored again: scores file not used"))
    q2, d2, w2, scorer = ec.score_dataset(labels, files, names, a, "cpu", progress=False)
    assert torch.equal(q1, q2) and torch.equal(w1, w2) and torch.allclose(d2, 1 - q2)
    loaded = ec.dataset_embeddings(labels, files, scorer.bundle, 0.1, 8, progress=False)
    assert str(cache) in _mapped_files()  # paged in from the file, not read into memory
    assert loaded["embeddings"].shape[0] == len(q1)


def test_chunked_scoring_equals_scoring_at_once(tiny_clip):
    from clipce_rtdetr.clip.loader import load_clip
    from clipce_rtdetr.method.ame import AMEScorer, score_in_chunks

    bundle = load_clip(tiny_clip)
    scorer = AMEScorer(bundle, ["circle", "square", "triangle"], "haze")
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(1000, bundle.embed_dim, generator=g), dim=1).half()
    cls = torch.randint(0, 3, (1000,), generator=g)
    valid = torch.rand(1000, generator=g) > 0.1
    q, w = score_in_chunks(scorer, emb, cls, valid, chunk=64)
    q_all, _, w_all = scorer.score_embeddings(emb, cls, valid)
    assert torch.allclose(q, q_all, rtol=1e-6, atol=1e-6) and torch.allclose(w, w_all, rtol=1e-6, atol=1e-6)
    assert bool((q[~valid] == 1).all() and (w[~valid] == 1).all())
    assert q.std() > 0  # scores that vary: the comparison means something
