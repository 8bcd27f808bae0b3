"""The configuration reference: every key, its default, its valid values and its meaning, read from the code.

Why: the documentation site's reference page (docs/configuration.md) is rendered from here at build time
(docs/hooks/site.py), so it cannot drift from cfg/default.yaml and config.py. Defaults come from the YAML as the
CLI loads it; meanings are the YAML's comments (a key's inline comment, after any comment lines right above it);
valid values come from config.py's CHOICES and range tuples. A key someone adds to cfg/default.yaml appears
without anyone touching the docs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from clipce_rtdetr import config
from clipce_rtdetr.paths import DEFAULT_CFG_PATH

# "# --- CLIP-CE loss (METHOD.md §1-6) ----" (ours) and "# Train settings -------" (Ultralytics')
SECTION = re.compile(r"^#\s*-*\s*(?P<title>[^-\s].*?)\s*-{3,}\s*$")
KEY = re.compile(r"^(?P<key>[A-Za-z_][\w-]*):(?P<rest>.*)$")
EMPTY = "*empty*"


@dataclass
class KeyDoc:
    """One row of the reference."""

    key: str
    default: Any
    meaning: str
    section: str


def inline_comment(rest: str) -> str:
    """The comment after a key's value ("fame # loss weighting: ..." -> "loss weighting: ...")."""
    m = re.search(r"(^|\s)#\s?(.*)$", rest)
    return m.group(2).strip() if m else ""


def read_keys(path: str | Path, leading_comments: bool = True) -> list[KeyDoc]:
    """Every top-level key of a default.yaml in file order, with its loaded default, meaning and section."""
    text = Path(path).read_text(encoding="utf-8")
    values = yaml.safe_load(text) or {}
    rows, section, above = [], "", []
    for line in text.splitlines():
        if m := SECTION.match(line):
            section, above = m.group("title"), []
        elif line.startswith("#"):
            above.append(line.lstrip("#").strip())
        elif m := KEY.match(line):
            meaning = " ".join([*(above if leading_comments else []), inline_comment(m.group("rest"))]).strip()
            rows.append(KeyDoc(m.group("key"), values.get(m.group("key")), meaning, section))
            above = []
        elif not line.strip():
            above = []
    return rows


def format_value(v: Any) -> str:
    """A default as a user types it on the command line (and as YAML reads it back)."""
    if v is None:
        return EMPTY
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    if isinstance(v, str):
        return v if yaml.safe_load(v) == v and v.strip() == v and v else repr(v)
    text = repr(v)  # 0.1, 64; YAML reads 1e-06 as text, so such a float is written as YAML writes it (1.0e-06)
    return text if yaml.safe_load(text) == v else yaml.safe_dump(v).splitlines()[0]


def valid_values(key: str, default: Any) -> str:
    """What config.py accepts for a project key: its choices or range, else the type of its default."""
    if key in config.CHOICES:
        return " \\| ".join(f"`{c}`" for c in config.CHOICES[key])
    if key.endswith("_range"):
        return "[min, max], min ≤ max"
    if key in config.LIST_KEYS:
        return "list"
    if key in config.PATH_KEYS:  # a name the tool knows (a CLIP tag, a profile) or a file/folder
        kind = "name or path" if isinstance(default, str) else "path"
    else:
        kind = type(default).__name__ if default is not None else "see meaning"
    for group, text in ((config.NON_NEGATIVE, "≥ 0"), (config.POSITIVE, "> 0"), (config.FRACTION, "0 to 1")):
        if key in group:
            return f"{kind}, {text}"
    return kind


def cell(text: str) -> str:
    """Table-safe text: a pipe would end the cell."""
    return re.sub(r"(?<!\\)\|", r"\\|", text)


def render_table(rows: list[KeyDoc], with_values: bool) -> str:
    out = []
    for section in dict.fromkeys(r.section for r in rows):
        out += [f"### {section or 'General'}", ""]
        out += ["| key | default | valid values | meaning |", "|---|---|---|---|"] if with_values else [
            "| key | default | meaning |", "|---|---|---|"]  # fmt: skip
        for r in (r for r in rows if r.section == section):
            default = format_value(r.default)
            default = default if default == EMPTY else f"`{cell(default)}`"
            values = f" {valid_values(r.key, r.default)} |" if with_values else ""
            out.append(f"| `{r.key}` | {default} |{values} {cell(r.meaning)} |")
        out.append("")
    return "\n".join(out)


def project_rows() -> list[KeyDoc]:
    return read_keys(DEFAULT_CFG_PATH)


def ultralytics_rows() -> list[KeyDoc]:
    from ultralytics.cfg import DEFAULT_CFG_PATH as ULTRA_CFG

    return read_keys(ULTRA_CFG, leading_comments=False)


def render_reference() -> str:
    """The generated part of docs/configuration.md: the project's keys, then Ultralytics' keys."""
    import ultralytics

    return "\n".join(
        [
            "## clipce-rtdetr keys (`cfg/default.yaml`) {#project-keys}",
            "",
            render_table(project_rows(), with_values=True),
            f"## Ultralytics keys (ultralytics {ultralytics.__version__}, accepted unchanged) {{#ultralytics-keys}}",
            "",
            render_table(ultralytics_rows(), with_values=False),
        ]
    )
