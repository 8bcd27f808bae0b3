"""What the export check compares: the PyTorch model's outputs in the layout the exporter chose, and the differences
between two outputs of one image.

Output layouts (Ultralytics 8.4.190's exporter decides them; `output_layout` names them):
- `detr`: RT-DETR's top-k list (k, 6) [cx, cy, w, h, score, cls], boxes normalised;
- `raw`: a YOLO head's (4 + nc, anchors) tensor, boxes cx, cy, w, h in pixels (the default, `nms=None`, of every
  YOLO family: the exporter sets `end2end = (nms is False)`);
- `end2end`: YOLO26's one-to-one head with `nms=False`: a top-k list (k, 6) [x1, y1, x2, y2, score, cls] in pixels;
- `nms`: `nms=True` on a YOLO head: Ultralytics' `NMSModel` around it, (max_det, 6) [x1, y1, x2, y2, score, cls] in
  pixels, only detections above `conf` (0.25 unless given), zero rows after them.

Why the reference is the unexported model set to the exporter's choices (branch, box format, NMS wrapper) and not
the exporter's own copy: the exporter switches heads into an export branch and fuses layers; comparing with the model
as PyTorch predict runs it catches a broken export branch too, not only runtime numerics.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

# A quantized (FP16/INT8) model reorders the many near-zero-score queries of a DETR top-k list, whose boxes then
# differ although nothing a user would keep does: its check covers detections at Ultralytics' predict default
# conf and above (the top 10 when none reach it). FP32 exports are checked on the whole list.
QUANT_CHECK_CONF = 0.25


def output_layout(head, nms: bool = False) -> str:
    """How a detection head's exported output is laid out (see the module docstring)."""
    if type(head).__name__.startswith("RTDETR"):
        return "detr"
    if nms:
        return "nms"
    return "end2end" if getattr(head, "end2end", False) else "raw"


def exporter_choices(exporter) -> dict[str, Any]:
    """What `on_export_end` can read of the exporter's decisions that shape the output: layout, branch, box format,
    and for `nms=True` the arguments its NMSModel ran with."""
    head = exporter.model.model[-1]
    nms = bool(getattr(exporter.args, "nms", None))
    return {
        "layout": output_layout(head, nms),
        "end2end": getattr(exporter.model, "end2end", None),
        "xyxy": bool(getattr(head, "xyxy", False)),
        "nms_args": SimpleNamespace(**dict(vars(exporter.args))) if nms else None,
        "nms_conf": float(exporter.args.conf) if nms and exporter.args.conf is not None else None,
    }


def reference_model(pt_model, info: dict[str, Any]):
    """The unexported model, fp32 on CPU, set to the exporter's choices (see `exporter_choices`)."""
    from copy import deepcopy

    m = deepcopy(pt_model).float().cpu().eval()
    head = m.model[-1]
    head.max_det = info["max_det"]
    if info.get("layout", "detr") == "detr":
        return m
    if info.get("end2end") is not None and hasattr(m, "end2end"):
        m.end2end = bool(info["end2end"])  # nms=False: YOLO26's one-to-one branch; otherwise the one-to-many head
    if hasattr(head, "xyxy"):
        head.xyxy = bool(info.get("xyxy"))  # nms=True: the head hands NMS xyxy boxes
    if info.get("layout") == "nms":
        from ultralytics.engine.exporter import NMSModel

        return NMSModel(m, info["nms_args"]).eval()
    return m


def reference_outputs(pt_model, batches: list[np.ndarray], info: dict[str, Any] | int) -> list[np.ndarray]:
    """PyTorch predictions of the unexported model in the exported layout, fp32, on CPU (`info`: what the exporter
    chose, see `exporter_choices`; a number: max_det of the model's own layout)."""
    import torch

    m = reference_model(pt_model, {"max_det": info} if isinstance(info, int) else info)
    outs = []
    with torch.inference_mode():
        for x in batches:
            y = m(torch.from_numpy(x))
            outs.append((y[0] if isinstance(y, (tuple, list)) else y).float().numpy())
    return outs


def compare_detections(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """Largest differences between two (k, 6) [box, score, cls] top-k lists of one image.

    Each row of `out` is matched to the row of `ref` with the same class minimising max(box, score)
    difference; `ref` may be longer (PyTorch keeps every query, export keeps max_det).
    """
    k = len(out)
    box = np.abs(out[:, None, :4] - ref[None, :, :4]).max(-1)  # (k, K)
    score = np.abs(out[:, None, 4] - ref[None, :, 4])
    cost = np.where(out[:, None, 5] == ref[None, :, 5], np.maximum(box, score), np.inf)
    j = cost.argmin(1) if len(ref) else np.zeros(k, dtype=int)
    matched = np.isfinite(cost[np.arange(k), j]) if len(ref) else np.zeros(k, dtype=bool)
    rows = np.arange(k)[matched]
    top = min(k, len(ref))
    sorted_scores = np.abs(np.sort(out[:, 4])[::-1][:top] - np.sort(ref[:, 4])[::-1][:top])
    return {
        "box": float(box[rows, j[matched]].max(initial=0.0)),
        "score": float(max(score[rows, j[matched]].max(initial=0.0), sorted_scores.max(initial=0.0))),
        "unmatched": int((~matched).sum()),
        "n": int(k),
    }


def confident(out: np.ndarray, floor: float | None, fallback: int = 10) -> np.ndarray:
    """The rows of a (k, 6) detection list to compare: all, or those scoring >= floor (else the top `fallback`)."""
    if floor is None:
        return out
    keep = out[out[:, 4] >= floor]
    return keep if len(keep) else out[np.argsort(-out[:, 4])[:fallback]]


def compare_raw(ref: np.ndarray, out: np.ndarray, imgsz: tuple[int, int], floor: float | None) -> dict[str, float]:
    """Largest differences between two raw YOLO head outputs (4 + nc, anchors) of one image: boxes in pixels
    (divided by the image size), class scores. A quantized export is compared on the anchors PyTorch scores at
    `floor` or above (the top 10 when none reach it), as for DETR lists."""
    keep = np.arange(ref.shape[1])
    if floor is not None:
        best = ref[4:].max(0)
        keep = np.flatnonzero(best >= floor) if (best >= floor).any() else np.argsort(-best)[:10]
    d = np.abs(out[:, keep] - ref[:, keep])
    box = d[:4].max(initial=0.0) / max(imgsz)
    return {"box": float(box), "score": float(d[4:].max(initial=0.0)), "unmatched": 0, "n": int(len(keep))}


def compare_selected(ref: np.ndarray, out: np.ndarray, floor: float) -> dict[str, float]:
    """Two selected detection lists (NMS output, YOLO26's top-k) of one image, both ways: every detection scoring
    >= floor on either side must have a same-class counterpart on the other. `floor` sits above the selection's
    cut-off (NMS `conf`, the top-k list's lowest score) by the tolerance: a detection scoring within the tolerance
    of the cut-off may be kept by one runtime and dropped by the other, which is no error."""
    a = compare_detections(ref, confident(out, floor, fallback=0))
    b = compare_detections(out, confident(ref, floor, fallback=0))
    return {
        "box": max(a["box"], b["box"]),
        "score": max(a["score"], b["score"]),
        "unmatched": a["unmatched"] + b["unmatched"],
        "n": max(a["n"], b["n"]),
    }


def compare_image(ref: np.ndarray, out: np.ndarray, layout: str, imgsz: tuple[int, int], floor: float | None,
                  tol: float = 0.0) -> dict[str, float]:  # fmt: skip
    """One image's differences, by the output layout (see the module docstring); boxes in pixels are divided by the
    image size, so the box difference is normalised in every layout."""
    if layout == "raw":
        return compare_raw(ref, out, imgsz, floor)
    if layout in ("end2end", "nms"):
        scale = np.array([imgsz[1], imgsz[0], imgsz[1], imgsz[0]], dtype=np.float32)
        ref, out = ref.copy(), out.copy()
        ref[:, :4] /= scale
        out[:, :4] /= scale
    if layout == "nms":
        return compare_selected(ref, out, floor or 0.0)
    if layout == "end2end":  # top-k over (anchor, class) pairs: the k-th score is the cut-off
        return compare_selected(ref, out, max(floor or 0.0, float(ref[:, 4].min(initial=0.0)) + tol))
    return compare_detections(ref, confident(out, floor))


def check_floor(layout: str, quant, info: dict[str, Any], tol: float) -> float | None:
    """The score from which detections are compared (None: all): NMS outputs from above their `conf` by the
    tolerance, quantized exports from QUANT_CHECK_CONF."""
    floor = QUANT_CHECK_CONF if quant in (8, 16) else None
    if layout == "nms":
        floor = max(floor or 0.0, (info.get("nms_conf") or 0.0) + tol)
    return floor
