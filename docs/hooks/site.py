"""MkDocs hooks (mkdocs.yml `hooks:`): the generated configuration reference, and links to repository files.

Why: the pages are written to read on GitHub as well as in the built site, so they link to files outside docs/
with relative paths (`../benchmarks/results/ablation.md`). MkDocs only knows files inside docs/; here such a link
is checked (a missing file fails `mkdocs build --strict`), images are copied into the site, and every other file
becomes a link to the repository (`repo_url`). The configuration reference is rendered from the code at the
`<!-- config-reference -->` marker (clipce_rtdetr/config_reference.py), so it cannot drift from it.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

from clipce_rtdetr.config_reference import render_reference

log = logging.getLogger("mkdocs.hooks.site")  # warnings under mkdocs.* fail a --strict build
REPO = Path(__file__).resolve().parents[2]
MARKER = "<!-- config-reference -->"
# ](../path) or ](../path#anchor): a relative link that leaves the page's folder
LINK = re.compile(r"\]\((?P<target>(?:\.\./)+[^)\s#]*)(?P<anchor>#[^)\s]*)?\)")
IMAGES = {".png", ".jpg", ".jpeg", ".svg", ".gif"}


def repo_path(page_uri: str, target: str, docs_dir: Path) -> Path:
    """The file a relative link in docs/<page_uri> points to."""
    return Path(posixpath.normpath(posixpath.join((docs_dir / page_uri).parent.as_posix(), target)))


def outside_links(markdown: str, page_uri: str, docs_dir: Path):
    """(match, repository-relative path) for each link that leaves docs/; None when it leaves the repository."""
    for m in LINK.finditer(markdown):
        path = repo_path(page_uri, m.group("target"), docs_dir)
        if path.is_relative_to(docs_dir):
            continue
        yield m, (path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else None)


def on_files(files, config):
    """Copy the images the pages show from outside docs/ into the site, under their repository path."""
    docs_dir = Path(config["docs_dir"])
    wanted = set()
    for f in files.documentation_pages():
        for _, rel in outside_links(Path(f.abs_src_path).read_text(encoding="utf-8"), f.src_uri, docs_dir):
            if rel and Path(rel).suffix.lower() in IMAGES and (REPO / rel).is_file():
                wanted.add(rel)
    for rel in sorted(wanted):
        if files.get_file_from_path(rel) is None:
            files.append(File.generated(config, rel, abs_src_path=str(REPO / rel)))
    return files


def on_page_markdown(markdown, page, config, files):
    docs_dir = Path(config["docs_dir"])
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, render_reference())
    repo_url = config["repo_url"].rstrip("/")

    def rewrite(m: re.Match, rel: str | None) -> str:
        anchor = m.group("anchor") or ""
        if rel is None or not (REPO / rel).exists():
            log.warning(f"{page.file.src_uri}: link '{m.group('target')}' points to no file in the repository")
            return m.group(0)
        if Path(rel).suffix.lower() in IMAGES:
            return f"]({posixpath.relpath(rel, posixpath.dirname(page.file.src_uri) or '.')}{anchor})"
        kind = "tree" if (REPO / rel).is_dir() else "blob"
        return f"]({repo_url}/{kind}/main/{rel}{anchor})"

    out, last = [], 0
    for m, rel in list(outside_links(markdown, page.file.src_uri, docs_dir)):
        out += [markdown[last : m.start()], rewrite(m, rel)]
        last = m.end()
    return "".join(out) + markdown[last:]
