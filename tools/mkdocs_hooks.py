"""MkDocs hooks: the site's home page is README.md and its changelog page is CHANGELOG.md.

Both files live at the project's root, where GitHub shows them, and are added to the site at
build time, so each has one copy. Their links are written for GitHub (``docs/options.md``,
``CHANGELOG.md``); here they become links between the site's pages (``options.md``,
``changelog.md``), which ``mkdocs build --strict`` then checks like any other link.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
PAGES = {"README.md": "index.md", "CHANGELOG.md": "changelog.md"}
LINK = re.compile(r"\]\((?:docs/)?(?P<target>[^)\s]*)\)")


def site_links(text: str) -> str:
    """``text`` with its GitHub links (``docs/X``, ``README.md``, ``CHANGELOG.md``) as site links."""

    def relink(m: re.Match) -> str:
        target = m.group("target")
        path, sep, anchor = target.partition("#")
        return f"]({PAGES.get(path, path)}{sep}{anchor})"

    return LINK.sub(relink, text)


def on_files(files, config):
    for source, page in PAGES.items():
        text = (ROOT / source).read_text(encoding="utf-8")
        files.append(File.generated(config, page, content=site_links(text)))
    return files
