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

from clipce_rtdetr import atomic
from clipce_rtdetr.eval.ablation_oracle import ORACLE_METHODS
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
    method: str,
    seed: int,
    data: str,
    model: str,
    train_kwargs: dict[str, Any],
    project: Path,
    method_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one (method, seed) and evaluate it with COCO metrics per level. `method_kwargs` (default
    clipce=method) are the training keys that make the method, e.g. clipce=table weights=oracle.csv."""
    from clipce_rtdetr.models import load_detector

    det = load_detector(model)
    data_order = record_data_order(det)
    t0 = time.time()
    det.train(
        data=data,
        **(method_kwargs or {"clipce": method}),
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
    record = {"settings": settings, "run": {**run, "weights": np.asarray(run["weights"]).tolist()}}
    atomic.write_text(f, json.dumps(record, default=str))


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
    reuse: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every (method, seed); writes <prefix>.json, <prefix>.md and plots to out_dir; returns the summary.

    Methods: the `clipce=` modes, and `oracle` / `oracle-ranked` (hazy-shapes' true transmission, as weight tables
    written once to project/tables; see ablation_oracle.py).

    Each finished run is recorded in `project/<method>-s<seed>.json`; rerunning the same grid reuses those.
    Seeds are the outer loop, so an interrupted grid leaves whole seeds (every method) behind."""
    from clipce_rtdetr.data.dataset import resolve_run_data

    check_grid(methods, seeds)
    needs_clip = bool({"ame", "fame", *ORACLE_METHODS} & set(methods))
    resolved = resolve_run_data({**train_kwargs, "data": data}, needs_clip=needs_clip)
    data = resolved.pop("data")
    train_kwargs = resolved
    settings = json.dumps(
        {"data": str(data), "model": str(model), "train_kwargs": train_kwargs}, sort_keys=True, default=str
    )
    if reuse is not None:
        reuse_runs(reuse, methods, seeds, settings, project)
    method_kwargs = grid_method_kwargs(methods, data, train_kwargs, project)
    runs, weights = [], {}
    for seed in seeds:
        for method in methods:
            r = finished_run(project, method, seed, settings)
            if r is None:
                r = run_one(method, seed, data, model, train_kwargs, project, method_kwargs[method])
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


def record_from_runs(project: Path, command: str | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The record (and weights per method) of the runs finished so far in a grid's run folder: the report of an
    interrupted or partly run grid, without training. Every run must have the same settings."""
    from clipce_rtdetr.errors import ClipCEError

    recs = [json.loads(f.read_text()) for f in sorted(Path(project).glob("*-s*.json"))]
    settings = {r["settings"] for r in recs}
    if len(settings) != 1:
        raise ClipCEError(f"{project}: {len(recs)} finished runs with {len(settings)} different settings; need one.")
    runs = sorted((r["run"] for r in recs), key=lambda r: (r["seed"], r["method"]))
    weights = {}
    for r in runs:
        w = np.asarray(r.pop("weights"), dtype=np.float32)
        if len(w) and r["method"] not in weights:
            weights[r["method"]] = w
    meta = json.loads(settings.pop())
    methods = list(dict.fromkeys(r["method"] for r in runs))
    record = {**meta, "command": command, "methods": methods, "seeds": sorted({r["seed"] for r in runs}), "runs": runs}
    return record, weights


def _settings_of(record: dict[str, Any]) -> str:
    return json.dumps(
        {"data": str(record["data"]), "model": str(record["model"]), "train_kwargs": record["train_kwargs"]},
        sort_keys=True,
        default=str,
    )


def reuse_runs(record: dict[str, Any], methods: list[str], seeds: list[int], settings: str, project: Path) -> int:
    """Take the runs of an earlier grid's record (its <prefix>.json) with the same settings as finished runs of
    this one, where their batch hash was recorded (so the pairing with this grid's runs is checked); unhashed runs
    are run again. Returns how many were taken."""
    if _settings_of(record) != settings:
        print("[ablation] the record to reuse has other settings (data, model or training keys): nothing reused.")
        return 0
    taken = 0
    for run in record["runs"]:
        m, seed = run["method"], run["seed"]
        if m in methods and seed in seeds and run.get("data_order_sha1") and not _run_file(project, m, seed).exists():
            save_run(project, m, seed, settings, {**run, "weights": [], "reused": True})
            taken += 1
    print(f"[ablation] reused {taken} hash-recorded runs of the earlier grid.", flush=True)
    return taken


def check_grid(methods: list[str], seeds: list[int]) -> None:
    """A grid that can be paired: at least one method and one seed, none of them twice (a repeated seed would be
    counted as another seed with the same result, shrinking the interval to nothing)."""
    from clipce_rtdetr.config import CHOICES
    from clipce_rtdetr.errors import ConfigError

    for key, items in (("ablation_methods", methods), ("ablation_seeds", seeds)):
        if not items:
            example = "[none,fame]" if key == "ablation_methods" else "[0,1,2]"
            raise ConfigError(f"{key} is empty: give at least one, e.g. {key}={example}.")
        repeated = sorted({str(x) for x in items if list(items).count(x) > 1})
        if repeated:
            raise ConfigError(f"{key}={list(items)} repeats {', '.join(repeated)}: give each once.")
    valid = (*CHOICES["clipce"], *ORACLE_METHODS)
    bad = [m for m in methods if m not in valid]
    if bad:
        raise ConfigError(f"ablation_methods: unknown {bad}; valid methods are {', '.join(valid)}.")
    if any(m in ("table", "table_fame") for m in methods):
        raise ConfigError("ablation_methods: table modes need a weights= file per method; use oracle/oracle-ranked.")


def grid_method_kwargs(methods: list[str], data: str, train_kwargs: dict[str, Any], project: Path) -> dict:
    """The training keys of each method; the oracle tables are made (once, from the data's recorded truth and
    the run's CLIP settings) when an oracle method is asked for."""
    out: dict[str, dict[str, Any]] = {m: {"clipce": m} for m in methods}
    if set(ORACLE_METHODS) & set(methods):
        from clipce_rtdetr.config import check_project_values, project_defaults
        from clipce_rtdetr.eval.ablation_oracle import make_oracle_tables

        a = check_project_values({**project_defaults(), **{k: v for k, v in train_kwargs.items() if k in
                                                           project_defaults()}})  # fmt: skip
        tables = make_oracle_tables(data, a, Path(project) / "tables")["tables"]
        for m in set(ORACLE_METHODS) & set(methods):
            out[m] = {"clipce": "table", "weights": str(tables[m])}
    return out


def run_ablation(overrides: dict[str, Any]) -> dict[str, Any]:
    """`clipce-rtdetr ablation ...` (CLI entry)."""
    from clipce_rtdetr.config import check_overrides

    ultra, proj = check_overrides(overrides)
    methods, seeds = list(proj["ablation_methods"]), [int(s) for s in proj["ablation_seeds"]]
    check_grid(methods, seeds)  # before any data is made or run folder written
    data = ultra.pop("data", None) or "hazy-shapes"
    model = ultra.pop("model", None) or "rtdetr-tiny.yaml"
    out_dir, project = ablation_folders(proj["out"], ultra.pop("project", None), ultra.pop("name", None))
    given_proj = {k: v for k, v in overrides.items() if k in proj and not k.startswith("ablation_") and k != "out"}
    return run_ablation_grid(methods, seeds, data, model, {**ultra, **given_proj}, out_dir, project)


def ablation_folders(out: str | None, project: str | None, name: str | None) -> tuple[Path, Path]:
    """(report folder, run folders) in Ultralytics' project/name style: the report in out= if given, else in
    project/name (default project: ablation-results); each run in <report folder>/runs/<method>-s<seed>."""
    base = Path(project or "ablation-results") / (name or "")
    out_dir = Path(out) if out else base
    return out_dir, out_dir / "runs"
