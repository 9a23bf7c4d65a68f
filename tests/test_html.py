"""The HTML report: parsed, it holds the article's table and the verdict; nothing outside the page is
referenced; a real headless Chromium renders it (where one is installed) without console errors."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from urllib.parse import unquote

import pytest
from click.testing import CliRunner

import sgdtrace
from sgdtrace.cli import cli
from sgdtrace.teaching.report import run_html as run_page
from sgdtrace.views.export import trace_to_csv
from sgdtrace.views.html import cell
from sgdtrace.views.table import verdict_text

# The article's table (lr 0.01, batch size 3, w = b = 0), to the digits it prints (as in test_article.py).
ARTICLE = [
    # dl/dw,    dl/db,    w,       b,      loss
    ("-26.67", "-24", "0.267", "0.24", "146.67"),
    ("-135.86", "-33.39", "1.63", "0.57", "280.67"),
    ("-169.19", "-24.10", "3.32", "0.81", "145.28"),
]
FIELDS = ("grad_w", "grad_b", "w", "b", "loss")
HEADS = {"grad_w": "dl/dw", "grad_b": "dl/db", "w": "w", "b": "b", "loss": "loss"}


class Page(HTMLParser):
    """Collects what the tests look at: every tag with its attributes, each table's rows as text
    cells (a table inside a cell, such as an explanation in a row's <details>, is a table of its
    own), the tables' captions and header cells, the SVGs' titles and descriptions, all text."""

    VOID = ("meta", "br", "img", "input", "link", "hr")

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.stack: list[str] = []
        self.tables: list[dict] = []
        self.open: list[dict] = []  # the tables open, innermost last
        self.svg_titles: list[str] = []
        self.svg_descs: list[str] = []
        self.text: list[str] = []
        self._capture: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))  # <mrow/>: no content

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag in self.VOID:
            return
        self.stack.append(tag)
        if tag == "table":
            t = {"class": a.get("class", ""), "caption": "", "rows": [], "ths": [], "_row": None, "_cell": None}
            self.tables.append(t)
            self.open.append(t)
        elif tag == "tr":
            self.open[-1]["_row"] = []
        elif tag in ("td", "th"):
            self.open[-1]["_cell"] = []
            if tag == "th":
                self.open[-1]["ths"].append(a)
        elif tag in ("caption", "title", "desc"):
            self._capture = []

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()
        t = self.open[-1] if self.open else None
        if tag in ("td", "th") and t["_cell"] is not None and t["_row"] is not None:
            t["_row"].append("".join(t["_cell"]).strip())
            t["_cell"] = None
        elif tag == "tr" and t["_row"] is not None:
            t["rows"].append(t["_row"])
            t["_row"] = None
        elif tag == "caption":
            t["caption"] = "".join(self._capture).strip()
            self._capture = None
        elif tag == "table":
            self.open.pop()
        elif tag in ("title", "desc") and "svg" in self.stack:
            (self.svg_titles if tag == "title" else self.svg_descs).append("".join(self._capture).strip())
            self._capture = None
        elif tag == "title":
            self._capture = None

    def handle_data(self, data):
        self.text.append(data)
        if self._capture is not None:
            self._capture.append(data)
        for t in self.open:  # a cell holds the text of what is inside it
            if t["_cell"] is not None:
                t["_cell"].append(data)

    def table(self, cls: str) -> dict:
        return next(t for t in self.tables if t["class"] == cls)


@pytest.fixture(scope="module")
def article():
    return sgdtrace.trace()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("html") / "report.html"
    r = CliRunner().invoke(cli, ["run", "--format", "html", "--output", str(out)])
    assert r.exit_code == 0, r.output
    return out


def hand_rows(steps: dict) -> list[dict]:
    """The steps table's 'hand' rows as {column heading: cell text}."""
    heads = steps["rows"][0]
    rows = []
    for row in steps["rows"][1:]:
        if "hand" in row:
            rows.append(dict(zip(heads, row)))
    return rows


def decimals(text):
    return len(text.split(".")[1]) if "." in text else 0


def test_page_holds_the_articles_table(report, article):
    page = Page(report.read_text(encoding="utf-8"))
    rows = hand_rows(page.table("steps"))
    assert [r["batch"] for r in rows] == ["1", "2", "3"]
    for k, (row, expected) in enumerate(zip(rows, ARTICLE)):
        for field, text in zip(FIELDS, expected):
            shown = row[HEADS[field]]
            # the page writes the engine's value as cell() does ...
            assert shown == cell(article.manual[field][k])
            # ... which is the article's number to the decimals the article prints
            assert abs(float(shown) - float(text)) <= 0.5 * 10 ** -decimals(text) + 1e-9, (k, field, shown, text)
        assert row["ulp"] == "0"
    # torch's rows beneath, the same numbers (the article's run is bit-identical)
    torch_rows = [r for r in page.table("steps")["rows"] if "torch" in r]
    assert len(torch_rows) == 3
    assert torch_rows[1][torch_rows[1].index("torch") + 1] == cell(article.torch["grad_w"][1]) == "-135.858"


def test_page_holds_the_verdict_config_explanation_and_graph(report, article):
    text = report.read_text(encoding="utf-8")
    page = Page(text)
    words = " ".join("".join(page.text).split())
    for line in verdict_text(article).plain.split("\n"):
        assert " ".join(line.split()) in words
    assert "✓ agree" in words
    config = {row[0]: row[1] for row in page.table("config")["rows"][1:]}
    assert config["lr"] == "0.01" and config["batch_size"] == "3" and config["dtype"] == "float32"
    # nothing diverged: batch 1 is explained, with its numbers beside torch's
    assert "Batch 1 explained" in words and "Eq. 8" in words
    first = [t for t in page.tables if t["class"] == "eqs"][:5]  # the explanation section's
    eqs = {row[0]: row[1:] for t in first for row in t["rows"] if row[0]}
    assert eqs["Eq. 8"][0].endswith("=−26.6667") and eqs["Eq. 8"][1] == "torch: dl/dw = -26.6667 (0 ulp)"
    # the graph: the DAG as inline SVG, torch's grad_fn graph as a table
    assert "The article's computation graph (the manual DAG)" in page.svg_titles
    graph_rows = page.table("torch-graph")["rows"]
    assert any("MseLossBackward0" in r[0] for r in graph_rows) and "✓ parity" in words


def test_page_is_self_contained_accessible_and_small(report):
    text = report.read_text(encoding="utf-8")
    assert len(text.encode()) < 300_000
    # no network: no external src/href, no @import, no url(http...), no script at all
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", text, re.I)
    assert "@import" not in text and not re.search(r"url\(\s*['\"]?\s*(https?:|//)", text, re.I)
    page = Page(text)
    tags = [t for t, _ in page.tags]
    assert "script" not in tags and "link" not in tags and "iframe" not in tags and "img" not in tags
    csp = [a for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]["content"]
    # accessible: a language, captions, header cells with a scope, every SVG titled and described
    assert dict(page.tags[0][1]).get("lang") == "en"
    assert all(t["caption"] for t in page.tables)
    assert all(th.get("scope") in ("col", "row", "rowgroup") for t in page.tables for th in t["ths"])
    svgs = [a for t, a in page.tags if t == "svg"]
    assert len(svgs) == 4  # three plot panels and the DAG
    assert all(a.get("role") == "img" and a.get("aria-labelledby") for a in svgs)
    assert len(page.svg_titles) == len(page.svg_descs) == 4 and all(page.svg_descs)
    # dark theme and print
    assert "prefers-color-scheme: dark" in text and "@media print" in text


def test_csv_download_holds_every_step(tmp_path, article):
    out = tmp_path / "long.html"
    r = CliRunner().invoke(cli, ["run", "--format", "html", "--epochs", "30", "--output", str(out)])
    assert r.exit_code == 0, r.output
    page = Page(out.read_text(encoding="utf-8"))
    steps = page.table("steps")
    # 90 steps summarised as in the terminal: 40 shown (2 rows each), one gap row
    gaps = [row for row in steps["rows"] if len(row) == 1 and "steps not shown" in row[0]]
    assert len(gaps) == 1 and "50 steps not shown" in gaps[0][0]
    assert sum(1 for row in steps["rows"] if "hand" in row) == 40
    links = [a for t, a in page.tags if t == "a" and "download" in a]
    assert len(links) == 1
    prefix = "data:text/csv;charset=utf-8,"
    assert links[0]["href"].startswith(prefix)
    data = unquote(links[0]["href"][len(prefix) :])
    assert data == trace_to_csv(sgdtrace.trace(epochs=30))
    assert len(data.splitlines()) == 91


def test_blow_up_is_explained_and_marked(tmp_path):
    out = tmp_path / "blow.html"
    r = CliRunner().invoke(cli, ["run", "--format", "html", "--lr", "0.1", "--output", str(out)])
    assert r.exit_code in (0, 1), r.output
    page = Page(out.read_text(encoding="utf-8"))
    words = " ".join("".join(page.text).split())
    assert "training blew up" in words and "Batch 2 explained (where training blew up)" in words
    rows = hand_rows(page.table("steps"))
    assert rows[2]["w"] == "-29.1597"  # the article's erratum: w = -29.16 after batch 3
    assert "⚠" in rows[1]["ulp"]


def test_batch_option(tmp_path):
    out = tmp_path / "b2.html"
    r = CliRunner().invoke(cli, ["run", "--format", "html", "--batch", "2", "--output", str(out)])
    assert r.exit_code == 0, r.output
    assert "Batch 2 explained (as asked (--batch))" in " ".join("".join(Page(out.read_text()).text).split())
    bad = tmp_path / "bad.html"
    r = CliRunner().invoke(cli, ["run", "--format", "html", "--batch", "4", "--output", str(bad)])
    assert r.exit_code == 2 and "--batch 4" in r.output and "1..3" in r.output and not bad.exists()
    r = CliRunner().invoke(cli, ["run", "--batch", "2"])
    assert r.exit_code == 2 and "--format html" in r.output
    # --epoch alone names nothing (most likely --epochs misspelt): refused, as any option that
    # does not apply
    r = CliRunner().invoke(cli, ["run", "--format", "html", "--epoch", "1"])
    assert r.exit_code == 2 and "did you mean --epochs 1?" in r.stderr


def test_divergent_run_explains_its_first_divergent_batch(article):
    import numpy as np

    from sgdtrace import tracing

    # the torch side's gradient at batch 2 nudged by 1%: the judge finds it, the page explains it
    torch_cols = {f: v.copy() for f, v in article.torch.items()}
    torch_cols["grad_w"][1] *= np.float32(1.01)
    bad = tracing.judge(article.config, article.dataset, article.plan, article.device, article.manual, torch_cols)
    assert not bad.verdict.ok
    page = Page(run_page(bad))
    words = " ".join("".join(page.text).split())
    assert "✗ diverge" in words and "Batch 2 explained (the first divergent batch)" in words
    assert "✗" in hand_rows(page.table("steps"))[1]["ulp"]


@pytest.mark.parametrize(
    "args",
    [
        ["compare", "--dtype", "float32", "--dtype", "float64"],
        ["check", "sgdtrace/configs/article.toml", "sgdtrace/configs/article-lr-0.1.toml"],
    ],
)
def test_compare_and_check_pages(tmp_path, args):
    out = tmp_path / "page.html"
    r = CliRunner().invoke(cli, args + ["--format", "html", "--output", str(out)])
    assert r.exit_code == 0, r.output
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    words = " ".join("".join(page.text).split())
    assert "✓ all agree" in words or "✓ 2 runs agree" in words
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", text, re.I)
    assert all(t["caption"] for t in page.tables)
    if args[0] == "compare":
        assert "cpu float64" in words and len([t for t in page.tables if t["class"] == "steps"]) == 2
    else:
        assert "article-lr-0.1.toml" in words


def test_csv_link_encoding_is_urllib_quote():
    from urllib.parse import quote

    from sgdtrace.views.html import percent_encode

    text = 'epoch,batch,n\n1,2,-3.5e-07,inf,nan "x" é#%<>&\'\n'
    assert percent_encode(text) == quote(text, safe=",.-_+:")


def test_page_build_is_fast(article):
    import time

    run_page(article)  # imports
    start = time.perf_counter()
    text = run_page(article)
    elapsed = time.perf_counter() - start
    assert text.startswith("<!DOCTYPE html>")
    assert elapsed < 1.0, f"the page took {elapsed:.2f} s to build beyond the run"


# ------------------------------------------------------------------ a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    # --no-sandbox: the tests may run as root (CI); the page runs no script and loads nothing anyway
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        *args,
    ]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HOME": os.environ.get("TMPDIR", "/tmp")},
    )


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (Debian: apt-get install chromium)")
@pytest.mark.parametrize("dark", [False, True])
def test_chromium_renders_the_page(report, tmp_path, dark):
    imread = pytest.importorskip("matplotlib.image").imread  # reads the PNG screenshot

    shot = tmp_path / "shot.png"
    url = report.resolve().as_uri()
    theme = ["--force-dark-mode"] if dark else []
    r = chromium(*theme, f"--screenshot={shot}", "--window-size=1280,2400", url)
    assert shot.exists(), r.stderr[-2000:]
    pixels = imread(str(shot))[..., :3]
    assert pixels.shape[:2] == (2400, 1280)
    flat = pixels.reshape(-1, 3)
    background = flat[0]
    other = (abs(flat - background).sum(axis=1) > 0.1).mean()
    assert other > 0.02, f"only {other:.1%} of the screenshot differs from the background"
    # dark theme: the background is dark; light: it is light
    assert (background.mean() < 0.3) if dark else (background.mean() > 0.9)


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (Debian: apt-get install chromium)")
def test_chromium_dom_and_console(report):
    """The DOM as Chromium built it holds the table; the console (logged at --v=0) has no error, no
    blocked request (the page's Content-Security-Policy would log any load from outside)."""
    r = chromium("--enable-logging=stderr", "--v=0", "--dump-dom", report.resolve().as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    assert "-135.858" in r.stdout and "✓ agree" in r.stdout and "</svg>" in r.stdout
    console = [
        line
        for line in r.stderr.splitlines()
        if "CONSOLE" in line or "Uncaught" in line or "Refused to" in line or "net::ERR" in line
    ]
    assert not console, "\n".join(console)


# ------------------------------------------------------------------ the learner's page


def sections(text: str) -> list[str]:
    """The page's section headings' ids, in order."""
    return re.findall(r'<h2 id="(h-[a-z]+)"', text)


def test_the_article_page_reads_in_order_and_explains_its_three_batches(report, article):
    text = report.read_text(encoding="utf-8")
    assert len(text.encode()) <= 300_000
    assert sections(text)[:4] == ["h-verdict", "h-plots", "h-explain", "h-steps"]
    assert text.index('<figure class="plot">') < text.index('<table class="steps">')
    page = Page(text)
    details = [a for t, a in page.tags if t == "details"]
    # one per batch of the article's table, typeset, none open (nothing diverged: batch 1 is the
    # section above the table)
    rows = re.findall(r'<tr class="x"><td colspan="\d+">(<details.*?</details>)</td></tr>', text)
    assert len(rows) == 3 and len([d for d in details if "marked" not in d.get("class", "")]) >= 3
    assert all("open" not in d for d in details if "config-rest" not in d.get("class", ""))
    for k, row in enumerate(rows):
        assert f"<summary>Batch {k + 1} explained</summary>" in row
        assert row.count("<math") >= 12  # Equations 1-11 and the chain rule's factors
        grad = cell(article.manual["grad_w"][k]).replace("-", "\u2212")
        assert f"<mo>=</mo><mn>{grad}</mn></math>" in row  # Eq. 8's result
        assert f"torch: dl/dw = {cell(article.torch['grad_w'][k])}" in row
        for eq in ("Eq. 2-3", "Eq. 4", "Eq. 5", "Eq. 6", "Eq. 7", "Eq. 8", "Eq. 9", "Eq. 10", "Eq. 11"):
            assert f'<th scope="row">{eq}</th>' in row
    # the batches start where the previous one left off: batch 2 from w after batch 1
    assert f"starting from w = {cell(article.manual['w'][0])}, b = {cell(article.manual['b'][0])}" in rows[1]


def test_the_first_divergent_step_opens_marked(article):
    import numpy as np

    from sgdtrace import tracing

    torch_cols = {f: v.copy() for f, v in article.torch.items()}
    torch_cols["grad_w"][1] *= np.float32(1.01)
    bad = tracing.judge(article.config, article.dataset, article.plan, article.device, article.manual, torch_cols)
    text = run_page(bad)
    opened = re.findall(r"<details([^>]*) open><summary>([^<]*)</summary>", text)
    assert opened == [(' class="marked"', "Batch 2 explained: the first divergent step")]
    assert text.count('<tr class="hand mark">') == 1
    # the explanation shows the distance: torch's dl/dw beside the hand's, in ulp, not 0
    block = text[text.index("Batch 2 explained: the first") :]
    assert re.search(r"torch: dl/dw = [-0-9.]+ <span class=\"warn\">\(\d+ ulp\)", block)


def test_the_configuration_shows_what_applies(tmp_path):
    out = tmp_path / "adam.html"
    r = CliRunner().invoke(cli, ["run", "--optimizer", "adam", "--format", "html", "--output", str(out)])
    assert r.exit_code == 0, r.output
    page = Page(out.read_text(encoding="utf-8"))
    shown = {row[0] for row in page.table("config")["rows"][1:]}
    rest = {row[0] for row in page.table("config-rest")["rows"][1:]}
    assert {"lr", "betas", "eps", "amsgrad", "optimizer", "dtype", "data"} <= shown
    for other in ("alpha", "centered", "lr_decay", "initial_accumulator_value", "momentum", "nesterov", "seed"):
        assert other in rest and other not in shown
    # nothing lost: the two tables hold every key of the JSON contract's config
    from sgdtrace.views.export import _config_json

    assert shown | rest == set(_config_json(sgdtrace.trace(optimizer="adam")))


def test_a_thousand_shown_steps_stay_under_a_megabyte(tmp_path):
    from sgdtrace.views.html import PAGE_BUDGET

    out = tmp_path / "long.html"
    args = ["run", "--epochs", "334", "--rows", "1000", "--format", "html", "--output", str(out)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    text = out.read_text(encoding="utf-8")
    assert len(text.encode()) <= PAGE_BUDGET <= 1_000_000
    assert text.count('<tr class="x">') == text.count('<tr class="hand') == 1000
    # the first shown batches worked out while they fit, the others open to the command
    worked = text.count('<div class="ex">') - 1  # the section above the table holds one
    assert 10 <= worked < 1000
    assert text.count("<code>sgdtrace explain --batch ") == 1000 - worked
    assert "<code>sgdtrace explain --batch 3 --epoch 334</code>" in text
    # the CSV of 1,002 steps is more than a page holds: the command that writes it instead
    assert "data:text/csv" not in text and "--format csv</code>" in text


HARNESS = """<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>
<iframe id="f" src="%s" style="width:1200px;height:900px;border:0"></iframe>
<script>
const f = document.getElementById("f");
f.onload = () => {
  const d = f.contentDocument, r = {};
  const top = (s) => d.querySelector(s).getBoundingClientRect().top;
  r.plots = top("figure.plot svg"); r.explain = top("#h-explain"); r.table = top("table.steps");
  const size = (m) => { const b = m.getBoundingClientRect(); return [b.width, b.height]; };
  const shown = [...d.querySelectorAll("math")].filter((m) => !m.closest("details:not([open])"));
  r.math = shown.length; r.flat = shown.filter((m) => size(m).some((v) => v === 0)).length;
  const det = d.querySelector("table.steps details");
  const before = det.getBoundingClientRect().height;
  det.querySelector("summary").click();
  r.open = det.open; r.grew = det.getBoundingClientRect().height - before;
  const inner = [...det.querySelectorAll("math")];
  r.inner = inner.length; r.innerFlat = inner.filter((m) => size(m).some((v) => v === 0)).length;
  const box = d.querySelector("table.steps").closest(".scroll");
  r.boxWidth = box.getBoundingClientRect().width; r.pageWidth = d.documentElement.scrollWidth;
  const out = document.createElement("pre"); out.id = "out"; out.textContent = JSON.stringify(r);
  document.body.appendChild(out);
};
</script></body></html>"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (Debian: apt-get install chromium)")
def test_chromium_lays_the_page_out(tmp_path):
    """In a real browser, at 1200 px: the plots on the first screen and above the table, every
    typeset equation with a size, a row's <details> opening to its equations, the table in its box."""
    import json

    page = tmp_path / "page.html"
    r = CliRunner().invoke(
        cli, ["run", "--optimizer", "adam", "--lr", "0.5", "--epochs", "30", "--shuffle", "--seed", "2",
              "--format", "html", "--output", str(page)]
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    harness = tmp_path / "harness.html"
    harness.write_text(HARNESS % page.name, encoding="utf-8")
    r = chromium("--allow-file-access-from-files", "--virtual-time-budget=20000", "--dump-dom", harness.as_uri())
    found = re.search(r'<pre id="out">(.*?)</pre>', r.stdout)
    assert found, r.stderr[-2000:]
    got = json.loads(html.unescape(found.group(1)))
    assert 0 < got["plots"] < 900 and got["plots"] < got["explain"] < got["table"], got
    assert got["math"] >= 20 and got["flat"] == 0, got
    assert got["open"] is True and got["grew"] > 300, got
    assert got["inner"] >= 20 and got["innerFlat"] == 0, got
    # the wide table scrolls inside its box; the page itself is no wider than the window
    assert got["boxWidth"] <= 1200 and got["pageWidth"] <= 1200, got


# ------------------------------------------------------------------ the network's weights as heatmaps


def heat_groups(text: str) -> list:
    """Each ``<g class="heat">`` of the page, parsed as XML (the SVG it sits in is well formed)."""
    import xml.etree.ElementTree as ET

    ns = "{http://www.w3.org/2000/svg}"
    groups = []
    for svg in re.findall(r"<svg\b.*?</svg>", text, re.S):
        if 'class="heat"' in svg:
            groups += [g for g in ET.fromstring(svg).iter(f"{ns}g") if g.get("class") == "heat"]
    return groups


def heat_cells(group, side: str) -> dict[str, int]:
    """One map's cells counted by opacity level (a subpath ``M...z`` per cell)."""
    ns = "{http://www.w3.org/2000/svg}"
    counts: dict[str, int] = {}
    for g in group.iter(f"{ns}g"):
        if g.get("data-side") == side:
            for p in g.iter(f"{ns}path"):
                counts[p.get("data-level")] = counts.get(p.get("data-level"), 0) + p.get("d").count("M")
    return counts


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_networks_page_shows_its_weights_as_heatmaps(tmp_path, dtype):
    from sgdtrace.views.html import PAGE_BUDGET

    out = tmp_path / "net.html"
    args = ["run", "--model", "mlp", "--synthetic", "64", "--features", "3", "--hidden", "5", "--dtype", dtype]
    r = CliRunner().invoke(cli, [*args, "--format", "html", "--output", str(out)])
    assert r.exit_code == 0, r.output
    text = out.read_text(encoding="utf-8")
    assert len(text.encode()) <= PAGE_BUDGET
    assert "<script" not in text
    assert sections(text)[1:3] == ["h-plots", "h-weights"] and "Weights, by hand and in torch" in text
    groups = heat_groups(text)
    # W1 (5 x 3), b1 (5), W2 (1 x 5) at the focus step (the first, on an agreeing run) and the last; b2 skipped
    shapes = {"w1": (5, 3), "b1": (1, 5), "w2": (1, 5)}
    steps = sorted({g.get("data-step") for g in groups}, key=int)
    assert len(steps) == 2 and steps[0] == "1"
    assert sorted((g.get("data-param"), g.get("data-step")) for g in groups) == sorted(
        (p, k) for p in shapes for k in steps
    )
    for g in groups:
        rows, cols = shapes[g.get("data-param")]
        assert (int(g.get("data-rows")), int(g.get("data-cols"))) == (rows, cols)
        for side in ("hand", "torch", "ratio"):
            assert sum(heat_cells(g, side).values()) == rows * cols
        if dtype == "bfloat16":  # the sides agree to the bit: nothing of any allowance used
            assert heat_cells(g, "ratio") == {"0": rows * cols} and g.get("data-max-ratio") == "0"
    captions = re.findall(r'<figcaption class="muted">([^<]*)</figcaption>', text)
    assert any(c.startswith("W1 (5 × 3) after step 1: the largest |Δ| / allowance is") for c in captions)


def test_a_large_matrix_is_cut_to_the_cap_and_the_page_stays_in_budget(tmp_path):
    from sgdtrace.views.html import PAGE_BUDGET
    from sgdtrace.views.svg import HEAT_CAP

    out = tmp_path / "wide.html"
    args = ["run", "--model", "mlp", "--synthetic", "32", "--features", "40", "--hidden", "36", "--epochs", "1"]
    r = CliRunner().invoke(cli, [*args, "--format", "html", "--output", str(out)])
    assert r.exit_code == 0, r.output
    text = out.read_text(encoding="utf-8")
    assert len(text.encode()) <= PAGE_BUDGET
    w1 = [g for g in heat_groups(text) if g.get("data-param") == "w1"]
    assert w1 and all(g.get("data-shape") == "36x40" for g in w1)
    assert all(sum(heat_cells(g, "hand").values()) == HEAT_CAP * HEAT_CAP for g in w1)
    assert f"only the first {HEAT_CAP} × {HEAT_CAP} entries drawn" in text


def test_the_articles_page_has_no_heatmaps(report):
    text = report.read_text(encoding="utf-8")
    assert "Weights, by hand and in torch" not in text and not heat_groups(text)
