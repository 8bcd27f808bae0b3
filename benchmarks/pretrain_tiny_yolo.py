"""Reproduce weights/yolo11n-shapes.pt: YOLO11n pre-trained on CLEAN hazy-shapes scenes (the YOLO twin of
weights/rtdetr-tiny-shapes.pt, made the same way by benchmarks/pretrain_tiny.py).

Why: a few CPU epochs from random weights say nothing about a loss; users fine-tune a COCO-pretrained yolo11n.pt
on hazy data, and the toy setting mirrors that with this checkpoint, pre-trained on the clean copies of a
*different* hazy-shapes draw (seed 1, 384 + 64 images) than the demo dataset (seed 0).

    python benchmarks/pretrain_tiny_yolo.py       # time-limited to 0.25 h on 2 CPU cores
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from pretrain_tiny import pretrain, refuse_existing  # noqa: E402  (the RT-DETR checkpoint's recipe)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "weights" / "yolo11n-shapes.pt"))
    ap.add_argument("--model", default="yolo11n.yaml", help="any YOLO detection config (yolov8n.yaml, yolo26n.yaml)")
    ap.add_argument("--hours", type=float, default=0.25)
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args(argv)

    refuse_existing(args.out)
    from clipce_rtdetr.models import load_detector

    pretrain(load_detector(args.model), args.out, args.epochs, args.hours, "clipce-pretrain-yolo-")


if __name__ == "__main__":
    main()
