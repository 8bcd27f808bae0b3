"""CLIP loading: spec parsing, the tiny CLIP through the same path as real weights, tags from a filled
cache, snapshot folders, fingerprints, and one clear error for every way weights can be missing."""

from __future__ import annotations

import hashlib
import json
import math
import time

import pytest
import torch

from clipce_rtdetr.clip.loader import (
    file_sha256,
    load_clip,
    make_random_clip,
    parse_clip_spec,
    register_project_configs,
)
from clipce_rtdetr.errors import ClipCEError


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("clipw")
    return make_random_clip(d / "tiny.pt", seed=0), make_random_clip(d / "tiny.safetensors", seed=0), d


@pytest.mark.parametrize(
    "spec,expect",
    [
        ("ViT-B-32:openai", ("ViT-B-32", "openai")),
        ("ViT-B-32", ("ViT-B-32", None)),
        ("ViT-B-32:", ("ViT-B-32", None)),
        (
            "ViT-B-32-quickgelu:/a:b/open_clip_pytorch_model.bin",
            ("ViT-B-32-quickgelu", "/a:b/open_clip_pytorch_model.bin"),
        ),
        ("ViT-B-32:C:\\w\\m.pt", ("ViT-B-32", "C:\\w\\m.pt")),
        ("ViT-B/32:openai", ("ViT-B-32", "openai")),
        ("local-dir:/snap/x", ("local-dir:/snap/x", None)),
        ("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", ("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", None)),
    ],
)
def test_parse_clip_spec(spec, expect):
    assert parse_clip_spec(spec) == expect


@pytest.mark.parametrize("spec", ["", "  ", ":openai", "/x/y.pt", "C:\\w\\m.pt", "local-dir:"])
def test_parse_clip_spec_errors(spec):
    with pytest.raises(ClipCEError):
        parse_clip_spec(spec)


def test_tiny_clip_file_roundtrip(tiny_files):
    import open_clip

    spec_pt, spec_st, _ = tiny_files
    a, b = load_clip(spec_pt), load_clip(spec_st)
    register_project_configs()
    torch.manual_seed(0)
    ref = open_clip.create_model("clipce-tiny", pretrained=None, pretrained_text=False).eval()
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ea, eb = a.encode_images(x, batch_size=2), b.encode_images(x, batch_size=3)
    with torch.no_grad():
        er = torch.nn.functional.normalize(ref.encode_image(x), dim=-1)
    assert torch.allclose(ea, eb, atol=1e-6, rtol=0) and torch.allclose(
        ea, er, atol=1e-6
    )  # batch sizes may pick other kernels
    assert a.random_weights and b.random_weights
    assert torch.allclose(ea.norm(dim=1), torch.ones(3), atol=1e-5)
    t = a.encode_texts(["a photo of a car.", "a photo of fog."])
    assert t.shape == (2, 64) and torch.allclose(t, b.encode_texts(["a photo of a car.", "a photo of fog."]))
    assert a.encode_images(torch.zeros(0, 3, 64, 64)).shape == (0, 64)
    assert a.encode_texts([]).shape == (0, 64)


def test_bundle_frozen_preprocess_and_scale(tiny_files):
    b = load_clip(tiny_files[0])
    assert not b.model.training and not any(p.requires_grad for p in b.model.parameters())
    pp = b.model.visual.preprocess_cfg
    assert b.image_size == 64 and b.mean == tuple(pp["mean"]) and b.std == tuple(pp["std"])
    assert b.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    assert b.embed_dim == 64 and b.weights.endswith("tiny.pt")
    assert b.random_weights  # make_random_clip marks its files: the demo can say its scores are uninformative
    assert b.dtype == torch.float32 and b.device.type == "cpu"
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    assert not b.encode_images(x).requires_grad


def test_logit_scale_capped(tmp_path):
    spec = make_random_clip(tmp_path / "hot.pt", seed=3)
    sd = torch.load(tmp_path / "hot.pt")["state_dict"]
    sd["logit_scale"] = torch.tensor(math.log(1000.0))
    torch.save(sd, tmp_path / "hot.pt")
    assert load_clip(spec).logit_scale == 100.0


def test_fingerprint(tiny_files, tmp_path):
    spec_pt, spec_st, d = tiny_files
    b = load_clip(spec_pt)
    digest = hashlib.sha256((d / "tiny.pt").read_bytes()).hexdigest()
    assert b.fingerprint == f"clipce-tiny@sha256:{digest}"
    other = load_clip(make_random_clip(tmp_path / "other.pt", seed=1))
    assert other.fingerprint != b.fingerprint
    # the checksum is cached by path + mtime + size
    from clipce_rtdetr.paths import home

    table = json.loads((home() / "clip-sha256.json").read_text())
    assert table[str((d / "tiny.pt").resolve())]["sha256"] == digest
    assert file_sha256(d / "tiny.pt") == digest
    rnd = load_clip("clipce-tiny")
    assert rnd.random_weights and rnd.weights is None and rnd.fingerprint.startswith("clipce-tiny:random:")


def test_relative_name_found_in_weights_dir(tiny_files, monkeypatch):
    monkeypatch.setenv("CLIPCE_WEIGHTS", str(tiny_files[2]))
    b = load_clip("clipce-tiny:tiny.safetensors")
    assert b.weights == str((tiny_files[2] / "tiny.safetensors").resolve())


def _fake_hf_cache(root, repo_id, filename, src):
    folder = root / ("models--" + repo_id.replace("/", "--"))
    snap = folder / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("abc123")
    (snap / filename).write_bytes(src.read_bytes())
    return snap / filename


def test_tag_from_filled_hf_cache(tiny_files, tmp_path, monkeypatch):
    import huggingface_hub.constants as hc
    from open_clip import pretrained as op

    monkeypatch.setitem(
        op._PRETRAINED,
        "clipce-tiny",
        {
            "faketag": op._pcfg(
                hf_hub="clipce/tiny-test/", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), quick_gelu=True
            )
        },
    )
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # must not touch the network either way
    path = _fake_hf_cache(
        tmp_path / "hub", "clipce/tiny-test", "open_clip_pytorch_model.bin", tiny_files[2] / "tiny.pt"
    )
    b = load_clip("clipce-tiny:faketag")
    assert b.weights == str(path) and b.fingerprint == "clipce-tiny:faketag"
    assert b.mean == (0.5, 0.5, 0.5) and b.std == (0.25, 0.25, 0.25)  # the tag's preprocessing
    from open_clip.transformer import QuickGELU

    assert any(isinstance(m, QuickGELU) for m in b.model.modules())  # the tag was trained with QuickGELU


def test_tag_not_cached_fails_fast(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("HOME", str(tmp_path))  # open_clip's URL cache ~/.cache/clip is empty too
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("CLIPCE_CLIP_DOWNLOAD", raising=False)
    import open_clip  # noqa: F401  (imported before the clock starts: only the lookup is timed)

    t = time.time()
    with pytest.raises(ClipCEError) as e:
        load_clip("ViT-B-32:openai")
    assert time.time() - t < 10
    msg = str(e.value)
    assert "weights/README.md" in msg and "models--timm--vit_base_patch32_clip_224.openai" in msg
    assert "ViT-B-32-quickgelu:" in msg and str(tmp_path / "empty-hub") in msg


def test_snapshot_folder(tiny_files, tmp_path):
    import open_clip

    register_project_configs()
    snap = tmp_path / "snap"
    snap.mkdir()
    cfg = {
        "model_cfg": open_clip.get_model_config("clipce-tiny"),
        "preprocess_cfg": {"mean": [0.1, 0.2, 0.3], "std": [0.3, 0.2, 0.1]},
    }
    (snap / "open_clip_config.json").write_text(json.dumps(cfg))
    (snap / "open_clip_pytorch_model.bin").write_bytes((tiny_files[2] / "tiny.pt").read_bytes())
    a = load_clip(f"local-dir:{snap}")
    b = load_clip(f"clipce-tiny:{snap}")
    assert a.mean == b.mean == (0.1, 0.2, 0.3) and a.std == (0.3, 0.2, 0.1)
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(a.encode_images(x), load_clip(tiny_files[0]).encode_images(x), atol=1e-6)
    assert "@sha256:" in a.fingerprint
    # a plain folder with a weights file but no config needs the model name
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "open_clip_pytorch_model.bin").write_bytes((tiny_files[2] / "tiny.pt").read_bytes())
    torch.save(torch.load(tiny_files[2] / "tiny.pt")["state_dict"], plain / "open_clip_pytorch_model.bin")
    c = load_clip(f"clipce-tiny:{plain}")
    assert c.embed_dim == 64 and not c.random_weights  # a plain state_dict, as real checkpoints are
    with pytest.raises(ClipCEError, match="open_clip_config.json"):
        load_clip(f"local-dir:{plain}")


@pytest.mark.parametrize(
    "spec,match",
    [
        ("ViT-B-33:openai", "unknown open_clip model name.*ViT-B-32"),
        ("clipce-tiny:/no/such/file.pt", "weights file not found: /no/such/file.pt"),
        ("ViT-B-32:openia", "neither an open_clip tag.*Did you mean openai"),
        ("local-dir:/no/such/folder", "folder not found"),
        ("hf-hub:nobody/nothing", "not in the Hugging Face cache"),
    ],
)
def test_clear_errors(spec, match):
    with pytest.raises(ClipCEError, match=match) as e:
        load_clip(spec)
    assert "README" in str(e.value)


def test_corrupt_weights_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ClipCEError, match="is not a PyTorch checkpoint"):
        load_clip(f"clipce-tiny:{bad}")


@pytest.mark.parametrize("spec", ["ViT-B-32", "ViT-B-32:", "RN50 :  "])
def test_train_refuses_a_clip_without_weights(spec, tiny_hazy_shapes, tmp_path):
    """A real model name with no weights would train on random CLIP scores: refused before a run folder exists."""
    from clipce_rtdetr.clip.loader import require_weights
    from clipce_rtdetr.models.rtdetr.train import ClipCETrainer

    with pytest.raises(ClipCEError, match="names no weights"):
        require_weights(spec)
    with pytest.raises(ClipCEError, match="names no weights"):
        ClipCETrainer(
            overrides={
                "model": "rtdetr-l.yaml",
                "data": str(tiny_hazy_shapes),
                "clip": spec,
                "project": str(tmp_path),
                "name": "x",
            }
        )
    assert not (tmp_path / "x").exists()
    require_weights("clipce-tiny")  # the project's test/demo config, random on purpose
    require_weights("ViT-B-32:openai")


def test_unknown_profile_refused_before_a_run_folder(tiny_hazy_shapes, tmp_path):
    from clipce_rtdetr.models.rtdetr.train import ClipCETrainer

    with pytest.raises(ClipCEError, match="nosuchprofile"):
        ClipCETrainer(
            overrides={
                "model": "rtdetr-l.yaml",
                "data": str(tiny_hazy_shapes),
                "ame_profile": "nosuchprofile",
                "project": str(tmp_path),
                "name": "x",
            }
        )
    assert not (tmp_path / "x").exists()
