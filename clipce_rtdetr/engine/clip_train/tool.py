"""`clipce-rtdetr clip-train`: adapt a CLIP model to a dataset's classes on its clean ground-truth crops.

The method's stated limitation is a frozen CLIP that does not know the user's domain. This mode
fine-tunes an open_clip model (or trains a small one from scratch) contrastively on the *clean*
ground-truth crops of a dataset against the dataset's class prompts, so that AME (METHOD.md §3) then
measures how far a degraded crop has drifted from what a clean object of its class looks like:

- crops are made exactly as AME makes them (`ame.crop_boxes` via `embedding_cache.iter_source_crops`:
  `ame_context`, the model's own input size, `ame.normalise` with its own mean/std), on demand: no step
  holds every crop of a split (memory is bounded by the batch and the decoded-image budget);
- text classes are the class prompts of `prompts.build_prompts` (same profile and templates as AME:
  each class = its template-averaged, re-normalised embedding) plus the profile's scene negatives
  ("a photo of fog.", ...) as extra classes that no crop belongs to, so objects are pushed away from
  fog/background prompts;
- loss: cross-entropy of `exp(logit_scale) * cos(crop, text_k)` over all K text classes, target the
  crop's class (CLIP's image->text contrastive term with the class prompts as the text side);
- both towers are trained when the model starts from random weights; when it starts from pretrained
  weights only the image tower is (keeping CLIP's text space), unless `clip_text=True`.

The weights are saved as a safetensors state_dict (optionally fp16, `clip_fp16=True`), which
`clip=MODEL:/path/file.safetensors` loads, and a report (JSON, markdown, PNG) gives the zero-shot
accuracy (argmax over the class prompts) on clean and on degraded crops of the val split, and the mean
AME d per haze level (the dataset's `degradation:` CSV), before and after training.

    clipce-rtdetr clip-train data=hazy-shapes clip=clipce-tiny epochs=40 out=weights/my-clip.safetensors
    clipce-rtdetr clip-train data=rtts-clean.yaml clip=ViT-B-32:openai epochs=5 out=rtts-clip.safetensors images=clean

Keys: data, clip (MODEL alone or MODEL:random = from scratch), out (required), epochs (20), batch (64), lr0
(1e-3 from scratch, 1e-5 fine-tuning), weight_decay (0.05), seed, device, exist_ok, fliplr (0.5), the AME
keys (ame_profile, ame_templates, ame_context, ame_temperature, ame_alpha, ame_form), and this mode's own:
images (auto | clean | images | FOLDER: where the clean copies are; auto = the YAML's `clean:` folder if
any), report (stem of the report files; default beside out), clip_text (True/False: train the text tower;
default True from scratch, False for pretrained), clip_jitter (0.1: box jitter of training crops),
clip_rgb_shuffle (0.5: probability of permuting a crop's colour channels), clip_fp16 (False: save fp16).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipce_rtdetr.engine.clip_train.data import (
    DecodedImages,
    clean_file,
    clean_root,
    gather_objects,
    object_levels,
    with_clean_images,
)
from clipce_rtdetr.engine.clip_train.loop import (
    TextRows,
    TrainObjects,
    TrainSettings,
    set_trainable,
    text_classes,
    train,
)
from clipce_rtdetr.engine.clip_train.output import check_free_space, output_paths, save_weights
from clipce_rtdetr.engine.clip_train.report import _fmt, write_report
from clipce_rtdetr.engine.clip_train.zero_shot import ZeroShotEval
from clipce_rtdetr.errors import ClipCEError

META_KEY = "clipce_clip_train"  # safetensors metadata entry: the recipe of the file (JSON)
DEFAULT_EPOCHS = 20
DEFAULT_BATCH = 64
LR_SCRATCH, LR_FINETUNE = 1e-3, 1e-5
DEFAULT_WEIGHT_DECAY = 0.05
IMAGES_CHOICES = ("auto", "clean", "images")


def _random_start(pretrained: str | None) -> bool:
    return pretrained is None or str(pretrained).strip().lower() in ("", "random", "none", "scratch")


# ---------------------------------------------------------------------------------------------
# Steps of clip_train
# ---------------------------------------------------------------------------------------------
def check_numbers(epochs, batch, fliplr, rgb_shuffle, jitter) -> None:
    if int(epochs) < 1 or int(batch) < 1:
        raise ClipCEError(f"clip-train: epochs={epochs} and batch={batch} must be >= 1.")
    if not 0 <= float(fliplr) <= 1:
        raise ClipCEError(f"clip-train: fliplr={fliplr} must be in [0, 1].")
    if not 0 <= float(rgb_shuffle) <= 1:
        raise ClipCEError(f"clip-train: clip_rgb_shuffle={rgb_shuffle} must be in [0, 1].")
    if not 0 <= float(jitter) < 0.5:
        raise ClipCEError(f"clip-train: clip_jitter={jitter} must be in [0, 0.5).")


@dataclass
class TrainData:
    """The dataset's splits as clip-train uses them."""

    yaml: str
    cfg: dict
    names: list[str]
    root: Path | None  # folder of clean copies, None: the images themselves
    train: list[dict]  # train labels pointing at the crop source (clean copies or the images)
    eval_split: str
    eval_labels: list[dict]  # the dataset's own (degraded) images
    eval_clean: list[dict]  # the same objects in the crop source


def load_data(data: str | None, images: str | None) -> TrainData:
    from ultralytics.utils import LOGGER

    from clipce_rtdetr.data.dataset import resolve_data
    from clipce_rtdetr.eval.ame_inspect import load_split_labels

    data_yaml = resolve_data(data)
    data_cfg, train_labels, _ = load_split_labels(data_yaml, "train")
    eval_split = "val" if data_cfg.get("val") else "train"
    if eval_split == "val":
        _, eval_labels, _ = load_split_labels(data_yaml, "val")
    else:
        LOGGER.warning("clip-train: the dataset has no val split; the report evaluates the train split.")
        eval_labels = train_labels
    root = clean_root(data_cfg, images)
    return TrainData(
        yaml=data_yaml,
        cfg=data_cfg,
        names=list(data_cfg["names"].values()),
        root=root,
        train=with_clean_images(train_labels, root),
        eval_split=eval_split,
        eval_labels=eval_labels,
        eval_clean=with_clean_images(eval_labels, root),
    )


def load_seeded(clip: str, model_name: str, scratch: bool, seed: int, device: torch.device):
    """The CLIP to train, on `device`: pretrained weights, or the model's random init seeded with `seed`."""
    from clipce_rtdetr.clip.loader import load_clip

    torch.manual_seed(seed)
    np.random.seed(seed)
    bundle = load_clip(model_name if scratch else clip, device="cpu")
    bundle.model.to(device)
    bundle.device = device
    return bundle


def train_objects(d: TrainData, size: int, context: float, progress: bool) -> TrainObjects:
    """The train split's objects (no crops held); an error when none is usable."""
    from clipce_rtdetr.method.embedding_cache import source_boxes_xyxy

    cls, valid, img_of = gather_objects(d.train, size, context, "train objects", progress)
    keep = valid.nonzero().view(-1)
    if len(keep) == 0:
        raise ClipCEError(f"clip-train: no usable ground-truth box (>= 2 px) in the train split of {d.yaml}.")
    boxes = torch.cat([torch.from_numpy(source_boxes_xyxy(lb, lb["shape"])) for lb in d.train if len(lb["cls"])])
    return TrainObjects(DecodedImages(d.train), img_of, boxes, cls, keep)


def reload_as_user(model_name: str, out: Path, device, trained_with):
    """Load the saved file as `clip=MODEL:/path` does; its preprocessing must be the one it was trained with."""
    from clipce_rtdetr.clip.loader import load_clip

    spec = f"{model_name}:{out.resolve()}"
    bundle = load_clip(spec, device=device)
    if (tuple(bundle.mean), tuple(bundle.std), bundle.image_size) != trained_with:
        raise ClipCEError(f"clip-train: {spec} reloads with other preprocessing than it was trained with; report this.")
    return spec, bundle


def recipe_of(a, model_name: str, d: TrainData, prompts, bundle, lr: float, train_text: bool) -> dict[str, Any]:
    """What the weights file records of how it was made (safetensors metadata)."""
    return {
        "clip": a.clip,
        "model": model_name,
        "data": Path(d.yaml).name,
        "epochs": int(a.epochs),
        "batch": int(a.batch),
        "lr": lr,
        "seed": int(a.seed),
        "fliplr": float(a.fliplr),
        "jitter": float(a.jitter),
        "rgb_shuffle": float(a.rgb_shuffle),
        "images": str(a.images or "auto"),
        "profile": prompts.profile,
        "templates": prompts.templates,
        "scene_negatives": prompts.scene_negatives,
        "context": float(a.context),
        "train_text": bool(train_text),
        "image_size": bundle.image_size,
        "mean": list(bundle.mean),
        "std": list(bundle.std),
    }


def report_of(a, recipe: dict, d: TrainData, run: dict[str, Any]) -> dict[str, Any]:
    """The report dict (JSON/markdown/PNG): the recipe, the data, the file and the before/after evaluations."""
    from clipce_rtdetr.clip.loader import file_sha256
    from clipce_rtdetr.data.hazy_shapes import HAZE_LEVELS

    out, after = Path(run["out"]), run["after"]
    lv = after.get("levels") or {}
    ds = [lv[n]["d_degraded"] for n, _, _ in HAZE_LEVELS if n in lv and "d_degraded" in lv[n]]
    demo = a.data in (None, "hazy-shapes", "hazy-shapes.yaml")
    return {
        "command": a.command or f"clip_train(data={a.data!r}, clip={a.clip!r}, out={str(out)!r}, epochs={a.epochs})",
        "data": f"{a.data or 'hazy-shapes'} ({Path(d.yaml).parent.name})" if demo else d.yaml,
        "classes": d.names,
        "clip": a.clip,
        "spec": run["spec"],
        "out": str(out),
        "start": "random init" if run["scratch"] else "pretrained",
        "trained": "image + text towers" if recipe["train_text"] else "image tower",
        "params": run["params"],
        "image_size": recipe["image_size"],
        "mean": [round(m, 6) for m in recipe["mean"]],
        "std": [round(s, 6) for s in recipe["std"]],
        **{k: recipe[k] for k in ("epochs", "batch", "lr")},
        "weight_decay": float(a.weight_decay),
        **{k: recipe[k] for k in ("fliplr", "jitter", "rgb_shuffle", "seed")},
        "device": str(run["device"]),
        "train_time_s": round(run["train_time"], 1),
        "train_images": str(d.root) if d.root is not None else "the dataset images",
        "eval_split": d.eval_split,
        "n_train_objects": run["n_train"],
        "n_val_objects": run["n_val"],
        **{k: recipe[k] for k in ("profile", "templates", "scene_negatives")},
        "ame_context": float(a.context),
        "ame_temperature": float(a.temperature),
        "ame_alpha": float(a.alpha),
        "ame_form": a.form,
        "size_bytes": out.stat().st_size,
        "dtype": str(run["dtype"]).replace("torch.", ""),
        "sha256": file_sha256(out),
        "level_bins": [[n, lo, hi if math.isfinite(hi) else "inf"] for n, lo, hi in HAZE_LEVELS],
        "d_rises_with_level": (all(b > a for a, b in zip(ds, ds[1:])) if len(ds) >= 2 else None),
        "before": run["before"],
        "after": after,
        "history": run["history"],
    }


def summary_line(rep: dict[str, Any]) -> str:
    s, lv = rep["after"]["all"], rep["after"].get("levels") or {}
    msg = f"clip-train: {rep['eval_split']} zero-shot accuracy clean {_fmt(s.get('acc_clean'), True)}"
    if "acc_degraded" in s:
        msg += f", degraded {_fmt(s.get('acc_degraded'), True)}"
    if lv:
        msg += "; mean d per level: " + ", ".join(
            f"{k} {v.get('d_degraded', v.get('d_clean', 0)):.3f}" for k, v in lv.items()
        )
    return msg


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def training_mode(pretrained, train_text: bool | None, lr: float | None) -> tuple[bool, bool, float]:
    """(from scratch?, train the text tower?, learning rate): a random start trains both towers at its own rate."""
    scratch = _random_start(pretrained)
    train_text = scratch if train_text is None else train_text
    if scratch and not train_text:
        raise ClipCEError("clip-train: a model trained from scratch must train its text tower too (clip_text=True).")
    return scratch, bool(train_text), float(lr) if lr is not None else (LR_SCRATCH if scratch else LR_FINETUNE)


def start_message(name: str, scratch: bool, seed: int, bundle, train_text: bool, root) -> str:
    size, mean, std = bundle.image_size, bundle.mean, bundle.std
    return (
        f"clip-train: {name} ({f'random init, seed {seed}' if scratch else 'pretrained'}), "
        f"input {size} px, mean {tuple(round(m, 4) for m in mean)}, std {tuple(round(s, 4) for s in std)}; "
        f"training {'both towers' if train_text else 'the image tower'}; "
        f"crops from {root or 'the images themselves'}"
    )


def clip_train(
    data: str | None,
    clip: str,
    out: str | Path,
    epochs: int = DEFAULT_EPOCHS,
    batch: int = DEFAULT_BATCH,
    lr: float | None = None,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    seed: int = 0,
    images: str | None = "auto",
    profile: str = "haze",
    templates: list[str] | None = None,
    context: float = 0.10,
    temperature: float = 1.0,
    alpha: float = 1.0,
    form: str = "exp",
    train_text: bool | None = None,
    fliplr: float = 0.5,
    jitter: float = 0.1,
    rgb_shuffle: float = 0.5,
    half: bool = False,
    device: str | torch.device = "cpu",
    exist_ok: bool = False,
    report: str | Path | None = None,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Train and save; returns the report dict (also written to `report` stem, default beside `out`)."""
    from types import SimpleNamespace

    from ultralytics.utils import LOGGER

    from clipce_rtdetr.clip.loader import parse_clip_spec
    from clipce_rtdetr.method.ame import check_params
    from clipce_rtdetr.method.prompts import build_prompts

    a = SimpleNamespace(**locals())
    out, stem = output_paths(out, report, exist_ok)
    check_numbers(epochs, batch, fliplr, rgb_shuffle, jitter)
    check_params(context, temperature, alpha, form)
    model_name, pretrained = parse_clip_spec(clip)
    scratch, train_text, lr = training_mode(pretrained, train_text, lr)
    device = torch.device(device)
    # the CLIP first: wrong or damaged weights, and no room for them at out=, are found before the dataset is read
    bundle = load_seeded(clip, model_name, scratch, seed, device)
    check_free_space(out, bundle.model, half)
    d = load_data(data, images)
    prompts = build_prompts(profile, d.names, templates)

    size, mean, std = bundle.image_size, bundle.mean, bundle.std
    LOGGER.info(start_message(model_name if scratch else clip, scratch, seed, bundle, train_text, d.root))
    objs = train_objects(d, size, context, progress)
    ame = dict(profile=profile, templates=templates, context=context, temperature=temperature, alpha=alpha, form=form)
    degraded = d.eval_labels if d.root is not None else None
    zero_shot = ZeroShotEval(d.names, d.eval_clean, degraded, object_levels(d.cfg, d.eval_labels), ame, int(batch))
    before = zero_shot(bundle)

    tokens = bundle.tokenizer([p for ps in prompts.positives for p in ps] + list(prompts.scene_negatives))
    text = TextRows(bundle.model, tokens.to(device), prompts.nc, len(prompts.templates), bool(train_text))
    opt_args = {"trainable": set_trainable(bundle.model, bool(train_text)), "lr": lr, "weight_decay": weight_decay}
    settings = TrainSettings(size, context, mean, std, int(batch), jitter, fliplr, rgb_shuffle, device)
    t0 = time.time()
    history = train(bundle.model, objs, settings, text, opt_args, int(epochs), seed, progress)
    train_time = time.time() - t0

    recipe = recipe_of(a, model_name, d, prompts, bundle, lr, bool(train_text))
    dtype = save_weights(bundle.model, out, recipe, META_KEY, half)
    spec, trained = reload_as_user(model_name, out, device, (tuple(mean), tuple(std), size))
    after = zero_shot(trained)
    LOGGER.info(f"clip-train: saved {out} ({out.stat().st_size / 2**20:.2f} MiB); load it with clip={spec}")
    params = sum(p.numel() for p in bundle.model.parameters())
    run = dict(out=out, spec=spec, scratch=scratch, device=device, dtype=dtype, train_time=train_time, params=params)
    run.update(n_train=int(len(objs.keep)), n_val=int(zero_shot.valid.sum()), before=before, after=after)
    run["history"] = history
    rep = report_of(a, recipe, d, run)
    paths = write_report(stem, rep)
    LOGGER.info(f"clip-train: report {', '.join(str(p) for p in paths)}")
    LOGGER.info(summary_line(rep))
    return rep


def run_clip_train(overrides: dict[str, Any]) -> Path:
    """CLI: `clipce-rtdetr clip-train data=... clip=MODEL[:PRETRAINED] epochs=N out=file.safetensors [...]`."""
    import sys

    from ultralytics.utils.torch_utils import select_device

    from clipce_rtdetr.config import check_overrides

    overrides = dict(overrides)
    ultra, a = check_overrides(overrides)  # clip-train's own keys and defaults are in cfg/default.yaml
    if not a.get("out"):
        raise ClipCEError(
            "clip-train needs out=FILE.safetensors, e.g. "
            "'clipce-rtdetr clip-train data=hazy-shapes clip=clipce-tiny epochs=40 out=my-clip.safetensors'."
        )
    if "clip" not in overrides:
        raise ClipCEError(
            "clip-train needs clip=MODEL[:PRETRAINED]: clip=clipce-tiny trains a tiny CLIP from scratch, "
            "clip=ViT-B-32:openai fine-tunes pretrained weights."
        )
    clip_text = a["clip_text"]
    if clip_text is not None and not isinstance(clip_text, bool):
        raise ClipCEError(
            f"'clip_text={clip_text}' must be True or False (empty: True from scratch, False for pretrained weights)."
        )
    images = a["images"] or "auto"
    dev = ultra.get("device")
    device = select_device(dev if dev is not None else ("0" if torch.cuda.is_available() else "cpu"), verbose=False)
    rep = clip_train(
        data=ultra.get("data"),
        clip=str(a["clip"]),
        out=a["out"],
        epochs=int(ultra.get("epochs", DEFAULT_EPOCHS)),
        batch=int(ultra.get("batch", DEFAULT_BATCH)),
        lr=ultra.get("lr0"),
        weight_decay=float(ultra.get("weight_decay", DEFAULT_WEIGHT_DECAY)),
        seed=int(ultra.get("seed", 0)),
        images=str(images),
        profile=a["ame_profile"],
        templates=a["ame_templates"],
        context=a["ame_context"],
        temperature=a["ame_temperature"],
        alpha=a["ame_alpha"],
        form=a["ame_form"],
        train_text=clip_text,
        fliplr=float(ultra.get("fliplr", 0.5)),
        jitter=float(a["clip_jitter"] or 0.0),
        rgb_shuffle=float(a["clip_rgb_shuffle"] or 0.0),
        half=bool(a["clip_fp16"]),
        device=device,
        exist_ok=bool(ultra.get("exist_ok", False)),
        report=a["report"],
        command="clipce-rtdetr " + " ".join(sys.argv[1:]) if Path(sys.argv[0]).name.startswith("clipce") else None,
    )
    return Path(rep["out"])


__all__ = [
    "clip_train",
    "run_clip_train",
    "clean_root",
    "clean_file",
    "with_clean_images",
    "DecodedImages",
    "text_classes",
    "META_KEY",
]
