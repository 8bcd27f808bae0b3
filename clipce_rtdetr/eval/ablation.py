"""Ablation harness: train `clipce=none|prior|ame|fame` with everything else equal, over seeds, and report
mAP50 / mAP50-95 as mean ± std and as the paired difference to `none` (95 % interval over seeds), overall and
per degradation level (markdown, JSON, PNG plots; see ablation_report.py).

`clipce-rtdetr ablation data=... model=... epochs=... ablation_methods=[none,prior,ame,fame] ablation_seeds=[0,1,2]`
or `python benchmarks/ablation.py` (the committed results in benchmarks/results/ came from the latter).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from clipce_rtdetr.eval.ablation_report import (
    aggregate,
    markdown_table,
    paired_differences,
    paired_table,
    write_report,
)


def record_data_order(det: Any) -> Any:
    """Hash every training batch (file order, augmented pixels, boxes) a run sees, to check the pairing by seed.

    Two methods with the same seed are paired only if they saw the same batches; the digest proves it per run.
    Hooks the trainer's `preprocess_batch` at train start (the batch is not passed to any callback)."""
    digest = hashlib.sha1()

    def on_train_start(trainer):
        inner = trainer.preprocess_batch

        def hashed(batch):
            digest.update("\n".join(batch["im_file"]).encode())
            for key in ("img", "bboxes"):  # not "cls": CLIP-CE modes carry object ids in it
                digest.update(batch[key].detach().cpu().contiguous().numpy().tobytes())
            return inner(batch)

        trainer.preprocess_batch = hashed

    det.add_callback("on_train_start", on_train_start)
    return digest


def run_one(
    method: str, seed: int, data: str, model: str, train_kwargs: dict[str, Any], project: Path
) -> dict[str, Any]:
    """Train one (method, seed) and evaluate it with COCO metrics per level."""
    from clipce_rtdetr.models import load_detector

    det = load_detector(model)
    data_order = record_data_order(det)
    t0 = time.time()
    det.train(
        data=data,
        clipce=method,
        seed=seed,
        deterministic=True,
        project=str(project),
        name=f"{method}-s{seed}",
        exist_ok=True,
        **train_kwargs,
    )
    train_s = time.time() - t0
    table = getattr(det.trainer, "weight_table", None)
    weights = table.float().cpu().numpy() if table is not None else np.zeros(0)
    metrics = det.val(
        data=data,
        coco=True,
        imgsz=train_kwargs.get("imgsz", 640),
        batch=train_kwargs.get("batch", 16),
        device=train_kwargs.get("device"),
        project=str(project),
        name=f"{method}-s{seed}-val",
        exist_ok=True,
        plots=False,
        verbose=False,
    )
    coco = metrics.coco
    return {
        "method": method,
        "seed": seed,
        "train_seconds": round(train_s, 1),
        "data_order_sha1": data_order.hexdigest(),
        "mAP50": coco["stats"]["AP50"],
        "mAP50-95": coco["stats"]["AP"],
        "ultralytics_mAP50": float(metrics.box.map50),
        "ultralytics_mAP50-95": float(metrics.box.map),
        "per_level": {
            r["level"]: {"mAP50": r["mAP50"], "mAP50-95": r["mAP50-95"], "images": r["images"]}
            for r in coco.get("per_level", [])
        },
        "weights": weights,
    }


def _run_file(project: Path, method: str, seed: int) -> Path:
    return Path(project) / f"{method}-s{seed}.json"


def finished_run(project: Path, method: str, seed: int, settings: str) -> dict[str, Any] | None:
    """The record of a (method, seed) run finished earlier with the same settings (an interrupted grid resumes)."""
    f = _run_file(project, method, seed)
    try:
        rec = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    if rec.get("settings") != settings:
        return None
    return {**rec["run"], "weights": np.asarray(rec["run"]["weights"], dtype=np.float32)}


def save_run(project: Path, method: str, seed: int, settings: str, run: dict[str, Any]) -> None:
    f = _run_file(project, method, seed)
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".json.tmp")
    tmp.write_text(
        json.dumps({"settings": settings, "run": {**run, "weights": np.asarray(run["weights"]).tolist()}}, default=str)
    )
    tmp.replace(f)


def run_ablation_grid(
    methods: list[str],
    seeds: list[int],
    data: str,
    model: str,
    train_kwargs: dict[str, Any],
    out_dir: Path,
    project: Path,
    prefix: str = "ablation",
    command: str | None = None,
) -> dict[str, Any]:
    """Every (method, seed); writes <prefix>.json, <prefix>.md and plots to out_dir; returns the summary.

    Each finished run is recorded in `project/<method>-s<seed>.json`; rerunning the same grid reuses those.
    Seeds are the outer loop, so an interrupted grid leaves whole seeds (every method) behind."""
    from clipce_rtdetr.data.dataset import resolve_run_data

    resolved = resolve_run_data({**train_kwargs, "data": data}, needs_clip=bool({"ame", "fame"} & set(methods)))
    data = resolved.pop("data")
    train_kwargs = resolved
    settings = json.dumps(
        {"data": str(data), "model": str(model), "train_kwargs": train_kwargs}, sort_keys=True, default=str
    )
    runs, weights = [], {}
    for seed in seeds:
        for method in methods:
            r = finished_run(project, method, seed, settings)
            if r is None:
                r = run_one(method, seed, data, model, train_kwargs, project)
                save_run(project, method, seed, settings, r)
            else:
                print(f"[ablation] {method} seed={seed}: finished earlier with the same settings, reused.", flush=True)
            w = r.pop("weights")
            if len(w) and method not in weights:
                weights[method] = w
            runs.append(r)
            print(
                f"[ablation] {method} seed={seed}: mAP50={r['mAP50']:.4f} mAP50-95={r['mAP50-95']:.4f} "
                f"({r['train_seconds']}s)",
                flush=True,
            )
    record = {
        "data": data,
        "model": model,
        "train_kwargs": train_kwargs,
        "command": command,
        "methods": methods,
        "seeds": seeds,
        "runs": runs,
    }
    write_report(record, out_dir, prefix, weights)
    summary = aggregate(runs)
    print(markdown_table(summary), flush=True)
    if "none" in methods:
        print(paired_table(paired_differences(runs), "mAP50"), flush=True)
    return summary


def run_ablation(overrides: dict[str, Any]) -> dict[str, Any]:
    """`clipce-rtdetr ablation ...` (CLI entry)."""
    from clipce_rtdetr.config import CHOICES, check_overrides
    from clipce_rtdetr.errors import ConfigError

    ultra, proj = check_overrides(overrides)
    bad = [m for m in proj["ablation_methods"] if m not in CHOICES["clipce"]]
    if bad:
        raise ConfigError(f"ablation_methods: unknown {bad}; valid methods are {', '.join(CHOICES['clipce'])}.")
    data = ultra.pop("data", None) or "hazy-shapes"
    model = ultra.pop("model", None) or "rtdetr-tiny.yaml"
    out_dir = Path(proj["out"] or "ablation-results")
    project = Path(ultra.pop("project", None) or out_dir / "runs")
    given_proj = {k: v for k, v in overrides.items() if k in proj and not k.startswith("ablation_") and k != "out"}
    return run_ablation_grid(
        list(proj["ablation_methods"]),
        [int(s) for s in proj["ablation_seeds"]],
        data,
        model,
        {**ultra, **given_proj},
        out_dir,
        project,
    )
