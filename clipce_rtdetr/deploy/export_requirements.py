"""The optional packages each export format needs, found missing before anything is written.

Ultralytics' exporter imports a format's packages only when it reaches that format's step (after the model is
prepared and, for some formats, after an ONNX file is written), and installs them itself only with
YOLO_AUTOINSTALL (off in this project: export never installs packages). Without this table a missing package is a
ModuleNotFoundError traceback at the end. The table is read from Ultralytics 8.4.190's exporter
(`engine/exporter.py`, `utils/export/*.py`): (module imported, pip requirement) per format, and what quantization
adds. Formats not listed here (vendor toolchains: rknn, imx, hailo, ...) are left to the exporter; a missing module
there is still reported in one line (see export.export_checked).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from clipce_rtdetr.errors import ClipCEError

ONNX = [("onnx", "onnx>=1.12.0,<2.0.0")]
ONNXSLIM = [("onnxslim", "onnxslim>=0.1.82")]
ONNXRUNTIME = [("onnxruntime", "onnxruntime")]
TENSORFLOW = [("tensorflow", "tensorflow>=2.0.0,<=2.19.0"), ("onnx2tf", "onnx2tf>=1.26.3,<1.29.0"),
              ("tf_keras", "tf_keras<=2.19.0"), ("sng4onnx", "sng4onnx>=1.0.1"),
              ("onnx_graphsurgeon", "onnx_graphsurgeon>=0.3.26"), ("ai_edge_litert", "ai-edge-litert>=1.2.0"),
              *ONNX, *ONNXSLIM, *ONNXRUNTIME]  # fmt: skip
FORMAT_PACKAGES: dict[str, list[tuple[str, str]]] = {
    "openvino": [("openvino", "openvino>=2024.0.0")],
    "coreml": [("coremltools", "coremltools>=9.0")],
    "coreai": [("coreai_torch", "coreai-torch>=0.4.3")],
    "saved_model": TENSORFLOW,
    "pb": TENSORFLOW,
    "litert": [("litert_torch", "litert-torch>=0.10.0"), ("ai_edge_litert", "ai-edge-litert>=2.3.0")],
    "paddle": [("paddle", "paddlepaddle>=3.0.0,<3.3.0"), ("x2paddle", "x2paddle")],
    "mnn": [*ONNX, ("MNN", "MNN>=2.9.6")],
    "ncnn": [("ncnn", "ncnn"), ("pnnx", "pnnx")],
    "executorch": [("executorch", "executorch")],
}
# What quantize= adds (INT8 calibration / FP16 conversion libraries).
QUANTIZE_PACKAGES: dict[tuple[str, Any], list[tuple[str, str]]] = {
    ("openvino", 8): [("nncf", "nncf>=2.14.0")],
    ("litert", 8): [("ai_edge_quantizer", "ai-edge-quantizer>=0.10.0")],
    ("litert", "w8a16"): [("ai_edge_quantizer", "ai-edge-quantizer>=0.10.0")],
    ("litert", "w8a32"): [("ai_edge_quantizer", "ai-edge-quantizer>=0.10.0")],
    ("onnx", 8): ONNXRUNTIME,  # onnxruntime.quantization calibrates the INT8 model
    ("onnx", 16): ONNXRUNTIME,  # onnxruntime.transformers.float16 converts on CPU
}
# The pip extra that installs a format's packages: this project's for ONNX, Ultralytics' own for the others.
EXTRAS = {
    "onnx": "clipce-rtdetr[export]",
    "engine": "clipce-rtdetr[export]",
    "openvino": "ultralytics[export-openvino]",
    "coreml": "ultralytics[export-coreml]",
    "coreai": "ultralytics[export-coreai]",
    "saved_model": "ultralytics[export-tensorflow]",
    "pb": "ultralytics[export-tensorflow]",
    "litert": "ultralytics[export-litert]",
    "executorch": "ultralytics[export-executorch]",
}


def missing_modules(*modules: str) -> list[str]:
    """The modules of `modules` that cannot be imported here (found without importing them)."""
    out = []
    for m in modules:
        try:
            found = importlib.util.find_spec(m) is not None
        except (ImportError, ValueError):  # a parent package missing, or a module set to None in sys.modules
            found = False
        if not found:
            out.append(m)
    return out


def needed_packages(fmt: str, quant: Any, simplify: bool, check: bool) -> list[tuple[str, str]]:
    """(module, pip requirement) the export of `fmt` needs with these settings, in order, without repeats."""
    need = list(FORMAT_PACKAGES.get(fmt, []))
    if fmt in ("onnx", "engine"):
        need += ONNX + (ONNXSLIM if simplify else []) + (ONNXRUNTIME if fmt == "onnx" and check else [])
    need += QUANTIZE_PACKAGES.get((fmt, quant), [])
    return list(dict.fromkeys(need))


def check_export_packages(fmt: str, kwargs: dict[str, Any], check: bool) -> None:
    """A ClipCEError naming every missing package of this export and how to install it (the pip extra and the
    plain pip command), before the exporter runs. Raised before anything is written."""
    quant = kwargs.get("quantize")
    need = needed_packages(fmt, quant, bool(kwargs.get("simplify", True)), check)
    missing = set(missing_modules(*(m for m, _ in need)))
    reqs = [r for m, r in need if m in missing]
    if not reqs:
        return
    names = ", ".join(m for m, _ in need if m in missing)
    what = f"format={fmt}" + (f" quantize={quant}" if (fmt, quant) in QUANTIZE_PACKAGES else "")
    extra = EXTRAS.get(fmt)
    how = f"pip install '{extra}'  (or: pip install {' '.join(repr(r) for r in reqs)})" if extra else (
        f"pip install {' '.join(repr(r) for r in reqs)}")  # fmt: skip
    hint = ""
    if fmt == "onnx" and missing == {"onnxruntime"} and check and (fmt, quant) not in QUANTIZE_PACKAGES:
        hint = " (or skip the output check with export_check=False)"
    raise ClipCEError(
        f"Export {what} needs {names}, not installed (export never installs packages). "
        f"Install with: {how}{hint}. Nothing was written."
    )
