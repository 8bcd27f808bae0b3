"""Prompt profiles for AME (METHOD.md §2): templates, scene negatives, class-name mapping.

A profile is a YAML file: the bundled `cfg/prompts/{haze,lowlight,underwater}.yaml`, chosen by name
(`ame_profile=haze`), or a user's file (`ame_profile=path/to/profile.yaml`). Keys:

    templates: ["a photo of a {}."]       # each with exactly one {} for the class's prompt name
    negatives: ["a photo of fog.", ...]   # scene negatives (full sentences, not templated)
    aliases:   {motorbike: motorcycle}    # optional, non-strict renames (exact, then case-insensitive)
    classes:   {motorbike: motorcycle}    # optional, strict: must list every class of the dataset

Classes without a mapping keep their dataset name, with '_' read as a space. All errors are
ClipCEError and are raised while building the prompts, before any training starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clipce_rtdetr.errors import ClipCEError
from clipce_rtdetr.paths import PROMPTS_DIR

DEFAULT_TEMPLATES = ("a photo of a {}.",)
PROFILE_KEYS = ("templates", "negatives", "aliases", "classes", "description")


@dataclass
class Profile:
    """A loaded prompt profile."""

    name: str
    path: str | None
    templates: list[str]
    negatives: list[str]
    aliases: dict[str, str] = field(default_factory=dict)
    classes: dict[str, str] | None = None  # strict mapping, when the profile has a `classes:` section


@dataclass
class PromptSet:
    """The exact prompts of a run. Class c's negatives are every other class's positive prompts plus the
    scene negatives; in the text bank each other class counts once (its template-averaged embedding)."""

    profile: str
    names: list[str]  # dataset class names, index = class id
    prompt_names: list[str]  # what goes into the templates
    templates: list[str]
    positives: list[list[str]]  # per class: one string per template
    scene_negatives: list[str]

    @property
    def nc(self) -> int:
        return len(self.names)

    def negatives(self, c: int) -> list[str]:
        """All negative prompt strings of class c (other classes' positives, then scene negatives)."""
        out = [p for k, ps in enumerate(self.positives) if k != c for p in ps]
        return out + list(self.scene_negatives)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (prompts.json): per class, its positive and negative prompts."""
        return {
            "profile": self.profile,
            "templates": list(self.templates),
            "scene_negatives": list(self.scene_negatives),
            "classes": [
                {
                    "id": c,
                    "name": self.names[c],
                    "prompt_name": self.prompt_names[c],
                    "positive": list(self.positives[c]),
                    "negative": self.negatives(c),
                }
                for c in range(self.nc)
            ],
        }


def available_profiles() -> list[str]:
    return sorted(p.stem for p in Path(PROMPTS_DIR).glob("*.yaml"))


def _str_list(value: Any, key: str, where: str, allow_empty: bool = True) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ClipCEError(f"{where}: '{key}' must be a list of non-empty strings, got {value!r}.")
    if not allow_empty and not value:
        raise ClipCEError(f"{where}: '{key}' must not be empty.")
    return [v.strip() for v in value]


def _str_map(value: Any, key: str, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(v, str) and v.strip() for v in value.values()):
        raise ClipCEError(
            f"{where}: '{key}' must map dataset class names to prompt names (strings), "
            f"e.g. {key}: {{motorbike: motorcycle}}."
        )
    return {str(k): v.strip() for k, v in value.items()}


def check_templates(templates: Sequence[str], where: str = "ame_templates") -> list[str]:
    """Each template must contain exactly one '{}'."""
    templates = _str_list(templates, "templates", where, allow_empty=False)
    for t in templates:
        if t.count("{}") != 1:
            raise ClipCEError(
                f"{where}: prompt template {t!r} must contain exactly one '{{}}' for the class name, "
                "e.g. 'a photo of a {}.'."
            )
    return templates


def load_profile(name_or_path: str | Path | Profile) -> Profile:
    """A bundled profile by name (haze, lowlight, underwater) or a YAML file path -> Profile."""
    if isinstance(name_or_path, Profile):
        return name_or_path
    if name_or_path is None or not str(name_or_path).strip():
        raise ClipCEError(
            f"ame_profile is empty. Available profiles: {', '.join(available_profiles())}, or a path to a YAML file."
        )
    s = str(name_or_path).strip()
    path = Path(s).expanduser()
    if not path.is_file():
        bundled = Path(PROMPTS_DIR) / f"{s}.yaml"
        if s in available_profiles() and bundled.is_file():
            path = bundled
        else:
            raise ClipCEError(
                f"ame_profile={s}: unknown prompt profile (no such bundled profile or file). "
                f"Available profiles: {', '.join(available_profiles())}, or a path to your own YAML file "
                f"(see {Path(PROMPTS_DIR) / 'haze.yaml'} for the format)."
            )
    where = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark is not None else where
        problem = getattr(e, "problem", None) or str(e)
        raise ClipCEError(f"{loc}: malformed YAML in prompt profile: {problem}.") from None
    except OSError as e:
        raise ClipCEError(f"{where}: cannot read prompt profile ({e}).") from None
    if not data:  # an empty file (or comments only) would run AME with no scene negatives at all
        raise ClipCEError(
            f"{where}: the prompt profile is empty. It needs at least 'negatives:' (scene prompts that stand for "
            f"\"not the object\", e.g. negatives: ['a photo of fog.', 'a photo of the background.']) and may give "
            f"templates, aliases or classes; see {Path(PROMPTS_DIR) / 'haze.yaml'}."
        )
    if not isinstance(data, Mapping):
        raise ClipCEError(f"{where}: a prompt profile must be a mapping with keys {', '.join(PROFILE_KEYS)}.")
    unknown = [k for k in data if k not in PROFILE_KEYS]
    if unknown:
        raise ClipCEError(
            f"{where}: unknown key(s) {', '.join(map(str, unknown))} in prompt profile. Valid keys: "
            f"{', '.join(PROFILE_KEYS)}."
        )
    templates = check_templates(data.get("templates") or list(DEFAULT_TEMPLATES), where)
    negatives = _str_list(data.get("negatives"), "negatives", where)
    if not negatives:
        raise ClipCEError(
            f"{where}: the prompt profile has no scene negatives ('negatives:' is missing or empty); AME scores each "
            "object against them. Add e.g. negatives: ['a photo of fog.', 'a photo of the background.']."
        )
    aliases = _str_map(data.get("aliases"), "aliases", where)
    classes = _str_map(data.get("classes"), "classes", where) if data.get("classes") is not None else None
    return Profile(
        name=path.stem,
        path=str(path.resolve()),
        templates=templates,
        negatives=negatives,
        aliases=aliases,
        classes=classes,
    )


def _class_names(class_names: Mapping[int, str] | Iterable[str]) -> list[str]:
    if isinstance(class_names, Mapping):  # Ultralytics' {id: name}
        ids = sorted(class_names)
        if ids != list(range(len(ids))):
            raise ClipCEError(f"class names must have ids 0..nc-1, got {ids}.")
        return [str(class_names[i]) for i in ids]
    return [str(n) for n in class_names]


def prompt_name(profile: Profile, name: str) -> str:
    """Dataset class name -> the name put into the templates."""
    if profile.classes is not None:
        return profile.classes[name]
    if name in profile.aliases:
        return profile.aliases[name]
    lower = {k.lower(): v for k, v in profile.aliases.items()}
    if name.lower() in lower:
        return lower[name.lower()]
    return name.replace("_", " ").strip()


def build_prompts(
    profile: str | Path | Profile,
    class_names: Mapping[int, str] | Iterable[str],
    templates: Sequence[str] | None = None,
) -> PromptSet:
    """The exact prompts for a dataset: per class the positive strings (one per template) and, through
    `PromptSet.negatives(c)`, the negative list. `templates` (ame_templates) overrides the profile's."""
    prof = load_profile(profile)
    names = _class_names(class_names)
    if not names:
        raise ClipCEError("The dataset has no class names; AME needs at least one class.")
    tpl = check_templates(templates, "ame_templates") if templates else list(prof.templates)
    if prof.classes is not None:
        missing = [n for n in names if n not in prof.classes]
        if missing:
            raise ClipCEError(
                f"{prof.path}: the profile's 'classes:' section has no entry for dataset class(es) "
                f"{', '.join(missing)}. Add e.g. '  {missing[0]}: {missing[0].replace('_', ' ')}' under 'classes:', "
                f"or remove 'classes:' (use 'aliases:' for optional renames)."
            )
    pnames = [prompt_name(prof, n) for n in names]
    positives = [[t.replace("{}", p) for t in tpl] for p in pnames]
    return PromptSet(
        profile=prof.path or prof.name,
        names=names,
        prompt_names=pnames,
        templates=tpl,
        positives=positives,
        scene_negatives=list(prof.negatives),
    )


__all__ = [
    "Profile",
    "PromptSet",
    "available_profiles",
    "build_prompts",
    "check_templates",
    "load_profile",
    "prompt_name",
    "DEFAULT_TEMPLATES",
]
