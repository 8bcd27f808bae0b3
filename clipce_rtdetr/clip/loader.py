"""Load a frozen open_clip model from `clip=MODEL[:PRETRAINED]` without ever waiting on the network.

PRETRAINED is one of
- an open_clip tag (`ViT-B-32:openai`): the weights must already be in the open_clip / Hugging Face
  cache (this module looks there itself and fails at once with instructions if they are not);
- a local weights file (`.pt`, `.pth`, `.bin`, `.safetensors`), absolute, relative to the working
  directory or to one of the weights folders (`paths.weights_dirs()`);
- a local Hugging Face snapshot folder (with `open_clip_config.json`, open_clip's `local-dir:` style),
  also accepted as `local-dir:/folder` on its own;
- nothing (`clipce-tiny`): random weights (tests and the CPU demo only; `ClipBundle.random_weights`).

Why not let open_clip resolve tags: offline without `HF_HUB_OFFLINE=1` it waits ~46 s on the hub
before failing, and with a filled cache and no flag it still asks the hub whether the file changed.
Downloading is only attempted when `CLIPCE_CLIP_DOWNLOAD=1` is set and `HF_HUB_OFFLINE` is not.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from clipce_rtdetr.clip.weights import (
    RANDOM_MARKER,
    README_HINT,
    _looks_like_path,
    _params_sha256,
    _resolve,
    _unknown_model_error,
    check_weights_file,
    file_sha256,
    is_random_weights_file,
)
from clipce_rtdetr.errors import ClipCEError
from clipce_rtdetr.paths import CFG_DIR

CLIP_CFG_DIR = CFG_DIR / "clip"
TINY_CLIP = "clipce-tiny"


# ---------------------------------------------------------------------------------------------
# Registration of the project's model configs (cfg/clip/*.json)
# ---------------------------------------------------------------------------------------------
def register_project_configs() -> None:
    """Add cfg/clip/*.json (e.g. `clipce-tiny`) to open_clip's model registry. Idempotent, per process."""
    import open_clip

    names = {p.stem for p in CLIP_CFG_DIR.glob("*.json")}
    if names and not names.issubset(open_clip.list_models()):
        open_clip.add_model_config(CLIP_CFG_DIR)


# ---------------------------------------------------------------------------------------------
# Spec parsing
# ---------------------------------------------------------------------------------------------
def parse_clip_spec(spec: str) -> tuple[str, str | None]:
    """`MODEL[:PRETRAINED]` -> (model_name, pretrained or None).

    Split at the first ':' only, so paths keep theirs (`ViT-B-32:C:\\w\\m.pt`, `ViT-B-32:/a:b/m.pt`).
    `local-dir:/folder` and `hf-hub:org/repo` are returned whole as the model name (open_clip schemas).
    An OpenAI-style name with '/' (`ViT-B/32`) is normalised to open_clip's `ViT-B-32`.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ClipCEError(f"clip={spec!r} is empty. Use clip=MODEL[:PRETRAINED], e.g. clip=ViT-B-32:openai.")
    spec = spec.strip()
    for schema in ("local-dir:", "hf-hub:"):
        if spec.startswith(schema):
            if not spec[len(schema) :].strip():
                raise ClipCEError(f"clip={spec} names no folder/repository after '{schema}'.")
            return spec, None
    model, sep, pretrained = spec.partition(":")
    model = model.strip()
    if not model:
        raise ClipCEError(f"clip={spec} has no model name. Use clip=MODEL[:PRETRAINED], e.g. clip=ViT-B-32:openai.")
    # 'ViT-B/32' (OpenAI naming): open_clip uses '-' (a '/' here would otherwise look like a path)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", model) and not model.startswith("."):
        model = model.replace("/", "-")
    elif _looks_like_path(model) or (len(model) == 1 and pretrained[:1] in ("\\", "/")):
        raise ClipCEError(
            f"clip={spec}: name the open_clip model before the weights, e.g. clip=ViT-B-32-quickgelu:{spec} "
            f"(clip=MODEL:PRETRAINED). See {README_HINT}."
        )
    pretrained = pretrained.strip() or None
    return model, pretrained


def require_weights(spec: str) -> None:
    """CLIP-CE needs a trained CLIP: refuse a spec that names no weights (open_clip would initialise the model
    randomly and every AME score would be noise). The project's tiny test/demo config is exempt."""
    model, pretrained = parse_clip_spec(spec)
    if pretrained is None and model != TINY_CLIP and not model.startswith(("local-dir:", "hf-hub:")):
        raise ClipCEError(
            f"clip={spec} names no weights, so open_clip would initialise {model} randomly and CLIP-CE's weights "
            f"would be noise. Name them: clip={model}:openai (an open_clip tag; open_clip.list_pretrained() lists "
            f"them) or clip={model}:/path/to/weights.safetensors. See {README_HINT}."
        )


# ---------------------------------------------------------------------------------------------
# The bundle
# ---------------------------------------------------------------------------------------------
@dataclass
class ClipBundle:
    """A frozen CLIP model with what AME needs: tokenizer, input size, normalisation, logit scale, identity."""

    model: torch.nn.Module
    tokenizer: Any
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    logit_scale: float  # exp(logit_scale), capped at 100
    fingerprint: str  # model name + weights sha256 (or tag): keys the embedding cache
    spec: str
    model_name: str = ""
    weights: str | None = None  # resolved weights file (None: random weights)
    random_weights: bool = False  # True: random weights (none, or a make_random_clip file): scores are uninformative
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    embed_dim: int = 0

    def to(self, device: str | torch.device) -> ClipBundle:
        """Move to another device: half precision (open_clip's fp16 conversion) on CUDA, fp32 elsewhere."""
        from open_clip.model import convert_weights_to_lp

        device = torch.device(device)
        self.model.to(device)
        if device.type == "cuda" and self.dtype != torch.float16:
            convert_weights_to_lp(self.model, torch.float16)
            self.dtype = torch.float16
        elif device.type != "cuda" and self.dtype != torch.float32:
            self.model.float()
            self.dtype = torch.float32
        self.device = device
        return self

    @torch.no_grad()
    def encode_images(self, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """(N,3,S,S) crops already normalised with `mean`/`std` -> (N,D) L2-normalised fp32 on `device`."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"encode_images expects (N,3,S,S), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            return torch.zeros(0, self.embed_dim, device=self.device)
        batch_size = max(1, int(batch_size))
        out = []
        for chunk in x.split(batch_size):
            out.append(self.model.encode_image(chunk.to(self.device, self.dtype)).float())
        return F.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Prompts -> (K,D) L2-normalised fp32 on `device`."""
        texts = list(texts)
        if not texts:
            return torch.zeros(0, self.embed_dim, device=self.device)
        tokens = self.tokenizer(texts).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def describe(self) -> dict[str, Any]:
        """JSON-able summary (for logs and prompts.json)."""
        return {
            "spec": self.spec,
            "model_name": self.model_name,
            "weights": self.weights,
            "random_weights": self.random_weights,
            "fingerprint": self.fingerprint,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "logit_scale": self.logit_scale,
            "embed_dim": self.embed_dim,
        }


def check_clip_weights(spec: str) -> None:
    """`clip=` loaded once on the CPU and dropped, so that missing, unreadable or wrong weights (another model's, a
    damaged file, a detector checkpoint) are reported before a command makes a run folder or scans a dataset. The
    cost is one load of the model (seconds for ViT-B-32); it is the loader's own path, so nothing passes here that
    fails later. A spec that passed is not loaded again in the same process (train checks before the dataset and
    again in the trainer)."""
    if spec in _CHECKED_SPECS:
        return
    load_clip(spec, device="cpu")
    _CHECKED_SPECS.add(spec)


_CHECKED_SPECS: set[str] = set()


def load_clip(spec: str, device: str | torch.device = "cpu") -> ClipBundle:
    """Load `clip=MODEL[:PRETRAINED]` frozen (eval, no grad) on `device`, fp16 on CUDA. Never touches the network
    unless CLIPCE_CLIP_DOWNLOAD=1. Raises ClipCEError with instructions when weights are missing."""
    import open_clip

    register_project_configs()
    model_name, pretrained = parse_clip_spec(spec)
    r = _resolve(model_name, pretrained)
    if r["weights"]:
        check_weights_file(spec, r["weights"])  # unreadable, damaged, a detector checkpoint: said plainly
    device = torch.device(device)
    precision = "fp16" if device.type == "cuda" else "fp32"
    model = _create_frozen(spec, r, device, precision)
    size, mean, std = _input_preprocessing(model, spec)
    embed_dim = getattr(model.visual, "output_dim", None)
    if not isinstance(embed_dim, int):
        embed_dim = int(getattr(model, "embed_dim", 0) or 0)
    bundle = ClipBundle(
        model=model,
        tokenizer=open_clip.get_tokenizer(r["model_name"]),
        image_size=size,
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        logit_scale=float(min(model.logit_scale.detach().float().exp().item(), 100.0)),
        fingerprint=_fingerprint(r, model),
        spec=spec,
        model_name=r["model_name"],
        weights=r["weights"],
        random_weights=r["weights"] is None or is_random_weights_file(r["weights"]),
        device=device,
        dtype=torch.float16 if precision == "fp16" else torch.float32,
        embed_dim=embed_dim,
    )
    if not bundle.embed_dim:
        bundle.embed_dim = int(bundle.encode_texts(["a"]).shape[1])
    return bundle


def _create_frozen(spec: str, r: dict[str, Any], device: torch.device, precision: str) -> torch.nn.Module:
    """open_clip's model from what `_resolve` decided, in eval mode with no gradients."""
    import open_clip

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*QuickGELU mismatch.*")
            model = open_clip.create_model(
                r["model_name"],
                pretrained=r["pretrained"],
                precision=precision,
                device=device,
                force_quick_gelu=r["quick_gelu"],
                force_preprocess_cfg=r["force"] or None,
                pretrained_text=False,
                pretrained_image=False,
            )
    except ClipCEError:
        raise
    except Exception as e:
        msg = str(e).strip().splitlines()
        short = "\n".join(msg[:6]) + ("\n..." if len(msg) > 6 else "")
        raise ClipCEError(
            f"clip={spec}: open_clip could not build the model from {r['weights'] or 'its config'}: {short}\n"
            f"Check that the weights belong to the model named before ':'. See {README_HINT}."
        ) from None
    model.eval()
    model.requires_grad_(False)
    for m in model.modules():  # forward hooks or dropout must never make scoring stochastic
        m.training = False
    return model


def _input_preprocessing(model: torch.nn.Module, spec: str) -> tuple[int, tuple, tuple]:
    """(square input size, mean, std) from the model's preprocess config."""
    pp = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    size = pp.get("size", getattr(model.visual, "image_size", 224))
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise ClipCEError(f"clip={spec}: non-square CLIP input {tuple(size)} is not supported.")
        size = size[0]
    return int(size), tuple(float(v) for v in pp["mean"]), tuple(float(v) for v in pp["std"])


def _fingerprint(r: dict[str, Any], model: torch.nn.Module) -> str:
    """The CLIP's identity for caches: tag name, sha256 of the weights file (+ config), or of random params."""
    if r["weights"] is None:
        return f"{r['model_name']}:random:{_params_sha256(model)[:16]}"
    if r.get("tag"):
        return f"{r['model_name']}:{r['tag']}"
    base = r["model_name"]
    if base.startswith("local-dir:"):
        cfg_txt = Path(r["config_file"]).read_bytes()
        base = "local-dir@" + hashlib.sha256(cfg_txt).hexdigest()[:12]
    return f"{base}@sha256:{file_sha256(r['weights'])}"


def make_random_clip(path: str | Path, model_name: str = TINY_CLIP, seed: int = 0) -> str:
    """Save a randomly initialised open_clip model's state_dict to `path` (.pt or .safetensors); return its
    spec `MODEL:/abs/path`, which `load_clip` loads exactly like a real checkpoint (open_clip's own file
    loader); the file is marked so that the loaded bundle says `random_weights=True`."""
    import open_clip

    register_project_configs()
    if model_name not in open_clip.list_models():
        raise _unknown_model_error(model_name)
    path = Path(path)
    if path.suffix.lower() not in (".pt", ".pth", ".bin", ".safetensors"):
        raise ClipCEError(f"make_random_clip: {path} must end in .pt, .pth, .bin or .safetensors.")
    state = torch.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = open_clip.create_model(model_name, pretrained=None, pretrained_text=False)
    finally:
        torch.set_rng_state(state)
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    # The marker tells load_clip the weights are random (open_clip reads only 'state_dict' / the tensors).
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path), metadata={RANDOM_MARKER: "1"})
    else:
        torch.save({"state_dict": sd, RANDOM_MARKER: True}, path)
    return f"{model_name}:{path.resolve()}"


__all__ = [
    "ClipBundle",
    "check_clip_weights",
    "load_clip",
    "make_random_clip",
    "parse_clip_spec",
    "require_weights",
    "register_project_configs",
    "file_sha256",
    "is_random_weights_file",
    "TINY_CLIP",
]
