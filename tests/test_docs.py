"""The documentation site builds strictly, and its configuration reference says what the code does.

Why: a broken link, a missing page or image, or a page left out of the nav fails `mkdocs build --strict` (real
MkDocs, the site's own mkdocs.yml and hooks); the reference page is generated from cfg/default.yaml and config.py,
and here its rendered defaults are read back and compared with the defaults the CLI loads.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from clipce_rtdetr import config
from clipce_rtdetr.config_reference import EMPTY, project_rows, render_reference, ultralytics_rows, valid_values

REPO = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| `(?P<key>[^`]+)` \| (?P<default>.*?) \| ")


def rendered_defaults(markdown: str) -> dict[str, str]:
    """{key: default cell} for every table row of the rendered reference."""
    return {m.group("key"): m.group("default") for line in markdown.splitlines() if (m := ROW.match(line))}


def read_back(cell: str):
    """A rendered default as a user would type it, read the way YAML (and so the CLI's defaults) reads it."""
    if cell == EMPTY:
        return None
    assert cell.startswith("`") and cell.endswith("`"), cell
    return yaml.safe_load(cell[1:-1].replace("\\|", "|"))


def test_mkdocs_build_strict(tmp_path, monkeypatch):
    """`mkdocs build --strict`, run in this process (the package and Ultralytics are imported already: seconds)."""
    pytest.importorskip("mkdocs", reason="mkdocs comes with pip install -e '.[dev]' (the docs extra)")
    from mkdocs.commands.build import build
    from mkdocs.config import load_config
    from mkdocs.exceptions import Abort

    monkeypatch.setenv("NO_MKDOCS_2_WARNING", "1")
    site = tmp_path / "site"
    try:
        build(load_config(str(REPO / "mkdocs.yml"), site_dir=str(site), strict=True))
    except Abort as e:  # the warnings themselves were logged above this line
        pytest.fail(f"mkdocs build --strict: {e}")
    reference = (site / "configuration" / "index.html").read_text(encoding="utf-8")
    assert all(f"<code>{k}</code>" in reference for k in config.project_defaults())
    assert (site / "api" / "index.html").read_text(encoding="utf-8").count("ClipCERTDETR") > 1  # mkdocstrings ran
    assert not (site / "incoming").exists() and not (site / "hooks").exists()  # helpers' drafts stay out


def test_reference_lists_every_project_key_with_its_loaded_default():
    defaults = config.project_defaults()
    rows = project_rows()
    assert [r.key for r in rows] == list(defaults)  # every key of cfg/default.yaml, in file order, once
    assert [r.key for r in rows if not r.meaning] == [], "give these keys a comment in cfg/default.yaml"
    rendered = rendered_defaults(render_reference())
    for key, value in defaults.items():
        assert key in rendered, key
        assert read_back(rendered[key]) == value, (key, rendered[key], value)


def test_reference_lists_ultralytics_keys_with_their_defaults():
    from ultralytics.cfg import DEFAULT_CFG_DICT

    rendered = rendered_defaults(render_reference())
    assert {r.key for r in ultralytics_rows()} == set(DEFAULT_CFG_DICT)
    for key, value in DEFAULT_CFG_DICT.items():
        if key not in config.project_defaults():
            assert read_back(rendered[key]) == value, (key, rendered[key], value)


def test_keys_config_py_checks_are_documented_with_their_rules():
    defaults = config.project_defaults()
    checked = [*config.CHOICES, *config.NON_NEGATIVE, *config.POSITIVE, *config.FRACTION, *config.LIST_KEYS]
    assert [k for k in checked if k not in defaults] == []  # a rule for a key no default.yaml documents
    path_keys = [k for k in config.PATH_KEYS if k in defaults]
    rendered = rendered_defaults(render_reference())
    assert [k for k in checked + path_keys if k not in rendered] == []
    for key, choices in config.CHOICES.items():
        assert all(f"`{c}`" in valid_values(key, defaults[key]) for c in choices), key
    assert valid_values("ame_temperature", 1.0).endswith("> 0") and valid_values("ame_alpha", 1.0).endswith("≥ 0")


def load_hook():
    spec = importlib.util.spec_from_file_location("docs_site_hook", REPO / "docs" / "hooks" / "site.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_links_out_of_docs_are_checked_and_rewritten(caplog):
    pytest.importorskip("mkdocs", reason="mkdocs comes with pip install -e '.[dev]' (the docs extra)")
    hook = load_hook()
    page = SimpleNamespace(file=SimpleNamespace(src_uri="modes/x.md"))
    cfg = {"docs_dir": str(REPO / "docs"), "repo_url": "https://github.com/o/r"}
    text = ("[a](../../benchmarks/ablation.py#L3) [b](../../benchmarks/no_such.py) "
            "![c](../../benchmarks/results/demo_clip.png)")
    with caplog.at_level(logging.WARNING, logger="mkdocs.hooks.site"):
        out = hook.on_page_markdown(text, page, cfg, files=None)
    assert "[a](https://github.com/o/r/blob/main/benchmarks/ablation.py#L3)" in out
    assert "![c](../benchmarks/results/demo_clip.png)" in out  # the image is copied into the site (on_files)
    assert [r.getMessage() for r in caplog.records] == [
        "modes/x.md: link '../../benchmarks/no_such.py' points to no file in the repository"
    ]


def test_readme_links_point_to_files():
    """The README is the front page on GitHub, outside the site: its relative links are checked here."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", readme) if "://" not in t]
    assert targets, "the README links into the documentation"
    assert [t for t in targets if t and not (REPO / t).exists()] == []
    assert "(docs/configuration.md)" in readme and "(docs/quickstart.md)" in readme


@pytest.mark.parametrize("value", [1e-06, 0.1, 64, float("inf"), "yes", "ViT-B-32:openai", "", [0, 1], ["none", "fame"],
                                   None, True, False])  # fmt: skip
def test_rendered_defaults_read_back_as_the_value(value):
    from clipce_rtdetr.config_reference import format_value

    text = format_value(value)
    assert read_back(text if text == EMPTY else f"`{text}`") == value
