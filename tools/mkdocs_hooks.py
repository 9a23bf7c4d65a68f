"""MkDocs hooks: the site's home page is README.md and its changelog page is CHANGELOG.md.

Both files live at the project's root, where GitHub shows them, and are added to the site at
build time, so each has one copy. Their links are written for GitHub (``docs/options.md``,
``CHANGELOG.md``); here they become links between the site's pages (``options.md``,
``changelog.md``), which ``mkdocs build --strict`` then checks like any other link.

A page's line ``<!-- equations: explain --batch K [options] -->`` becomes that batch's equations
typeset in MathML, as ``--format html`` shows them: the run is made at build time, on the CPU, and
the page's browser draws the equations itself (no script, no font, nothing fetched).
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


#: ``<!-- equations: explain --batch 2 --lr 0.1 -->`` in a page: that batch's equations, typeset
EQUATIONS = re.compile(r"^<!-- equations: explain (?P<args>[^>]*?) -->$", re.M)


def equations_html(args: str) -> str:
    """One batch of a run explained, every equation typeset in MathML (what ``--format html``
    shows): the run is made here, at build time, on the CPU; the page fetches nothing."""
    import shlex

    import sgdtrace
    from sgdtrace.config import Config
    from sgdtrace.teaching.explain import explain_step
    from sgdtrace.views.mathml import explanation_html

    opts = _options(shlex.split(args))
    batch, epoch = int(opts.pop("batch", 1)), int(opts.pop("epoch", 1))
    trace = sgdtrace.trace(Config(), **opts)
    return explanation_html(explain_step(trace, batch, epoch))


def _options(argv: list[str]) -> dict:
    """``--batch 2 --lr 0.1 --optimizer adam``: the few options the docs' equations use."""
    kinds = {"lr": float, "momentum": float, "weight_decay": float, "batch_size": int, "epochs": int}
    kinds.update(batch=int, epoch=int, features=int, synthetic=int, optimizer=str)
    out = {}
    for name, value in zip(argv[::2], argv[1::2]):
        key = name.lstrip("-").replace("-", "_")
        if key not in kinds:
            raise ValueError(f"<!-- equations: --> takes {', '.join(kinds)}, not {name}")
        out[key] = kinds[key](value)
    return out


def on_page_markdown(markdown, page, config, files):
    return EQUATIONS.sub(lambda m: equations_html(m.group("args")), markdown)
