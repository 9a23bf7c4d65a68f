"""One batch's equations typeset in MathML: what ``sgdtrace explain`` prints, for the HTML page and
the docs site.

Browsers render MathML Core natively (Chromium 109+, Firefox, Safari): no script, no font and
nothing from the network. Every equation is written as the article writes it (``dl/dw`` as a
fraction, ``Σ`` over the batch's samples ``i``, ``w(i+1) = w(i) − (dl/dw)·lr``), then with the
batch's numbers substituted and its result; torch's value for the same result stands beside it.

The numbers are the ones the text view prints (:func:`sgdtrace.views.fmt.num`, 6 significant
digits), so the page and the terminal agree digit for digit; a negative number inside a formula is
in parentheses, as there. The symbolic form of each equation is an ``<mrow class="sym">``; what
follows it (the numbers substituted, the result) is what the tests compare with the text.

This module renders an :class:`~sgdtrace.teaching.explain.Explanation` (or its vector form,
:class:`~sgdtrace.teaching.explain.FeatureExplanation`) and computes nothing of its own: the
optimizer's lines come from :func:`~sgdtrace.teaching.explain.optimizer_lines`.
"""

from __future__ import annotations

import html
import re
from typing import Any

import numpy as np

from sgdtrace.views.fmt import num

#: per-sample terms written out in a sum before the rest is elided (as the text view)
MAX_TERMS = 4
#: rows and columns of a matrix or vector written out before the rest is elided
MAX_ROWS = 6
MAX_COLS = 4

NS = "http://www.w3.org/1998/Math/MathML"
MINUS = "\u2212"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


# ------------------------------------------------------------------ the elements


def mi(name: str) -> str:
    return f"<mi>{_e(name)}</mi>"


def mo(op: str) -> str:
    return f"<mo>{_e(op)}</mo>"


def mtext(text: str) -> str:
    return f"<mtext>{_e(text)}</mtext>"


def mn(value: float | int | str) -> str:
    """A number as the text view writes it (``num``), its minus sign typeset (U+2212)."""
    text = value if isinstance(value, str) else (str(value) if isinstance(value, int) else num(value))
    return f"<mn>{_e(text.replace('-', MINUS))}</mn>"


def mnp(value: float) -> str:
    """A number inside a formula: a negative one in parentheses (the text view's ``_p``)."""
    text = num(value)
    return seq(mo("("), mn(text), mo(")")) if text.startswith("-") else mn(text)


def row(*parts: str) -> str:
    """Parts in sequence, as one element: an ``<mrow>`` where there is more than one."""
    text = "".join(parts)
    return text if _single(text) else "<mrow>" + text + "</mrow>"


_TAG = re.compile(r"<(/?)([a-z]+)[^>]*?(/?)>")


def _single(text: str) -> bool:
    """Is ``text`` exactly one element (or empty)?"""
    if not text:
        return False
    depth, tops = 0, 0
    for m in _TAG.finditer(text):
        if m.group(3):  # <x/>
            tops += depth == 0
        elif m.group(1):
            depth -= 1
        else:
            tops += depth == 0
            depth += 1
    return tops == 1 and text.startswith("<") and text.endswith(">")


def seq(*parts: str) -> str:
    """Parts in sequence, with no element around them (inside a row)."""
    return "".join(parts)


def sym(*parts: str) -> str:
    """The symbolic form of an equation (the numbers substituted follow it)."""
    return '<mrow class="sym">' + "".join(parts) + "</mrow>"


def frac(a: str, b: str) -> str:
    return f"<mfrac>{row(a)}{row(b)}</mfrac>"


def sub(a: str, b: str) -> str:
    return f"<msub>{row(a)}{row(b)}</msub>"


def sup(a: str, b: str) -> str:
    return f"<msup>{row(a)}{row(b)}</msup>"


def paren(*parts: str, left: str = "(", right: str = ")") -> str:
    return seq(mo(left), *parts, mo(right))


def deriv(top: str, bottom: str) -> str:
    """``d top / d bottom`` as the article writes it (dl/dw): a fraction of two differentials."""
    return frac(row(mi("d"), mi(top)), row(mi("d"), mi(bottom)))


def math(*parts: str, display: str = "inline", label: str | None = None) -> str:
    aria = f' aria-label="{_e(label)}"' if label else ""
    return f'<math display="{display}" displaystyle="true"{aria}>' + "".join(parts) + "</math>"


DOT = mo("·")
EQ = mo("=")
PLUS = mo("+")
MIN = mo(MINUS)
SUM_I = "<munder>" + mo("∑") + mi("i") + "</munder>"


def xi(name: str) -> str:
    """A per-sample symbol: ``x`` of sample ``i``."""
    return sub(mi(name), mi("i"))


def ypred(i: bool = True) -> str:
    return sub(mi("y"), seq(mtext("pred"), mo(","), mi("i")) if i else mtext("pred"))


def terms(items: list[str]) -> str:
    """Terms joined by ``+``, past :data:`MAX_TERMS` the first ones and the count of the rest."""
    if len(items) > MAX_TERMS:
        rest = len(items) - MAX_TERMS + 1
        items = items[: MAX_TERMS - 1] + [seq(mo("…"), paren(mn(rest), mtext(" more")))]
    out: list[str] = []
    for k, t in enumerate(items):
        if k:
            out.append(PLUS)
        out.append(t)
    return seq(*out)


def bracket(*parts: str) -> str:
    return paren(*parts, left="[", right="]")


def one_over(n: int | str) -> str:
    return paren(frac(mn(1), mn(n) if isinstance(n, int) else mi(n)))


def two_over(n: int | str) -> str:
    return paren(frac(mn(2), mn(n) if isinstance(n, int) else mi(n)))


# ------------------------------------------------------------------ linear text to MathML

_TOKEN = re.compile(
    r"\s*(?:(?P<num>(?<![\w.])-?\d+(?:\.\d+)?(?:e[+-]?\d+)?|-?inf|nan)"
    r"|(?P<deriv>d[a-z]/d[a-z])"
    r"|(?P<fn>sqrt|max|lerp)\("
    r"|(?P<id>[A-Za-zα-ωΑ-Ω][A-Za-z0-9_α-ωΑ-Ω]*)"
    r"|(?P<sq>²)"
    r"|(?P<pow>\^\{?(?P<exp>[^}\s·]+)\}?)"
    r"|(?P<op>[-+·/=(),\[\]←−…]))"
)


def linear(text: str) -> str:
    """A formula the text view writes on one line (``m + 0.1·((-3) − m)``, ``sqrt(v)/sqrt(bc2) + eps``,
    ``1 − 0.9^{3}``) as MathML: numbers, identifiers (``β1`` as β with subscript 1, ``exp_avg_w`` as
    it is written), ``dl/dw`` as a fraction, ``sqrt(…)`` under a root, squares and powers raised."""
    out: list[str] = []
    pos = 0
    stack: list[list[str]] = []
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:  # anything else: kept as text
            out.append(mtext(text[pos]))
            pos += 1
            continue
        pos = m.end()
        if m.group("num"):
            out.append(mn(m.group("num")))
        elif m.group("deriv"):
            t = m.group("deriv")
            out.append(deriv(t[1], t[4]))
        elif m.group("fn"):
            stack.append(out)
            out = [m.group("fn")]
        elif m.group("id"):
            out.append(_ident(m.group("id")))
        elif m.group("sq"):
            out.append(sup(_base(out), mn(2)))
        elif m.group("pow"):
            out.append(sup(_base(out), linear(m.group("exp"))))
        else:
            op = m.group("op")
            if op == ")" and stack and _open_depth(out) == 0:
                fn, inner = out[0], out[1:]
                out = stack.pop()
                if fn == "sqrt":
                    out.append(f"<msqrt>{row(*inner)}</msqrt>")
                else:
                    out.append(row(mi(fn), mo("("), *inner, mo(")")))
                continue
            out.append(mo(MINUS if op == "-" else op))
    while stack:  # unbalanced: close what is open
        fn, inner = out[0], out[1:]
        out = stack.pop()
        out.append(row(mi(fn), mo("("), *inner))
    return row(*out)


def _base(out: list[str]) -> str:
    """What a power raises: the last part, or the whole group a closing parenthesis ends."""
    if not out:
        return "<mrow/>"
    if out[-1] != "<mo>)</mo>":
        return out.pop()
    depth = 0
    for i in range(len(out) - 1, -1, -1):
        depth += {"<mo>)</mo>": 1, "<mo>(</mo>": -1}.get(out[i], 0)
        if depth == 0:
            group = out[i:]
            del out[i:]
            return row(*group)
    return out.pop()


def _open_depth(parts: list[str]) -> int:
    depth = 0
    for p in parts:
        if p == "<mo>(</mo>":
            depth += 1
        elif p == "<mo>)</mo>":
            depth -= 1
    return depth


def _ident(name: str) -> str:
    m = re.fullmatch(r"([α-ωΑ-Ωa-z]+?)(\d+)", name)
    if m and len(m.group(1)) <= 2:  # β1, bc2: a letter (or two) with an index
        return sub(mi(m.group(1)), mn(m.group(2)))
    return mi(name)


# ------------------------------------------------------------------ one batch, equation by equation


class Rows:
    """The equations of a section: (label, MathML, torch's value beside) rows."""

    def __init__(self):
        self.rows: list[tuple[str, str, str]] = []

    def add(self, label: str, mathml: str, beside: str = "") -> None:
        self.rows.append((label, mathml, beside))

    def html(self, caption: str) -> str:
        body = "".join(
            f'<tr><th scope="row">{_e(lab)}</th><td class="m">{m}</td><td class="tv">{b}</td></tr>'
            for lab, m, b in self.rows
        )
        return f'<table class="eqs"><caption>{_e(caption)}</caption><tbody>{body}</tbody></table>'


def beside(ex, field: str, label: str) -> str:
    """torch's value of ``field`` at this step, and the distance in ulp (the largest over elements)."""
    u = ex.ulp(field)
    value = ex.torch_value(field)
    shown = num(float(value)) if np.ndim(value) == 0 else _short(value)
    cls = "ok" if u == 0 else "warn"
    most = " at most" if np.size(value) > 1 else ""
    out = f'torch: {_e(label)} = {_e(shown)} <span class="{cls}">({u} ulp{most})</span>'
    user = getattr(ex, "user", None)
    if user is not None and field in user and getattr(ex, "expected", None):
        ok = ex.user_ok(field)
        mark = "✓ as expected" if ok else f"✗ expected {num(ex.expected[field])}"
        out += (
            f"<br>{_e(ex.user_name)}: {_e(label)} = {_e(num(user[field]))} "
            f'<span class="{"ok" if ok else "bad"}">{_e(mark)}</span>'
        )
    return out


def _short(values) -> str:
    items = [num(v) for v in np.asarray(values, dtype=np.float64).reshape(-1).tolist()]
    if len(items) > MAX_ROWS:
        items = items[: MAX_ROWS - 1] + [f"… ({len(items) - MAX_ROWS + 1} more)"]
    return "(" + ", ".join(items) + ")"


def scalar_equations(ex) -> list[tuple[str, Rows]]:
    """The article's model, one batch: Equations 2-3, the chain rule's factors, 6-11, and the update."""
    n = ex.n
    nd = ex.nodes
    d, x, y = nd["d"].tolist(), ex.x.tolist(), ex.y.tolist()
    w0, b0 = ex.w0, ex.b0

    fwd = Rows()
    fwd.add(
        "Eq. 1",
        math(sym(ypred(), EQ, mi("w"), xi("x"), PLUS, mi("b")), label="Equation 1"),
        "per sample in the table above (c = a + b)",
    )
    es = [mnp(v) for v in nd["e"].tolist()]
    fwd.add(
        "Eq. 2-3",
        math(
            sym(
                mi("l"),
                EQ,
                one_over("n"),
                SUM_I,
                sup(paren(ypred(), MIN, xi("y")), mn(2)),
                EQ,
                one_over("n"),
                SUM_I,
                xi("e"),
            ),
            EQ,
            one_over(n),
            DOT,
            bracket(terms(es)),
            EQ,
            mn(ex.loss),
            label="Equations 2 and 3",
        ),
        beside(ex, "loss", "l"),
    )
    fwd.add("", math(sym(mi("z"), EQ, mi("l"), EQ), mn(ex.loss)))

    chain = Rows()
    chain.add("", math(sym(deriv("z", "l"), EQ), mn(1)))
    chain.add("", math(sym(deriv("l", "e"), EQ, frac(mn(1), mi("n")), EQ), frac(mn(1), mn(n)), EQ, mn(1 / n)))
    chain.add("", math(sym(deriv("e", "d"), EQ, mn(2), mi("d")), EQ, _per_sample([mn(2 * v) for v in d])))
    chain.add("", math(sym(deriv("d", "c"), EQ), mn(1)))
    chain.add("", math(sym(deriv("c", "a"), EQ), mn(1)))
    chain.add("", math(sym(deriv("c", "b"), EQ), mn(1)))
    chain.add("", math(sym(deriv("a", "w"), EQ, mi("x")), EQ, _per_sample([mn(v) for v in x])))

    wsec = Rows()
    wsec.add(
        "Eq. 6",
        math(
            sym(
                deriv("l", "w"),
                EQ,
                SUM_I,
                deriv("l", "e"),
                deriv("e", "d"),
                deriv("d", "c"),
                deriv("c", "a"),
                deriv("a", "w"),
            ),
            label="Equation 6",
        ),
    )
    t7 = [seq(mn(2), DOT, mnp(di), DOT, mn(1), DOT, mn(1), DOT, mnp(xi_)) for di, xi_ in zip(d, x)]
    wsec.add(
        "Eq. 7",
        math(
            sym(
                deriv("l", "w"),
                EQ,
                one_over("n"),
                SUM_I,
                mn(2),
                xi("d"),
                DOT,
                mn(1),
                DOT,
                mn(1),
                DOT,
                xi("x"),
            ),
            EQ,
            one_over(n),
            DOT,
            bracket(terms(t7)),
            label="Equation 7",
        ),
    )
    t8 = [seq(paren(mnp(w0), DOT, mnp(xi_), PLUS, mnp(b0), MIN, mnp(yi)), DOT, mnp(xi_)) for xi_, yi in zip(x, y)]
    wsec.add(
        "Eq. 8",
        math(
            sym(
                deriv("l", "w"),
                EQ,
                two_over("n"),
                SUM_I,
                paren(mi("w"), xi("x"), PLUS, mi("b"), MIN, xi("y")),
                DOT,
                xi("x"),
            ),
            EQ,
            two_over(n),
            DOT,
            bracket(terms(t8)),
            EQ,
            mn(ex.grad_w),
            label="Equation 8",
        ),
        beside(ex, "grad_w", "dl/dw"),
    )

    bsec = Rows()
    bsec.add(
        "Eq. 9",
        math(
            sym(deriv("l", "b"), EQ, SUM_I, deriv("l", "e"), deriv("e", "d"), deriv("d", "c"), deriv("c", "b")),
            label="Equation 9",
        ),
    )
    t10 = [seq(mn(2), DOT, mnp(di), DOT, mn(1), DOT, mn(1)) for di in d]
    bsec.add(
        "Eq. 10",
        math(
            sym(deriv("l", "b"), EQ, one_over("n"), SUM_I, mn(2), xi("d"), DOT, mn(1), DOT, mn(1)),
            EQ,
            one_over(n),
            DOT,
            bracket(terms(t10)),
            label="Equation 10",
        ),
    )
    t11 = [paren(mnp(w0), DOT, mnp(xi_), PLUS, mnp(b0), MIN, mnp(yi)) for xi_, yi in zip(x, y)]
    bsec.add(
        "Eq. 11",
        math(
            sym(deriv("l", "b"), EQ, two_over("n"), SUM_I, paren(mi("w"), xi("x"), PLUS, mi("b"), MIN, xi("y"))),
            EQ,
            two_over(n),
            DOT,
            bracket(terms(t11)),
            EQ,
            mn(ex.grad_b),
            label="Equation 11",
        ),
        beside(ex, "grad_b", "dl/db"),
    )
    return [
        ("Forward pass (Equations 1-3)", fwd),
        ("Backward pass: the chain rule, factor by factor", chain),
        ("Weight gradient (Equations 6-8)", wsec),
        ("Bias gradient (Equations 9-11)", bsec),
    ] + update_equations(ex)


def _per_sample(items: list[str]) -> str:
    more = len(items) - 8
    if more > 0:
        items = items[:8] + [mo("…")]
    out: list[str] = []
    for k, t in enumerate(items):
        if k:
            out.append(mo(","))
        out.append(t)
    return seq(mo("("), *out, mo(")"))


def _step(p: str, nxt: bool) -> str:
    """``w(i+1)`` or ``w(i)``: the article's Equations 4-5 index the batch."""
    idx = row(mi("i"), mo("+"), mn(1)) if nxt else mi("i")
    return row(mi(p), paren(idx))


def update_equations(ex) -> list[tuple[str, Rows]]:
    """Equations 4-5 (SGD, with torch.optim.SGD's options where set) or the optimizer's lines."""
    trace, k = ex.trace, ex.step
    cfg = trace.config
    out: list[tuple[str, Rows]] = []
    if cfg.scheduler is not None:
        rate = Rows()
        rate.add("", math(sym(mi("lr"), EQ), mn(_rate(ex))), beside(ex, "lr", "lr"))
        closed = _closed_rate(ex)
        if closed is not None:
            rate.add(
                "",
                math(sym(mtext("closed form (_get_closed_form_lr)"), EQ), mn(repr(closed))),
                _e(f"recursion − closed form = {_rate(ex) - closed:.3g}"),
            )
        out.append((f"Learning rate: {cfg.scheduler.name} (torch's chainable recursion)", rate))
    if cfg.optimizer != "sgd":
        from sgdtrace.config import OPTIMIZER_CLASSES

        upd = Rows()
        with np.errstate(all="ignore"):
            for p in ("w", "b"):
                for line in _lines(ex, p):
                    shown = line.template.format(
                        **{key: (str(v) if isinstance(v, int) else _pnum(v)) for key, v in line.values.items()}
                    )
                    formula, note = _note(line.formula)
                    upd.add(
                        "",
                        math(sym(linear(line.lhs), EQ, linear(formula)), EQ, linear(shown), EQ, mn(line.value)),
                        beside(ex, line.field, line.field) if line.field is not None else _e(note),
                    )
        out.append((f"Update: torch.optim.{OPTIMIZER_CLASSES[cfg.optimizer]}'s algorithm, step t = {k + 1}", upd))
        return out
    lr = _rate(ex)
    momentum = _momentum(ex)
    upd = Rows()
    params = (("w", "4", ex.w0, ex.grad_w, ex.w1, "buf_w"), ("b", "5", ex.b0, ex.grad_b, ex.b1, "buf_b"))
    for p, eq, p0, g, p1, buf in params:
        gsym, gv = deriv("l", p), g
        if cfg.maximize:
            gv = -gv
            upd.add("", math(sym(mi("g"), EQ, MIN, gsym), EQ, mn(gv)), "maximize: ascend the loss")
            gsym = mi("g")
        if cfg.weight_decay:
            upd.add(
                "",
                math(
                    sym(mi("g"), EQ, gsym, PLUS, mi("weight_decay"), DOT, mi(p)),
                    EQ,
                    mnp(gv),
                    PLUS,
                    mn(f"{cfg.weight_decay:g}"),
                    DOT,
                    mnp(p0),
                    EQ,
                    mn(gv + cfg.weight_decay * p0),
                ),
            )
            gv, gsym = gv + cfg.weight_decay * p0, mi("g")
        if buf in ex.state1:
            b1 = ex.state1[buf]
            bufsym = sub(mi("buf"), mi(p))
            if k == 0:
                upd.add("", math(sym(bufsym, EQ, gsym), EQ, mn(b1)), beside(ex, buf, buf))
            else:
                upd.add(
                    "",
                    math(
                        sym(bufsym, EQ, mi("μ"), DOT, bufsym, PLUS, paren(mn(1), MIN, mi("τ")), DOT, gsym),
                        EQ,
                        mn(f"{momentum:g}"),
                        DOT,
                        mnp(ex.state0[buf]),
                        PLUS,
                        mn(f"{1 - cfg.dampening:g}"),
                        DOT,
                        mnp(gv),
                        EQ,
                        mn(b1),
                    ),
                    beside(ex, buf, buf),
                )
            if cfg.nesterov:
                form = (paren(gsym, PLUS, mi("μ"), DOT, bufsym), DOT, mi("lr"))
                nums = (paren(mnp(gv), PLUS, mn(f"{momentum:g}"), DOT, mnp(b1)), DOT, mn(f"{lr:g}"))
            else:
                form = (bufsym, DOT, mi("lr"))
                nums = (mnp(b1), DOT, mn(f"{lr:g}"))
        else:
            form = (gsym, DOT, mi("lr"))
            nums = (mnp(gv), DOT, mn(f"{lr:g}"))
        upd.add(
            f"Eq. {eq}",
            math(
                sym(_step(p, True), EQ, _step(p, False), MIN, *form),
                EQ,
                mn(p0),
                MIN,
                *nums,
                EQ,
                mn(p1),
                label=f"Equation {eq}",
            ),
            beside(ex, p, p),
        )
        _spacing(upd, ex, p, p0)
    plain = momentum == 0 and cfg.weight_decay == 0 and not cfg.maximize
    title = (
        "Update (Equations 4-5" + ("" if plain else ", as torch.optim.SGD grows them; μ momentum, τ dampening") + ")"
    )
    out.append((title, upd))
    return out


def _note(formula: str) -> tuple[str, str]:
    """A formula and the words in parentheses at its end (``… + eps (eps outside the root)``)."""
    m = re.fullmatch(r"(.*?)\s+\(([a-z][a-z ]+)\)", formula)
    return (m.group(1), m.group(2)) if m else (formula, "")


def _spacing(upd: Rows, ex, p: str, p0: float) -> None:
    """The spacing of the dtype's values next to the parameter beside the update (the stall), where
    the text view shows it: in the 16-bit types, and wherever a step stalled."""
    s = (ex.spacing or {}).get(p)
    dtype = ex.trace.config.dtype
    if s is None or not (s["stalled"] or dtype in ("bfloat16", "float16")):
        return
    gap = s["above"] if s["update"] < 0 else s["below"]
    step = abs(s["update"])
    upd.add(
        "",
        math(
            sym(mo("|"), mi("lr"), DOT, mi("g"), mo("|"), EQ),
            mn(step),
            mo("<" if s["stalled"] else "≥"),
            sym(frac(mtext(f"spacing of {dtype} next to {p}"), mn(2)), EQ),
            frac(mn(gap), mn(2)),
        ),
        _e(f"lost to rounding: {p} stays {num(p0)} (stalled)" if s["stalled"] else f"the update moves {p}"),
    )


# ------------------------------------------------------------------ what the explanation carries


def _vector(ex) -> bool:
    """A model with parameters of a shape (a FeatureExplanation: gradients by parameter)."""
    return hasattr(ex, "grads")


def _rate(ex) -> float:
    """The learning rate the step used (the schedule's, else the config's), as the teaching
    computation worked it out (the view computes nothing)."""
    return ex.rate


def _momentum(ex) -> float:
    return ex.momentum


def _closed_rate(ex) -> float | None:
    return ex.closed_rate


def _lines(ex, param: str) -> list:
    """The optimizer's lines for ``param`` at this step, worked out by the teaching computation."""
    return (ex.lines or {}).get(param, [])


def _pnum(v: float) -> str:
    s = num(v)
    return f"({s})" if s.startswith("-") else s


# ------------------------------------------------------------------ D features: vectors and matrices


def matrix(values, rows: int = MAX_ROWS, cols: int = MAX_COLS) -> str:
    """A vector (as a column) or a matrix in brackets, elided past ``rows`` × ``cols``."""
    a = np.asarray(values, dtype=np.float64)
    if a.ndim == 0:
        return mn(float(a))
    if a.ndim == 1:
        a = a[:, None]
    r, c = a.shape
    rr = list(range(min(r, rows))) + ([None] if r > rows else [])
    cc = list(range(min(c, cols))) + ([None] if c > cols else [])
    trs = []
    for i in rr:
        tds = []
        for j in cc:
            if i is None:
                cell = mo("⋮") if j is not None else mo("⋱")
            elif j is None:
                cell = mo("⋯")
            else:
                cell = mn(float(a[i, j]))
            tds.append(f"<mtd>{cell}</mtd>")
        trs.append("<mtr>" + "".join(tds) + "</mtr>")
    return row(paren("<mtable>" + "".join(trs) + "</mtable>", left="[", right="]"))  # the brackets fit it


def shaped(name: str, shape: tuple[int, ...]) -> str:
    """A symbol (a name, or MathML) with its shape beneath: ``w`` over ``(3,)``."""
    s = "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"
    return "<munder>" + row(name if name.startswith("<") else mi(name)) + mtext(s) + "</munder>"


def feature_equations(ex) -> list[tuple[str, Rows]]:
    """The linear model on D features, one batch, in vector form: each symbol with its shape, the
    matrices and vectors substituted (elided past 6 rows and 4 columns), torch's values beside."""
    n, D = ex.x.shape
    nd = ex.nodes
    w, b = ex.start["w"], ex.start["b"]
    fwd = Rows()
    fwd.add(
        "Eq. 1",
        math(
            sym(shaped("a", (n,)), EQ, shaped("X", (n, D)), DOT, shaped("w", tuple(np.shape(w)))),
            EQ,
            matrix(ex.x),
            DOT,
            matrix(w),
            EQ,
            matrix(nd["a"]),
            label="Equation 1, the products",
        ),
    )
    fwd.add(
        "",
        math(sym(shaped("c", (n,)), EQ, mi("a"), PLUS, shaped("b", tuple(np.shape(b)))), EQ, matrix(nd["c"])),
        "b is added to every sample's a (broadcast)",
    )
    fwd.add("", math(sym(mi("d"), EQ, mi("c"), MIN, mi("y")), EQ, matrix(nd["d"])))
    es = [mnp(v) for v in nd["e"].tolist()]
    fwd.add(
        "Eq. 2-3",
        math(
            sym(mi("l"), EQ, one_over("n"), SUM_I, sup(xi("d"), mn(2))),
            EQ,
            one_over(n),
            DOT,
            bracket(terms(es)),
            EQ,
            mn(ex.loss),
            label="Equations 2 and 3",
        ),
        beside(ex, "loss", "l"),
    )
    back = Rows()
    back.add(
        "",
        math(sym(shaped(deriv("l", "d"), (n,)), EQ, frac(mn(2), mi("n")), mi("d")), EQ, matrix(nd["dl_dd"])),
    )
    back.add(
        "Eq. 8",
        math(
            sym(shaped(deriv("l", "w"), (D,)), EQ, shaped(sup(mi("X"), mi("T")), (D, n)), DOT, deriv("l", "d")),
            EQ,
            matrix(ex.x.T),
            DOT,
            matrix(nd["dl_dd"]),
            EQ,
            matrix(ex.grads["w"]),
            label="Equation 8 in vector form",
        ),
        beside(ex, "grad_w", "dl/dw"),
    )
    back.add(
        "Eq. 11",
        math(
            sym(deriv("l", "b"), EQ, SUM_I, sub(deriv("l", "d"), mi("i"))),
            EQ,
            terms([mnp(v) for v in nd["dl_dd"].tolist()]),
            EQ,
            matrix(ex.grads["b"]),
            label="Equation 11",
        ),
        beside(ex, "grad_b", "dl/db"),
    )
    upd = Rows()
    lr = _rate(ex)
    cfg = ex.trace.config
    for eq, p in zip(("4", "5"), ex.start):
        for f, state in ex.state1.items():
            if f.endswith("_" + p):
                upd.add("", math(sym(shaped(f, tuple(np.shape(state))), EQ), matrix(state)), beside(ex, f, f))
        if cfg.optimizer == "sgd" and not cfg.momentum and not cfg.weight_decay and not cfg.maximize:
            upd.add(
                f"Eq. {eq}",
                math(
                    sym(_step(p, True), EQ, _step(p, False), MIN, deriv("l", p), DOT, mi("lr")),
                    EQ,
                    matrix(ex.start[p]),
                    MIN,
                    matrix(ex.grads[p]),
                    DOT,
                    mn(f"{lr:g}"),
                    EQ,
                    matrix(ex.new[p]),
                    label=f"Equation {eq}, element by element",
                ),
                beside(ex, p, p),
            )
        else:
            upd.add(
                "",
                math(sym(_step(p, True), EQ, mtext("its line of the algorithm")), EQ, matrix(ex.new[p])),
                beside(ex, p, p),
            )
    return [
        (f"Forward pass, X of shape ({n}, {D})", fwd),
        ("Backward pass, in vector form", back),
        ("Update, element by element", upd),
    ]


def equations(ex) -> list[tuple[str, Rows]]:
    """Every section of one batch's explanation, as (title, rows)."""
    with np.errstate(all="ignore"):
        if _vector(ex):
            return feature_equations(ex)
        return scalar_equations(ex)


def forward_table(ex) -> str:
    """The batch's samples and their nodes, one row per sample (up to 8)."""
    D = ex.x.shape[1] if ex.x.ndim == 2 else None
    heads = ["i", "x" if D is None else f"x_i ({D})", "y", "a = w·x", "c = a + b", "d = c − y", "e = d²"]
    th = "".join(f'<th scope="col">{_e(h)}</th>' for h in heads)
    rows = []
    shown = min(ex.n, 8)
    nd = ex.nodes
    for i in range(shown):
        xv = num(ex.x[i]) if D is None else _short(ex.x[i])
        cells = [xv] + [num(v) for v in (ex.y[i], nd["a"][i], nd["c"][i], nd["d"][i], nd["e"][i])]
        rows.append(f'<tr><th scope="row">{ex.indices[i]}</th>' + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    if ex.n > shown:
        rows.append(f'<tr class="gap"><td colspan="7">⋮ {ex.n - shown} more samples</td></tr>')
    return (
        f'<table class="fwd"><caption>The batch\'s samples, node by node</caption><thead><tr>{th}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def typeset(ex) -> bool:
    """Whether this page typesets ``ex``'s equations: the article's model and its vector form on D
    features. Logistic regression and the network are shown as ``sgdtrace explain`` writes them."""
    return ex.form == "scalar" or (ex.form == "vector" and "a" in ex.nodes)


def explanation_html(ex) -> str:
    """One batch: where it starts from, the samples' nodes, every equation typeset with its numbers."""
    if ex.x.ndim == 2:
        start = ", ".join(f"{p} = {_short(v)}" for p, v in ex.start.items())
    else:
        start = f"w = {num(ex.w0)}, b = {num(ex.b0)}"
    where = "the initial values" if ex.step == 0 else "the previous batch's update"
    head = (
        f'<p class="muted">Samples {_e(", ".join(map(str, ex.indices.tolist()[:12])))}'
        f"{' …' if ex.n > 12 else ''} (n = {ex.n}), starting from {_e(start)} ({where}).</p>"
    )
    secs = "".join(rows.html(title) for title, rows in equations(ex))
    note = (
        "These are the manual engine's own values for this step, bit for bit as in the run."
        if ex.matches_trace
        else "Warning: the recomputed values differ from the run's manual trace."
    )
    return f'<div class="ex">{head}{forward_table(ex)}{secs}<p class="muted">{_e(note)}</p></div>'


__all__ = ["explanation_html", "equations", "linear", "math", "matrix", "typeset"]
