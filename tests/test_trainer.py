"""CLIP-CE training end to end (tiny RT-DETR, tiny random CLIP loaded from a file like a real checkpoint)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from clipce_rtdetr import ClipCERTDETR
from clipce_rtdetr.errors import ClipCEError, ConfigError
from tests.conftest import FAST, TINY_MODEL, run_without_clipce


@pytest.fixture(scope="session")
def fame_run(tiny_hazy_shapes, tiny_clip, tmp_root):
    model = ClipCERTDETR(TINY_MODEL)
    seen = []  # trainer.metrics as logging integrations and user callbacks see it
    model.add_callback("on_fit_epoch_end", lambda tr: seen.append(dict(tr.metrics)))
    model.train(
        data=str(tiny_hazy_shapes),
        clip=tiny_clip,
        clipce="fame",
        project=str(tmp_root / "runs"),
        name="fame",
        **{**FAST, "plots": True},
    )
    model.trainer.metrics_seen_by_callbacks = seen
    return Path(model.trainer.save_dir), model.trainer


def test_fame_run_logs_weights_and_saves_settings(fame_run):
    save_dir, trainer = fame_run
    rows = list(csv.DictReader(open(save_dir / "results.csv")))
    cols = {k.strip() for k in rows[0]}
    assert {"clipce/ame_w", "clipce/fame_w", "clipce/frac_w>1.5"} <= cols
    ame_w = float(rows[0]["clipce/ame_w"])
    fame_w = float(rows[0]["clipce/fame_w"])
    assert ame_w >= 1.0 and 1.0 <= fame_w <= ame_w + 1e-6  # FAME only moves weights toward 1
    seen = trainer.metrics_seen_by_callbacks
    assert len(seen) >= len(rows) and seen[0]["clipce/ame_w"] == pytest.approx(ame_w, abs=1e-4)  # (+1: final eval)
    assert (save_dir / "clipce_weights.png").exists()
    assert (save_dir / "clipce.yaml").read_text().count("clipce: fame") == 1
    # CLIP stays outside the detector: nothing of it in the checkpoint's state_dict.
    ckpt = torch.load(save_dir / "weights" / "last.pt", map_location="cpu", weights_only=False)
    det = ckpt["ema"] or ckpt["model"]  # the final checkpoint is stripped: EMA moved to "model"
    keys = det.state_dict().keys()
    assert not any("visual" in k or "transformer.resblocks" in k or "token_embedding" in k for k in keys)
    assert getattr(det, "criterion", None) is None
    assert type(det).__name__ == "RTDETRDetectionModel"


def test_checkpoint_runs_in_plain_ultralytics(fame_run, tiny_hazy_shapes, tmp_path):
    """best.pt loads and predicts in a process where clipce_rtdetr cannot be imported at all."""
    save_dir, _ = fame_run
    img = next((Path(tiny_hazy_shapes).parent / "images" / "val").glob("*.png"))
    code = f"""
from ultralytics import RTDETR
r = RTDETR({str(save_dir / "weights" / "best.pt")!r}).predict({str(img)!r}, imgsz=64, verbose=False)
print('OK', len(r), r[0].boxes.data.shape[1])
"""
    assert "OK 1 6" in run_without_clipce(code, tmp_path)


def test_embedding_cache_reused_and_keyed(fame_run, tiny_hazy_shapes, tiny_clip):
    from clipce_rtdetr.clip.loader import load_clip
    from clipce_rtdetr.method import embedding_cache as ec

    # The file the fame run wrote, found by its key (other tests add caches for other settings beside it).
    labels, files = _labels(tiny_hazy_shapes)
    b = load_clip(tiny_clip)
    key = ec.cache_key(b.fingerprint, 0.10, b.image_size, b.mean, b.std, ec.labels_hash(labels))
    path = ec.cache_path_for(files, key)
    assert path.exists()
    data = ec.load_or_build(files, key, lambda: pytest.fail("a valid cache was rebuilt"))
    assert data["embeddings"].shape[0] == data["valid"].shape[0] == sum(len(lb["cls"]) for lb in labels) > 0
    other = ec.cache_key(b.fingerprint, 0.25, b.image_size, b.mean, b.std, ec.labels_hash(labels))
    assert ec.cache_path_for(files, other) != path  # another context, another file


class _FakeBundle:
    """Stands in for a ClipBundle in cache-logic tests (the real encoder is covered above)."""

    fingerprint, image_size, mean, std = "fake@1", 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    def __init__(self):
        self.calls = 0

    def encode_images(self, x, batch_size=64):
        self.calls += 1
        e = x.flatten(1)[:, :8].float()
        return torch.nn.functional.normalize(e + 1e-3, dim=1)


def _labels(tiny_hazy_shapes):
    from ultralytics.data import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(tiny_hazy_shapes))
    ds = YOLODataset(img_path=data["train"], data=data, augment=False, imgsz=64)
    return ds.labels, ds.label_files


def test_cache_rebuilds_on_change_and_corruption(tiny_hazy_shapes, tmp_path, caplog):
    from clipce_rtdetr.method import embedding_cache as ec

    labels, _ = _labels(tiny_hazy_shapes)
    files = [str(tmp_path / "labels" / "train" / "a.txt")]
    (tmp_path / "labels" / "train").mkdir(parents=True)
    b = _FakeBundle()
    first = ec.dataset_embeddings(labels, files, b, 0.1, progress=False)
    assert b.calls > 0
    calls = b.calls
    again = ec.dataset_embeddings(labels, files, b, 0.1, progress=False)
    assert b.calls == calls and torch.equal(again["embeddings"], first["embeddings"])  # reused, not recomputed
    ec.dataset_embeddings(labels, files, b, 0.2, progress=False)  # other crop settings: rebuilt, own file
    assert b.calls > calls
    changed = [dict(lb) for lb in labels]
    changed[0]["bboxes"] = changed[0]["bboxes"] * 0.9
    calls = b.calls
    ec.dataset_embeddings(changed, files, b, 0.1, progress=False)
    assert b.calls > calls  # a changed dataset rebuilds
    path = ec.cache_path_for(
        files, ec.cache_key(b.fingerprint, 0.1, b.image_size, b.mean, b.std, ec.labels_hash(labels))
    )
    path.write_bytes(path.read_bytes()[:50])  # truncate
    calls = b.calls
    rebuilt = ec.dataset_embeddings(labels, files, b, 0.1, progress=False)
    assert b.calls > calls and torch.equal(rebuilt["embeddings"], first["embeddings"])


def test_old_caches_are_pruned(tiny_hazy_shapes, tmp_path, monkeypatch):
    from clipce_rtdetr.method import embedding_cache as ec

    monkeypatch.setattr(ec, "KEEP_CACHES", 2)
    labels, _ = _labels(tiny_hazy_shapes)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    files = [str(tmp_path / "labels" / "train" / "a.txt")]
    unrelated = tmp_path / "labels" / "val.clipce-000000000000.pt"  # another split's cache: never touched
    unrelated.write_bytes(b"x")
    b = _FakeBundle()
    paths = []
    for i, context in enumerate((0.1, 0.2, 0.3)):
        ec.dataset_embeddings(labels, files, b, context, progress=False)
        paths.append(
            ec.cache_path_for(
                files, ec.cache_key(b.fingerprint, context, b.image_size, b.mean, b.std, ec.labels_hash(labels))
            )
        )
        os.utime(paths[-1], (1000 + i, 1000 + i))  # distinct, ordered "last used" times
        if i == 1:
            ec.dataset_embeddings(labels, files, b, 0.1, progress=False)  # reusing 0.1 makes it the most recent
    assert paths[0].exists() and paths[2].exists() and not paths[1].exists() and unrelated.exists()


def test_resume_restores_every_clipce_key(tiny_hazy_shapes, tiny_clip, tmp_root):
    from clipce_rtdetr.models.rtdetr.train import ClipCETrainer

    custom = dict(
        clipce="ame",
        ame_alpha=0.5,
        ame_form="linear",
        ame_context=0.2,
        ame_temperature=2.0,
        fame_gamma=2.0,
        clipce_terms="final",
        ame_profile="lowlight",
        ame_templates=["a blurry photo of a {}."],
    )

    class Stop(Exception):
        pass

    def stop_after_first_save(trainer):
        raise Stop

    model = ClipCERTDETR(TINY_MODEL)
    model.add_callback("on_model_save", stop_after_first_save)
    with pytest.raises(Stop):
        model.train(
            data=str(tiny_hazy_shapes),
            clip=tiny_clip,
            project=str(tmp_root / "runs"),
            name="resume",
            **{**FAST, "epochs": 2},
            **custom,
        )
    last = Path(model.trainer.save_dir) / "weights" / "last.pt"
    trainer = ClipCETrainer(overrides={"model": str(last), "resume": str(last)})
    for k, v in custom.items():
        assert trainer.clipce_args[k] == v, k
    assert trainer.clipce_args["clip"] == tiny_clip
    # The user's way: model=last.pt resume=True, data= given again; the run goes on in its own folder to the end.
    resumed = ClipCERTDETR(str(last))
    resumed.train(resume=True, data=str(tiny_hazy_shapes))
    assert Path(resumed.trainer.save_dir) == last.parents[1]
    rows = list(csv.DictReader(open(last.parents[1] / "results.csv")))
    assert [int(float(r["epoch"])) for r in rows] == [1, 2]
    assert yaml.safe_load((last.parents[1] / "clipce.yaml").read_text())["ame_alpha"] == 0.5


@pytest.mark.parametrize("mode,extra", [("prior", {}), ("ame", {"ame_crops": "batch"})])
def test_other_modes_train(tiny_hazy_shapes, tiny_clip, tmp_root, mode, extra):
    model = ClipCERTDETR(TINY_MODEL)
    model.train(
        data=str(tiny_hazy_shapes),
        clip=tiny_clip,
        clipce=mode,
        project=str(tmp_root / "runs"),
        name=mode,
        **FAST,
        **extra,
    )
    rows = list(csv.DictReader(open(Path(model.trainer.save_dir) / "results.csv")))
    assert float(rows[-1]["clipce/ame_w"]) >= 1.0
    if mode == "ame":  # no FAME: the applied weight is the AME weight
        assert abs(float(rows[-1]["clipce/fame_w"]) - float(rows[-1]["clipce/ame_w"])) < 1e-3


@pytest.mark.parametrize(
    "bad,err",
    [
        ({"ame_alpha": -1.0}, ConfigError),
        ({"fame_gamma": -0.5}, ConfigError),
        ({"ame_profile": "fog-nope"}, ClipCEError),
        ({"ame_templates": ["a photo of a cat."]}, ClipCEError),
        ({"clipce": "bogus"}, ConfigError),
    ],
)
def test_bad_settings_rejected_before_training(tiny_hazy_shapes, tiny_clip, tmp_root, bad, err):
    model = ClipCERTDETR(TINY_MODEL)
    with pytest.raises(err):
        model.train(
            data=str(tiny_hazy_shapes), clip=tiny_clip, project=str(tmp_root / "runs"), name="bad", **FAST, **bad
        )
    assert model.trainer is None or not (Path(model.trainer.save_dir) / "results.csv").exists()


def test_ddp_launch_carries_clipce_keys(tiny_hazy_shapes, tiny_clip, monkeypatch):
    """Ultralytics re-launches DDP workers from vars(trainer.args): the CLIP-CE keys must be there then, only then."""
    import ultralytics.engine.trainer as ut

    from clipce_rtdetr.models.rtdetr.train import ClipCETrainer

    trainer = ClipCETrainer(
        overrides={"model": TINY_MODEL, "data": str(tiny_hazy_shapes), "clip": tiny_clip, "ame_alpha": 0.7, **FAST}
    )
    seen = {}

    def fake_command(tr):
        seen.update(vars(tr.args))
        raise RuntimeError("stop before launching")

    monkeypatch.setattr(ut, "generate_ddp_command", fake_command)
    trainer.ddp = True
    with pytest.raises(RuntimeError, match="stop before launching"):
        trainer.train()
    assert seen["ame_alpha"] == 0.7 and seen["clip"] == tiny_clip
    assert not hasattr(trainer.args, "ame_alpha")


def test_ame_inspection_outputs(tiny_hazy_shapes, tiny_clip, tmp_root):
    from clipce_rtdetr.eval.ame_inspect import run_ame_inspection

    out = run_ame_inspection(
        {
            "data": str(tiny_hazy_shapes),
            "clip": tiny_clip,
            "split": "val",
            "project": str(tmp_root / "runs"),
            "name": "ame",
            "ame_alpha": 2.0,
        }
    )
    rows = list(csv.DictReader(open(out / "ame.csv")))
    assert list(rows[0]) == ["im_file", "index", "cls", "name", "x1", "y1", "x2", "y2", "q", "d", "w"]
    for r in rows:
        q, d, w = float(r["q"]), float(r["d"]), float(r["w"])
        assert 0 <= q <= 1 and abs(d - (1 - q)) < 1e-5 and abs(w - torch.exp(torch.tensor(2.0 * d)).item()) < 1e-3
        # box and class agree with the named line of the label file
        lb = Path(r["im_file"]).parent.parent.parent / "labels" / "val" / (Path(r["im_file"]).stem + ".txt")
        c, x, y, bw, bh = map(float, lb.read_text().splitlines()[int(r["index"])].split())
        assert int(c) == int(r["cls"]) and abs(float(r["x1"]) - (x - bw / 2) * 128) < 0.05
    info = json.loads((out / "prompts.json").read_text())
    assert info["alpha"] == 2.0 and info["form"] == "exp" and info["context"] == 0.1 and info["temperature"] == 1.0
    assert "logit_scale" in info and info["split"] == "val"
    text = json.dumps(info)
    assert "a photo of a circle." in text and "a photo of fog." in text
    assert (out / "weights_per_class.png").exists() and (out / "crops_most_least_weakened.png").exists()


def test_weights_carry_no_gradient_into_clip(tiny_clip):
    """Online (batch-mode) scoring: weights are detached and CLIP's parameters never require or receive gradients."""
    from clipce_rtdetr.clip.loader import load_clip
    from clipce_rtdetr.method.ame import AMEScorer

    bundle = load_clip(tiny_clip)
    scorer = AMEScorer(bundle, ["circle", "square"], "haze")
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    boxes = torch.tensor([[4.0, 4.0, 40.0, 40.0], [10.0, 12.0, 60.0, 50.0], [1.0, 1.0, 2.0, 2.0]])
    q, d, w = scorer.score_boxes(images, boxes, torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    assert not w.requires_grad and w.grad_fn is None
    assert w[2] == 1.0  # a 1-px box is not scored
    assert all(not p.requires_grad and p.grad is None for p in bundle.model.parameters())
    assert not bundle.model.training


@pytest.mark.parametrize("bad", [{"fame_gamma": float("nan")}, {"ame_alpha": float("inf")}, {"ame_temperature": 0.0}])
def test_non_finite_settings_rejected(bad):
    from clipce_rtdetr.config import check_project_values, project_defaults

    with pytest.raises(ConfigError):
        check_project_values({**project_defaults(), **bad})


def test_train_rejects_a_list_of_datasets(tiny_hazy_shapes):
    with pytest.raises(ClipCEError, match="one dataset"):
        ClipCERTDETR(TINY_MODEL).train(data=[str(tiny_hazy_shapes), str(tiny_hazy_shapes)], **FAST)


def test_object_without_id_keeps_weight_one():
    from clipce_rtdetr.models.rtdetr.train import ClipCETrainer

    trainer = object.__new__(ClipCETrainer)  # only the weight table is exercised
    trainer.device = torch.device("cpu")
    trainer._set_weight_table(torch.tensor([2.0, 3.0]))
    assert trainer.object_weights(torch.tensor([1, -1, 0])).tolist() == [3.0, 1.0, 2.0]
    assert trainer.weight_table.tolist() == [2.0, 3.0]  # what ablation plots: no padding slot


@pytest.mark.parametrize(
    "poison",
    [
        lambda d: d["embeddings"].__setitem__(0, float("nan")),
        lambda d: d["embeddings"].__setitem__(-1, float("inf")),
        lambda d: d.__setitem__("embeddings", d["embeddings"][:-1]),  # one object short: another dataset's numbers
    ],
    ids=["nan", "inf", "count"],
)
def test_corrupt_cache_numbers_are_rebuilt(tiny_hazy_shapes, tmp_path, caplog, poison):
    """An intact zip holding NaN/inf or the wrong count (issue 11.2) is rebuilt with a warning, never reused."""
    from clipce_rtdetr.method import embedding_cache as ec

    labels, _ = _labels(tiny_hazy_shapes)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    files = [str(tmp_path / "labels" / "train" / "a.txt")]
    b = _FakeBundle()
    good = ec.dataset_embeddings(labels, files, b, 0.1, progress=False)
    path = ec.cache_path_for(
        files, ec.cache_key(b.fingerprint, 0.1, b.image_size, b.mean, b.std, ec.labels_hash(labels))
    )
    data = torch.load(path, weights_only=True)
    poison(data)
    torch.save(data, path)
    calls = b.calls
    again = ec.dataset_embeddings(labels, files, b, 0.1, progress=False)
    assert b.calls > calls and torch.equal(again["embeddings"], good["embeddings"])
    assert any("corrupt" in r.message for r in caplog.records)
    assert torch.equal(torch.load(path, weights_only=True)["embeddings"], good["embeddings"])  # the file is mended


def test_corrupt_prior_cache_is_rebuilt(tiny_hazy_shapes, tmp_path):
    from clipce_rtdetr.method import embedding_cache as ec

    labels, _ = _labels(tiny_hazy_shapes)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    files = [str(tmp_path / "labels" / "train" / "a.txt")]
    good = ec.dataset_prior_weights(labels, files, 1.5, progress=False)
    (path,) = (tmp_path / "labels").glob("train.clipce-*.pt")
    data = torch.load(path, weights_only=True)
    data["weights"][1] = float("nan")
    torch.save(data, path)
    assert torch.equal(ec.dataset_prior_weights(labels, files, 1.5, progress=False), good)


def test_single_cls_refused_with_class_prompts(tiny_hazy_shapes, tiny_clip, tmp_root):
    """Issue 13.5: single_cls renames every class to one name; AME/FAME would prompt with it. prior is fine."""
    with pytest.raises(ClipCEError, match="single_cls"):
        ClipCERTDETR(TINY_MODEL).train(
            data=str(tiny_hazy_shapes),
            clip=tiny_clip,
            clipce="fame",
            single_cls=True,
            project=str(tmp_root / "runs"),
            name="scls",
            **FAST,
        )
    assert not (tmp_root / "runs" / "scls").exists()


def test_batches_before_the_weight_table_use_the_stock_loss(tiny_hazy_shapes, tiny_clip, tmp_root, monkeypatch):
    """Issue 13.4: quantize=8 runs calibration batches through preprocess_batch inside _setup_train, before the weight
    table exists. NVIDIA ModelOpt (Ultralytics' QAT backend) cannot be installed offline, so prepare_qat is replaced by
    a stand-in that does what it does with the trainer: run batches through preprocess_batch and the model's loss."""
    import ultralytics.engine.trainer as ut

    seen = []

    def calibrate(model, loader, preprocess, batches=2):
        for batch, _ in zip(loader, range(batches)):
            batch = preprocess(batch)
            seen.append(model.criterion.object_weights)
            model(batch)
        return model

    monkeypatch.setattr(ut, "prepare_qat", calibrate)
    monkeypatch.setattr(ut, "qat_state", lambda ema: None)
    model = ClipCERTDETR(TINY_MODEL)
    model.train(
        data=str(tiny_hazy_shapes),
        clip=tiny_clip,
        clipce="fame",
        quantize=8,
        project=str(tmp_root / "runs"),
        name="qat",
        **{**FAST, "val": False},
    )
    assert seen == [None, None] and model.trainer.weight_table is not None


def test_non_finite_weights_or_loss_stop_the_run(tiny_hazy_shapes, tmp_root):
    """Issue 11.2: a run whose loss goes NaN must not end as a success with mAP 0."""
    from clipce_rtdetr.models.rtdetr.train import ClipCETrainer

    trainer = object.__new__(ClipCETrainer)
    trainer.device = torch.device("cpu")
    with pytest.raises(ClipCEError, match="not finite"):
        trainer._set_weight_table(torch.tensor([1.0, float("nan")]))

    def poison(tr):  # the parameters go NaN in the first epoch, as after a NaN weight or an AMP overflow
        for p in tr.model.parameters():
            p.data.fill_(float("nan"))

    model = ClipCERTDETR(TINY_MODEL)
    model.add_callback("on_train_batch_end", poison)
    with pytest.raises(ClipCEError, match="NaN"):
        model.train(data=str(tiny_hazy_shapes), clipce="prior", project=str(tmp_root / "runs"), name="nan", **FAST)
