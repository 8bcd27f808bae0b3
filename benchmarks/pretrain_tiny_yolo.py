"""Reproduce weights/yolo11n-shapes.pt: YOLO11n pre-trained on CLEAN hazy-shapes scenes (the YOLO twin of
weights/rtdetr-tiny-shapes.pt, made the same way by benchmarks/pretrain_tiny.py).

Why: a few CPU epochs from random weights say nothing about a loss; users fine-tune a COCO-pretrained yolo11n.pt
on hazy data, and the toy setting mirrors that with this checkpoint, pre-trained on the clean copies of a
*different* hazy-shapes draw (seed 1, 384 + 64 images) than the demo dataset (seed 0).

    python benchmarks/pretrain_tiny_yolo.py       # time-limited to 0.25 h on 2 CPU cores
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from pretrain_tiny import clean_view  # noqa: E402  (same clean view as the RT-DETR checkpoint)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "weights" / "yolo11n-shapes.pt"))
    ap.add_argument("--model", default="yolo11n.yaml", help="any YOLO detection config (yolov8n.yaml, yolo26n.yaml)")
    ap.add_argument("--hours", type=float, default=0.25)
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args(argv)

    if Path(args.out).exists():  # before the training, not after
        raise SystemExit(f"{args.out} exists; remove it first or pass --out elsewhere (nothing overwritten).")
    from clipce_rtdetr.data.hazy_shapes import Recipe, generate
    from clipce_rtdetr.models import load_detector

    work = Path(tempfile.mkdtemp(prefix="clipce-pretrain-yolo-"))
    try:
        data = clean_view(generate(work / "hazy-shapes-s1", Recipe(seed=1, n_train=384, n_val=64)), work / "clean")
        model = load_detector(args.model)
        model.train(
            data=str(data),
            clipce="none",
            epochs=args.epochs,
            time=args.hours,
            imgsz=160,
            batch=16,
            device="cpu",
            workers=0,
            plots=False,
            project=str(work / "runs"),
            name="pre",
        )
        best = Path(model.trainer.best)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(best, args.out)
        m = model.trainer.metrics or {}
        print(f"saved {args.out} (from {best}); clean val mAP50={m.get('metrics/mAP50(B)', float('nan')):.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
