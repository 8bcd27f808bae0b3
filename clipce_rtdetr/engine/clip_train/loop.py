"""clip-train's optimisation: which parameters train, the optimiser and its schedule, the crop augmentations and
the epoch loop (cross-entropy of scaled crop-text cosines over the class prompts and scene negatives)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clipce_rtdetr.engine.clip_train.data import DecodedImages, jittered_crops


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


def make_optimizer(trainable: list[tuple[str, torch.nn.Parameter]], lr: float, weight_decay: float, total: int):
    """AdamW (no decay on norms, embeddings, biases, logit scale) and a linear warm-up + cosine schedule."""
    groups = [
        {"params": [p for n, p in trainable if not _no_decay(n, p)], "weight_decay": float(weight_decay)},
        {"params": [p for n, p in trainable if _no_decay(n, p)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)
    warm = max(1, min(total // 10, 200))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm)))
    )
    return opt, sched


@dataclass
class TrainObjects:
    """The training objects: crops are made from `images` each batch, none is held."""

    images: DecodedImages
    img_of: torch.Tensor  # (N,) index into images of each object
    boxes: torch.Tensor  # (N, 4) xyxy pixels
    cls: torch.Tensor  # (N,)
    keep: torch.Tensor  # indices of the objects AME can crop (valid)


@dataclass
class TrainSettings:
    size: int
    context: float
    mean: tuple
    std: tuple
    batch: int
    jitter: float
    fliplr: float
    rgb_shuffle: float
    device: torch.device


def batch_crops(objs: TrainObjects, idx: torch.Tensor, s: TrainSettings, gen: torch.Generator) -> torch.Tensor:
    """Normalised, augmented crops of objects `idx` on the device: box jitter, horizontal flip, RGB permutation."""
    from clipce_rtdetr.method.ame import normalise

    x = jittered_crops(objs.images, objs.img_of[idx], objs.boxes[idx], s.size, s.context, s.jitter, gen)
    x = x.to(s.device).float()
    if s.fliplr > 0:
        flip = torch.rand(len(idx), generator=gen) < s.fliplr
        x[flip.to(s.device)] = x[flip.to(s.device)].flip(-1)
    if s.rgb_shuffle > 0:  # colours are not what a class is: permute a crop's RGB channels (never haze-like)
        sh = (torch.rand(len(idx), generator=gen) < s.rgb_shuffle).to(s.device)
        perm3 = torch.stack([torch.randperm(3, generator=gen) for _ in range(len(idx))]).to(s.device)
        x = torch.where(sh.view(-1, 1, 1, 1), x.gather(1, perm3.view(-1, 3, 1, 1).expand_as(x)), x)
    return normalise(x, s.mean, s.std)


def train_epoch(model, objs: TrainObjects, s: TrainSettings, text, opt, sched, gen) -> dict[str, float]:
    """One pass over the objects in a random order; `text()` gives the text rows (trained or frozen)."""
    nc = text.nc
    perm = objs.keep[torch.randperm(len(objs.keep), generator=gen)]
    # sums kept on the device and read once per epoch: no per-step wait for the GPU
    tot_loss, tot_ok, seen = torch.zeros((), device=s.device), torch.zeros((), device=s.device), 0
    for i in range(0, len(perm), s.batch):
        idx = perm[i : i + s.batch]
        x = batch_crops(objs, idx, s, gen)
        y = objs.cls[idx].to(s.device)
        img = F.normalize(model.encode_image(x).float(), dim=-1)
        scale = model.logit_scale.exp().clamp(max=100.0)
        logits = scale * img @ text().T
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        tot_loss += loss.detach().float() * len(idx)
        tot_ok += (logits[:, :nc].argmax(1) == y).sum()
        seen += len(idx)
    return {"loss": float(tot_loss) / seen, "acc": float(tot_ok) / seen, "lr": sched.get_last_lr()[0]}


class TextRows:
    """The text side of the loss: recomputed with gradients each step when the text tower trains, else fixed."""

    def __init__(self, model, tokens: torch.Tensor, nc: int, n_tpl: int, trained: bool):
        self.model, self.tokens, self.nc, self.n_tpl = model, tokens, nc, n_tpl
        self.frozen = None
        if not trained:
            with torch.no_grad():
                self.frozen = text_classes(model, tokens, nc, n_tpl)

    def __call__(self) -> torch.Tensor:
        if self.frozen is not None:
            return self.frozen
        return text_classes(self.model, self.tokens, self.nc, self.n_tpl)


def train(
    model, objs: TrainObjects, s: TrainSettings, text: TextRows, opt_args: dict, epochs: int, seed: int, progress: bool
) -> list[dict]:
    """All epochs; returns the per-epoch history (loss, train accuracy, learning rate)."""
    from tqdm import tqdm

    steps_per_epoch = math.ceil(len(objs.keep) / s.batch)
    total = steps_per_epoch * epochs
    opt, sched = make_optimizer(opt_args["trainable"], opt_args["lr"], opt_args["weight_decay"], total)
    gen = torch.Generator().manual_seed(seed)
    history = []
    model.train()
    bar = tqdm(range(epochs), desc="clip-train", unit="epoch", disable=not progress)
    for epoch in bar:
        h = train_epoch(model, objs, s, text, opt, sched, gen)
        history.append({"epoch": epoch + 1, **h})
        scale = float(model.logit_scale.detach().exp())
        bar.set_postfix(loss=f"{h['loss']:.3f}", acc=f"{h['acc']:.3f}", scale=f"{scale:.1f}")
    bar.close()
    model.eval()
    return history
