"""benchmarks/gpu_check.py: its dry run writes the report, runs the CPU parts and reports every CUDA-only part as
skipped instead of crashing (`--cpu` makes a GPU machine behave the same, so the test asserts the same thing there)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_its_report(tmp_path):
    env = {**os.environ, "YOLO_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--cpu", "--out", str(tmp_path)]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = res["parts"]
    assert res["dry_run"] is True and res["cuda"] is False
    assert parts["machine"]["torch"] and parts["machine"]["ultralytics"]
    for name in ("train_step", "amp_train", "export"):
        assert parts[name]["status"] == "skipped: no CUDA", (name, parts[name])
    cache = parts["cache"]
    assert cache["status"] == "ran" and cache["crops"] > 0 and cache["device"] == "cpu"
    assert cache["cache_build_crops_per_s"] > 0 and cache["bare_forward_crops_per_s"] > 0
    stream = parts["stream"]
    assert stream["status"] == "ran" and stream["frames"] == 12 and stream["fps"] > 0
    md = (tmp_path / "gpu_check.md").read_text()
    assert "Dry run" in md and md.count("skipped: no CUDA") == 3 and "frames/s" in md
