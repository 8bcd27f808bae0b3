"""`clipce-rtdetr robustness model=best.pt data=val.yaml`: a detector's robustness table (Michaelis et al. 2019).

The model is evaluated with COCO metrics (pycocotools, `val coco=True`) on the clean split and on every condition x
severity 1..5 (`conditions=[...]`, default every single kind `degrade` makes). Degraded copies of the split are made
by `degrade` (level=custom, each component pinned to its severity's value, degrade_image.SEVERITIES) under
$CLIPCE_HOME/robustness/<dataset fingerprint>/<kind>-s<k>/ and reused by every later run and model. Every
evaluated cell is recorded under the same folder by the model file's hash and the evaluation settings, so an
interrupted or repeated run evaluates only what is missing. `compare=other.pt` adds a second model's rows.
Report (robustness_report.py): markdown, CSV and JSON with AP50 and AP50-95 per cell, P_clean, mPC and rPC for
both metrics, and a plot of AP against severity per condition.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import yaml

from clipce_rtdetr.atomic import write_text
from clipce_rtdetr.errors import ClipCEError
from clipce_rtdetr.hashing import sha256_file

SEVERITY_COUNT = 5
# Ultralytics keys that change what a model's evaluation gives (a cell is reused only when they are the same).
EVAL_KEYS = ("imgsz", "batch", "conf", "iou", "max_det", "half", "rect", "single_cls", "agnostic_nms", "classes")


def cache_root() -> Path:
    from clipce_rtdetr.paths import home

    return home() / "robustness"


def default_conditions() -> tuple[str, ...]:
    from clipce_rtdetr.data.degrade_image import SINGLE_KINDS

    return SINGLE_KINDS


def check_conditions(conditions) -> list[str]:
    """The conditions asked for (default: every single kind), each a kind `degrade` knows, no repeats."""
    from clipce_rtdetr.config import mix_spelling_hint
    from clipce_rtdetr.data.degrade_image import KINDS

    conds = [str(c) for c in (conditions or default_conditions())]
    bad = [c for c in conds if c not in KINDS]
    if bad:
        # A known mix written in another order (haze+rain): name the spelling degrade uses (camera outwards).
        hint = mix_spelling_hint(bad, KINDS)
        raise ClipCEError(f"conditions: unknown {bad}; valid conditions are {', '.join(KINDS)}.{hint}")
    if len(set(conds)) != len(conds):
        raise ClipCEError(f"conditions={conds} names a condition twice.")
    return conds


def grid(conditions: list[str]) -> list[tuple[str, int]]:
    """(condition, severity) cells: ("clean", 0) first, then every condition x 1..5."""
    return [("clean", 0)] + [(c, s) for c in conditions for s in range(1, SEVERITY_COUNT + 1)]


def cell_name(condition: str, severity: int) -> str:
    return "clean" if condition == "clean" else f"{condition}-s{severity}"


# ----------------------------------------------------------------------------------------- fingerprints
def file_hash(path: Path, chars: int = 16) -> str:
    return sha256_file(path).hexdigest()[:chars]


def split_cfg(yaml_path: Path, split: str) -> tuple[dict[str, Any], Path]:
    """(dataset cfg, dataset root), checking the YAML has `split`."""
    from clipce_rtdetr.data.dataset import dataset_root, load_data_yaml

    cfg = load_data_yaml(yaml_path)
    if not cfg.get(split):
        raise ClipCEError(f"{yaml_path} has no '{split}:' split; choose split= among train, val, test.")
    return cfg, dataset_root(cfg, yaml_path)


def split_images(yaml_path: Path, split: str) -> tuple[dict[str, Any], Path, list[Path]]:
    """(dataset cfg, images root, the split's images)."""
    from clipce_rtdetr.data.dataset import image_files, split_paths

    cfg, root = split_cfg(yaml_path, split)
    return cfg, root, [im for p in split_paths(cfg, yaml_path, split) for im in image_files(p)]


def dataset_fingerprint(yaml_path: Path, split: str, depth: str = "horizon") -> str:
    """A hash of the split as it is now: class names, every image's and label's path, size and mtime (a changed
    file makes a new cache folder: degraded copies of old images are never evaluated against new labels), and the
    synthesis version of `degrade` and the depth source (changed physics or depth make new copies)."""
    from clipce_rtdetr.data.dataset import label_file, relative_to_root
    from clipce_rtdetr.data.degrade_image import SYNTHESIS_VERSION

    cfg, root, images = split_images(yaml_path, split)
    key = {"names": cfg.get("names"), "split": split, "synthesis": SYNTHESIS_VERSION, "depth": str(depth)}
    h = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode())
    for im in sorted(images):
        for f in (im, label_file(im)):
            try:
                st = f.stat()
                h.update(f"{relative_to_root(f, root) or f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{f}|missing\n".encode())
    return h.hexdigest()[:16]


def split_source(yaml_path: Path, split: str, folder: Path) -> Path:
    """A dataset YAML holding only `split` (as both train and val, which Ultralytics requires), so `degrade` copies
    that split alone; its COCO ground truth comes along."""
    cfg, root = split_cfg(yaml_path, split)  # the images are not listed again: the fingerprint did that
    src = {"path": str(root), "train": cfg[split], "val": cfg[split], "names": cfg["names"]}
    ann = (cfg.get("coco_annotations") or {}).get(split)
    if ann:
        src["coco_annotations"] = {"train": ann, "val": ann}
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "source.yaml"
    text = yaml.safe_dump(src, sort_keys=False, allow_unicode=True)
    if not out.is_file() or out.read_text(encoding="utf-8") != text:
        write_text(out, text)
    return out


# ----------------------------------------------------------------------------------------- cells
def degraded_copy(
    source: Path, folder: Path, condition: str, severity: int, seed: int, processes: int, depth: str = "horizon"
) -> Path:
    """The dataset YAML of `condition` at `severity`: made by `degrade` once, reused (resumed) afterwards."""
    from clipce_rtdetr.data.degrade import degrade
    from clipce_rtdetr.data.degrade_image import severity_ranges

    out = folder / cell_name(condition, severity)
    ranges = severity_ranges(condition, severity)
    with quiet():
        return degrade(source, out, kind=condition, level="custom", seed=seed, ranges=ranges, depth=depth,
                       processes=processes, progress=False)  # fmt: skip


@contextlib.contextmanager
def quiet():
    """Ultralytics' info lines and printed tables off (warnings still show): the grid's progress bar says where the
    run is."""
    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        LOGGER.setLevel(level)


def evaluate_cell(det, data_yaml: Path, split: str, val_kwargs: dict[str, Any], workdir: Path, name: str) -> dict:
    """COCO AP50 and AP50-95 (pycocotools, the `val coco=True` path) of one dataset split."""
    with quiet():
        metrics = det.val(data=str(data_yaml), split=split, coco=True, plots=False, verbose=False,
                          project=str(workdir), name=name, exist_ok=True, **val_kwargs)  # fmt: skip
    stats = metrics.coco["stats"]
    return {"AP50": float(stats["AP50"]), "AP50-95": float(stats["AP"])}


def record_path(folder: Path, model_hash: str, settings: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return folder / "evals" / f"{model_hash}-{key}.json"


def load_record(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"settings": settings, "cells": {}}
    return rec if rec.get("settings") == settings else {"settings": settings, "cells": {}}


def evaluate_model(model: str, ctx: dict[str, Any], bar) -> dict[str, Any]:
    """Every cell of the grid for one model: recorded cells reused, the rest evaluated (and recorded at once)."""
    from clipce_rtdetr.data.degrade_image import UNRECORDED_SYNTHESIS, synthesis_version
    from clipce_rtdetr.models import load_detector

    model_hash = file_hash(Path(model))
    settings = {"dataset": ctx["fingerprint"], "split": ctx["split"], "seed": ctx["seed"], **ctx["eval_settings"]}
    rec_file = record_path(ctx["folder"], model_hash, settings)
    rec = load_record(rec_file, settings)
    rec.update(model=str(model), model_sha256=model_hash)
    det, reused, made = None, 0, 0
    for condition, severity in ctx["grid"]:
        name = cell_name(condition, severity)
        bar.set_description(f"robustness {Path(model).name} {name}")
        version = synthesis_version(condition)  # a kind's revision redoes its cells only (its copies are redone too)
        if name in rec["cells"] and rec["cells"][name].get("synthesis", UNRECORDED_SYNTHESIS) == version:
            reused += 1
        else:
            det = det or load_detector(model)
            if condition == "clean":
                data, split = ctx["data"], ctx["split"]
            else:
                data, split = ctx["copies"](condition, severity), "val"
            rec["cells"][name] = {"condition": condition, "severity": severity, "synthesis": version,
                                  **evaluate_cell(det, data, split, ctx["val_kwargs"], ctx["workdir"],
                                                  f"{Path(model).stem}-{name}")}  # fmt: skip
            rec_file.parent.mkdir(parents=True, exist_ok=True)
            write_text(rec_file, json.dumps(rec, indent=2))
            made += 1
        bar.update(1)
    # The record file may hold cells of other conditions (an earlier run's grid): report this grid's only.
    cells = {cell_name(c, s): rec["cells"][cell_name(c, s)] for c, s in ctx["grid"]}
    return {**rec, "cells": cells, "reused_cells": reused, "evaluated_cells": made}


def run_grid(models: list[str], data: str, split: str, conditions: list[str], seed: int = 0, processes: int = 0,
             val_kwargs: dict[str, Any] | None = None, workdir: Path | None = None,
             progress: bool = True, depth: str = "horizon") -> dict[str, Any]:  # fmt: skip
    """Evaluate `models` on the clean split and every condition x severity; returns the results record."""
    import tempfile

    from tqdm import tqdm

    yaml_path = Path(data)
    fingerprint = dataset_fingerprint(yaml_path, split, depth)
    folder = cache_root() / fingerprint
    source = split_source(yaml_path, split, folder)
    made: dict[str, Path] = {}

    def copies(condition: str, severity: int) -> Path:
        key = cell_name(condition, severity)
        if key not in made:
            made[key] = degraded_copy(source, folder, condition, severity, seed, processes, depth)
        return made[key]

    val_kwargs = dict(val_kwargs or {})
    ctx = {"data": yaml_path, "split": split, "seed": seed, "folder": folder, "fingerprint": fingerprint,
           "grid": grid(conditions), "copies": copies, "val_kwargs": val_kwargs,
           "eval_settings": {k: val_kwargs.get(k) for k in EVAL_KEYS},
           "workdir": Path(workdir or tempfile.mkdtemp(prefix="clipce-robustness-"))}  # fmt: skip
    with tqdm(total=len(models) * len(ctx["grid"]), disable=not progress, unit="cell") as bar:
        records = [evaluate_model(m, ctx, bar) for m in models]
    return {"data": str(yaml_path), "split": split, "seed": seed, "conditions": conditions, "cache": str(folder),
            "severities": severity_table(conditions), "models": records}  # fmt: skip


def severity_table(conditions: list[str]) -> dict[str, list[dict[str, float]]]:
    """{condition: [the parameter values of severity 1..5]} for the report."""
    from clipce_rtdetr.data.degrade_image import severity_ranges

    return {
        c: [{k[: -len("_range")]: v[0] for k, v in severity_ranges(c, s).items()} for s in range(1, SEVERITY_COUNT + 1)]
        for c in conditions
    }


def run_robustness(overrides: dict[str, Any]) -> dict[str, Any]:
    """CLI entry: `clipce-rtdetr robustness model=best.pt data=val.yaml [conditions=[...]] [compare=other.pt]`."""
    from clipce_rtdetr.config import check_overrides
    from clipce_rtdetr.data.dataset import resolve_data
    from clipce_rtdetr.eval.robustness_report import write_report
    from clipce_rtdetr.models.rtdetr.model import resolve_model

    ultra, proj = check_overrides(overrides)
    if not ultra.get("model") or not ultra.get("data"):
        raise ClipCEError("robustness needs model= and data=, e.g. 'clipce-rtdetr robustness model=best.pt "
                          "data=val.yaml' (data=hazy-shapes for the built-in demo).")  # fmt: skip
    split = ultra.pop("split", None) or "val"
    models = [str(resolve_model(ultra.pop("model")))]
    if proj.get("compare"):
        models.append(str(resolve_model(proj["compare"])))
        if file_hash(Path(models[0])) == file_hash(Path(models[1])):
            raise ClipCEError(
                f"compare={proj['compare']} is the same weights file as model= ({models[0]}): its rows would repeat "
                "the model's; compare= takes another model, e.g. the stock fine-tune."
            )
    conditions = check_conditions(proj.get("conditions"))
    data = resolve_data(ultra.pop("data"), allow_download=proj["allow_download"], splits=(split,))
    out = Path(proj.get("out") or "robustness")
    seed = int(ultra.pop("seed", 0) or 0)
    for k in ("coco", "save_json", "plots", "verbose", "project", "name", "exist_ok"):
        ultra.pop(k, None)
    depth = str(proj.get("depth") or "horizon")  # a depth folder: relative to the dataset, as for degrade
    result = run_grid(models, data, split, conditions, seed, int(proj["processes"]), ultra, out / "runs", depth=depth)
    for path in write_report(result, out):
        print(f"wrote {path}", flush=True)
    return result
