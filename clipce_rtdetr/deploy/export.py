"""Export through Ultralytics' exporter, with a built-in output check.

`export_checked` validates the request before anything is written (format, PyTorch model, GPU and
TensorRT for engines, onnx/onnxruntime present, calibration data for INT8, images for the output
check), runs `ultralytics.RTDETR.export`, then runs the exported model and the PyTorch model on the
same sample images and compares their detections. A difference over tolerance is a `ClipCEError`.

Why compare against the *unexported* PyTorch model: the exporter switches the RT-DETR head into an
export branch (top-k inside the graph, fused convs); comparing with the model as PyTorch predict runs
it catches a broken export branch too, not only ONNX numerics.

Why match detections instead of comparing row by row: both outputs are top-k lists sorted by score;
two detections with nearly equal scores can swap places between runtimes, which is not an error.
Each exported detection is matched to the PyTorch detection of the same class that is closest in
(box, score); the largest matched difference is reported.
"""

from __future__ import annotations

import importlib.util
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import numpy as np

from clipce_rtdetr.data.dataset import IMG_SUFFIXES
from clipce_rtdetr.errors import ClipCEError

# Format aliases Ultralytics' Exporter accepts besides the names in export_formats()["Argument"].
FORMAT_ALIASES = {
    "tensorrt": "engine", "trt": "engine",
    "mlmodel": "coreml", "mlpackage": "coreml", "mlprogram": "coreml", "apple": "coreml", "ios": "coreml",
    "huawei": "ascend", "cann": "ascend", "om": "ascend",
    "vitis": "xilinx", "vitisai": "xilinx", "versal": "xilinx",
    "tflite": "litert", "tfjs": "litert",
}  # fmt: skip
PIP_EXPORT = "pip install 'clipce-rtdetr[export]'  (or: pip install onnx onnxslim onnxruntime)"


# ----------------------------------------------------------------------------------------------- checks
def valid_formats() -> tuple[str, ...]:
    from ultralytics.engine.exporter import export_formats

    return tuple(export_formats()["Argument"][1:])


def normalize_format(fmt: Any) -> str:
    """Lower-case and de-alias `format=`; an unknown format is a ClipCEError naming the valid ones.

    Ultralytics silently replaces a near miss ('onx' -> 'onnx'); here a near miss is an error with a
    suggestion, so a typo never produces an artifact the user did not ask for.
    """
    f = str(fmt or "").strip().lower()
    f = FORMAT_ALIASES.get(f, f)
    fmts = valid_formats()
    if f in fmts:
        return f
    if f in ("pt", "pytorch"):
        raise ClipCEError(
            "The model is already in PyTorch format; choose an export format, e.g. format=onnx or format=engine."
        )
    near = get_close_matches(f, fmts, n=1, cutoff=0.6)
    hint = f" Did you mean format={near[0]}?" if near else ""
    raise ClipCEError(f"Unknown export format '{fmt}'.{hint} Valid formats are: {', '.join(fmts)}.")


def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def preflight(model, fmt: str, kwargs: dict[str, Any], proj: dict[str, Any]) -> None:
    """Every check that can fail before the exporter writes a file."""
    try:
        model._check_is_pytorch_model()
    except TypeError:
        raise ClipCEError(
            f"Export needs a PyTorch model (.pt checkpoint or .yaml config), got '{getattr(model, 'model', model)}'. "
            "An exported model (.onnx, .engine, ...) cannot be exported again: export the best.pt it came from."
        ) from None
    quant = kwargs.get("quantize")
    if fmt == "engine":
        dev = str(kwargs.get("device") if kwargs.get("device") is not None else "").lower()
        if dev in ("cpu", "mps") or not cuda_available():
            why = (
                f"device={dev} was requested"
                if dev in ("cpu", "mps")
                else "no CUDA GPU is visible to PyTorch (torch.cuda.is_available() is False)"
            )
            raise ClipCEError(
                f"TensorRT engine export needs an NVIDIA GPU, and {why}. Nothing was written.\n"
                "An engine is built for the GPU it will run on: export ONNX here "
                "(clipce-rtdetr export model=best.pt format=onnx) and build the engine on the target, "
                "e.g. on a Jetson with trtexec or 'clipce-rtdetr export format=engine' "
                "(see docs/deploy-jetson.md)."
            )
        if _missing("tensorrt"):
            raise ClipCEError(
                "TensorRT engine export needs the 'tensorrt' Python package, which is not installed "
                "(export never installs packages). Install it with: pip install tensorrt  "
                "(x86 + CUDA 12: pip install tensorrt-cu12; on a Jetson it comes with JetPack: "
                "sudo apt install python3-libnvinfer, see docs/deploy-jetson.md). Nothing was written."
            )
    if fmt in ("onnx", "engine"):
        need = ["onnx"] + (["onnxslim"] if kwargs.get("simplify", True) else [])
        if fmt == "onnx" and (proj.get("export_check", True) or quant == 8):
            need.append("onnxruntime")
        if miss := _missing(*need):
            hint = " (or skip the output check with export_check=False)" if miss == ["onnxruntime"] else ""
            raise ClipCEError(
                f"{fmt} export needs {', '.join(miss)}, not installed (export never installs packages). "
                f"Install with: {PIP_EXPORT}{hint}. Nothing was written."
            )
    check_output_folder(model)
    if fmt in ("onnx", "engine") and proj.get("export_check", True) and proj.get("export_check_source"):
        sample_images(proj["export_check_source"])  # a wrong path fails here, not after the export is written
    if quant in (8, "int8") and fmt in ("onnx", "engine") and not kwargs.get("data"):
        raise ClipCEError(
            "INT8 export needs calibration images: pass data=path/to/data.yaml "
            "(your training dataset; its val split is used, "
            "a few hundred representative images are enough, e.g. fraction=0.5). Nothing was written."
        )


def export_folder(model) -> Path:
    """Where Ultralytics' exporter writes: beside the .pt file (a model built from a .yaml: the working folder)."""
    m = model.model
    file = Path(getattr(m, "pt_path", None) or getattr(m, "yaml_file", None) or m.yaml.get("yaml_file", ""))
    return Path(".") if file.suffix in (".yaml", ".yml") else file.parent


def check_output_folder(model) -> None:
    """The exported file goes beside the model: a read-only folder (a shared model store, a read-only mount) is
    found here by writing a probe file, before the export runs, not as an OSError traceback at its end."""
    import tempfile

    folder = export_folder(model)
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".clipce-export-probe-"):
            pass
    except OSError as e:
        raise ClipCEError(
            f"Export writes the exported model beside the model file, and {folder.resolve()} is not writable "
            f"({e.strerror or e}). Copy the model into a writable folder and export the copy, e.g. "
            f"'cp {getattr(model.model, 'pt_path', 'best.pt')} ./ && clipce-rtdetr export model=./"
            f"{Path(str(getattr(model.model, 'pt_path', 'best.pt'))).name}'. Nothing was written."
        ) from None


# ---------------------------------------------------------------------------------------------- compare
def source_image_files(source: str | Path) -> list[Path]:
    """Image files of `export_check_source`: a file, a folder (searched recursively) or a glob, absolute or relative.

    glob.glob, not Path().glob: the README allows absolute globs ('/data/val/*.png'), which Path().glob rejects.
    """
    import glob

    p = Path(str(source))
    if p.is_dir():
        from clipce_rtdetr.data.dataset import walk_files

        files = walk_files(p)  # linked folders followed as in a dataset, a link loop refused
    else:
        files = [p] if p.is_file() else sorted(map(Path, glob.glob(str(source), recursive=True)))
    images = [f for f in files if f.suffix.lower() in IMG_SUFFIXES and f.is_file()]
    if images:
        return images
    if files:
        why = f"holds {len(files)} files but no image ({', '.join(sorted(s[1:] for s in IMG_SUFFIXES))})"
    else:
        why = "matches no file" if glob.has_magic(str(source)) else "does not exist"
    raise ClipCEError(
        f"export_check_source='{source}' {why} (relative paths are from {Path.cwd()}). Point it at an image, a folder "
        "of images or a glob such as 'val/images/*.jpg', or leave it empty for Ultralytics' sample images. "
        "Nothing was written."
    )


def sample_images(source: str | Path | None, n: int = 4) -> list[np.ndarray]:
    """The first `n` readable BGR images of `export_check_source` (see source_image_files), or Ultralytics'
    bundled samples."""
    import cv2
    from ultralytics.utils import ASSETS

    files = source_image_files(source) if source else sorted(Path(ASSETS).glob("*.jpg"))
    imgs = []
    for f in files:  # stop at n: a folder of thousands of images is not read in full
        if (im := cv2.imread(str(f))) is not None:
            imgs.append(im)
        if len(imgs) == n:
            break
    if not imgs:
        if source:
            raise ClipCEError(
                f"export_check_source='{source}': none of its {len(files)} images could be read (corrupt or not really "
                f"images, e.g. {files[0]}). Nothing was written."
            )
        rng = np.random.default_rng(0)
        imgs = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)]
    return imgs


def preprocess(imgs: list[np.ndarray], imgsz: tuple[int, int], batch: int) -> list[np.ndarray]:
    """Stretch to imgsz like RTDETRPredictor (no letterbox), RGB, CHW, [0, 1]; group into batches of `batch`."""
    import cv2

    h, w = imgsz
    x = np.stack([cv2.resize(im, (w, h), interpolation=cv2.INTER_LINEAR)[..., ::-1].transpose(2, 0, 1) for im in imgs])
    x = np.ascontiguousarray(x, dtype=np.float32) / 255.0
    reps = -(-len(x) // batch) * batch  # fill the last batch by repeating images
    x = np.concatenate([x] * (-(-reps // len(x))))[:reps]
    return [x[i : i + batch] for i in range(0, reps, batch)]


def compare_detections(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """Largest differences between two (k, 6) [cx, cy, w, h, score, cls] top-k lists of one image.

    Each row of `out` is matched to the row of `ref` with the same class minimising max(box, score)
    difference; `ref` may be longer (PyTorch keeps every query, export keeps max_det).
    """
    k = len(out)
    box = np.abs(out[:, None, :4] - ref[None, :, :4]).max(-1)  # (k, K)
    score = np.abs(out[:, None, 4] - ref[None, :, 4])
    cost = np.where(out[:, None, 5] == ref[None, :, 5], np.maximum(box, score), np.inf)
    j = cost.argmin(1)
    matched = np.isfinite(cost[np.arange(k), j])
    rows = np.arange(k)[matched]
    sorted_scores = np.abs(np.sort(out[:, 4])[::-1] - np.sort(ref[:, 4])[::-1][:k])
    return {
        "box": float(box[rows, j[matched]].max(initial=0.0)),
        "score": float(max(score[rows, j[matched]].max(initial=0.0), sorted_scores.max(initial=0.0))),
        "unmatched": int((~matched).sum()),
        "n": int(k),
    }


# A quantized (FP16/INT8) model reorders the many near-zero-score queries of a DETR top-k list, whose boxes then
# differ although nothing a user would keep does: its check covers detections at Ultralytics' predict default
# conf and above (the top 10 when none reach it). FP32 exports are checked on the whole list.
QUANT_CHECK_CONF = 0.25


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


def compare_image(ref: np.ndarray, out: np.ndarray, layout: str, imgsz: tuple[int, int], floor: float | None):
    """One image's differences, by the head's output layout: `detr` (normalised top-k list), `end2end` (YOLO26's
    top-k list, boxes in pixels) or `raw` (a YOLO head's (4 + nc, anchors) tensor)."""
    if layout == "raw":
        return compare_raw(ref, out, imgsz, floor)
    if layout == "end2end":
        scale = np.array([imgsz[1], imgsz[0], imgsz[1], imgsz[0]], dtype=np.float32)
        ref, out = ref.copy(), out.copy()
        ref[:, :4] /= scale
        out[:, :4] /= scale
    return compare_detections(ref, confident(out, floor))


def output_layout(head) -> str:
    """How a detection head's exported output is laid out (see compare_image)."""
    if type(head).__name__.startswith("RTDETR"):
        return "detr"
    return "end2end" if getattr(head, "end2end", False) else "raw"


def reference_outputs(pt_model, batches: list[np.ndarray], max_det: int) -> list[np.ndarray]:
    """PyTorch predictions (B, K, 6) of the unexported model, fp32, on CPU."""
    from copy import deepcopy

    import torch

    m = deepcopy(pt_model).float().cpu().eval()
    head = m.model[-1]
    head.max_det = max_det
    outs = []
    with torch.inference_mode():
        for x in batches:
            y = m(torch.from_numpy(x))
            outs.append((y[0] if isinstance(y, (tuple, list)) else y).float().numpy())
    return outs


def onnx_outputs(path: str, batches: list[np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    dtype = np.float16 if "float16" in inp.type else np.float32
    return [np.asarray(sess.run(None, {inp.name: x.astype(dtype)})[0], dtype=np.float32) for x in batches]


def engine_outputs(path: str, batches: list[np.ndarray], device: Any = "cuda:0") -> list[np.ndarray]:
    """TensorRT outputs through Ultralytics' AutoBackend (GPU only), on the GPU the engine was built on: an engine
    is specific to its GPU, and with device=1 the check must not run on (or fail for lack of) cuda:0."""
    import torch
    from ultralytics.nn.autobackend import AutoBackend

    be = AutoBackend(path, device=torch.device(device), verbose=False)
    outs = []
    with torch.inference_mode():
        for x in batches:
            y = be(torch.from_numpy(x).to(be.device))
            y = y[0] if isinstance(y, (list, tuple)) else y
            outs.append(y.float().cpu().numpy())
    return outs


def check_export(model, exported: str, fmt: str, exporter_info: dict[str, Any], proj: dict[str, Any]) -> dict[str, Any]:
    """Run the exported model and PyTorch on sample images; return the report, raise if over tolerance."""
    from ultralytics.utils import LOGGER

    quant = exporter_info["quantize"]
    tol = float(proj.get("export_tol_quant", 0.05) if quant in (8, 16) else proj.get("export_tol", 0.01))
    imgs = sample_images(proj.get("export_check_source"))
    batches = preprocess(imgs, exporter_info["imgsz"], exporter_info["batch"])
    ref = reference_outputs(model.model, batches, exporter_info["max_det"])
    if fmt == "onnx":
        out = onnx_outputs(exported, batches)
    else:
        out = engine_outputs(exported, batches, exporter_info.get("device", "cuda:0"))
    floor = QUANT_CHECK_CONF if quant in (8, 16) else None
    layout, imgsz = exporter_info.get("layout", "detr"), exporter_info["imgsz"]
    per_image = [compare_image(r, o, layout, imgsz, floor) for rb, ob in zip(ref, out) for r, o in zip(rb, ob)]
    report = {
        "file": str(exported),
        "format": fmt,
        "quantize": quant,
        "runtime": "onnxruntime" if fmt == "onnx" else "tensorrt",
        "images": len(imgs),
        "imgsz": list(exporter_info["imgsz"]),
        "detections_per_image": per_image[0]["n"] if per_image else 0,
        "max_box_diff": max(d["box"] for d in per_image),
        "max_score_diff": max(d["score"] for d in per_image),
        "unmatched_class": sum(d["unmatched"] for d in per_image),
        "tolerance": tol,
    }
    report["score_floor"] = floor
    report["passed"] = (
        report["max_box_diff"] <= tol and report["max_score_diff"] <= tol and report["unmatched_class"] == 0
    )
    what = "anchors" if layout == "raw" else "detections"
    which = f"{what} scoring >= {floor:g}" if floor else f"top-{report['detections_per_image']} {what}"
    if layout == "raw" and not floor:
        which = f"all {report['detections_per_image']} anchors"
    msg = (
        f"Export check ({report['runtime']} vs PyTorch, {report['images']} images at "
        f"{exporter_info['imgsz'][0]}x{exporter_info['imgsz'][1]}, "
        f"{which}): largest box difference {report['max_box_diff']:.2e} "
        f"(normalised), largest score difference {report['max_score_diff']:.2e}, tolerance {tol:g}"
    )
    if report["unmatched_class"]:
        msg += f", {report['unmatched_class']} detections with no same-class counterpart"
    if not report["passed"]:
        raise ClipCEError(
            f"{msg}: FAILED. The exported model does not reproduce the PyTorch model; do not deploy {exported}. "
            "Try the default opset and simplify=True, a full-precision export (no quantize), "
            "or raise the tolerance with "
            f"export_tol=... (export_tol_quant=... for quantize=16/8) if the difference is acceptable."
        )
    LOGGER.info(f"{msg}: passed ✅")
    return report


# ------------------------------------------------------------------------------------------------ entry
def export_checked(model, proj: dict[str, Any], **kwargs: Any) -> str:
    """`ClipCERTDETR.export` / `ClipCEYOLO.export`: validate, export with Ultralytics, then check ONNX/engine
    outputs against PyTorch.

    The check report is kept in `model.export_report` (None when no check ran).
    """
    from ultralytics.cfg import _handle_deprecation
    from ultralytics.engine.model import Model
    from ultralytics.utils import LOGGER

    kwargs = _handle_deprecation(dict(kwargs))  # half/int8 -> quantize, as Ultralytics does
    fmt = normalize_format(kwargs.get("format", "torchscript"))
    kwargs["format"] = fmt
    if kwargs.get("quantize") is not None:
        from ultralytics.cfg import QUANTIZE_ALIASES

        kwargs["quantize"] = QUANTIZE_ALIASES.get(str(kwargs["quantize"]).lower(), kwargs["quantize"])
    if kwargs.get("data") and fmt in ("onnx", "engine"):
        from clipce_rtdetr.data.dataset import resolve_data  # project dataset names (hazy-shapes, ...) -> YAML path

        kwargs["data"] = resolve_data(kwargs["data"], allow_download=bool(proj.get("allow_download")))
    preflight(model, fmt, kwargs, proj)

    info: dict[str, Any] = {}

    def grab(exporter) -> None:  # on_export_end: what the exporter actually used
        head = exporter.model.model[-1]
        info.update(imgsz=tuple(int(s) for s in exporter.imgsz), batch=int(exporter.im.shape[0]),
                    quantize=exporter.args.quantize, max_det=int(getattr(head, "max_det", 300)),
                    dynamic=bool(exporter.args.dynamic), device=str(exporter.device),
                    layout=output_layout(head))  # fmt: skip

    model.add_callback("on_export_end", grab)
    try:
        f = Model.export(model, **kwargs)  # Ultralytics' own export, for any detector family
    except (AssertionError, ValueError) as e:  # Ultralytics reports user errors with assert / ValueError
        raise ClipCEError(f"Export to {fmt} failed: {e}") from None
    except OSError as e:  # e.g. the disk filled up while writing
        raise ClipCEError(f"Export to {fmt} failed writing {e.filename or 'its output'}: {e.strerror or e}.") from None
    finally:
        model.callbacks["on_export_end"].remove(grab)
    model.export_report = None
    if fmt in ("onnx", "engine") and proj.get("export_check", True):
        if not f or not Path(f).exists():
            raise ClipCEError(f"Export to {fmt} produced no file (see the log above).")
        model.export_report = check_export(model, str(f), fmt, info, proj)
    elif fmt in ("onnx", "engine"):
        LOGGER.warning("export_check=False: the exported model was not compared with the PyTorch model.")
    return f
