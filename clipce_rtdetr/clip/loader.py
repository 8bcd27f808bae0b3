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
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from clipce_rtdetr.errors import ClipCEError
from clipce_rtdetr.paths import CFG_DIR, home, weights_dirs

CLIP_CFG_DIR = CFG_DIR / "clip"
TINY_CLIP = "clipce-tiny"
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
README_HINT = "weights/README.md (section 'CLIP weights')"
_HASH_MEMO: dict[tuple[str, int, int], str] = {}
RANDOM_MARKER = "clipce_random_init"  # set by make_random_clip in the files it writes


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


def _looks_like_path(s: str) -> bool:
    return (
        any(c in s for c in "/\\")
        or s.startswith((".", "~"))
        or s.lower().endswith(WEIGHT_SUFFIXES)
        or bool(re.match(r"^[A-Za-z]:", s))
    )


def _find_local(pretrained: str) -> Path | None:
    """A weights file or folder: as given (after ~ expansion), else in each weights folder."""
    p = Path(os.path.expanduser(pretrained))
    if p.exists():
        return p.resolve()
    if not p.is_absolute():
        for d in weights_dirs():
            if (d / p).exists():
                return (d / p).resolve()
    return None


# ---------------------------------------------------------------------------------------------
# Weights checksums (cached by path + mtime + size)
# ---------------------------------------------------------------------------------------------
def _hash_cache_file() -> Path:
    return home() / "clip-sha256.json"


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, remembered in memory and in $CLIPCE_HOME/clip-sha256.json by (path, mtime, size)."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key in _HASH_MEMO:
        return _HASH_MEMO[key]
    cache_file = _hash_cache_file()
    table: dict[str, Any] = {}
    try:
        table = json.loads(cache_file.read_text(encoding="utf-8"))
        hit = table.get(str(path))
        if hit and hit.get("mtime_ns") == st.st_mtime_ns and hit.get("size") == st.st_size:
            _HASH_MEMO[key] = hit["sha256"]
            return hit["sha256"]
    except (OSError, ValueError, AttributeError, TypeError):
        table = {}
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    _HASH_MEMO[key] = digest
    table = table if isinstance(table, dict) else {}
    table[str(path)] = {"mtime_ns": st.st_mtime_ns, "size": st.st_size, "sha256": digest}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=1), encoding="utf-8")
        os.replace(tmp, cache_file)
    except OSError:  # read-only home: the in-memory memo still helps
        pass
    return digest


def require_weights(spec: str) -> None:
    """CLIP-CE needs a trained CLIP: refuse a spec that names no weights (open_clip would initialise the model
    randomly and every AME score would be noise). The project's tiny test/demo config is exempt."""
    model, pretrained = parse_clip_spec(spec)
    if pretrained is None and model != TINY_CLIP and not model.startswith(("local-dir:", "hf-hub:")):
        raise ClipCEError(
            f"clip={spec} names no weights, so open_clip would initialise {model} randomly and CLIP-CE's weights would be "
            f"noise. Name them: clip={model}:openai (an open_clip tag; open_clip.list_pretrained() lists them) or "
            f"clip={model}:/path/to/weights.safetensors. See {README_HINT}."
        )


def is_random_weights_file(path: str | Path) -> bool:
    """True for a file written by `make_random_clip` (checked only for small files: real CLIPs are >50 MB)."""
    path = Path(path)
    try:
        if path.stat().st_size > 64 * 2**20:
            return False
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return (f.metadata() or {}).get(RANDOM_MARKER) == "1"
        obj = torch.load(path, map_location="cpu", weights_only=True)
        return isinstance(obj, dict) and obj.get(RANDOM_MARKER) is True
    except Exception:
        return False


def _params_sha256(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Tag resolution without the network
# ---------------------------------------------------------------------------------------------
def _hf_cache_dir() -> Path:
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover
        return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def _tag_candidates(cfg: dict) -> list[tuple[str, Any]]:
    """Where open_clip would put a tag's weights: [('file', Path) | ('hf', (repo_id, filename)) | ('url', Path)]."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    out: list[tuple[str, Any]] = []
    if cfg.get("file"):
        out.append(("file", Path(cfg["file"])))
    if cfg.get("hf_hub"):
        repo_id, filename = os.path.split(cfg["hf_hub"])
        names = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        out += [("hf", (repo_id, n)) for n in names]
    if cfg.get("url"):
        out.append(("url", Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(cfg["url"])))
    return out


def _cached_tag_file(cfg: dict) -> Path | None:
    for kind, what in _tag_candidates(cfg):
        if kind in ("file", "url"):
            if what.is_file():
                return what
        else:
            try:
                from huggingface_hub import try_to_load_from_cache

                hit = try_to_load_from_cache(repo_id=what[0], filename=what[1])
            except Exception:
                hit = None
            if isinstance(hit, str) and os.path.isfile(hit):
                return Path(hit)
    return None


def _download_allowed() -> bool:
    off = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return not off and os.environ.get("CLIPCE_CLIP_DOWNLOAD", "").strip().lower() in ("1", "true", "yes", "on")


def _missing_tag_error(model: str, tag: str, cfg: dict) -> ClipCEError:
    lines = [f"CLIP weights for clip={model}:{tag} are not on this machine, and clipce-rtdetr does not download them."]
    hub = _hf_cache_dir()
    cands = _tag_candidates(cfg)
    hf = [w for k, w in cands if k == "hf"]
    if hf:
        repo_id = hf[0][0]
        files = " or ".join(n for _, n in hf)
        lines.append(
            f"- fill the Hugging Face cache {hub / ('models--' + repo_id.replace('/', '--'))}: on a connected machine run\n"
            f"    hf download {repo_id} {hf[-1][1]}     (older huggingface_hub: huggingface-cli download ...)\n"
            f"  ({files}), then copy its HF cache folder here or point HF_HOME / HF_HUB_CACHE at a copy"
        )
    for kind, what in cands:
        if kind == "url":
            lines.append(f"- or put {os.path.basename(cfg['url'])} (from {cfg['url']}) at {what}")
        elif kind == "file":
            lines.append(f"- or the file {what}")
    suffix = "-quickgelu" if cfg.get("quick_gelu") and not model.endswith("-quickgelu") else ""
    lines.append(
        f"- or pass a weights file directly: clip={model}{suffix}:/path/to/open_clip_pytorch_model.bin "
        f"(files in {', '.join(str(d) for d in weights_dirs())} are found by name)"
    )
    lines.append(
        f"- or set CLIPCE_CLIP_DOWNLOAD=1 on a connected machine to let open_clip download it.\nSee {README_HINT}."
    )
    return ClipCEError("\n".join(lines))


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


def _unknown_model_error(model: str) -> ClipCEError:
    import open_clip

    names = open_clip.list_models()
    near = get_close_matches(model, names, n=5, cutoff=0.5)
    if not near:
        near = [n for n in names if n.lower().startswith(model.lower()[:4])][:5]
    hint = f" Close names: {', '.join(near)}." if near else ""
    return ClipCEError(
        f'clip={model}: unknown open_clip model name.{hint} All names: python -c "import open_clip; '
        f'print(open_clip.list_models())". See {README_HINT}.'
    )


def _resolve(model: str, pretrained: str | None) -> dict[str, Any]:
    """Decide what to hand open_clip: {'model_name', 'pretrained', 'weights', 'fingerprint_base', ...}."""
    import open_clip

    out: dict[str, Any] = {"model_name": model, "pretrained": None, "weights": None, "force": {}, "quick_gelu": False}

    if model.startswith("hf-hub:"):  # only from a filled HF cache: turn it into its snapshot folder
        repo_id = model[len("hf-hub:") :]
        try:
            from huggingface_hub import try_to_load_from_cache

            cfg_file = try_to_load_from_cache(repo_id=repo_id, filename="open_clip_config.json")
        except Exception:
            cfg_file = None
        if not (isinstance(cfg_file, str) and os.path.isfile(cfg_file)):
            folder = _hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))
            raise ClipCEError(
                f"clip={model}: the repository is not in the Hugging Face cache ({folder}). On a connected machine run\n"
                f"    hf download {repo_id}     (older huggingface_hub: huggingface-cli download {repo_id})\nand copy that cache folder here (or set HF_HOME), or pass the "
                f"downloaded folder as clip=local-dir:/path/to/snapshot. See {README_HINT}."
            )
        model = "local-dir:" + str(Path(cfg_file).parent)
        out["model_name"] = model

    if model.startswith("local-dir:"):
        folder = Path(os.path.expanduser(model[len("local-dir:") :]))
        if not folder.is_dir():
            raise ClipCEError(f"clip={model}: folder not found: {folder}. See {README_HINT}.")
        return _resolve_folder(folder, None, out)

    if model not in open_clip.list_models():
        raise _unknown_model_error(model)

    if pretrained is None:
        return out  # random weights

    tag_cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if tag_cfg and not _looks_like_path(pretrained) and _find_local(pretrained) is None:
        found = _cached_tag_file(tag_cfg)
        if found is None:
            if not _download_allowed():
                raise _missing_tag_error(model, pretrained, tag_cfg)
            try:
                found = Path(open_clip.download_pretrained(tag_cfg))
            except Exception as e:
                raise ClipCEError(
                    f"clip={model}:{pretrained}: download failed ({e}).\n{_missing_tag_error(model, pretrained, tag_cfg)}"
                ) from None
        out["pretrained"] = str(found)
        out["weights"] = str(found)
        out["tag"] = pretrained
        # A file path does not bring the tag's preprocessing: give open_clip the tag's own values.
        out["force"] = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
        if tag_cfg.get("quick_gelu") and not model.endswith("-quickgelu"):
            out["quick_gelu"] = True  # the tag was trained with QuickGELU: reproduce its activations
        return out

    local = _find_local(pretrained)
    if local is None:
        if _looks_like_path(pretrained):
            where = ", ".join(str(d) for d in weights_dirs())
            raise ClipCEError(
                f"clip={model}:{pretrained}: weights file not found: {os.path.expanduser(pretrained)} "
                f"(also looked in {where}). Put the file there or fix the path. See {README_HINT}."
            )
        tags = open_clip.list_pretrained_tags_by_model(model)
        hint = (
            f" Tags for {model}: {', '.join(tags)}."
            if tags
            else f" {model} has no open_clip tags: pass a weights file."
        )
        near = get_close_matches(pretrained, tags, n=3, cutoff=0.5)
        if near:
            hint = f" Did you mean {', '.join(near)}?" + hint
        raise ClipCEError(
            f"clip={model}:{pretrained}: '{pretrained}' is neither an open_clip tag of {model} nor an existing file.{hint} See {README_HINT}."
        )
    if local.is_dir():
        return _resolve_folder(local, model, out)
    if local.suffix.lower() not in WEIGHT_SUFFIXES + (".npz",):
        raise ClipCEError(f"clip={model}:{pretrained}: {local} is not a weights file ({', '.join(WEIGHT_SUFFIXES)}).")
    out["pretrained"] = str(local)
    out["weights"] = str(local)
    return out


def _resolve_folder(folder: Path, model: str | None, out: dict[str, Any]) -> dict[str, Any]:
    from open_clip.factory import _find_checkpoint_in_dir

    ckpt = _find_checkpoint_in_dir(folder)
    if (folder / "open_clip_config.json").is_file():
        if ckpt is None:
            raise ClipCEError(
                f"clip: snapshot folder {folder} has open_clip_config.json but no weights file "
                f"({', '.join(WEIGHT_SUFFIXES)}). Copy the whole snapshot. See {README_HINT}."
            )
        out.update(
            model_name=f"local-dir:{folder}",
            pretrained=None,
            weights=ckpt,
            config_file=str(folder / "open_clip_config.json"),
        )
        return out
    if model is None or model.startswith("local-dir:"):
        raise ClipCEError(
            f"clip=local-dir:{folder}: no open_clip_config.json in the folder. Pass the model name instead: "
            f"clip=MODEL:{folder}. See {README_HINT}."
        )
    if ckpt is None:
        raise ClipCEError(
            f"clip={model}:{folder}: no weights file ({', '.join(WEIGHT_SUFFIXES)}) in the folder. See {README_HINT}."
        )
    out.update(pretrained=ckpt, weights=ckpt)
    return out


def load_clip(spec: str, device: str | torch.device = "cpu") -> ClipBundle:
    """Load `clip=MODEL[:PRETRAINED]` frozen (eval, no grad) on `device`, fp16 on CUDA. Never touches the network
    unless CLIPCE_CLIP_DOWNLOAD=1. Raises ClipCEError with instructions when weights are missing."""
    import open_clip

    register_project_configs()
    model_name, pretrained = parse_clip_spec(spec)
    r = _resolve(model_name, pretrained)
    device = torch.device(device)
    precision = "fp16" if device.type == "cuda" else "fp32"
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

    tokenizer = open_clip.get_tokenizer(r["model_name"])
    pp = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    size = pp.get("size", getattr(model.visual, "image_size", 224))
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise ClipCEError(f"clip={spec}: non-square CLIP input {tuple(size)} is not supported.")
        size = size[0]
    mean = tuple(float(v) for v in pp["mean"])
    std = tuple(float(v) for v in pp["std"])
    logit_scale = float(min(model.logit_scale.detach().float().exp().item(), 100.0))

    if r["weights"] is None:
        fp = f"{r['model_name']}:random:{_params_sha256(model)[:16]}"
    elif r.get("tag"):
        fp = f"{r['model_name']}:{r['tag']}"
    else:
        base = r["model_name"]
        if base.startswith("local-dir:"):
            cfg_txt = Path(r["config_file"]).read_bytes()
            base = "local-dir@" + hashlib.sha256(cfg_txt).hexdigest()[:12]
        fp = f"{base}@sha256:{file_sha256(r['weights'])}"

    embed_dim = getattr(model.visual, "output_dim", None)
    if not isinstance(embed_dim, int):
        embed_dim = int(getattr(model, "embed_dim", 0) or 0)
    bundle = ClipBundle(
        model=model,
        tokenizer=tokenizer,
        image_size=int(size),
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        logit_scale=logit_scale,
        fingerprint=fp,
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
    "load_clip",
    "make_random_clip",
    "parse_clip_spec",
    "require_weights",
    "register_project_configs",
    "file_sha256",
    "is_random_weights_file",
    "TINY_CLIP",
]
