#!/usr/bin/env bash
# The issue-23 ablation: none / oracle / oracle-ranked / ame / fame x 5 seeds, balanced hazy-shapes and
# hazy-shapes-rare-heavy, tiny RT-DETR and YOLO11n, with the committed grids' settings (8 epochs, 160 px, batch 8,
# AdamW lr 5e-4, demo CLIP). Two lanes (one per detector) run side by side; every call resumes finished runs, so
# rerun the same command after an interruption. The positive control (none + oracle) runs first.
#   bash benchmarks/oracle_grid.sh [RUNS_DIR] [RESULTS_DIR]
set -u
RUNS=${1:-/tmp/clipce-oracle-grid}
OUT=${2:-benchmarks/results}
HERE=$(cd "$(dirname "$0")" && pwd)
CLIP="clipce-demo:$HERE/../weights/demo-clip-hazy-shapes.safetensors"
CLIP=${CLIPCE_GRID_CLIP:-$CLIP}  # the committed grids named /work/main/weights/...: same string, so their runs match
SEEDS=0,1,2,3,4
common=(--epochs 8 --imgsz 160 --batch 8 --lr0 0.0005 --clip "$CLIP" --seeds $SEEDS --out "$OUT")

grid() {  # model tag data methods [extra args]
  local model=$1 tag=$2 data=$3 methods=$4; shift 4
  python "$HERE/ablation.py" --model "$model" --data "$data" --methods "$methods" "${common[@]}" \
    --project "$RUNS/$tag" --name "ablation_oracle_$tag" "$@"
}

lane_rtdetr() {
  local m=rtdetr-tiny-shapes.pt r=(--reuse "$HERE/results/ablation.json")
  grid $m rtdetr_balanced hazy-shapes none,oracle "${r[@]}"
  grid $m rtdetr_rare hazy-shapes-rare-heavy none,oracle
  grid $m rtdetr_balanced hazy-shapes none,oracle,oracle-ranked "${r[@]}"
  grid $m rtdetr_rare hazy-shapes-rare-heavy none,oracle,oracle-ranked
  grid $m rtdetr_rare hazy-shapes-rare-heavy none,oracle,oracle-ranked,ame,fame
}

lane_yolo() {
  local m=yolo11n-shapes.pt r=(--reuse "$HERE/results/ablation_yolo.json")
  grid $m yolo_balanced hazy-shapes none,oracle "${r[@]}"
  grid $m yolo_rare hazy-shapes-rare-heavy none,oracle
  grid $m yolo_balanced hazy-shapes none,oracle,oracle-ranked "${r[@]}"
  grid $m yolo_rare hazy-shapes-rare-heavy none,oracle,oracle-ranked
  grid $m yolo_rare hazy-shapes-rare-heavy none,oracle,oracle-ranked,ame,fame
  grid $m yolo_balanced hazy-shapes none,oracle,oracle-ranked,ame,fame "${r[@]}"
  # then the RT-DETR balanced ame/fame runs the committed grid did not hash (seeds 0-2)
  grid rtdetr-tiny-shapes.pt rtdetr_balanced hazy-shapes none,oracle,oracle-ranked,ame,fame \
    --reuse "$HERE/results/ablation.json"
}

mkdir -p "$RUNS" "$OUT"
lane_rtdetr > "$RUNS.rtdetr.log" 2>&1 &
lane_yolo > "$RUNS.yolo.log" 2>&1 &
wait
