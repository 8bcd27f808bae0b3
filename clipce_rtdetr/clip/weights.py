"""Where a CLIP's weights come from, without the network: local files and folders, open_clip tags found in
the open_clip / Hugging Face caches, Hugging Face snapshot folders; checksums of weights files (cached by path,
mtime and size) and the clear error for every way weights can be missing. `loader.load_clip` uses these."""

from __future__ import annotations

import hashlib
import json
import os
import re
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import torch

from clipce_rtdetr.atomic import write_text
from clipce_rtdetr.errors import ClipCEError
from clipce_rtdetr.hashing import sha256_file
from clipce_rtdetr.paths import home, weights_dirs

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
README_HINT = "weights/README.md (section 'CLIP weights')"
_HASH_MEMO: dict[tuple[str, int, int], str] = {}
RANDOM_MARKER = "clipce_random_init"  # set by make_random_clip in the files it writes


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
    digest = sha256_file(path).hexdigest()
    _HASH_MEMO[key] = digest
    table = table if isinstance(table, dict) else {}
    table[str(path)] = {"mtime_ns": st.st_mtime_ns, "size": st.st_size, "sha256": digest}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_text(cache_file, json.dumps(table, indent=1), fsync=False)  # a cache: a lost update is recomputed
    except OSError:  # read-only home: the in-memory memo still helps
        pass
    return digest


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
            f"- fill the Hugging Face cache {hub / ('models--' + repo_id.replace('/', '--'))}: "
            "on a connected machine run\n"
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
        model = out["model_name"] = _hf_hub_snapshot(model)
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
        return _resolve_tag(model, pretrained, tag_cfg, out)
    local = _find_local(pretrained)
    if local is None:
        raise _missing_weights_error(model, pretrained)
    if local.is_dir():
        return _resolve_folder(local, model, out)
    if local.suffix.lower() not in WEIGHT_SUFFIXES + (".npz",):
        raise ClipCEError(f"clip={model}:{pretrained}: {local} is not a weights file ({', '.join(WEIGHT_SUFFIXES)}).")
    out["pretrained"] = str(local)
    out["weights"] = str(local)
    return out


def _hf_hub_snapshot(model: str) -> str:
    """`hf-hub:org/repo` -> `local-dir:` its snapshot folder in the Hugging Face cache (an error when absent)."""
    repo_id = model[len("hf-hub:") :]
    try:
        from huggingface_hub import try_to_load_from_cache

        cfg_file = try_to_load_from_cache(repo_id=repo_id, filename="open_clip_config.json")
    except Exception:
        cfg_file = None
    if not (isinstance(cfg_file, str) and os.path.isfile(cfg_file)):
        folder = _hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))
        raise ClipCEError(
            f"clip={model}: the repository is not in the Hugging Face cache ({folder}). "
            f"On a connected machine run\n    hf download {repo_id}     "
            f"(older huggingface_hub: huggingface-cli download {repo_id})\nand copy that cache folder here "
            f"(or set HF_HOME), or pass the downloaded folder as clip=local-dir:/path/to/snapshot. See {README_HINT}."
        )
    return "local-dir:" + str(Path(cfg_file).parent)


def _resolve_tag(model: str, tag: str, tag_cfg: dict, out: dict[str, Any]) -> dict[str, Any]:
    """An open_clip tag: its file from the caches (or a download, only when allowed) and its preprocessing."""
    import open_clip

    found = _cached_tag_file(tag_cfg)
    if found is None:
        if not _download_allowed():
            raise _missing_tag_error(model, tag, tag_cfg)
        try:
            found = Path(open_clip.download_pretrained(tag_cfg))
        except Exception as e:
            raise ClipCEError(
                f"clip={model}:{tag}: download failed ({e}).\n{_missing_tag_error(model, tag, tag_cfg)}"
            ) from None
    out["pretrained"] = str(found)
    out["weights"] = str(found)
    out["tag"] = tag
    # A file path does not bring the tag's preprocessing: give open_clip the tag's own values.
    out["force"] = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
    if tag_cfg.get("quick_gelu") and not model.endswith("-quickgelu"):
        out["quick_gelu"] = True  # the tag was trained with QuickGELU: reproduce its activations
    return out


def _missing_weights_error(model: str, pretrained: str) -> ClipCEError:
    """PRETRAINED is neither an existing file/folder nor a tag: say which, with the model's tags."""
    import open_clip

    if _looks_like_path(pretrained):
        where = ", ".join(str(d) for d in weights_dirs())
        return ClipCEError(
            f"clip={model}:{pretrained}: weights file not found: {os.path.expanduser(pretrained)} "
            f"(also looked in {where}). Put the file there or fix the path. See {README_HINT}."
        )
    tags = open_clip.list_pretrained_tags_by_model(model)
    hint = f" Tags for {model}: {', '.join(tags)}." if tags else f" {model} has no open_clip tags: pass a weights file."
    near = get_close_matches(pretrained, tags, n=3, cutoff=0.5)
    if near:
        hint = f" Did you mean {', '.join(near)}?" + hint
    return ClipCEError(
        f"clip={model}:{pretrained}: '{pretrained}' is neither an open_clip tag of {model} nor an existing file."
        f"{hint} See {README_HINT}."
    )


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


# ---------------------------------------------------------------------------------------------
# A weights file that cannot be CLIP weights, told apart before open_clip reads it
# ---------------------------------------------------------------------------------------------
def ultralytics_class(path: str | Path) -> str | None:
    """The model class of an Ultralytics checkpoint ('DetectionModel', 'RTDETRDetectionModel', ...), read from the
    pickle's global names inside the zip without unpickling anything; None for any other file."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            pkl = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            data = z.read(pkl) if pkl else b""
    except (OSError, zipfile.BadZipFile, KeyError):
        return None
    hit = re.search(rb"ultralytics\.nn\.tasks\n(\w+)", data)
    return hit.group(1).decode() if hit else ("Ultralytics" if b"ultralytics." in data else None)


def is_torch_file(path: Path, head: bytes) -> bool:
    """What torch.load / torch.jit.load can read, told from the first bytes: a zip archive (torch.save since 1.6,
    TorchScript), a pickle (legacy torch.save, protocol 2+ starts with 0x80) or a tar file (torch.save before 0.4)."""
    import tarfile

    return head.startswith((b"PK", b"\x80")) or tarfile.is_tarfile(path)


def check_weights_file(spec: str, path: str | Path) -> None:
    """A ClipCEError for a weights file that is unreadable, a damaged safetensors file, a file that is no PyTorch
    checkpoint at all (open_clip would answer with a bare pickle error such as '101'), or an Ultralytics detector
    checkpoint given as CLIP weights (torch would answer the last with advice on `weights_only`)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError as e:
        raise ClipCEError(f"clip={spec}: cannot read the weights file {path} ({e.strerror or e}).") from None
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except Exception as e:  # SafetensorError, or OSError for a truncated file  # noqa: BLE001
            raise ClipCEError(
                f"clip={spec}: {path} is not a readable safetensors file ({str(e).strip()[:120]}): it is damaged "
                f"(e.g. a copy cut short) or not a safetensors file. See {README_HINT}."
            ) from None
        return
    if not is_torch_file(path, head):
        raise ClipCEError(
            f"clip={spec}: {path} is not a PyTorch checkpoint (neither the zip archive torch.save writes nor a legacy "
            f"pickle; {f'it starts with {head!r}' if head else 'it is empty'}): a text file, an HTML error page saved "
            f"as weights, or another format. See {README_HINT}."
        )
    cls = ultralytics_class(path)
    if cls:
        raise ClipCEError(
            f"clip={spec}: {path} is an Ultralytics detector checkpoint ({cls}), not open_clip weights. clip= names "
            "the CLIP model that scores the crops (e.g. clip=ViT-B-32:openai, or clip=MODEL:/path/to/open_clip "
            f"weights); the detector goes in model=. See {README_HINT}."
        )
