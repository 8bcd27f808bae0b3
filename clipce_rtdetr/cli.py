"""`clipce-rtdetr MODE key=value ...`: the command line, in Ultralytics' style.

Arguments are parsed with Ultralytics' own helpers (`merge_equals_args`, `parse_key_value_pair`), so
every `yolo` key works unchanged; project keys come from cfg/default.yaml.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any

from clipce_rtdetr import __version__
from clipce_rtdetr.errors import ClipCEError

# Modes that take a model and go through ClipCERTDETR.
MODEL_MODES = ("train", "val", "predict", "track", "export")
# Modes implemented by a project module: "module:function", called with the parsed key=value dict.
TOOL_MODES: dict[str, str] = {
    "ame": "clipce_rtdetr.eval.ame_inspect:run_ame_inspection",
    "generate": "clipce_rtdetr.data.hazy_shapes:run_generate",
    "convert": "clipce_rtdetr.data.convert:run_convert",
    "degrade": "clipce_rtdetr.data.degrade:run_degrade",
    "clip-train": "clipce_rtdetr.engine.clip_train.tool:run_clip_train",
    "ablation": "clipce_rtdetr.eval.ablation:run_ablation",
    "robustness": "clipce_rtdetr.eval.robustness:run_robustness",
}
# Arguments of `clipce-rtdetr train` with no arguments at all: the built-in demo, CPU, < 3 minutes.
# The detector is the tiny RT-DETR pre-trained on clean shapes (weights/rtdetr-tiny-shapes.pt, made by
# benchmarks/pretrain_tiny.py): like fine-tuning a COCO-pretrained rtdetr-l.pt on hazy data, at CPU scale.
DEMO_MODEL, DEMO_MODEL_FALLBACK = "rtdetr-tiny-shapes.pt", "rtdetr-tiny.yaml"
DEMO_TRAIN = {
    "model": DEMO_MODEL,
    "data": "hazy-shapes",
    "epochs": 6,
    "imgsz": 160,
    "batch": 8,
    "device": "cpu",
    "workers": 0,
    "optimizer": "AdamW",
    "lr0": 0.0005,
    "warmup_epochs": 0,
    "name": "demo",
}
DEFAULT_DATA = "hazy-shapes"
BARE_FLAGS = ("half", "int8", "end2end", "nms")  # as Ultralytics' entrypoint: a bare word sets them True

HELP = f"""
clipce-rtdetr {__version__}: RT-DETR trained with a CLIP-guided cross-entropy loss (CLIP-CE)

Usage: clipce-rtdetr MODE key=value ...

  MODE (model):  train | val | predict | track | export
  MODE (tools):  ame (score prompts on a dataset) | generate (build hazy-shapes) | convert | degrade | clip-train
                 | ablation (clipce modes, oracle, over seeds) | robustness (mPC/rPC over conditions x severities)
  special:       help | version | cfg (print every key and its default) | settings (Ultralytics settings)

Every Ultralytics key works (epochs, imgsz, batch, device, resume, ...) plus the project's keys
(clipce, clip, ame_profile, ame_alpha, fame_gamma, ...; see 'clipce-rtdetr cfg').

Examples:
  clipce-rtdetr train                                  # built-in demo: tiny RT-DETR on hazy-shapes, CPU
  clipce-rtdetr train data=datasets/rtts/rtts.yaml model=rtdetr-l.pt clip=ViT-B-32:openai epochs=72
  clipce-rtdetr train data=hazy-shapes model=rtdetr-tiny-shapes.pt clipce=none   # stock RT-DETR baseline
  clipce-rtdetr val model=runs/detect/train/weights/best.pt data=datasets/rtts/rtts.yaml coco=True
  clipce-rtdetr predict model=best.pt source=rtsp://camera/stream stream=True
  clipce-rtdetr export model=best.pt format=onnx
  clipce-rtdetr ame data=hazy-shapes clip=ViT-B-32:openai split=val
"""


def _print(msg: str) -> None:
    print(msg, flush=True)


def parse_args(args: list[str]) -> tuple[str | None, dict[str, Any]]:
    """Split argv into (mode, overrides) with Ultralytics' parsers; bare bool keys become True."""
    from ultralytics.cfg import merge_equals_args, parse_key_value_pair

    from clipce_rtdetr.config import all_defaults, check_keys

    mode, overrides = None, {}
    defaults = all_defaults()
    try:
        merged = merge_equals_args(args)
    except SyntaxError as e:  # e.g. an unmatched '[' in beta_range=[0.1,
        raise ClipCEError(f"{e} Quote list values, e.g. 'beta_range=[0.05,0.14]'.") from None
    for a in merged:
        a = a[2:] if a.startswith("--") and "=" in a else a
        a = a[:-1] if a.endswith(",") else a
        if "=" in a:
            try:
                k, v = parse_key_value_pair(a)
            except (NameError, SyntaxError, ValueError, AssertionError) as e:
                raise ClipCEError(f"Cannot parse '{a}': {e}. Use key=value, e.g. epochs=10.") from None
            overrides[k] = v
        elif mode is None and (a in MODEL_MODES or a in TOOL_MODES):
            mode = a
        elif a in MODEL_MODES or a in TOOL_MODES:
            raise ClipCEError(
                f"Two modes given ('{mode}' and '{a}'); run one at a time, e.g. 'clipce-rtdetr {mode} ...'."
            )
        elif a in defaults and isinstance(defaults[a], bool):
            overrides[a] = True  # 'clipce-rtdetr val coco' sets coco=True, as in Ultralytics
        elif a in BARE_FLAGS:
            overrides[a] = True  # Ultralytics' bare flags whose default is missing or None ('export int8')
        elif a in defaults:
            raise ClipCEError(f"'{a}' is a valid argument but is missing '=': try '{a}={defaults[a]}'.")
        else:
            from difflib import get_close_matches

            modes = get_close_matches(a, [*MODEL_MODES, *TOOL_MODES, "help", "version", "cfg"], n=1, cutoff=0.6)
            if modes:  # a misspelt mode, e.g. 'trian'
                raise ClipCEError(f"'{a}' is not a valid mode. Did you mean '{modes[0]}'? See 'clipce-rtdetr help'.")
            check_keys({a: None})  # raises with the nearest valid key
    return mode, overrides


def run_mode(mode: str, overrides: dict[str, Any], had_args: bool = True):
    """Run a model mode (train/val/predict/track/export) or a tool mode."""
    from clipce_rtdetr.config import check_overrides

    if mode in TOOL_MODES:
        return run_tool(mode, overrides)
    if mode == "train" and not had_args:
        overrides = demo_overrides(overrides)
    if mode in ("predict", "track") and overrides.get("stream") in (True, False):
        overrides.pop("stream")  # `stream=True` as in Ultralytics' Python API: the CLI always streams
    check_overrides(overrides)
    if not (mode == "export" and str(overrides.get("format")).lower() == "engine"):  # engine: its own GPU message
        check_device(overrides.get("device"))
    model_arg = overrides.pop("model", None)
    if model_arg is None and not overrides.get("resume"):
        from clipce_rtdetr.models.rtdetr.model import DEFAULT_MODEL

        model_arg = DEFAULT_MODEL
        warn(f"'model' argument is missing. Using default 'model={model_arg}'.")
    if mode == "train":
        model_arg = resolve_resume(overrides, model_arg)
        check_trainable(model_arg)
    fill_mode_defaults(mode, overrides)
    return run_model(mode, model_arg, overrides)


def warn(msg: str) -> None:
    from ultralytics.utils import LOGGER

    LOGGER.warning(msg)


def run_tool(mode: str, overrides: dict[str, Any]):
    module, func = TOOL_MODES[mode].split(":")
    try:
        fn: Callable = getattr(import_module(module), func)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise ClipCEError(f"Mode '{mode}' is not available in this version of clipce-rtdetr.") from None
        raise
    return fn(overrides)


def demo_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """`clipce-rtdetr train` with no arguments: the built-in demo (its fallback model when the demo weights are
    missing)."""
    from ultralytics.utils import LOGGER

    overrides = {**DEMO_TRAIN, **overrides}
    try:
        from clipce_rtdetr.models.rtdetr.model import resolve_model

        resolve_model(DEMO_MODEL)
    except ClipCEError:
        warn(
            f"{DEMO_MODEL} not found (it ships in the repository's weights/); training {DEMO_MODEL_FALLBACK} "
            "from random weights instead, which reaches a much lower mAP in a few epochs."
        )
        overrides["model"] = DEMO_MODEL_FALLBACK
    LOGGER.info(
        "No arguments given: training the built-in demo (tiny RT-DETR on the generated hazy-shapes dataset, CPU). "
        f"Equivalent to: clipce-rtdetr train {' '.join(f'{k}={v}' for k, v in overrides.items())}"
    )
    return overrides


def resolve_resume(overrides: dict[str, Any], model_arg):
    """train resume=True: the newest unfinished run's last.pt (or a clear error); resume=FILE: refused when it
    cannot be read or cannot resume. Returns the model argument."""
    from ultralytics.utils import LOGGER

    if not overrides.get("resume"):
        return model_arg
    if model_arg is None:
        model_arg = overrides["resume"] if isinstance(overrides["resume"], str) else None
        if model_arg is None:
            model_arg, finished = latest_unfinished_run()
            if not model_arg:
                raise ClipCEError(
                    "resume=True but no unfinished run (a weights/last.pt of a run that did not end) was found "
                    f"under {Path.cwd()}"
                    + (f"; the newest finished one is {finished[0]}" if finished else "")
                    + ". Pass resume=path/to/last.pt, or start a new run."
                )
            LOGGER.info(f"resume=True: resuming the newest unfinished run, {model_arg}")
            overrides["resume"] = model_arg
    ckpt = overrides["resume"] if isinstance(overrides["resume"], str) else model_arg
    if isinstance(ckpt, str) and Path(ckpt).is_file():
        state = resumable(ckpt)
        if state is None:
            raise ClipCEError(unreadable_checkpoint(ckpt))
        if state is False:
            raise ClipCEError(not_resumable(ckpt))
    return model_arg


def not_resumable(ckpt: str) -> str:
    settings = Path(ckpt).resolve().parent.parent / "clipce.yaml"
    return (
        f"{ckpt} cannot be resumed: it has no optimizer state (the run that wrote it finished all its epochs, or "
        f"it is a released weights file). To train on from its weights, start a new run: 'clipce-rtdetr train "
        f"model={ckpt} data=... epochs=N'"
        + (
            f", giving again the CLIP-CE settings listed in {settings}"
            if settings.is_file()
            else ", with the CLIP-CE settings you want"
        )
        + " (a new run starts from cfg/default.yaml's)."
    )


def unreadable_checkpoint(ckpt: str, why: str = "") -> str:
    why = why or checkpoint_error(ckpt)
    return (
        f"{ckpt} cannot be read as a checkpoint ({why}), so its run cannot be resumed. It is damaged (e.g. the disk "
        "filled up or the run was killed while saving it). Resume from another checkpoint of that run if it has one "
        "(weights/epoch*.pt with save_period=N), or start the run again; move the damaged file away to let "
        "resume=True look at the other runs."
    )


def check_trainable(model_arg) -> None:
    """train needs a PyTorch model: an exported file (.onnx, .engine, ...) or another file is refused here."""
    if model_arg is None:
        return
    suffix = Path(str(model_arg)).suffix.lower()
    if suffix not in ("", ".pt", ".yaml", ".yml"):
        raise ClipCEError(
            f"model={model_arg}: train needs a PyTorch checkpoint (.pt) or a model config (.yaml); exported models "
            "(.onnx, .engine, ...) only predict and validate. Train from the best.pt it was exported from, or from "
            "a config such as model=rtdetr-l.yaml."
        )


def fill_mode_defaults(mode: str, overrides: dict[str, Any]) -> None:
    """What each mode needs and Ultralytics would otherwise default silently: data (train), source (predict/track,
    required), format (export)."""
    if mode == "train" and not overrides.get("data") and not overrides.get("resume"):
        overrides["data"] = DEFAULT_DATA
        warn(f"'data' argument is missing. Using default 'data={DEFAULT_DATA}' (the built-in demo dataset).")
    if mode in ("predict", "track") and "source" not in overrides:
        raise ClipCEError(f"'{mode}' needs a source, e.g. source=video.mp4, source=0 (webcam) or source=rtsp://...")
    if mode == "export" and "format" not in overrides:
        overrides["format"] = "onnx"
        warn("'format' argument is missing. Using default 'format=onnx'.")


def run_model(mode: str, model_arg, overrides: dict[str, Any]):
    from ultralytics.utils import LOGGER

    from clipce_rtdetr.models import load_detector

    model = load_detector(model_arg)
    if mode in ("predict", "track"):
        from clipce_rtdetr.deploy.stream import run_predict

        run_predict(model, mode, overrides)  # streams, live FPS, saves video, reconnects; StreamLostError -> exit 2
        return None
    result = getattr(model, mode)(**overrides)
    if mode == "train" and getattr(model, "trainer", None) is not None:
        t = model.trainer
        m = t.metrics or last_results_row(t.save_dir)  # Ultralytics' device=0,1 launcher: the workers trained
        LOGGER.info(
            f"\nclipce-rtdetr train done ({t.clipce_args['clipce']}): "
            f"mAP50={m.get('metrics/mAP50(B)', float('nan')):.4f} "
            f"mAP50-95={m.get('metrics/mAP50-95(B)', float('nan')):.4f}  run folder: {t.save_dir}"
        )
    return result


def entrypoint(argv: list[str] | None = None) -> int:
    """Console script `clipce-rtdetr`. Returns a process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    special = {
        "help": lambda: _print(HELP),
        "version": lambda: _print(__version__),
        "cfg": lambda: _print(__import__("clipce_rtdetr.config", fromlist=["x"]).format_defaults()),
    }
    if not args:
        _print(HELP)
        return 0
    head = args[0].lstrip("-").lower()
    if head in special or head in ("h",):
        special.get(head, special["help"])()
        return 0
    if head == "settings":
        from ultralytics.cfg import handle_yolo_settings

        handle_yolo_settings(args[1:])
        return 0
    try:
        mode, overrides = parse_args(args)
        if mode is None:
            raise ClipCEError(
                f"No mode given. Valid modes are {', '.join(MODEL_MODES + tuple(TOOL_MODES))}; "
                "see 'clipce-rtdetr help'."
            )
        run_mode(mode, overrides, had_args=len(args) > 1)
    except (ClipCEError, FileNotFoundError, AssertionError) as e:  # Ultralytics asserts on e.g. resuming a finished run
        print(f"clipce-rtdetr {args[0]}: error: {e}", file=sys.stderr, flush=True)
        return 2
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        print(f"clipce-rtdetr {args[0]}: error: {write_error(e)}", file=sys.stderr, flush=True)
        return 2
    except RuntimeError as e:  # under torchrun: a collective failed because another process stopped or hung
        from clipce_rtdetr.engine import distributed

        if not distributed.is_peer_failure(e):
            raise
        print(f"clipce-rtdetr {args[0]}: error: {distributed.peer_failure_message(e)}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"Interrupted. {INTERRUPT_HINTS.get(args[0], '')}".rstrip(), file=sys.stderr)
        return 130
    return 0


def last_results_row(save_dir) -> dict[str, float]:
    """The last epoch's row of a run's results.csv ({} when there is none)."""
    import csv

    try:
        with open(Path(save_dir) / "results.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return {}
    return {k.strip(): float(v) for k, v in rows[-1].items() if k and v not in (None, "")} if rows else {}


WRITE_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG}


def write_error(e: OSError) -> str:
    """A file-system refusal met anywhere in a run (a read-only or full disk, no permission, a name too long), as
    one line naming the path and what to do, instead of the traceback of whichever library met it."""
    what = {errno.EROFS: "the file system is read-only", errno.ENOSPC: "the disk is full",
            errno.EDQUOT: "the disk quota is used up", errno.ENAMETOOLONG: "a file name is too long"}.get(
        e.errno, "permission denied")  # fmt: skip
    where = f" {e.filename}" if e.filename else ""
    if e.errno in (errno.EACCES, errno.EPERM):  # reading an input is refused the same way as writing an output
        return (
            f"cannot access{where}: permission denied ({e.strerror}). If it is an input, make it readable; if it is "
            "an output, point project=/out= (or the file named) at a writable folder."
        )
    return (
        f"cannot write{where}: {what} ({e.strerror}). Point project=/out= (or the file named) at a writable folder "
        "with free space, or use a shorter name=."
    )


def check_device(device) -> None:
    """device=0 (as in the README's GPU examples) on a machine without CUDA: one line, not Ultralytics' traceback."""
    if device is None or str(device).strip().lower() in ("", "cpu", "mps", "none"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ClipCEError(
            f"device={device} asks for a CUDA GPU, but none is usable here (torch.cuda.is_available() is "
            "False: no GPU, no driver, or a CPU-only torch). Use device=cpu."
        )


def latest_unfinished_run(search_dir: str = ".") -> tuple[str, list[str]]:
    """(newest last*.pt of a run that did not finish, or "", the finished ones met first). Ultralytics' own
    get_latest_run takes the newest file even when its run finished, and then starts a new run on its defaults.

    A checkpoint that cannot be read and is newer than every resumable one is an error naming it: it may well be
    the unfinished run the user means, and resuming an older run instead would continue the wrong one."""
    import glob
    import os

    finished = []
    for f in sorted(glob.glob(f"{search_dir}/**/last*.pt", recursive=True), key=os.path.getctime, reverse=True):
        state = resumable(f)
        if state:
            return f, finished
        if state is None:
            raise ClipCEError("resume=True: the newest run's checkpoint " + unreadable_checkpoint(f))
        finished.append(f)
    return "", finished


def checkpoint_error(path: str) -> str:
    """Why torch cannot load `path`, in one line."""
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for a damaged file
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else 'no detail'}"
    return "not a dict"


def resumable(path: str) -> bool | None:
    """Whether an Ultralytics checkpoint can resume training (it still has its epoch and optimizer: its run did
    not end); None when it cannot be read."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        return None
    if not isinstance(ckpt, dict):
        return None
    return ckpt.get("epoch", -1) != -1 and ckpt.get("optimizer") is not None


INTERRUPT_HINTS = {  # what survives an interrupted run, per mode
    "train": "Continue with 'clipce-rtdetr train resume=RUN/weights/last.pt' (RUN: the run folder above), or "
    "resume=True for the newest unfinished run; before the first epoch ends there is no last.pt: start again.",
    "degrade": "Finished images are kept: rerun the same command to resume.",
    "clip-train": "Nothing was saved; rerun the command to start again.",
    "ablation": "Finished runs are kept: rerun the same command to resume the grid.",
    "predict": "Results saved so far are kept in the run folder.",
    "track": "Results saved so far are kept in the run folder.",
}


def main() -> None:  # pragma: no cover - python -m clipce_rtdetr
    sys.exit(entrypoint())
