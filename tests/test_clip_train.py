"""clip-train (CLIP adaptation on clean crops) and the committed demo CLIP for hazy-shapes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clipce_rtdetr.errors import ClipCEError

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "weights" / "demo-clip-hazy-shapes.safetensors"


def _demo_model() -> str | None:
    from safetensors import safe_open

    from clipce_rtdetr.clip.train import META_KEY

    if not DEMO.is_file():
        return None
    with safe_open(str(DEMO), framework="pt") as f:
        return json.loads((f.metadata() or {})[META_KEY])["model"]


def test_clean_file_mirrors_images_folder(tmp_path):
    from clipce_rtdetr.clip.train import clean_file, clean_root, with_clean_images

    root = tmp_path / "clean"
    assert clean_file(str(tmp_path / "images" / "train" / "a.png"), root) == root / "train" / "a.png"
    assert clean_root({"path": str(tmp_path), "clean": "clean"}, "auto") == tmp_path / "clean"
    assert clean_root({"path": str(tmp_path)}, "auto") is None  # no clean copies: the images themselves
    assert clean_root({"path": str(tmp_path), "clean": "clean"}, "images") is None
    with pytest.raises(ClipCEError, match="no 'clean:' key"):
        clean_root({"path": str(tmp_path)}, "clean")
    with pytest.raises(ClipCEError, match="clean image"):
        with_clean_images([{"im_file": str(tmp_path / "images" / "train" / "a.png"), "cls": []}], root)


def test_clip_train_saves_reloads_and_refuses_overwrite(tiny_hazy_shapes, tmp_path):
    from clipce_rtdetr.clip.loader import load_clip
    from clipce_rtdetr.clip.train import clip_train

    out = tmp_path / "clip.safetensors"
    rep = clip_train(str(tiny_hazy_shapes), "clipce-tiny", out, epochs=2, batch=32, seed=0, half=True, progress=False)
    assert out.is_file() and rep["train_images"].endswith("clean") and rep["n_train_objects"] > 10
    for suffix in (".json", ".md", ".png"):
        assert out.with_suffix(suffix).is_file()
    saved = json.loads(out.with_suffix(".json").read_text())
    assert set(saved["after"]["levels"]) <= {"light", "medium", "heavy"} and saved["after"]["levels"]
    assert 0 <= saved["after"]["all"]["acc_clean"] <= 1 and 0 <= saved["after"]["all"]["d_degraded"] <= 1
    assert len(saved["history"]) == 2

    bundle = load_clip(f"clipce-tiny:{out}")  # the format clip=MODEL:/path reads
    assert not bundle.random_weights and bundle.weights == str(out.resolve())
    assert list(bundle.mean) == pytest.approx(saved["mean"], abs=1e-5) and bundle.image_size == saved["image_size"]
    # weights changed from the seeded random init they started from
    torch.manual_seed(0)
    init = load_clip("clipce-tiny")
    assert not torch.equal(init.model.visual.conv1.weight, bundle.model.visual.conv1.weight)

    with pytest.raises(ClipCEError, match="exist_ok=True"):
        clip_train(str(tiny_hazy_shapes), "clipce-tiny", out, epochs=1, progress=False)


def test_clip_train_cli_keys(tiny_hazy_shapes, tmp_path):
    from clipce_rtdetr.clip.train import run_clip_train

    out = tmp_path / "cli.safetensors"
    args = {
        "data": str(tiny_hazy_shapes),
        "clip": "clipce-tiny",
        "epochs": 1,
        "batch": 64,
        "out": str(out),
        "images": "clean",
        "clip_jitter": 0.0,
        "report": str(tmp_path / "rep"),
    }
    assert run_clip_train(args) == out and (tmp_path / "rep.md").is_file()
    with pytest.raises(ClipCEError, match="exist_ok"):
        run_clip_train(args)
    with pytest.raises(ClipCEError, match="out=FILE.safetensors"):
        run_clip_train({k: v for k, v in args.items() if k != "out"})
    with pytest.raises(ClipCEError, match="clip_text"):
        run_clip_train({**args, "clip_text": "yes", "exist_ok": True})


@pytest.mark.skipif(not DEMO.is_file(), reason="demo CLIP not committed")
def test_demo_clip_spec_names_its_model():
    from clipce_rtdetr.clip.loader import load_clip
    from clipce_rtdetr.data.hazy_shapes import demo_clip_spec

    spec = demo_clip_spec()
    assert spec.endswith(DEMO.name)
    assert not load_clip(spec).random_weights


def test_demo_clip_fallback_is_the_same_random_clip_every_time(monkeypatch, tmp_path):
    """Without the committed demo CLIP (e.g. a non-editable install), hazy-shapes falls back to a tiny random CLIP
    made once under $CLIPCE_HOME; the second run must load that same file as the same model."""
    from clipce_rtdetr.clip.loader import load_clip
    from clipce_rtdetr.data import hazy_shapes

    monkeypatch.setattr("clipce_rtdetr.paths.weights_dirs", lambda: [tmp_path / "none"])
    monkeypatch.setattr(hazy_shapes, "home", lambda: tmp_path / "home")
    first = hazy_shapes.demo_clip_spec()
    second = hazy_shapes.demo_clip_spec()
    assert first == second and (tmp_path / "home" / "weights" / "clipce-tiny-random.pt").is_file()
    assert load_clip(second).random_weights


@pytest.mark.skipif(not DEMO.is_file(), reason="demo CLIP not committed")
def test_demo_clip_gives_higher_d_to_hazier_crops():
    """Same clean scenes, same boxes, hazed at beta 0 and at a high beta: mean d must rise."""
    from clipce_rtdetr.clip.loader import load_clip
    from clipce_rtdetr.data.hazy_shapes import CLASSES, Recipe, render_scene
    from clipce_rtdetr.data.physics import apply_haze
    from clipce_rtdetr.method.ame import AMEScorer

    bundle = load_clip(f"{_demo_model()}:{DEMO}")
    assert not bundle.random_weights
    scorer = AMEScorer(bundle, list(CLASSES), "haze")
    recipe = Recipe()
    d_by_beta = {}
    for beta in (0.0, max(recipe.beta)):
        ds = []
        for i in range(6):  # scenes no split of the dataset contains (other seed stream)
            rng = np.random.default_rng([987, i])
            clean, depth, labels = render_scene(rng, recipe.size, recipe.max_objects)
            if not labels:
                continue
            img = apply_haze(clean, depth, beta, 0.9)
            t = torch.from_numpy(img).permute(2, 0, 1)[None]
            boxes = torch.tensor([lb[1:] for lb in labels], dtype=torch.float32)
            cls = torch.tensor([lb[0] for lb in labels])
            q, d, w = scorer.score_boxes(t, boxes, torch.zeros(len(labels), dtype=torch.long), cls)
            ds.append(d)
        d_by_beta[beta] = torch.cat(ds)
    d0, d1 = d_by_beta[0.0], d_by_beta[max(recipe.beta)]
    assert d1.mean() > d0.mean() + 0.05, (d0.mean(), d1.mean())
    assert (d1 > d0).float().mean() > 0.5  # per object too, for most of the same objects


def test_decoded_images_stay_within_their_budget(tmp_path):
    """Jittered crops keep decoded images up to the byte budget; images past it are read again each time."""
    import cv2

    from clipce_rtdetr.clip.train import DecodedImages

    labels = []
    for i in range(3):
        f = tmp_path / f"{i}.png"
        cv2.imwrite(str(f), np.full((10, 20, 3), 40 * i, np.uint8))
        labels.append({"im_file": str(f)})
    mem = DecodedImages(labels, budget=2 * 10 * 20 * 3)
    for i in (0, 1, 2, 2, 0):
        t = mem[i]
        assert t.shape == (1, 3, 10, 20) and t.dtype == torch.uint8 and int(t[0, 0, 0, 0]) == 40 * i
    assert sorted(mem.kept) == [0, 1] and mem.used == 2 * 10 * 20 * 3
    assert mem[0] is mem[0] and mem[2] is not mem[2]


def test_clip_train_holds_one_batch_of_crops_not_the_split(tiny_hazy_shapes, tmp_path, monkeypatch):
    """Issue 13.7: evaluation (and jitter-free training) crops were all held in RAM. Census of live crop tensors
    (every tensor shaped (n, 3, S, S)) each time an image is cropped: at most one encoding batch plus one
    image's objects, never the split's."""
    import gc
    import warnings

    from clipce_rtdetr.clip.train import clip_train
    from clipce_rtdetr.method import embedding_cache

    real, peak, size = embedding_cache.iter_source_crops, [0], []

    def live_tensors():
        with warnings.catch_warnings():  # isinstance on torch's deprecated aliases warns
            warnings.simplefilter("ignore")
            return [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]

    gc.collect()
    kept = live_tensors()  # what earlier tests in this worker left alive is not clip-train's (kept: no id reuse)
    earlier = {id(o) for o in kept}

    def census(labels, s, context, device="cpu"):
        size.append(s)
        for start, crops, valid in real(labels, s, context, device):
            live = [o for o in live_tensors() if id(o) not in earlier]
            held = sum(o.shape[0] for o in live if o.ndim == 4 and tuple(o.shape[1:]) == (3, s, s))
            del live  # the census must not keep what it counted alive
            peak[0] = max(peak[0], held)
            yield start, crops, valid

    monkeypatch.setattr(embedding_cache, "iter_source_crops", census)
    batch = 4
    rep = clip_train(
        str(tiny_hazy_shapes), "clipce-tiny", tmp_path / "c.safetensors", epochs=1, batch=batch, jitter=0.0,
        progress=False,
    )  # fmt: skip
    assert size and rep["n_val_objects"] + rep["n_train_objects"] > 3 * (batch + 3)
    assert peak[0] <= batch + 3 + 3, peak  # pending batch (< batch + one image's <= 3 objects) + this image's
