"""AME and FAME scoring (METHOD.md §1-4), vectorised over objects: no Python loop per object.

Pipeline for N ground-truth objects:
    crops, valid = crop_boxes(images, boxes_xyxy, batch_idx, size, context)   # §1, roi_align
    emb = bundle.encode_images(normalise(crops, mean, std))                   # one batched CLIP forward
    q = ame_q(emb, cls, bank.text, bank.pos_index, bank.neg_mask, s, T)      # §3
    w = ame_weights(q, alpha, form)                                           # §3
    w' = fame_weights(w, p_hat, gamma)                                        # §4 (in the loss)
`AMEScorer` wraps all of it with the text bank computed once per run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from clipce_rtdetr.errors import ClipCEError
from clipce_rtdetr.method.prompts import Profile, PromptSet, build_prompts

MIN_BOX = 2.0  # px: a box smaller than this on a side (after clamping to the image) is not scored: w = 1
FORMS = ("exp", "linear")


# ---------------------------------------------------------------------------------------------
# Text bank (§2)
# ---------------------------------------------------------------------------------------------
@dataclass
class TextBank:
    """Text embeddings of a run. Rows 0..nc-1: class positives (L2-normalised per template, averaged over
    templates, re-normalised); rows nc..K-1: scene negatives. `neg_mask[c]` marks class c's negatives
    (every other class's positive row + every scene negative)."""

    text: torch.Tensor  # (K, D) fp32, L2-normalised
    pos_index: torch.Tensor  # (nc,) long: row of class c's positive
    neg_mask: torch.Tensor  # (nc, K) bool
    rows: list[str]  # description of each row (for logs / prompts.json)

    @property
    def nc(self) -> int:
        return int(self.pos_index.numel())

    def to(self, device: str | torch.device) -> TextBank:
        return TextBank(self.text.to(device), self.pos_index.to(device), self.neg_mask.to(device), self.rows)


def masks_for(nc: int, n_scene: int, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(pos_index (nc,), neg_mask (nc, nc+n_scene)) for the row layout of `TextBank`."""
    pos_index = torch.arange(nc, device=device)
    neg_mask = torch.ones(nc, nc + n_scene, dtype=torch.bool, device=device)
    neg_mask[pos_index, pos_index] = False
    return pos_index, neg_mask


def pool_text_rows(emb: torch.Tensor, nc: int, n_tpl: int) -> torch.Tensor:
    """(nc*T + S, D) normalised prompt embeddings -> (nc + S, D): each class's templates averaged and re-normalised,
    scene negatives as they are (the row layout of TextBank; clip-train builds its rows with it too)."""
    pos = F.normalize(emb[: nc * n_tpl].view(nc, n_tpl, -1).mean(1), dim=-1)
    return torch.cat([pos, emb[nc * n_tpl :]], 0)


def build_text_bank(bundle: Any, prompts: PromptSet) -> TextBank:
    """Encode all prompts once (one text forward) -> TextBank on the bundle's device."""
    nc, n_tpl = prompts.nc, len(prompts.templates)
    flat = [p for ps in prompts.positives for p in ps]
    emb = bundle.encode_texts(flat + list(prompts.scene_negatives))  # (nc*T + S, D), normalised
    text = pool_text_rows(emb, nc, n_tpl).float()
    pos_index, neg_mask = masks_for(nc, len(prompts.scene_negatives), text.device)
    rows = [f"class {c} ({prompts.names[c]}): " + " | ".join(prompts.positives[c]) for c in range(nc)]
    rows += [f"scene: {s}" for s in prompts.scene_negatives]
    return TextBank(text, pos_index, neg_mask, rows)


# ---------------------------------------------------------------------------------------------
# Crops (§1)
# ---------------------------------------------------------------------------------------------
def crop_boxes(
    images: torch.Tensor,
    boxes_xyxy: torch.Tensor,
    batch_idx: torch.Tensor,
    size: int,
    context: float = 0.10,
    sampling_ratio: int = -1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Square crops of every box, with context, by `torchvision.ops.roi_align` (aligned=True).

    images: (B,3,H,W) float RGB in [0,1] (uint8 is divided by 255); boxes_xyxy: (N,4) pixels of that
    image; batch_idx: (N,) image of each box. Each box is enlarged by `context` x its width/height on
    every side, clamped to the image and resized to (size, size) ignoring aspect (bilinear; with
    sampling_ratio=-1 roi_align averages ceil(box/size) bilinear samples per output pixel, i.e. an
    antialiased downscale; sampling_ratio=1 is plain bilinear). Returns (crops (N,3,size,size) fp32,
    valid (N,) bool); valid is False when the box clamped to the image is under 2 px on a side.
    """
    from torchvision.ops import roi_align

    if images.ndim != 4:
        raise ValueError(f"images must be (B,3,H,W), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    elif not images.is_floating_point():
        images = images.float()
    elif images.dtype != torch.float32:
        images = images.float()  # roi_align in half is not available on every backend
    dev = images.device
    boxes = boxes_xyxy.to(dev, torch.float32).reshape(-1, 4)
    n = boxes.shape[0]
    if n == 0:
        return images.new_zeros(0, 3, size, size), torch.zeros(0, dtype=torch.bool, device=dev)
    H, W = images.shape[-2:]
    lim = boxes.new_tensor([W, H, W, H])
    clamped = torch.minimum(boxes.clamp(min=0), lim)
    valid = ((clamped[:, 2] - clamped[:, 0]) >= MIN_BOX) & ((clamped[:, 3] - clamped[:, 1]) >= MIN_BOX)
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    pad = torch.cat([wh, wh], 1) * boxes.new_tensor([-context, -context, context, context])
    big = torch.minimum((boxes + pad).clamp(min=0), lim)
    rois = torch.cat([batch_idx.to(dev, torch.float32).reshape(-1, 1), big], 1)
    crops = roi_align(
        images, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=sampling_ratio, aligned=True
    )
    return crops, valid


def normalise(crops: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel, with the CLIP model's own mean/std."""
    m = torch.as_tensor(mean, dtype=crops.dtype, device=crops.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=crops.dtype, device=crops.device).view(1, -1, 1, 1)
    return (crops - m) / s


# ---------------------------------------------------------------------------------------------
# AME (§3) and FAME (§4)
# ---------------------------------------------------------------------------------------------
def ame_q(
    img_emb: torch.Tensor,
    cls: torch.Tensor,
    text: torch.Tensor,
    pos_index: torch.Tensor,
    neg_mask: torch.Tensor,
    logit_scale: float,
    temperature: float = 1.0,
) -> torch.Tensor:
    """q_i = exp(z_pos) / (exp(z_pos) + sum_neg exp(z_n)), z_k = (s / T) * cos(v_i, t_k).

    img_emb (N,D) and text (K,D) are L2-normalised; cls (N,) class ids; returns q (N,) fp32 (no grad)."""
    cls = cls.reshape(-1).long().to(text.device)
    if img_emb.shape[0] == 0:
        return torch.zeros(0, device=text.device)
    z = (float(logit_scale) / float(temperature)) * (img_emb.to(text.device, torch.float32) @ text.float().T)  # (N,K)
    zp = z.gather(1, pos_index[cls].view(-1, 1)).squeeze(1)
    zn = z.masked_fill(~neg_mask[cls], float("-inf"))
    lse_all = torch.logsumexp(torch.cat([zp.view(-1, 1), zn], 1), dim=1)
    return torch.exp(zp - lse_all).detach()


def ame_weights(q: torch.Tensor, alpha: float = 1.0, form: str = "exp") -> torch.Tensor:
    """w = exp(alpha * d) (form 'exp') or 1 + alpha * d ('linear'), d = 1 - q."""
    d = 1.0 - q
    if form == "exp":
        return torch.exp(alpha * d)
    if form == "linear":
        return 1.0 + alpha * d
    raise ClipCEError(f"ame_form={form} is not valid. Valid values are {', '.join(FORMS)}.")


def fame_weights(w: torch.Tensor, p: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """w' = 1 + (w - 1) * (1 - p)^gamma, p = detached confidence of the true class in [0, 1]."""
    p = p.detach().to(w.dtype).clamp(0.0, 1.0)
    return 1.0 + (w - 1.0) * (1.0 - p).pow(gamma)


def check_params(context: float, temperature: float, alpha: float, form: str, gamma: float | None = None) -> None:
    if not context >= 0:
        raise ClipCEError(f"ame_context={context} must be >= 0.")
    if not temperature > 0:
        raise ClipCEError(f"ame_temperature={temperature} must be > 0.")
    if not alpha >= 0:
        raise ClipCEError(f"ame_alpha={alpha} must be >= 0.")
    if gamma is not None and not gamma >= 0:
        raise ClipCEError(f"fame_gamma={gamma} must be >= 0.")
    if form not in FORMS:
        raise ClipCEError(f"ame_form={form} is not valid. Valid values are {', '.join(FORMS)}.")


# ---------------------------------------------------------------------------------------------
# The scorer
# ---------------------------------------------------------------------------------------------
class AMEScorer:
    """Scores ground-truth objects with a frozen CLIP (`clip_loader.ClipBundle`).

    Text embeddings are computed once, here. `info` is the exact description of the prompts and
    parameters (write it as prompts.json). All outputs are fp32 on the bundle's device, detached.
    """

    def __init__(
        self,
        bundle: Any,
        class_names: Mapping[int, str] | Sequence[str],
        profile: str | Profile = "haze",
        templates: Sequence[str] | None = None,
        context: float = 0.10,
        temperature: float = 1.0,
        alpha: float = 1.0,
        form: str = "exp",
        batch_size: int = 64,
    ):
        check_params(context, temperature, alpha, form)
        self.bundle = bundle
        self.context, self.temperature, self.alpha, self.form = float(context), float(temperature), float(alpha), form
        self.batch_size = int(batch_size)
        self.prompts = build_prompts(profile, class_names, templates)
        self.bank = build_text_bank(bundle, self.prompts)
        self.logit_scale = float(bundle.logit_scale)
        self.info = {
            **self.prompts.to_dict(),
            "clip": bundle.describe() if hasattr(bundle, "describe") else str(getattr(bundle, "spec", "")),
            "logit_scale": self.logit_scale,
            "temperature": self.temperature,
            "effective_scale": self.logit_scale / self.temperature,
            "alpha": self.alpha,
            "form": self.form,
            "context": self.context,
            "min_box_px": MIN_BOX,
            "text_rows": list(self.bank.rows),
        }

    @property
    def device(self) -> torch.device:
        return self.bank.text.device

    @property
    def names(self) -> list[str]:
        return self.prompts.names

    def score_embeddings(
        self, img_emb: torch.Tensor, cls: torch.Tensor, valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """From L2-normalised image embeddings (N,D) (e.g. the embedding cache) -> (q, d, w), each (N,).
        Rows with valid=False get q = 1, d = 0, w = 1 exactly."""
        cls = cls.reshape(-1).long()
        n = cls.numel()
        # Checked where it costs no device sync (dataset scoring on CPU); batches were validated when loaded.
        if n and cls.device.type == "cpu" and (int(cls.min()) < 0 or int(cls.max()) >= self.bank.nc):
            raise ClipCEError(
                f"class id out of range 0..{self.bank.nc - 1} in AME scoring (got {int(cls.min())}..{int(cls.max())})."
            )
        cls = cls.to(self.device)
        with torch.autocast(self.device.type, enabled=False):  # fp32 logits whatever autocast surrounds the call
            q = ame_q(
                img_emb,
                cls,
                self.bank.text,
                self.bank.pos_index,
                self.bank.neg_mask,
                self.logit_scale,
                self.temperature,
            )
        if valid is not None:
            q = torch.where(valid.to(self.device).reshape(-1), q, torch.ones_like(q))
        d = 1.0 - q
        w = ame_weights(q, self.alpha, self.form)
        if valid is not None:
            w = torch.where(valid.to(self.device).reshape(-1), w, torch.ones_like(w))
        return q, d, w

    def embed_crops(self, crops_normalised: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """(N,3,S,S) normalised crops -> (N,D) embeddings; rows with valid=False are zeros (on CPU not even encoded)."""
        n = crops_normalised.shape[0]
        if valid is None:
            return self.bundle.encode_images(crops_normalised, self.batch_size)
        valid = valid.reshape(-1).to(self.device)
        if crops_normalised.device.type != "cpu":  # on an accelerator: encode all, mask after (no host sync)
            emb = self.bundle.encode_images(crops_normalised, self.batch_size)
            return torch.where(valid[:, None], emb, torch.zeros_like(emb))
        out = torch.zeros(n, self.bank.text.shape[1], device=self.device)
        if bool(valid.any()):
            out[valid] = self.bundle.encode_images(crops_normalised[valid.to(crops_normalised.device)], self.batch_size)
        return out

    def embed_boxes(
        self, images: torch.Tensor, boxes_xyxy: torch.Tensor, batch_idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Crop, normalise and encode every box, `batch_size` crops at a time (a crowded mosaic never holds all its
        crops, nor their activations, at once) -> (emb (N,D), valid (N,))."""
        n = boxes_xyxy.shape[0]
        embs, valids = [], []
        for start in range(0, max(n, 1), self.batch_size):
            part = slice(start, start + self.batch_size)
            crops, valid = crop_boxes(images, boxes_xyxy[part], batch_idx[part], self.bundle.image_size, self.context)
            crops = normalise(crops, self.bundle.mean, self.bundle.std)
            embs.append(self.embed_crops(crops, valid))
            valids.append(valid.to(self.device))
        return torch.cat(embs), torch.cat(valids)

    def score_crops(
        self, crops_normalised: torch.Tensor, cls: torch.Tensor, valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N,3,S,S) crops already normalised -> (q, d, w)."""
        return self.score_embeddings(self.embed_crops(crops_normalised, valid), cls, valid)

    def score_boxes(
        self, images: torch.Tensor, boxes_xyxy: torch.Tensor, batch_idx: torch.Tensor, cls: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images (B,3,H,W) in [0,1] and boxes (N,4) xyxy pixels -> (q, d, w); boxes under 2 px: w = 1.

        Scored in fp32 whatever autocast surrounds the call (the trainer's AMP): logits scaled by up to 100 lose
        several percent of q in fp16/bf16."""
        with torch.autocast(images.device.type, enabled=False):
            emb, valid = self.embed_boxes(images, boxes_xyxy, batch_idx)
            return self.score_embeddings(emb, cls, valid)


__all__ = [
    "AMEScorer",
    "TextBank",
    "build_text_bank",
    "masks_for",
    "crop_boxes",
    "normalise",
    "ame_q",
    "ame_weights",
    "fame_weights",
    "check_params",
    "MIN_BOX",
]


def score_in_chunks(
    scorer: AMEScorer, emb: torch.Tensor, cls: torch.Tensor, valid: torch.Tensor, chunk: int, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, w) (N,) fp32 on the CPU of a whole embedding cache, `chunk` rows at a time: a memory-mapped cache is
    paged in a chunk at a time and no (N, K) logits matrix or fp32 copy of it is ever whole. Equal to one
    `score_embeddings` call over all rows (row by row the same arithmetic)."""
    from tqdm import tqdm

    n = int(cls.numel())
    q, w = torch.ones(n), torch.ones(n)
    cls = cls.reshape(-1).long()
    for lo in tqdm(range(0, n, chunk), desc="CLIP-CE: scoring objects", unit="chunk", disable=not progress):
        part = slice(lo, lo + chunk)
        q_part, _, w_part = scorer.score_embeddings(emb[part].to(scorer.device), cls[part], valid[part])
        q[part], w[part] = q_part.float().cpu(), w_part.float().cpu()
    return q, w
