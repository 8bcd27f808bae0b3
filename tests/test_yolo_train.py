"""CLIP-CE training of Ultralytics YOLO detectors end to end (tiny images, CPU), and the detector-family choice."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clipce_rtdetr.errors import ClipCEError
from clipce_rtdetr.models import load_detector
from tests.conftest import FAST, TINY_MODEL, run_without_clipce

SCRIPT = Path(sys.executable).parent / "clipce-rtdetr"


def _cache_files(dataset: Path) -> dict[Path, int]:
    return {p: p.stat().st_size for p in Path(dataset).parent.rglob("*.clipce-*.pt")}


@pytest.fixture(scope="module")
def yolo_fame_run(tiny_hazy_shapes, tiny_clip, tmp_root):
    model = load_detector("yolo11n.yaml")
    model.train(
        data=str(tiny_hazy_shapes),
        clip=tiny_clip,
        clipce="fame",
        project=str(tmp_root / "runs"),
        name="yolo-fame",
        **FAST,
    )
    return Path(model.trainer.save_dir), model.trainer


def test_yolo_fame_run(yolo_fame_run):
    from clipce_rtdetr.models.yolo.loss import ClipCEYOLOLoss
    from clipce_rtdetr.models.yolo.model import ClipCEYOLO
    from clipce_rtdetr.models.yolo.train import ClipCEYOLOTrainer

    save_dir, trainer = yolo_fame_run
    assert type(trainer) is ClipCEYOLOTrainer and isinstance(trainer.model.criterion, ClipCEYOLOLoss)
    assert trainer.ema.ema.criterion is None or type(trainer.ema.ema.criterion).__name__ == "v8DetectionLoss"
    rows = list(csv.DictReader(open(save_dir / "results.csv")))
    ame_w, fame_w = float(rows[0]["clipce/ame_w"]), float(rows[0]["clipce/fame_w"])
    assert ame_w > 1.0 and 1.0 <= fame_w <= ame_w + 1e-6  # random CLIP: every w > 1; FAME moves it toward 1
    assert (save_dir / "clipce.yaml").read_text().count("clipce: fame") == 1
    ckpt = torch.load(save_dir / "weights" / "best.pt", map_location="cpu", weights_only=False)
    det = ckpt["ema"] or ckpt["model"]
    assert type(det).__name__ == "DetectionModel" and getattr(det, "criterion", None) is None
    assert not any("visual" in k or "token_embedding" in k for k in det.state_dict())
    assert det.clipce_args["clipce"] == "fame"
    assert isinstance(load_detector(str(save_dir / "weights" / "best.pt")), ClipCEYOLO)  # family from the checkpoint


def test_yolo_checkpoint_runs_in_plain_ultralytics(yolo_fame_run, tiny_hazy_shapes, tmp_path):
    """best.pt loads and predicts in a process where clipce_rtdetr cannot be imported at all."""
    save_dir, _ = yolo_fame_run
    img = next((Path(tiny_hazy_shapes).parent / "images" / "val").glob("*.png"))
    code = f"""
from ultralytics import YOLO
m = YOLO({str(save_dir / "weights" / "best.pt")!r})
r = m.predict({str(img)!r}, imgsz=64, conf=0.0, verbose=False)
print('OK', type(m.model).__name__, len(r), r[0].boxes.data.shape[1])
"""
    assert "OK DetectionModel 1 6" in run_without_clipce(code, tmp_path)


def test_embedding_cache_shared_with_rtdetr(yolo_fame_run, tiny_hazy_shapes, tiny_clip, tmp_root, caplog):
    """An RT-DETR run on the same dataset with the same CLIP reuses the YOLO run's cache: same file, not rebuilt.
    (Reuse touches the file's time, for pruning: the log line says which file was reused.)"""
    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR

    before = _cache_files(tiny_hazy_shapes)
    assert before, "the YOLO run wrote no embedding cache"
    model = load_detector(TINY_MODEL)
    assert isinstance(model, ClipCERTDETR)
    model.train(data=str(tiny_hazy_shapes), clip=tiny_clip, clipce="ame", project=str(tmp_root / "runs"), **FAST)
    assert _cache_files(tiny_hazy_shapes).keys() == before.keys()  # no new file
    reused = [p for p in before if f"CLIP-CE: reusing cache {p}" in caplog.text]  # other tests add their own
    embeddings = [p for p in reused if ".scores-" not in p.name]  # the scores saved beside it are reused too
    assert len(embeddings) == 1 and embeddings[0].name.startswith("train.")


@pytest.mark.parametrize(
    "cfg, mode",
    [("yolo26n.yaml", "fame"), ("yolov8n.yaml", "ame"), ("yolo11n.yaml", "prior"), ("yolo26n.yaml", "none")],
)
def test_yolo_families_and_modes_train(tiny_hazy_shapes, tiny_clip, tmp_root, cfg, mode):
    from clipce_rtdetr.models.yolo.loss import ClipCEE2ELoss

    model = load_detector(cfg)
    model.train(
        data=str(tiny_hazy_shapes), clip=tiny_clip, clipce=mode, project=str(tmp_root / "runs"), name=cfg, **FAST
    )
    rows = list(csv.DictReader(open(Path(model.trainer.save_dir) / "results.csv")))
    assert len(rows) == 1 and float(rows[0]["train/cls_loss"]) > 0
    crit = model.trainer.model.criterion
    if mode == "none":
        assert "clipce/ame_w" not in rows[0] and not hasattr(crit, "object_weights")
    else:
        assert float(rows[0]["clipce/ame_w"]) > 0
        assert isinstance(crit, ClipCEE2ELoss) == cfg.startswith("yolo26")


@pytest.mark.parametrize("mode", ["fame", "prior"])
def test_cli_trains_yolo26(tiny_hazy_shapes, tiny_clip, tmp_path, mode):
    args = [f"data={tiny_hazy_shapes}", f"clip={tiny_clip}", f"clipce={mode}", f"project={tmp_path}", "name=cli"]
    fast = ["epochs=1", "imgsz=64", "batch=8", "device=cpu", "workers=0", "plots=False"]
    r = subprocess.run(
        [str(SCRIPT), "train", "model=yolo26n.yaml", *args, *fast], capture_output=True, text=True, timeout=600
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Traceback" not in out, out[-3000:]
    assert (tmp_path / "cli" / "weights" / "best.pt").exists()
    assert f"clipce-rtdetr train done ({mode})" in out


@pytest.mark.parametrize("cfg", ["yolo11n-seg.yaml", "yolo26n-pose.yaml", "yolo11n-obb.yaml", "yolov8n-cls.yaml"])
def test_non_detection_configs_refused(cfg):
    with pytest.raises(ClipCEError, match="CLIP-CE trains detection models"):
        load_detector(cfg)


def test_non_detection_checkpoint_and_asset_names_refused(tmp_path):
    from ultralytics import YOLO

    seg = tmp_path / "my-model.pt"  # the name says nothing: the checkpoint's model class decides
    YOLO("yolo11n-seg.yaml").save(seg)
    with pytest.raises(ClipCEError, match="detection models.*segment"):
        load_detector(str(seg))
    with pytest.raises(ClipCEError, match="detection models.*pose"):
        load_detector("yolo11n-pose.pt")  # not downloaded (offline): refused by its Ultralytics name


def test_family_from_model_file(tmp_path):
    from ultralytics import RTDETR, YOLO

    from clipce_rtdetr.models.rtdetr.model import ClipCERTDETR
    from clipce_rtdetr.models.yolo.model import ClipCEYOLO

    YOLO("yolov8n.yaml").save(yolo_pt := tmp_path / "a.pt")
    RTDETR(TINY_MODEL).save(detr_pt := tmp_path / "b.pt")
    assert type(load_detector(str(yolo_pt))) is ClipCEYOLO
    assert type(load_detector(str(detr_pt))) is ClipCERTDETR
    assert type(load_detector("yolo26n.yaml")) is ClipCEYOLO
    with pytest.raises(ClipCEError, match="RT-DETR model: load it with ClipCERTDETR"):
        ClipCEYOLO(str(detr_pt))


def test_top_level_export_is_lazy():
    code = (
        "import sys, clipce_rtdetr; assert 'clipce_rtdetr.models.yolo.model' not in sys.modules; "
        "from clipce_rtdetr import ClipCEYOLO; print(ClipCEYOLO.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "clipce_rtdetr.models.yolo.model"


def test_yolo_val_with_coco_metrics(yolo_fame_run, tiny_hazy_shapes):
    """`val coco=True` (the ablation's evaluation) on a YOLO checkpoint: pycocotools' numbers next to Ultralytics'."""
    save_dir, _ = yolo_fame_run
    model = load_detector(str(save_dir / "weights" / "best.pt"))
    metrics = model.val(data=str(tiny_hazy_shapes), coco=True, imgsz=64, batch=8, device="cpu", plots=False)
    stats = metrics.coco["stats"]
    assert 0.0 <= stats["AP50"] <= 1.0 and 0.0 <= stats["AP"] <= stats["AP50"] + 1e-9


def test_yolo26_resume_keeps_clipce_loss_and_its_schedule(tiny_hazy_shapes, tiny_clip, tmp_root):
    """Ultralytics' resume_training rebuilds a stock E2ELoss at the resumed step: the CLIP-CE loss replaces it and
    keeps that step (one-to-many/one-to-one gains), so a resumed run weights the same way as an uninterrupted one."""
    from clipce_rtdetr.models.yolo.loss import ClipCEE2ELoss

    class Stop(Exception):
        pass

    def stop_after_first_save(trainer):
        raise Stop

    model = load_detector("yolo26n.yaml")
    model.add_callback("on_model_save", stop_after_first_save)
    with pytest.raises(Stop):
        model.train(
            data=str(tiny_hazy_shapes), clip=tiny_clip, clipce="fame", project=str(tmp_root / "runs"),
            name="yolo-resume", **{**FAST, "epochs": 3, "val": False},
        )  # fmt: skip
    last = Path(model.trainer.save_dir) / "weights" / "last.pt"
    resumed = load_detector(str(last))
    resumed.train(resume=True, data=str(tiny_hazy_shapes))
    crit = resumed.trainer.model.criterion
    assert isinstance(crit, ClipCEE2ELoss) and crit.object_weights is not None
    assert crit.updates == 3  # 1 restored at the resumed step + one per resumed epoch (2 and 3)
    rows = list(csv.DictReader(open(last.parents[1] / "results.csv")))
    assert [int(float(r["epoch"])) for r in rows] == [1, 2, 3]
