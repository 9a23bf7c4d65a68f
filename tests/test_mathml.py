"""The equations typeset in MathML (``sgdtrace.views.mathml``): well-formed XML, every equation of
``sgdtrace explain`` with its number, and the numbers substituted into each one the very numbers
the text view prints (the symbolic form, an ``<mrow class="sym">``, aside)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter

import numpy as np
import pytest

import sgdtrace
from sgdtrace.teaching.explain import explain_step
from sgdtrace.views.explain import explain_view
from sgdtrace.views.fmt import num
from sgdtrace.views.html import _rich_text
from sgdtrace.views.mathml import equations, explanation_html, linear, matrix

#: a number as the text view writes it (not a digit inside a name such as β1 or bc2)
NUM = re.compile(r"(?<![\w.])-?(?:\d+(?:\.\d+)?(?:e[+-]\d+)?|inf|nan)(?![\w.])")
#: words a formula's numbers may sit in (functions, the elided terms' count)
WORDS = re.compile(r"sqrt|max|lerp|more|per sample|maximize: ascend the loss|the first step starts the buffer")


def mathml_numbers(markup: str) -> list[str]:
    """The numbers of a ``<math>`` element outside its symbolic form, in document order."""
    root = ET.fromstring(markup)
    out: list[str] = []

    def walk(el):
        if el.get("class") == "sym":
            return
        if el.tag == "mn":
            out.append(el.text.replace("\u2212", "-"))
        elif el.tag == "mtext" and el.text:
            out.extend(NUM.findall(el.text))
        for child in el:
            walk(child)

    walk(root)
    return out


def symbolic(segment: str) -> bool:
    """A segment of ``a = b = c`` written in symbols (not numbers)."""
    rest = WORDS.sub("", NUM.sub("", segment))
    return bool(re.search(r"[A-Za-zα-ωΣ]", rest))


def text_numbers(formula: str) -> list[str]:
    """The numbers of a text view formula after its symbolic segments, e.g. of
    ``dl/dw = (2/n)·Σ (w·x + b − y)·x = (2/3)·[...] = -26.6667`` those of the last two."""
    segments = re.split(r" = |, per sample: ", formula.replace("²", "^2"))
    out: list[str] = []
    for seg in segments:
        if not symbolic(seg):
            out.extend(NUM.findall(seg))
    return out


def text_rows(ex) -> dict[str, list[tuple[str, str]]]:
    """The text view's rows by section title: (label, formula), torch's lines left out."""
    text = _rich_text(explain_view(ex), width=2000)
    sections: dict[str, list[tuple[str, str]]] = {}
    title = None
    for line in text.splitlines():
        if not line.strip():
            title = None
            continue
        if title is None:
            title = line
            sections[title] = []
            continue
        label, formula = line[:8].strip(), line[8:].strip()
        aside = formula.startswith("torch:") or formula.startswith("spacing of")
        if (line.startswith(" " * 8) or label.startswith("Eq.")) and not aside:
            sections[title].append((label, formula))
    return sections


CONFIGS = {
    "article": {},
    "article lr 0.1": {"lr": 0.1},
    "momentum": {"momentum": 0.9},
    "nesterov, weight decay, maximize": {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1, "maximize": True},
    "dampening": {"momentum": 0.9, "dampening": 0.5},
    "adam": {"optimizer": "adam", "lr": 0.5},
    "adamw amsgrad": {"optimizer": "adamw", "amsgrad": True},
    "rmsprop centered momentum": {"optimizer": "rmsprop", "centered": True, "momentum": 0.5},
    "rmsprop": {"optimizer": "rmsprop"},
    "adagrad": {"optimizer": "adagrad", "lr_decay": 0.1},
    "float64 batch 4": {"dtype": "float64", "batch_size": 4},
    "batch 9": {"batch_size": 9, "epochs": 2},
    "bfloat16 stall": {"dtype": "bfloat16", "init_w": 500.0, "init_b": 5.0, "lr": 2e-5},
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def case(request):
    trace = sgdtrace.trace(**CONFIGS[request.param])
    return [
        explain_step(trace, b, e)
        for e in range(1, trace.config.epochs + 1)
        for b in range(1, 2 + (trace.plan.steps_per_epoch > 1))
    ]


def test_the_fragment_is_well_formed_xml(case):
    for ex in case:
        frag = explanation_html(ex)
        root = ET.fromstring(frag.replace("<br>", "<br/>"))  # the page's only void element here
        maths = root.findall(".//math")
        assert maths and all(m.get("display") == "inline" for m in maths)
        # MathML elements only inside <math>, and each script element with its two children
        for m in maths:
            for el in m.iter():
                assert el.tag.startswith("m") or el.tag == "math", el.tag
                if el.tag in ("mfrac", "msub", "msup", "munder"):
                    assert len(el) == 2, ET.tostring(el, encoding="unicode")


def test_every_numbered_equation_is_typeset_with_the_text_views_numbers(case):
    for ex in case:
        text = {lab: f for rows in text_rows(ex).values() for lab, f in rows if lab}
        typeset = {lab: m for _, rows in equations(ex) for lab, m, _ in rows.rows if lab}
        # every number of the text view's equations ...
        assert set(text) <= set(typeset), (sorted(text), sorted(typeset))
        for lab, formula in text.items():
            want, got = text_numbers(formula), mathml_numbers(typeset[lab])
            # ... substituted in the typeset one, no more and no fewer (Eq. 4 writes (dl/dw)·lr, as the
            # article does, where the text writes lr·dl/dw: the same numbers in another order)
            assert Counter(got) == Counter(want), (lab, formula, got)
        if ex.trace.config.optimizer == "sgd":
            assert {"Eq. 2-3", "Eq. 4", "Eq. 5", "Eq. 6", "Eq. 7", "Eq. 8", "Eq. 9", "Eq. 10", "Eq. 11"} <= set(typeset)


def test_the_chain_rule_and_every_update_line_match_the_text_view(case):
    """The unnumbered rows too: the chain rule's factors, and every line of the update (SGD's
    momentum, weight decay, maximize; Adam's, RMSprop's, Adagrad's algorithm), in order."""
    for ex in case:
        sections = text_rows(ex)
        typeset = dict((title.split(" (")[0].split(":")[0], rows) for title, rows in equations(ex))
        for title, rows in sections.items():
            key = "Backward pass" if title.startswith("Backward") else "Update" if title.startswith("Update") else None
            if key is None:
                continue
            mine = [m for _, m, _ in typeset[key].rows if "spacing of" not in m]  # the text's "spacing of" too
            assert len(mine) == len(rows), (title, rows)
            for (_lab, formula), m in zip(rows, mine):
                assert Counter(mathml_numbers(m)) == Counter(text_numbers(formula)), (formula, mathml_numbers(m))


def test_the_stall_beside_the_update():
    """bfloat16, w = 500: the update is under half the spacing of the values next to w, w stays."""
    ex = explain_step(sgdtrace.trace(dtype="bfloat16", init_w=500.0, init_b=5.0, lr=2e-5), 1)
    rows = [(m, b) for title, rows in equations(ex) if title.startswith("Update") for _, m, b in rows.rows]
    stall = [(m, b) for m, b in rows if "spacing of bfloat16 next to w" in m]
    assert len(stall) == 1 and "w stays 500 (stalled)" in stall[0][1]
    spacing = ex.spacing["w"]
    got = mathml_numbers(stall[0][0])
    assert got == [num(abs(spacing["update"])), num(spacing["above"]), "2"] and "<mo><</mo>" in stall[0][0].replace(
        "&lt;", "<"
    )


def test_torch_value_beside_each_result():
    ex = explain_step(sgdtrace.trace(optimizer="adam"), 2)
    beside = {lab or m: b for _, rows in equations(ex) for lab, m, b in rows.rows}
    assert f"torch: dl/dw = {num(ex.torch_value('grad_w'))}" in beside["Eq. 8"]
    assert f"torch: l = {num(ex.torch_value('loss'))}" in beside["Eq. 2-3"]
    lines = [b for _, rows in equations(ex) for _, _, b in rows.rows if b.startswith("torch: exp_avg_w")]
    assert lines and num(ex.torch_value("exp_avg_w")) in lines[0]


def test_vectors_and_matrices_with_their_shapes():
    trace = sgdtrace.trace(features=3, synthetic=20, batch_size=5)
    ex = explain_step(trace, 2)
    frag = explanation_html(ex)
    ET.fromstring(frag.replace("<br>", "<br/>"))
    eqs = {lab: m for _, rows in equations(ex) for lab, m, _ in rows.rows if lab}
    # Xᵀ·dl/dd: X (5, 3) transposed, then its values, then dl/dw of shape (3,)
    root = ET.fromstring(eqs["Eq. 8"])
    shapes = [el.text for el in root.iter("mtext")]
    assert "(3, 5)" in shapes and "(3,)" in shapes
    tables = list(root.iter("mtable"))
    assert [len(list(t.iter("mtr"))) for t in tables] == [3, 5, 3]  # Xᵀ, dl/dd, dl/dw
    result = [mn.text.replace("\u2212", "-") for mn in tables[-1].iter("mn")]
    assert result == [num(v) for v in ex.grads["w"]]
    # the forward pass: X (5, 3)·w (3,)
    fwd = ET.fromstring(eqs["Eq. 1"])
    assert {"(5, 3)", "(3,)", "(5,)"} <= {el.text for el in fwd.iter("mtext")}
    a = [mn.text.replace("\u2212", "-") for mn in list(fwd.iter("mtable"))[-1].iter("mn")]
    assert a == [num(v) for v in ex.nodes["a"]]
    loss = mathml_numbers(eqs["Eq. 2-3"])[-1]
    assert loss == num(ex.loss)
    text = _rich_text(explain_view(ex), width=2000)
    assert f"= {loss}" in text and all(num(v) in text for v in ex.grads["w"])


def test_a_matrix_past_six_rows_is_elided():
    m = ET.fromstring("<mrow>" + matrix(np.arange(40.0).reshape(10, 4)) + "</mrow>")
    rows = list(m.iter("mtr"))
    assert len(rows) == 7 and "⋮" in ET.tostring(rows[-1], encoding="unicode")
    assert [mn.text for mn in rows[0].iter("mn")] == ["0", "1", "2", "3"]
    wide = ET.fromstring("<mrow>" + matrix(np.arange(10.0)[None, :]) + "</mrow>")
    assert "⋯" in ET.tostring(wide, encoding="unicode") and len(list(wide.iter("mn"))) == 4


def test_linear_formulas():
    root = ET.fromstring(linear("sqrt(1.86423)/sqrt(0.001999) + 1e-08"))
    assert [el.tag for el in root if el.tag != "mo"] == ["msqrt", "msqrt", "mn"]
    assert [mn.text for mn in root.iter("mn")] == ["1.86423", "0.001999", "1e\u221208"]
    sq = ET.fromstring(linear("0.001·(-35.9)²"))
    sup = sq.find("msup")
    assert sup is not None and [c.text for c in sup[0]] == ["(", "\u221235.9", ")"] and sup[1].text == "2"
    beta = ET.fromstring(linear("1 − β1^{3}"))
    assert beta.find("msup/msub/mi").text == "β" and beta.find("msup/mn").text == "3"
    d = ET.fromstring(linear("dl/dw"))
    assert d.tag == "mfrac" and [el.text for el in d.iter("mi")] == ["d", "l", "d", "w"]


def test_the_docs_site_shows_the_same_equations():
    """docs/explain.md's ``<!-- equations: ... -->`` lines become, at build time, the fragment the
    HTML page shows for that batch; the site fetches no font (nor anything else) from the network."""
    import importlib.util
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", root / "tools" / "mkdocs_hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = (root / "docs" / "explain.md").read_text(encoding="utf-8")
    marks = hooks.EQUATIONS.findall(page)
    assert marks == ["--batch 2", "--batch 2 --features 3 --synthetic 20 --batch-size 5"]
    built = hooks.on_page_markdown(page, None, None, None)
    article = explanation_html(explain_step(sgdtrace.trace(), 2))
    features = explanation_html(explain_step(sgdtrace.trace(features=3, synthetic=20, batch_size=5), 2))
    assert article in built and features in built and "<!-- equations:" not in built
    with pytest.raises(ValueError, match="--device"):
        hooks.equations_html("--batch 1 --device cuda")
    config = yaml.safe_load((root / "mkdocs.yml").read_text().replace("!!python", "#"))
    assert config["theme"]["font"] is False
