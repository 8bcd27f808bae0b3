"""Ablation: clipce=none|prior|ame|fame (and, on hazy-shapes, the oracle methods oracle|oracle-ranked) over seeds,
everything else equal (see clipce_rtdetr/eval/ablation.py).

Default: hazy-shapes, tiny RT-DETR, CPU, under an hour on 2 cores; results to benchmarks/results/<name>.*.
YOLO (the committed ablation_yolo.* results):
    python benchmarks/ablation.py --model yolo11n-shapes.pt --seeds 0,1,2,3,4 --epochs 8 --name ablation_yolo
The issue-23 grid (positive control, rare heavy haze, both detectors): bash benchmarks/oracle_grid.sh
Report again from a saved record (no training):  python benchmarks/ablation.py --report-only results/ablation.json
Real data on a GPU:  python benchmarks/ablation.py --data datasets/rtts/rtts.yaml --model rtdetr-l.pt \
                        --device 0 --epochs 72 --imgsz 640 --batch 16 --clip ViT-B-32:openai
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="hazy-shapes")
    ap.add_argument(
        "--model", default="rtdetr-tiny-shapes.pt", help="default: the clean-pretrained tiny RT-DETR (weights/)"
    )
    ap.add_argument("--methods", default="none,prior,ame,fame")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr0", type=float, default=0.0005)
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clip", default=None, help="CLIP spec; default for hazy-shapes: the committed demo CLIP")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--project", default=None, help="run folders (default: a temp dir)")
    ap.add_argument("--name", default="ablation", help="file name prefix of the results (<name>.md, .json, .png)")
    ap.add_argument("--report-only", default=None, help="an ablation JSON: write its report again, train nothing")
    ap.add_argument("--report-runs", default=None, help="a grid's run folder: report the runs finished so far")
    ap.add_argument(
        "--reuse", default=None, help="an earlier grid's JSON (same settings): its hash-recorded runs count as done"
    )
    args = ap.parse_args(argv)

    from clipce_rtdetr.eval.ablation import run_ablation_grid
    from clipce_rtdetr.eval.ablation_report import write_report

    if args.report_runs:
        from clipce_rtdetr.eval.ablation import record_from_runs

        command = shlex.join(["python", "benchmarks/ablation.py", *(sys.argv[1:] if argv is None else argv)])
        record, weights = record_from_runs(Path(args.report_runs), command)
        for path in write_report(record, Path(args.out), args.name, weights):
            print(f"wrote {path}")
        return 0
    if args.report_only:
        record = json.loads(Path(args.report_only).read_text())
        for path in write_report(record, Path(args.out), args.name):
            print(f"wrote {path}")
        return 0

    train_kwargs = dict(
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        device=args.device,
        workers=0,
        plots=False,
        warmup_epochs=0,
        optimizer="AdamW",
        lr0=args.lr0,
        verbose=False,
    )
    if args.clip:
        train_kwargs["clip"] = args.clip
    project = Path(args.project or tempfile.mkdtemp(prefix="clipce-ablation-"))
    run_ablation_grid(
        args.methods.split(","),
        [int(s) for s in args.seeds.split(",")],
        args.data,
        args.model,
        train_kwargs,
        Path(args.out),
        project,
        prefix=args.name,
        reuse=json.loads(Path(args.reuse).read_text()) if args.reuse else None,
        command=shlex.join(["python", "benchmarks/ablation.py", *(sys.argv[1:] if argv is None else argv)]),
    )


if __name__ == "__main__":
    sys.exit(main())
