"""Reproduce weights/rtdetr-tiny-shapes.pt: the tiny RT-DETR pre-trained on CLEAN hazy-shapes scenes.

Why: DETR-style detectors converge slowly from scratch; a few CPU epochs from random weights give mAP near 0,
which says nothing about a loss. Real users start from a COCO-pretrained rtdetr-l.pt and fine-tune on hazy
data; the demo mirrors that with this checkpoint, pre-trained on the clean copies of a *different* hazy-shapes
draw (seed 1, 384 + 64 images) than the demo dataset (seed 0), so the demo's val images are never seen.

    python benchmarks/pretrain_tiny.py            # ~30 min on 2 CPU cores (time-limited to 0.45 h)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def clean_view(yaml_path: Path, out: Path) -> Path:
    """A YOLO dataset whose images are the clean copies of a generated hazy-shapes dataset."""
    import yaml

    src = yaml_path.parent
    for split in ("train", "val"):
        shutil.copytree(src / "clean" / split, out / "images" / split, dirs_exist_ok=True)
        shutil.copytree(
            src / "labels" / split,
            out / "labels" / split,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("*.cache", "*.pt"),
        )
    names = yaml.safe_load(yaml_path.read_text())["names"]
    data = out / "clean.yaml"
    data.write_text(yaml.safe_dump({"path": str(out), "train": "images/train", "val": "images/val", "names": names}))
    return data


def pretrain(model, out: str, epochs: int, hours: float, prefix: str, **train_kwargs) -> dict:
    """Train `model` (a ClipCERTDETR or ClipCEYOLO, stock loss) on the clean view of hazy-shapes seed 1 (384 + 64
    images) at 160 px on the CPU, and copy its best.pt to `out`. Shared by the RT-DETR and YOLO scripts, so both
    checkpoints are made from the same data, size and schedule limits. Returns the final validation metrics."""
    from clipce_rtdetr.data.hazy_shapes import Recipe, generate

    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        data = clean_view(generate(work / "hazy-shapes-s1", Recipe(seed=1, n_train=384, n_val=64)), work / "clean")
        model.train(data=str(data), clipce="none", epochs=epochs, time=hours, imgsz=160, batch=16, device="cpu",
                    workers=0, plots=False, project=str(work / "runs"), name="pre", **train_kwargs)  # fmt: skip
        best = Path(model.trainer.best)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(best, out)
        metrics = model.trainer.metrics or {}
        print(f"saved {out} (from {best}); clean val mAP50={metrics.get('metrics/mAP50(B)', float('nan')):.3f}")
        return metrics
    finally:
        shutil.rmtree(work, ignore_errors=True)


def refuse_existing(out: str) -> None:
    """Before the training (tens of minutes), not after: nothing a user made is overwritten."""
    if Path(out).exists():
        raise SystemExit(f"{out} exists; remove it first or pass --out elsewhere (nothing overwritten).")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "weights" / "rtdetr-tiny-shapes.pt"))
    ap.add_argument("--hours", type=float, default=0.45)
    ap.add_argument("--epochs", type=int, default=40)
    args = ap.parse_args(argv)

    refuse_existing(args.out)
    from clipce_rtdetr import ClipCERTDETR

    pretrain(ClipCERTDETR("rtdetr-tiny.yaml"), args.out, args.epochs, args.hours, "clipce-pretrain-",
             warmup_epochs=1, optimizer="AdamW", lr0=0.002)  # fmt: skip


if __name__ == "__main__":
    main()
