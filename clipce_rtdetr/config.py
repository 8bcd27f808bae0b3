"""Configuration: Ultralytics' keys plus the project's keys from cfg/default.yaml.

Why a separate layer: Ultralytics rejects unknown keys (`check_dict_alignment`), so project keys are
split off before arguments reach Ultralytics, and validated here with the same style of message.
"""

from __future__ import annotations

import math
from difflib import get_close_matches
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from clipce_rtdetr.errors import ConfigError
from clipce_rtdetr.paths import DEFAULT_CFG_PATH

CHOICES = {
    "clipce": ("none", "prior", "ame", "fame", "table", "table_fame"),
    "ame_form": ("exp", "linear"),
    "clipce_terms": ("all", "final"),
    "ame_crops": ("source", "batch"),
    # degrade / robustness kinds: the singles, then the mixes (data/degrade_image.py KINDS, same order)
    "kind": ("haze", "lowlight", "underwater", "rain", "snow", "rain+haze", "snow+haze", "lowlight+haze",
             "lowlight+rain", "lowlight+snow", "lowlight+rain+haze", "lowlight+snow+haze"),  # fmt: skip
    "level": ("light", "medium", "heavy", "custom"),
}
NON_NEGATIVE = (
    "ame_alpha",
    "fame_gamma",
    "ame_context",
    "prior_a",
    "export_tol",
    "export_tol_quant",
    "processes",
    "stream_backoff",
    "stream_timeout",
    "segment",
    "save_max_gb",
)
POSITIVE = ("ame_temperature", "ame_batch", "dist_timeout")
FRACTION = ("val_fraction",)
# Keys whose value is a list or None (no scalar type to check).
LIST_KEYS = (
    "ame_templates",
    "beta_range",
    "airlight_range",
    "gamma_range",
    "distance_range",
    "rain_rate_range",
    "snowfall_range",
    "conditions",
    "names",
    "ablation_methods",
    "ablation_seeds",
)


def _list_item(text: str):
    """One item of an unquoted command-line list ([none,fame], [0,1]): a number when it reads as one, else text."""
    text = text.strip().strip("'\"")
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


@lru_cache(maxsize=1)
def project_defaults() -> dict[str, Any]:
    """The project's own keys and defaults (cfg/default.yaml)."""
    with open(DEFAULT_CFG_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


def ultralytics_defaults() -> dict[str, Any]:
    from ultralytics.cfg import DEFAULT_CFG_DICT

    return DEFAULT_CFG_DICT


def all_defaults() -> dict[str, Any]:
    return {**ultralytics_defaults(), **project_defaults()}


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split into (Ultralytics keys, project keys)."""
    proj = project_defaults()
    return {k: v for k, v in overrides.items() if k not in proj}, {k: v for k, v in overrides.items() if k in proj}


def nearest_keys(key: str, valid: dict[str, Any] | None = None) -> list[str]:
    valid = valid if valid is not None else all_defaults()
    return get_close_matches(key, list(valid), n=3, cutoff=0.6)


def check_keys(overrides: dict[str, Any], extra: tuple[str, ...] = ()) -> None:
    """Unknown keys -> ConfigError naming the nearest valid ones."""
    valid = all_defaults()
    bad = [k for k in overrides if k not in valid and k not in extra]
    if bad:
        lines = []
        for k in bad:
            near = nearest_keys(k, valid)
            hint = f" Did you mean {', '.join(f'{n}={valid[n]}' for n in near)}?" if near else ""
            lines.append(f"'{k}' is not a valid clipce-rtdetr argument.{hint}")
        raise ConfigError("\n".join(lines) + "\nSee all keys with 'clipce-rtdetr cfg'.")


def check_project_values(cfg: dict[str, Any]) -> dict[str, Any]:
    """Type- and range-check project keys (in place, with int->float coercion); return cfg."""
    defaults = project_defaults()
    for k, v in list(cfg.items()):
        if v is None and k in CHOICES and "none" in CHOICES[k]:
            # Ultralytics' parser reads 'clipce=none' as None; the choice is the string "none".
            v = cfg[k] = "none"
        if k not in defaults or v is None:
            continue
        v = cfg[k] = list_value(k, v) if k in LIST_KEYS else typed_value(k, v, defaults[k])
        check_range(k, v)
    return cfg


def list_value(k: str, v: Any) -> Any:
    """A list key's value as a list (an unquoted command-line list is parsed; one text item becomes a list)."""
    if isinstance(v, str) and v.strip().startswith("[") and v.strip().endswith("]") and k != "ame_templates":
        # unquoted on the command line ([none,fame]): the parser leaves a string; items are words or numbers
        v = [_list_item(x) for x in v.strip()[1:-1].split(",") if x.strip()]
    elif isinstance(v, str) and k != "names":
        v = [v]
    if not isinstance(v, (list, tuple, dict)):
        raise ConfigError(f"'{k}={v}' must be a list, e.g. {k}=[...]; quote text items: {k}=\"['a','b']\".")
    if k.endswith("_range") and (len(v) != 2 or not all(isinstance(x, (int, float)) for x in v) or v[0] > v[1]):
        raise ConfigError(f"'{k}={v}' must be [min, max] with min <= max, e.g. {k}=[0.05,0.14].")
    return v


def typed_value(k: str, v: Any, d: Any) -> Any:
    """v checked against the type of its default d (an int given for a float key becomes a float)."""
    bad = f"'{k}={v}' is of invalid type {type(v).__name__}. '{k}' must be"
    if isinstance(d, bool):
        if not isinstance(v, bool):
            raise ConfigError(f"{bad} a bool, i.e. '{k}=True' or '{k}=False'.")
    elif isinstance(d, float):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{bad} a float, i.e. '{k}={d}'.")
        v = float(v)
    elif isinstance(d, int):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{bad} an int, i.e. '{k}={d}'.")
    elif isinstance(d, str) and not isinstance(v, (str, Path)):
        raise ConfigError(f"{bad} a string, i.e. '{k}={d}'.")
    return v


def mix_spelling_hint(names: Any, kinds: tuple[str, ...] = CHOICES["kind"]) -> str:
    """For each name that is a known mixed kind written in another order (haze+rain), the spelling to use."""
    same = {c: k for c in map(str, names) for k in kinds if "+" in c and sorted(c.split("+")) == sorted(k.split("+"))}
    return "".join(f" Write '{c}' as '{k}' (mixes are named from the camera outwards)." for c, k in same.items())


def check_range(k: str, v: Any) -> None:
    if k in CHOICES and v not in CHOICES[k]:
        hint = mix_spelling_hint([v]) if k == "kind" else ""
        raise ConfigError(f"'{k}={v}' is not valid. Valid values are {', '.join(CHOICES[k])}.{hint}")
    if k in NON_NEGATIVE and not (math.isfinite(v) and v >= 0):
        raise ConfigError(f"'{k}={v}' must be a finite number >= 0.")
    if k == "stream_retries" and v < -1:
        raise ConfigError(f"'{k}={v}' must be >= 0, or -1 to retry for ever (a service).")
    if k in POSITIVE and not (math.isfinite(v) and v > 0):
        raise ConfigError(f"'{k}={v}' must be a finite number > 0.")
    if k in FRACTION and not 0 <= v <= 1:
        raise ConfigError(f"'{k}={v}' must be in [0, 1].")


def check_ultralytics_values(cfg: dict[str, Any]) -> None:
    """Ultralytics' own type/range checks, re-raised as ConfigError, and the values check_cfg leaves to a
    traceback later (imgsz, over-long file names)."""
    from ultralytics.cfg import check_cfg

    try:
        check_cfg(dict(cfg), hard=True)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None
    check_imgsz(cfg.get("imgsz"))
    check_path_names(cfg)


def check_imgsz(imgsz: Any) -> None:
    """imgsz= as Ultralytics' check_imgsz takes it: a positive number, or [h, w] / [size] of positive numbers."""
    if imgsz is None:
        return
    sizes = list(imgsz) if isinstance(imgsz, (list, tuple)) else [imgsz]
    ok = 1 <= len(sizes) <= 2 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0 for x in sizes
    )
    if not ok:
        raise ConfigError(
            f"'imgsz={imgsz}' is not a valid image size: give a positive integer, e.g. imgsz=640, "
            "or [height,width], e.g. imgsz=[480,640]."
        )


# Keys whose value names a file or folder (a run name is a folder name too).
PATH_KEYS = ("name", "project", "save_dir", "data", "model", "source", "resume", "tracker", "cfg", "ame_profile",
             "out", "depth", "report", "images", "export_check_source", "split", "clip", "weights",
             "compare")  # fmt: skip


def name_max() -> int:
    """The longest file or folder name the filesystem here allows (in bytes; 255 on Linux, macOS, Windows)."""
    import os

    try:
        return int(os.pathconf(".", "PC_NAME_MAX"))
    except (AttributeError, OSError, ValueError):
        return 255


def check_path_names(cfg: dict[str, Any]) -> None:
    """A path key whose file or folder name is longer than the filesystem allows: one line here, not an OSError
    ("File name too long") traceback from wherever the path is first used."""
    limit = name_max()
    for k in PATH_KEYS:
        v = cfg.get(k)
        if not isinstance(v, (str, Path)) or "://" in str(v):
            continue
        for part in Path(v).parts:
            n = len(str(part).encode("utf-8", "surrogateescape"))
            if n > limit:
                raise ConfigError(
                    f"'{k}=': the name '{str(part)[:40]}...' is {n} bytes long; the filesystem allows at most {limit} "
                    f"bytes per file or folder name. Choose a shorter {k}=."
                )


def map_deprecated_keys(overrides: dict[str, Any]) -> dict[str, Any]:
    """Ultralytics' deprecated keys mapped in place as its own CLI and API map them (half=True / int8=True ->
    quantize=16 / 8, end2end -> nms, boxes -> show_boxes, ...; with its deprecation warning), so every key `yolo`
    accepts is accepted here too. Returns `overrides`."""
    from ultralytics.cfg import _handle_deprecation

    mapped = _handle_deprecation(dict(overrides))
    overrides.clear()
    overrides.update(mapped)
    return overrides


def check_overrides(overrides: dict[str, Any], extra: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate every key and value (Ultralytics' deprecated keys mapped first, in place); return (ultralytics
    overrides, full project cfg with defaults)."""
    map_deprecated_keys(overrides)
    check_keys(overrides, extra)
    ultra, proj = split_overrides(overrides)
    check_ultralytics_values({k: v for k, v in ultra.items() if k not in extra})
    merged = {**project_defaults(), **proj}
    check_path_names(proj)
    return ultra, check_project_values(merged)


def format_defaults() -> str:
    """All keys and defaults: Ultralytics' then the project's (for `clipce-rtdetr cfg`)."""
    from ultralytics.cfg import DEFAULT_CFG_PATH as ULTRA_CFG

    return (
        f"# Ultralytics keys ({ULTRA_CFG})\n"
        + Path(ULTRA_CFG).read_text(encoding="utf-8")
        + f"\n# clipce-rtdetr keys ({DEFAULT_CFG_PATH})\n"
        + Path(DEFAULT_CFG_PATH).read_text(encoding="utf-8")
    )
