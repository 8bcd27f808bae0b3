"""Export through Ultralytics' exporter, with a built-in output check.

`export_checked` validates the request before anything is written (format, PyTorch model, GPU and
TensorRT for engines, every package the format needs (`export_requirements`), calibration data for INT8,
images for the output check), runs Ultralytics' `Model.export`, then runs the exported model and the PyTorch
model on the same sample images and compares their outputs (`export_compare`, in the layout the exporter chose:
`nms=True/False` included). A difference over tolerance, or a check that cannot run, is a `ClipCEError`, and the
export is renamed `NAME.check-failed` so that it is not deployed by mistake (an earlier export it replaced is put
back).

Why compare against the *unexported* PyTorch model: the exporter switches the RT-DETR head into an
export branch (top-k inside the graph, fused convs); comparing with the model as PyTorch predict runs
it catches a broken export branch too, not only ONNX numerics.

Why match detections instead of comparing row by row: both outputs are top-k lists sorted by score;
two detections with nearly equal scores can swap places between runtimes, which is not an error.
Each exported detection is matched to the PyTorch detection of the same class that is closest in
(box, score); the largest matched difference is reported.
"""

from __future__ import annotations

import os
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import numpy as np

from clipce_rtdetr.data.dataset import IMG_SUFFIXES
from clipce_rtdetr.deploy.export_compare import (  # noqa: F401  (public names of this module before the split)
    QUANT_CHECK_CONF,
    check_floor,
    compare_detections,
    compare_image,
    compare_raw,
    confident,
    exporter_choices,
    output_layout,
    reference_outputs,
)
from clipce_rtdetr.deploy.export_requirements import check_export_packages, missing_modules
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
        if missing_modules("tensorrt"):
            raise ClipCEError(
                "TensorRT engine export needs the 'tensorrt' Python package, which is not installed "
                "(export never installs packages). Install it with: pip install tensorrt  "
                "(x86 + CUDA 12: pip install tensorrt-cu12; on a Jetson it comes with JetPack: "
                "sudo apt install python3-libnvinfer, see docs/deploy-jetson.md). Nothing was written."
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
    ref = reference_outputs(model.model, batches, exporter_info)
    if fmt == "onnx":
        out = onnx_outputs(exported, batches)
    else:
        out = engine_outputs(exported, batches, exporter_info.get("device", "cuda:0"))
    layout, imgsz = exporter_info.get("layout", "detr"), exporter_info["imgsz"]
    floor = check_floor(layout, quant, exporter_info, tol)
    per_image = [compare_image(r, o, layout, imgsz, floor, tol) for rb, ob in zip(ref, out) for r, o in zip(rb, ob)]
    report = {
        "file": str(exported),
        "format": fmt,
        "quantize": quant,
        "runtime": "onnxruntime" if fmt == "onnx" else "tensorrt",
        "layout": layout,
        "images": len(imgs),
        "imgsz": list(exporter_info["imgsz"]),
        "detections_per_image": per_image[0]["n"] if per_image else 0,
        "compared": sum(d["n"] for d in per_image),
        "max_box_diff": max(d["box"] for d in per_image),
        "max_score_diff": max(d["score"] for d in per_image),
        "unmatched_class": sum(d["unmatched"] for d in per_image),
        "tolerance": tol,
        "score_floor": floor,
    }
    report["passed"] = (
        report["max_box_diff"] <= tol and report["max_score_diff"] <= tol and report["unmatched_class"] == 0
    )
    msg = check_message(report, layout, exporter_info)
    if not report["passed"]:
        raise ClipCEError(
            f"{msg}: FAILED. The exported model does not reproduce the PyTorch model. "
            "Try the default opset and simplify=True, a full-precision export (no quantize), "
            "or raise the tolerance with "
            f"export_tol=... (export_tol_quant=... for quantize=16/8) if the difference is acceptable."
        )
    LOGGER.info(f"{msg}: passed ✅")
    if not report["compared"]:
        LOGGER.warning(
            "The export check compared no detection: nothing on the sample images scored above the cut-off. Point "
            "export_check_source= at images your model detects objects in for a check that means something."
        )
    return report


def check_message(report: dict[str, Any], layout: str, info: dict[str, Any]) -> str:
    """The check's one-line summary: what was compared, the largest differences, the tolerance."""
    floor, n = report["score_floor"], report["detections_per_image"]
    what = "anchors" if layout == "raw" else "detections"
    which = f"{what} scoring >= {floor:g}" if floor else f"top-{n} {what}"
    if layout == "raw" and not floor:
        which = f"all {n} anchors"
    if layout == "nms":
        which = f"NMS output (nms=True, conf {info.get('nms_conf')}): {report['compared']} {which}, both ways"
    elif layout == "end2end":
        which = (f"top-{info.get('max_det')} list: {report['compared']} detections scoring above its cut-off by the "
                 "tolerance, both ways")  # fmt: skip
    msg = (
        f"Export check ({report['runtime']} vs PyTorch, {report['images']} images at "
        f"{info['imgsz'][0]}x{info['imgsz'][1]}, {which}): largest box difference {report['max_box_diff']:.2e} "
        f"(normalised), largest score difference {report['max_score_diff']:.2e}, tolerance {report['tolerance']:g}"
    )
    if report["unmatched_class"]:
        msg += f", {report['unmatched_class']} detections with no same-class counterpart"
    return msg


# ----------------------------------------------------------------------------------------- output files
FAILED_SUFFIX = ".check-failed"


def expected_outputs(model, fmt: str, quant: Any) -> list[Path]:
    """The files Ultralytics' exporter writes (or writes and deletes) for an ONNX/engine export: `stem.onnx` (also
    the engine's intermediate, and deleted after an INT8 ONNX export), `stem_int8.onnx`, `stem.engine`."""
    m = model.model
    file = Path(getattr(m, "pt_path", None) or getattr(m, "yaml_file", None) or m.yaml.get("yaml_file", "") or "model")
    base = export_folder(model) / file.stem  # named as the exporter names its file
    out = [base.with_suffix(".onnx")]
    if fmt == "onnx" and quant == 8:
        out.append(base.with_name(base.name + "_int8.onnx"))
    if fmt == "engine":
        out.append(base.with_suffix(".engine"))
    return out


def set_aside(paths: list[Path]) -> dict[Path, Path]:
    """Move existing earlier exports out of the exporter's way (it overwrites them in place, and deletes stem.onnx
    after an INT8 export), to hidden names beside them; see `settle`."""
    aside = {}
    for p in paths:
        if p.is_file():
            keep = p.with_name(f".{p.name}.previous")
            os.replace(p, keep)
            aside[p] = keep
    return aside


def settle(aside: dict[Path, Path], failed: bool) -> list[Path]:
    """Put earlier exports back where this export failed or left no file; drop them where it succeeded. Returns the
    paths restored."""
    restored = []
    for p, keep in aside.items():
        if failed or not p.exists():
            os.replace(keep, p)
            restored.append(p)
        else:
            keep.unlink(missing_ok=True)
    return restored


def quarantine(exported: str | Path) -> Path:
    """Rename an export whose check failed (or could not run) to `NAME.check-failed`: no runtime or deploy script
    that looks for `*.onnx` / `*.engine` takes it for a good export, and it stays there to be inspected."""
    exported = Path(exported)
    bad = exported.with_name(exported.name + FAILED_SUFFIX)
    os.replace(exported, bad)
    return bad


def checked_or_quarantined(model, f: str, fmt: str, info: dict[str, Any], proj: dict[str, Any], aside) -> None:
    """Run the output check; when it fails or cannot run, the export is renamed (`quarantine`), earlier exports are
    restored, and the error says both."""
    try:
        if not f or not Path(f).exists():
            raise ClipCEError(f"Export to {fmt} produced no file (see the log above).")
        model.export_report = check_export(model, str(f), fmt, info, proj)
    except BaseException as e:
        if not f or not Path(f).exists():
            settle(aside, failed=True)
            raise
        bad = quarantine(f)
        restored = settle(aside, failed=True)
        why = str(e) if isinstance(e, ClipCEError) else f"the check could not run ({type(e).__name__}: {e})"
        if not isinstance(e, Exception):  # Ctrl-C: the file is set aside all the same
            raise
        again = f" The earlier {', '.join(str(p) for p in restored)} was put back." if restored else ""
        raise ClipCEError(
            f"{why}\nThe unchecked export was renamed to {bad} so that it is not deployed by mistake.{again} "
            "To keep an export without the check, export again with export_check=False."
        ) from None
    settle(aside, failed=False)


# ------------------------------------------------------------------------------------------------ entry
def prepared_kwargs(kwargs: dict[str, Any], proj: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(format, exporter arguments): Ultralytics' deprecated keys and quantize aliases mapped as it maps them, the
    format's packages present (before anything is written, even a generated dataset)."""
    from ultralytics.cfg import QUANTIZE_ALIASES, _handle_deprecation

    kwargs = _handle_deprecation(dict(kwargs))  # half/int8 -> quantize, as Ultralytics does
    fmt = normalize_format(kwargs.get("format", "torchscript"))
    kwargs["format"] = fmt
    if kwargs.get("quantize") is not None:
        kwargs["quantize"] = QUANTIZE_ALIASES.get(str(kwargs["quantize"]).lower(), kwargs["quantize"])
    check_export_packages(fmt, kwargs, check=fmt in ("onnx", "engine") and bool(proj.get("export_check", True)))
    return fmt, kwargs


def resolve_calibration_data(fmt: str, kwargs: dict[str, Any], proj: dict[str, Any]) -> None:
    """Project dataset names in data= (hazy-shapes, ...) -> YAML path, in place. Run after preflight: a name may
    generate a dataset, which must not happen for an export that is then refused (no GPU, no tensorrt, ...)."""
    if kwargs.get("data") and fmt in ("onnx", "engine"):
        from clipce_rtdetr.data.dataset import resolve_data

        kwargs["data"] = resolve_data(kwargs["data"], allow_download=bool(proj.get("allow_download")))


def run_exporter(model, fmt: str, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Ultralytics' own export (any detector family); returns (file, what the exporter used: see grab)."""
    from ultralytics.engine.model import Model

    info: dict[str, Any] = {}

    def grab(exporter) -> None:  # on_export_end: what the exporter actually used
        head = exporter.model.model[-1]
        info.update(imgsz=tuple(int(s) for s in exporter.imgsz), batch=int(exporter.im.shape[0]),
                    quantize=exporter.args.quantize, max_det=int(getattr(head, "max_det", 300)),
                    dynamic=bool(exporter.args.dynamic), device=str(exporter.device),
                    **exporter_choices(exporter))  # fmt: skip

    model.add_callback("on_export_end", grab)
    try:
        return Model.export(model, **kwargs), info
    except (AssertionError, ValueError) as e:  # Ultralytics reports user errors with assert / ValueError
        raise ClipCEError(f"Export to {fmt} failed: {e}") from None
    except ModuleNotFoundError as e:  # a format whose packages are not in export_requirements' table
        raise ClipCEError(
            f"Export to {fmt} needs the Python package '{e.name}', not installed (export never installs packages). "
            f"Install it (see https://docs.ultralytics.com/modes/export for format={fmt}) and export again."
        ) from None
    except OSError as e:  # e.g. the disk filled up while writing
        raise ClipCEError(f"Export to {fmt} failed writing {e.filename or 'its output'}: {e.strerror or e}.") from None
    finally:
        model.callbacks["on_export_end"].remove(grab)


def export_checked(model, proj: dict[str, Any], **kwargs: Any) -> str:
    """`ClipCERTDETR.export` / `ClipCEYOLO.export`: validate, export with Ultralytics, then check ONNX/engine
    outputs against PyTorch. An export whose check fails is renamed NAME.check-failed, and an earlier export it
    replaced is put back.

    The check report is kept in `model.export_report` (None when no check ran).
    """
    from ultralytics.utils import LOGGER

    fmt, kwargs = prepared_kwargs(kwargs, proj)
    preflight(model, fmt, kwargs, proj)
    resolve_calibration_data(fmt, kwargs, proj)
    model.export_report = None
    checked = fmt in ("onnx", "engine") and proj.get("export_check", True)
    aside = set_aside(expected_outputs(model, fmt, kwargs.get("quantize"))) if checked else {}
    try:
        f, info = run_exporter(model, fmt, kwargs)
    except BaseException:
        settle(aside, failed=True)
        raise
    if checked:
        checked_or_quarantined(model, f, fmt, info, proj, aside)
    elif fmt in ("onnx", "engine"):
        LOGGER.warning("export_check=False: the exported model was not compared with the PyTorch model.")
    return f
