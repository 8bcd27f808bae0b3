"""clip-train's evaluation: zero-shot accuracy (argmax over the class prompts) and AME d of ground-truth crops,
clean and degraded, overall and per degradation level.

Crops are streamed: each image is cropped when it is read, and crops are encoded `batch` at a time by the
embedding cache's own path (`embedding_cache.compute_embeddings`), so an evaluation holds one batch of crops
plus one (N, D) fp16 embedding table, never every crop of the split (issue 13.7). The table is fp16, as the
embedding cache that training scores from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@torch.no_grad()
def evaluate(bundle, scorer, labels: list[dict], cls: torch.Tensor, batch: int, context: float):
    """Zero-shot prediction and AME (d, w) of every ground-truth crop of `labels`, streamed
    -> ({"pred", "d", "w"} each (N,), valid (N,))."""
    from clipce_rtdetr.method import embedding_cache

    emb, valid = embedding_cache.compute_embeddings(labels, bundle, context, batch, "cpu", progress=False)
    emb = emb.float().to(scorer.device)
    if not len(cls):
        empty = torch.zeros(0)
        return {"pred": empty.long(), "d": empty, "w": empty}, valid
    pred = (emb @ scorer.bank.text[: scorer.bank.nc].T).argmax(1).cpu()
    q, d, w = (t.cpu() for t in scorer.score_embeddings(emb, cls, valid))
    return {"pred": pred, "d": d, "w": w}, valid


@dataclass
class ZeroShotEval:
    """Evaluates a CLIP bundle on the eval split's clean crops and, when clean copies exist, its degraded ones."""

    names: list[str]
    clean: list[dict]  # eval labels pointing at the clean copies (or the images themselves)
    degraded: list[dict] | None  # eval labels of the dataset's own (degraded) images, None without clean copies
    levels: list[str | None] | None  # level of each object's image, None without a degradation record
    ame: dict[str, Any]  # AMEScorer settings: profile, templates, context, temperature, alpha, form
    batch: int
    valid: torch.Tensor | None = field(default=None, init=False)  # eval objects AME can score (after a call)

    def __call__(self, bundle) -> dict[str, Any]:
        from clipce_rtdetr.method.ame import AMEScorer
        from clipce_rtdetr.method.embedding_cache import object_classes

        bundle.model.eval()
        a = self.ame
        sc = AMEScorer(
            bundle, self.names, a["profile"], a["templates"], a["context"], a["temperature"], a["alpha"], a["form"]
        )
        cls = object_classes(self.clean)
        rc, valid = evaluate(bundle, sc, self.clean, cls, self.batch, a["context"])
        rd = (
            evaluate(bundle, sc, self.degraded, cls, self.batch, a["context"])[0] if self.degraded is not None else None
        )
        self.valid = valid
        return {**summarise(rc, rd, cls, valid, self.levels), "logit_scale": sc.logit_scale}


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
