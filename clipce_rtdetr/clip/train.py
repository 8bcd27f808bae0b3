"""`clipce-rtdetr clip-train`: adapt a CLIP model to a dataset's classes on its clean ground-truth crops.

The method's stated limitation is a frozen CLIP that does not know the user's domain. This mode
fine-tunes an open_clip model (or trains a small one from scratch) contrastively on the *clean*
ground-truth crops of a dataset against the dataset's class prompts, so that AME (METHOD.md §3) then
measures how far a degraded crop has drifted from what a clean object of its class looks like:

- crops are made exactly as AME makes them (`ame.crop_boxes` via `embedding_cache.iter_source_crops`:
  `ame_context`, the model's own input size, `ame.normalise` with its own mean/std);
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

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clipce_rtdetr.errors import ClipCEError

META_KEY = "clipce_clip_train"  # safetensors metadata entry: the recipe of the file (JSON)
DEFAULT_EPOCHS = 20
DEFAULT_BATCH = 64
LR_SCRATCH, LR_FINETUNE = 1e-3, 1e-5
DEFAULT_WEIGHT_DECAY = 0.05
IMAGES_CHOICES = ("auto", "clean", "images")


# ---------------------------------------------------------------------------------------------
# Data: which images the crops come from
# ---------------------------------------------------------------------------------------------
def clean_root(data: dict, images: str | None) -> Path | None:
    """Folder that mirrors the dataset's `images/` with clean copies, or None (crop the images themselves).

    images: 'auto'/None: the YAML's `clean:` folder if it has one, else the images themselves;
    'clean': the YAML's `clean:` folder (an error when there is none); 'images': the images themselves;
    anything else: a folder (absolute, relative to the working directory or to the dataset root)."""
    images = "auto" if images in (None, "") else str(images)
    root = Path(data.get("path") or ".")
    if images == "images":
        return None
    if images in ("auto", "clean"):
        if not data.get("clean"):
            if images == "clean":
                raise ClipCEError(
                    "clip-train images=clean: the dataset YAML has no 'clean:' key naming a folder of clean copies "
                    "(laid out like images/). Add one, or pass images=/path/to/clean/images, or images=images to "
                    "train on the dataset's own images."
                )
            return None
        p = Path(str(data["clean"]))
        return p if p.is_absolute() else root / p
    p = Path(os.path.expanduser(images))
    if not p.is_absolute() and not p.exists():
        p = root / p
    if not p.is_dir():
        raise ClipCEError(
            f"clip-train images={images}: folder not found ({p}). Use images=clean, images=images or a folder of clean copies."
        )
    return p


def clean_file(im_file: str, root: Path) -> Path:
    """The clean copy of an image: the path after its last `images/` folder, under `root`."""
    parts = Path(im_file).parts
    idx = [i for i, p in enumerate(parts) if p == "images"]
    rel = Path(*parts[idx[-1] + 1 :]) if idx else Path(parts[-1])
    return root / rel


def with_clean_images(labels: list[dict], root: Path | None) -> list[dict]:
    """Ultralytics label dicts with `im_file` pointing at the clean copies (same boxes: same image size)."""
    if root is None:
        return labels
    out, missing = [], []
    for lb in labels:
        f = clean_file(lb["im_file"], root)
        if not f.is_file():
            missing.append(str(f))
        out.append({**lb, "im_file": str(f)})
    if missing:
        raise ClipCEError(
            f"clip-train: {len(missing)} clean image(s) missing under {root}, e.g. {missing[0]} "
            f"(for {labels[0]['im_file']}). Clean copies must mirror images/ with the same file names."
        )
    return out


def gather_crops(
    labels: list[dict],
    size: int,
    context: float,
    device="cpu",
    desc: str = "crops",
    progress: bool = True,
    keep: bool = True,
):
    """All ground-truth crops of `labels`, as AME makes them -> (crops (N,3,S,S) fp16 in [0,1] on CPU, cls (N,),
    valid (N,), object image index (N,)). fp16 keeps memory at half of fp32; the source images are 8-bit.
    keep=False returns no crops (an empty tensor): training with box jitter crops anew each batch and needs
    only valid / cls / image index, not ~S*S*6 bytes per object held for the whole run."""
    from tqdm import tqdm

    from clipce_rtdetr.method.embedding_cache import iter_source_crops, object_classes
    from clipce_rtdetr.method.object_ids import object_offsets

    crops, valid, img_of = [], [], []
    starts = object_offsets(labels)
    image_at = {int(s): i for i, s in enumerate(starts[:-1])}
    n_obj = int(starts[-1])
    bar = tqdm(total=n_obj, desc=f"clip-train: {desc}", unit="obj", disable=not progress)
    for start, c, v in iter_source_crops(labels, size, context, device):
        if keep:
            crops.append(c.to("cpu", torch.float16))
        valid.append(v.cpu())
        img_of.append(torch.full((len(c),), image_at[int(start)], dtype=torch.long))
        bar.update(len(c))
    bar.close()
    cls = object_classes(labels)
    if not valid:
        return (
            torch.zeros(0, 3, size, size, dtype=torch.float16),
            cls,
            torch.zeros(0, dtype=torch.bool),
            torch.zeros(0, dtype=torch.long),
        )
    out = torch.cat(crops) if crops else torch.zeros(0, 3, size, size, dtype=torch.float16)
    return out, cls, torch.cat(valid), torch.cat(img_of)


def object_levels(data: dict, labels: list[dict]) -> list[str | None] | None:
    """Degradation level of each object's image from the dataset's `degradation:` CSV (None when absent)."""
    from clipce_rtdetr.data.dataset import read_degradation, relative_to_root
    from clipce_rtdetr.data.hazy_shapes import haze_level

    if not data.get("degradation"):
        return None
    p = Path(str(data["degradation"]))
    root = Path(data.get("path") or ".")
    p = p if p.is_absolute() else root / p
    if not p.is_file():
        return None
    rows = read_degradation(p)
    out: list[str | None] = []
    for lb in labels:
        r = rows.get(relative_to_root(lb["im_file"], root) or "") or {}
        lvl = r.get("level") or (haze_level(float(r["beta"])) if r.get("beta") else None)
        out += [lvl] * len(lb["cls"])
    return out


IMAGE_MEMORY_BUDGET = 2 * 2**30  # bytes of decoded source images kept in memory for jittered crops


class DecodedImages:
    """Decoded source images (uint8 (1, 3, H, W)) kept for jittered crops up to `budget` bytes; the rest are
    re-read from disk each time."""

    def __init__(self, labels: list[dict], budget: int = IMAGE_MEMORY_BUDGET):
        self.labels, self.budget, self.used, self.kept = labels, budget, 0, {}

    def __getitem__(self, i: int) -> torch.Tensor:
        from clipce_rtdetr.method.embedding_cache import read_rgb

        t = self.kept.get(i)
        if t is None:
            t = torch.from_numpy(read_rgb(self.labels[i]["im_file"])).permute(2, 0, 1)[None].contiguous()
            if self.used + t.numel() <= self.budget:
                self.kept[i], self.used = t, self.used + t.numel()
        return t


def jittered_crops(
    images: DecodedImages,
    img_idx: torch.Tensor,
    boxes: torch.Tensor,
    size: int,
    context: float,
    jitter: float,
    gen: torch.Generator,
) -> torch.Tensor:
    """Augmented crops: each box's centre moved by up to `jitter` x its size and its width/height scaled by
    exp(U(-jitter, jitter)), then cropped exactly as AME crops (`ame.crop_boxes`, same context and size)."""
    from clipce_rtdetr.method.ame import crop_boxes

    n = len(boxes)
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1)
    ctr = (boxes[:, :2] + boxes[:, 2:]) / 2 + (torch.rand(n, 2, generator=gen) * 2 - 1) * jitter * wh
    wh = wh * torch.exp((torch.rand(n, 2, generator=gen) * 2 - 1) * jitter)
    new = torch.cat([ctr - wh / 2, ctr + wh / 2], 1)
    out = torch.empty(n, 3, size, size)
    for i in img_idx.unique().tolist():
        m = img_idx == i
        out[m] = crop_boxes(images[i], new[m], torch.zeros(int(m.sum()), dtype=torch.long), size, context)[0]
    return out


# ---------------------------------------------------------------------------------------------
# Model pieces
# ---------------------------------------------------------------------------------------------
def text_classes(model: torch.nn.Module, tokens: torch.Tensor, nc: int, n_tpl: int) -> torch.Tensor:
    """Text rows as AME builds them (ame.pool_text_rows), with gradients: (nc + S, D) L2-normalised."""
    from clipce_rtdetr.method.ame import pool_text_rows

    return pool_text_rows(F.normalize(model.encode_text(tokens).float(), dim=-1), nc, n_tpl)


def _is_image_param(name: str) -> bool:
    return name.startswith("visual.")


def _no_decay(name: str, p: torch.Tensor) -> bool:
    return p.ndim < 2 or "embedding" in name or "logit_" in name or ".ln" in name or name.startswith("ln")


def set_trainable(model: torch.nn.Module, train_text: bool) -> list[tuple[str, torch.nn.Parameter]]:
    """Image tower (+ text tower when train_text) + logit_scale trainable; returns the trainable (name, param)."""
    out = []
    for name, p in model.named_parameters():
        on = (
            _is_image_param(name)
            or name.startswith("logit_scale")
            or (train_text and not name.startswith("logit_bias"))
        )
        p.requires_grad_(on)
        if on:
            out.append((name, p))
    return out


def _random_start(pretrained: str | None) -> bool:
    return pretrained is None or str(pretrained).strip().lower() in ("", "random", "none", "scratch")


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(
    bundle, scorer, crops: torch.Tensor, cls: torch.Tensor, valid: torch.Tensor, batch: int
) -> dict[str, torch.Tensor]:
    """Zero-shot prediction (argmax over the class prompts) and AME d of crops (N,3,S,S) in [0,1]."""
    from clipce_rtdetr.method.ame import normalise

    emb = torch.zeros(len(crops), scorer.bank.text.shape[1])
    for i in range(0, len(crops), batch):
        x = normalise(crops[i : i + batch].float(), bundle.mean, bundle.std)
        emb[i : i + batch] = bundle.encode_images(x, batch).float().cpu()
    nc = scorer.bank.nc
    pred = (emb.to(scorer.device) @ scorer.bank.text[:nc].T).argmax(1).cpu()
    q, d, w = (t.cpu() for t in scorer.score_embeddings(emb.to(scorer.device), cls, valid))
    return {"pred": pred, "d": d, "w": w}


def summarise(
    res_clean: dict, res_deg: dict | None, cls: torch.Tensor, valid: torch.Tensor, levels: list | None
) -> dict[str, Any]:
    """Accuracies and mean d overall and per degradation level (valid objects only)."""

    def stats(mask: torch.Tensor) -> dict[str, Any]:
        m = mask & valid
        n = int(m.sum())
        s: dict[str, Any] = {"n": n}
        if not n:
            return s
        s["acc_clean"] = float((res_clean["pred"][m] == cls[m]).float().mean())
        s["d_clean"] = float(res_clean["d"][m].mean())
        if res_deg is not None:
            s["acc_degraded"] = float((res_deg["pred"][m] == cls[m]).float().mean())
            s["d_degraded"] = float(res_deg["d"][m].mean())
            s["w_degraded"] = float(res_deg["w"][m].mean())
        return s

    out = {"all": stats(torch.ones_like(valid))}
    if levels is not None:
        from clipce_rtdetr.data.hazy_shapes import HAZE_LEVELS

        order = [n for n, _, _ in HAZE_LEVELS]
        present = [lv for lv in dict.fromkeys(levels) if lv is not None]
        lv_arr = np.array([str(x) for x in levels])
        out["levels"] = {
            lv: stats(torch.from_numpy(lv_arr == lv))
            for lv in sorted(present, key=lambda x: (order.index(x) if x in order else 99, x))
        }
    return out


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def _fmt(v, pct=False):
    if v is None:
        return "n/a"
    return f"{100 * v:.1f} %" if pct else f"{v:.3f}"


def write_report(stem: Path, report: dict[str, Any]) -> list[Path]:
    """stem.json, stem.md and stem.png."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".json"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    paths[0].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    r, b, a = report, report["before"], report["after"]
    lines = [
        f"# clip-train report: {Path(r['out']).name}",
        "",
        f"Command: `{r['command']}`",
        "",
        f"- data: `{r['data']}` ({r['n_train_objects']} train crops from {r['train_images']}, "
        f"{r['n_val_objects']} {r['eval_split']} crops); classes: {', '.join(r['classes'])}",
        f"- model: `{r['clip']}` ({r['start']}), {r['params'] / 1e6:.2f} M parameters, trained: {r['trained']}; "
        f"input {r['image_size']} px, mean {r['mean']}, std {r['std']}",
        f"- {r['epochs']} epochs, batch {r['batch']}, lr {r['lr']}, seed {r['seed']}, {r['train_time_s']:.0f} s on {r['device']}",
        f"- prompts: profile `{Path(r['profile']).stem}`, templates {r['templates']}, scene negatives {r['scene_negatives']}",
        f"- file: `{r['out']}` ({r['size_bytes'] / 2**20:.2f} MiB, {r['dtype']}, sha256 {r['sha256'][:16]}...)",
        f"- AME: context {r['ame_context']}, temperature {r['ame_temperature']}, logit scale {a['logit_scale']:.1f} (before: {b['logit_scale']:.1f})",
        "",
        f"## Zero-shot accuracy on {r['eval_split']} crops (argmax over the {len(r['classes'])} class prompts)",
        "",
        "| | clean crops | degraded crops | mean d clean | mean d degraded |",
        "|---|---|---|---|---|",
    ]
    for name, s in (("before training", b["all"]), ("after training", a["all"])):
        lines.append(
            f"| {name} | {_fmt(s.get('acc_clean'), True)} | {_fmt(s.get('acc_degraded'), True)} | "
            f"{_fmt(s.get('d_clean'))} | {_fmt(s.get('d_degraded'))} |"
        )
    if "levels" in a:
        lines += [
            "",
            f"## AME per degradation level ({r['eval_split']} split, after training)",
            "",
            "Level bins: " + ", ".join(f"{n} beta in [{lo}, {hi})" for n, lo, hi in r["level_bins"]) + ". "
            "d = 1 - q (METHOD.md §3): the higher, the weaker the crop's class semantics. The clean column scores "
            "the clean copy of the same objects.",
            "",
            "| level | objects | mean d degraded | mean d clean | mean w degraded | acc degraded | acc clean | d degraded before training |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for lv, s in a["levels"].items():
            sb = b["levels"].get(lv, {})
            lines.append(
                f"| {lv} | {s['n']} | {_fmt(s.get('d_degraded'))} | {_fmt(s.get('d_clean'))} | {_fmt(s.get('w_degraded'))} | "
                f"{_fmt(s.get('acc_degraded'), True)} | {_fmt(s.get('acc_clean'), True)} | {_fmt(sb.get('d_degraded'))} |"
            )
        rising = r.get("d_rises_with_level")
        if rising is not None:
            lines += ["", f"Mean d on degraded crops rises with the level: **{'yes' if rising else 'NO'}**."]
    lines += ["", f"![clip-train report]({paths[2].name})", ""]
    paths[1].write_text("\n".join(lines), encoding="utf-8")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), tight_layout=True)
    h = r["history"]
    ax = axes[0]
    ax.plot([e["epoch"] for e in h], [e["loss"] for e in h], marker=".", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot([e["epoch"] for e in h], [e["acc"] for e in h], color="tab:orange", marker=".", label="train acc")
    ax2.set_ylim(0, 1.02)
    ax2.set_ylabel("train accuracy")
    ax.set_title("training")
    ax.grid(alpha=0.3)
    groups = list(a.get("levels", {}).keys()) or ["all"]
    src = a.get("levels", {"all": a["all"]})
    src_b = b.get("levels", {"all": b["all"]})
    x = np.arange(len(groups))
    for ax, key, title in ((axes[1], "d", "mean AME d"), (axes[2], "acc", "zero-shot accuracy")):
        for k, (lab, dat, suffix) in enumerate(
            (("degraded", src, "_degraded"), ("clean", src, "_clean"), ("degraded, before", src_b, "_degraded"))
        ):
            vals = [dat.get(g, {}).get(key + suffix, np.nan) for g in groups]
            ax.bar(x + (k - 1) * 0.27, vals, 0.27, label=lab, alpha=0.5 if "before" in lab else 1.0)
        ax.set_xticks(x, groups)
        ax.set_title(f"{title} per level ({r['eval_split']})")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.savefig(paths[2], dpi=120)
    plt.close(fig)
    return paths


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
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
    from tqdm import tqdm
    from ultralytics.utils import LOGGER

    from clipce_rtdetr.clip.loader import file_sha256, load_clip, parse_clip_spec
    from clipce_rtdetr.data.dataset import resolve_data
    from clipce_rtdetr.data.hazy_shapes import HAZE_LEVELS
    from clipce_rtdetr.eval.ame_inspect import load_split_labels
    from clipce_rtdetr.method.ame import AMEScorer, check_params, normalise
    from clipce_rtdetr.method.embedding_cache import source_boxes_xyxy
    from clipce_rtdetr.method.prompts import build_prompts

    # ---- arguments, checked before any work
    out = Path(out).expanduser()
    if out.suffix.lower() != ".safetensors":
        raise ClipCEError(
            f"clip-train out={out}: the weights file must end in .safetensors (it is loaded with clip=MODEL:{out})."
        )
    stem = Path(report).expanduser() if report else out.with_suffix("")
    stem = stem.with_suffix("") if stem.suffix.lower() in (".json", ".md", ".png") else stem
    targets = [out] + [stem.with_suffix(s) for s in (".json", ".md", ".png")]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not exist_ok:
        raise ClipCEError(
            f"clip-train: {', '.join(existing)} already exist(s); pass exist_ok=True to overwrite, or choose another out=."
        )
    if int(epochs) < 1 or int(batch) < 1:
        raise ClipCEError(f"clip-train: epochs={epochs} and batch={batch} must be >= 1.")
    if not 0 <= float(fliplr) <= 1:
        raise ClipCEError(f"clip-train: fliplr={fliplr} must be in [0, 1].")
    if not 0 <= float(rgb_shuffle) <= 1:
        raise ClipCEError(f"clip-train: clip_rgb_shuffle={rgb_shuffle} must be in [0, 1].")
    if not 0 <= float(jitter) < 0.5:
        raise ClipCEError(f"clip-train: clip_jitter={jitter} must be in [0, 0.5).")
    check_params(context, temperature, alpha, form)
    model_name, pretrained = parse_clip_spec(clip)
    scratch = _random_start(pretrained)
    load_spec = model_name if scratch else clip
    if train_text is None:
        train_text = scratch
    if scratch and not train_text:
        raise ClipCEError("clip-train: a model trained from scratch must train its text tower too (clip_text=True).")
    lr = float(lr) if lr is not None else (LR_SCRATCH if scratch else LR_FINETUNE)
    device = torch.device(device)

    # ---- data
    data_yaml = resolve_data(data)
    data_cfg, train_labels, _ = load_split_labels(data_yaml, "train")
    names = list(data_cfg["names"].values())
    eval_split = "val" if data_cfg.get("val") else "train"
    if eval_split == "val":
        _, eval_labels, _ = load_split_labels(data_yaml, "val")
    else:
        LOGGER.warning("clip-train: the dataset has no val split; the report evaluates the train split.")
        eval_labels = train_labels
    root = clean_root(data_cfg, images)
    train_src = with_clean_images(train_labels, root)
    eval_clean = with_clean_images(eval_labels, root)
    prompts = build_prompts(profile, names, templates)

    # ---- model (random init seeded)
    torch.manual_seed(seed)
    np.random.seed(seed)
    bundle = load_clip(load_spec, device="cpu")
    bundle.model.to(device)
    bundle.device = device
    model = bundle.model
    size, mean, std = bundle.image_size, bundle.mean, bundle.std
    LOGGER.info(
        f"clip-train: {load_spec} ({'random init, seed ' + str(seed) if scratch else 'pretrained'}), input {size} px, "
        f"mean {tuple(round(m, 4) for m in mean)}, std {tuple(round(s, 4) for s in std)}; training "
        f"{'both towers' if train_text else 'the image tower'}; crops from {root or 'the images themselves'}"
    )

    crops, cls, valid, img_of = gather_crops(
        train_src, size, context, "cpu", "train crops", progress, keep=not jitter > 0
    )
    keep = valid.nonzero().view(-1)
    if len(keep) == 0:
        raise ClipCEError(f"clip-train: no usable ground-truth box (>= 2 px) in the train split of {data_yaml}.")
    ev_clean, ev_cls, ev_valid, _ = gather_crops(
        eval_clean, size, context, "cpu", f"{eval_split} clean crops", progress
    )
    degraded = root is not None
    ev_deg = (
        gather_crops(eval_labels, size, context, "cpu", f"{eval_split} degraded crops", progress)[0]
        if degraded
        else None
    )
    levels = object_levels(data_cfg, eval_labels)

    def eval_all(b) -> dict[str, Any]:
        b.model.eval()
        sc = AMEScorer(b, names, profile, templates, context, temperature, alpha, form)
        rc = evaluate(b, sc, ev_clean, ev_cls, ev_valid, batch)
        rd = evaluate(b, sc, ev_deg, ev_cls, ev_valid, batch) if ev_deg is not None else None
        return {**summarise(rc, rd, ev_cls, ev_valid, levels), "logit_scale": sc.logit_scale}

    before = eval_all(bundle)

    # ---- training
    tokens = bundle.tokenizer([p for ps in prompts.positives for p in ps] + list(prompts.scene_negatives)).to(device)
    nc, n_tpl = prompts.nc, len(prompts.templates)
    trainable = set_trainable(model, bool(train_text))
    groups = [
        {"params": [p for n, p in trainable if not _no_decay(n, p)], "weight_decay": float(weight_decay)},
        {"params": [p for n, p in trainable if _no_decay(n, p)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)
    steps_per_epoch = math.ceil(len(keep) / int(batch))
    total = steps_per_epoch * int(epochs)
    warm = max(1, min(total // 10, 200))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm)))
    )
    gen = torch.Generator().manual_seed(seed)
    frozen_text = None
    if not train_text:
        with torch.no_grad():
            frozen_text = text_classes(model, tokens, nc, n_tpl)
    obj_boxes = torch.cat([torch.from_numpy(source_boxes_xyxy(lb, lb["shape"])) for lb in train_src if len(lb["cls"])])
    decoded = DecodedImages(train_src)
    history = []
    t0 = time.time()
    model.train()
    bar = tqdm(range(int(epochs)), desc="clip-train", unit="epoch", disable=not progress)
    for epoch in bar:
        perm = keep[torch.randperm(len(keep), generator=gen)]
        tot_loss, tot_ok, seen = 0.0, 0, 0
        for i in range(0, len(perm), int(batch)):
            idx = perm[i : i + int(batch)]
            x = (
                jittered_crops(decoded, img_of[idx], obj_boxes[idx], size, context, jitter, gen)
                if jitter > 0
                else crops[idx]
            )
            x = x.to(device).float()
            if fliplr > 0:
                flip = torch.rand(len(idx), generator=gen) < fliplr
                x[flip.to(device)] = x[flip.to(device)].flip(-1)
            if rgb_shuffle > 0:  # colours are not what a class is: permute a crop's RGB channels (never haze-like)
                sh = (torch.rand(len(idx), generator=gen) < rgb_shuffle).to(device)
                perm3 = torch.stack([torch.randperm(3, generator=gen) for _ in range(len(idx))]).to(device)
                x = torch.where(sh.view(-1, 1, 1, 1), x.gather(1, perm3.view(-1, 3, 1, 1).expand_as(x)), x)
            x = normalise(x, mean, std)
            y = cls[idx].to(device)
            img = F.normalize(model.encode_image(x).float(), dim=-1)
            txt = frozen_text if frozen_text is not None else text_classes(model, tokens, nc, n_tpl)
            scale = model.logit_scale.exp().clamp(max=100.0)
            logits = scale * img @ txt.T
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            tot_loss += float(loss.detach()) * len(idx)
            tot_ok += int((logits[:, :nc].argmax(1) == y).sum())
            seen += len(idx)
        history.append(
            {"epoch": epoch + 1, "loss": tot_loss / seen, "acc": tot_ok / seen, "lr": sched.get_last_lr()[0]}
        )
        bar.set_postfix(
            loss=f"{tot_loss / seen:.3f}",
            acc=f"{tot_ok / seen:.3f}",
            scale=f"{float(model.logit_scale.detach().exp()):.1f}",
        )
    bar.close()
    train_time = time.time() - t0
    model.eval()

    # ---- save (atomic), then reload exactly as a user would
    from safetensors.torch import save_file

    recipe = {
        "clip": clip,
        "model": model_name,
        "data": Path(data_yaml).name,
        "epochs": int(epochs),
        "batch": int(batch),
        "lr": lr,
        "seed": int(seed),
        "fliplr": float(fliplr),
        "jitter": float(jitter),
        "rgb_shuffle": float(rgb_shuffle),
        "images": str(images or "auto"),
        "profile": prompts.profile,
        "templates": prompts.templates,
        "scene_negatives": prompts.scene_negatives,
        "context": float(context),
        "train_text": bool(train_text),
        "image_size": size,
        "mean": list(mean),
        "std": list(std),
    }
    dtype = torch.float16 if half else torch.float32
    sd = {
        k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous().clone()
        for k, v in model.state_dict().items()
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    save_file(sd, str(tmp), metadata={META_KEY: json.dumps(recipe)})
    os.replace(tmp, out)
    spec = f"{model_name}:{out.resolve()}"
    trained = load_clip(spec, device=device)
    if (tuple(trained.mean), tuple(trained.std), trained.image_size) != (tuple(mean), tuple(std), size):
        raise ClipCEError(f"clip-train: {spec} reloads with other preprocessing than it was trained with; report this.")
    after = eval_all(trained)
    LOGGER.info(f"clip-train: saved {out} ({out.stat().st_size / 2**20:.2f} MiB); load it with clip={spec}")

    lv = after.get("levels") or {}
    ds = [lv[n]["d_degraded"] for n, _, _ in HAZE_LEVELS if n in lv and "d_degraded" in lv[n]]
    rep = {
        "command": command or f"clip_train(data={data!r}, clip={clip!r}, out={str(out)!r}, epochs={epochs})",
        "data": data_yaml
        if data not in (None, "hazy-shapes", "hazy-shapes.yaml")
        else f"{data or 'hazy-shapes'} ({Path(data_yaml).parent.name})",
        "classes": names,
        "clip": clip,
        "spec": spec,
        "out": str(out),
        "start": "random init" if scratch else "pretrained",
        "trained": "image + text towers" if train_text else "image tower",
        "params": sum(p.numel() for p in model.parameters()),
        "image_size": size,
        "mean": [round(m, 6) for m in mean],
        "std": [round(s, 6) for s in std],
        "epochs": int(epochs),
        "batch": int(batch),
        "lr": lr,
        "weight_decay": float(weight_decay),
        "fliplr": float(fliplr),
        "jitter": float(jitter),
        "rgb_shuffle": float(rgb_shuffle),
        "seed": int(seed),
        "device": str(device),
        "train_time_s": round(train_time, 1),
        "train_images": str(root) if root is not None else "the dataset images",
        "eval_split": eval_split,
        "n_train_objects": int(len(keep)),
        "n_val_objects": int(ev_valid.sum()),
        "profile": prompts.profile,
        "templates": prompts.templates,
        "scene_negatives": prompts.scene_negatives,
        "ame_context": float(context),
        "ame_temperature": float(temperature),
        "ame_alpha": float(alpha),
        "ame_form": form,
        "size_bytes": out.stat().st_size,
        "dtype": str(dtype).replace("torch.", ""),
        "sha256": file_sha256(out),
        "level_bins": [[n, lo, hi if math.isfinite(hi) else "inf"] for n, lo, hi in HAZE_LEVELS],
        "d_rises_with_level": (all(b > a for a, b in zip(ds, ds[1:])) if len(ds) >= 2 else None),
        "before": before,
        "after": after,
        "history": history,
    }
    paths = write_report(stem, rep)
    LOGGER.info(f"clip-train: report {', '.join(str(p) for p in paths)}")
    s = after["all"]
    msg = f"clip-train: {eval_split} zero-shot accuracy clean {_fmt(s.get('acc_clean'), True)}"
    if "acc_degraded" in s:
        msg += f", degraded {_fmt(s.get('acc_degraded'), True)}"
    if lv:
        msg += "; mean d per level: " + ", ".join(
            f"{k} {v.get('d_degraded', v.get('d_clean', 0)):.3f}" for k, v in lv.items()
        )
    LOGGER.info(msg)
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
            "clip-train needs out=FILE.safetensors, e.g. 'clipce-rtdetr clip-train data=hazy-shapes clip=clipce-tiny epochs=40 out=my-clip.safetensors'."
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
    "gather_crops",
    "text_classes",
    "META_KEY",
]
