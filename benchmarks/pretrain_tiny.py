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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "weights" / "rtdetr-tiny-shapes.pt"))
    ap.add_argument("--hours", type=float, default=0.45)
    ap.add_argument("--epochs", type=int, default=40)
    args = ap.parse_args(argv)

    if Path(args.out).exists():  # before ~0.45 h of training, not after
        raise SystemExit(f"{args.out} exists; remove it first or pass --out elsewhere (nothing overwritten).")
    from clipce_rtdetr import ClipCERTDETR
    from clipce_rtdetr.data.hazy_shapes import Recipe, generate

    work = Path(tempfile.mkdtemp(prefix="clipce-pretrain-"))
    try:
        data = clean_view(generate(work / "hazy-shapes-s1", Recipe(seed=1, n_train=384, n_val=64)), work / "clean")
        model = ClipCERTDETR("rtdetr-tiny.yaml")
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
            warmup_epochs=1,
            optimizer="AdamW",
            lr0=0.002,
            project=str(work / "runs"),
            name="pre",
        )
        best = Path(model.trainer.best)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(best, args.out)
        print(f"saved {args.out} (from {best})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
