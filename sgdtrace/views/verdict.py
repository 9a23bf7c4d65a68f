"""The verdict's sentences, built once: agree or diverge (naming the first divergent step), and
any blow-up. Renderers style the segments (:func:`rich_text`) or drop the styles (:func:`plain`):
the table, the markdown export, the HTML page and the notebook say the same words.
"""

from __future__ import annotations

from sgdtrace.labels import STATE_NAMES
from sgdtrace.views.fmt import field_label, num, percent, sci

#: (text, style) pieces; the style is a rich style name, "" for none
Segment = tuple[str, str]


def _state_key(field: str) -> str:
    """torch's name of a recorded state column's entry (``buf_w`` -> ``momentum_buffer``)."""
    recorded = field.rsplit("_", 1)[0]
    return {v: k for k, v in STATE_NAMES.items()}.get(recorded, recorded)


def show(value: float | str | None) -> str:
    """A value in a verdict sentence: 8 significant digits, non-finite spelled out, None as n/a."""
    if value is None:
        return "n/a"
    return value if isinstance(value, str) else num(value, 8)


def allowance(trace, tol: float) -> str:
    """A step's rounding allowance in words a learner can act on: the number, and where it is only
    the underflow floor (``atol``: nothing in the step rounds, so the values must be equal) or 0
    (an exact operation), say so."""
    from sgdtrace.divergence import tolerances

    _, atol = tolerances(trace.config)
    if tol == 0:
        return "0 (the operation is exact here: the values must be equal)"
    if tol <= atol:
        return f"{show(tol)} (only the underflow floor atol: nothing in this step rounds, so the values must be equal)"
    return show(tol)


def segments(trace, marked: bool = True) -> list[Segment]:
    """The verdict of ``trace`` as styled segments; lines are separated by "\\n".

    ``marked``: the view marks the blow-up's row with ⚠ (the table, the HTML page), so the
    sentence points at it.
    """
    from sgdtrace.divergence import tolerances

    v = trace.verdict
    out: list[Segment] = []
    if v.ok:
        rtol, _ = tolerances(trace.config)
        same = " (bit-identical)" if v.max_ulp == 0 else ""
        values = sum(int(trace.divergence[f].ok.size) for f in trace.fields)  # every element of every step
        out += [
            ("✓ agree", "bold green"),
            (
                f"  all {values} values within tolerance; max {v.max_ulp} ulp{same}\n"
                f"  max |Δ| {sci(v.max_abs)} · max rel {sci(v.max_rel)} · worst {percent(v.max_tol_ratio)} of "
                f"tolerance (rtol {sci(rtol)})",
                "",
            ),
        ]
    else:
        f = v.first_divergent_step
        out += [
            ("✗ diverge", "bold red"),
            (
                f"  first at epoch {f.epoch} batch {f.batch} (step {f.step}), "
                f"{field_label(f.field)}{_index(getattr(f, 'index', ()))}: "
                f"{getattr(trace, 'hand', 'hand')} {show(f.manual)}, torch {show(f.torch)}, |Δ| {show(f.abs)}"
                + (f" of which {show(f.carried)} carried in" if f.carried else "")
                + f"; the step's own part exceeds its rounding allowance {allowance(trace, f.tol)}",
                "",
            ),
        ]
        if f.diagnosis:  # the likely mistake (sgdtrace.diagnosis)
            out += [("\n  Likely mistake: ", "bold"), (f.diagnosis["text"], "")]
        out += closer_segments(f, getattr(trace, "hand", "hand"))
    engine = getattr(trace, "engine", None)
    if engine is not None and engine.not_kept:
        keys = ", ".join(dict.fromkeys(f'state["{_state_key(f)}"]' for f in engine.not_kept))
        out += [
            (
                f"\n  not kept by {engine.name}: {', '.join(engine.not_kept)} (torch's state; not judged: keep it "
                f"under torch's name, {keys}, to have it judged; the steps it feeds are judged with its "
                "difference carried)",
                "yellow",
            )
        ]
    if getattr(v, "ambiguous", None):  # relu's kink within rounding: either branch is honest
        out += [
            (f"\n~ {v.ambiguous} ambiguous", "bold yellow"),
            (
                f" element{'s' if v.ambiguous != 1 else ''} of z1 lay within rounding of relu's kink at 0: "
                "either side may honestly take either branch there, so what follows from them was allowed "
                "that branch's effect (counted, not failed)",
                "",
            ),
        ]
    for st in getattr(v, "stalled", None) or ():  # the updates lost to rounding
        out += [
            (f"\n= {st.field} stalled", "bold yellow"),
            (
                f" at {st.steps} step{'s' if st.steps != 1 else ''} from step {st.first_step} on"
                + (" (the values marked =)" if marked else "")
                + f": lr·g was under half the spacing of {trace.config.dtype} values around {st.field}, so the "
                f"update rounded back to {st.field} itself; `sgdtrace explain` shows the spacing",
                "",
            ),
        ]
    o = getattr(v, "one_sided", None)
    if o:  # inf or nan on one side only: a divergence between the sides, not a blow-up of the training
        who = getattr(trace, "hand", "hand") if o.side == "hand" else "torch"
        other = "torch's" if o.side == "hand" else f"{getattr(trace, 'hand', 'hand')}'s"
        out += [
            (f"\n⚠ only {who} went to inf or nan", "bold yellow"),
            (
                f" at epoch {o.epoch} batch {o.batch} (step {o.step}): {o.values}, while {other} values stay "
                "finite: a divergence between the two sides, not a blow-up of the training"
                + (
                    f" (allowed: within rounding of the largest {trace.config.dtype} value, where the two sides "
                    "may overflow a step apart)"
                    if o.allowed
                    else ""
                )
                + (f"; {o.reason}" if o.reason else "")
                + ".",
                "",
            ),
        ]
    d = v.diverged_training
    if d:
        where = f"step {d.step}, the row marked ⚠" if marked else f"step {d.step}"
        out += [
            ("\n⚠ training blew up", "bold yellow"),
            (f" at epoch {d.epoch} batch {d.batch} ({where}): {d.reason}.\n  Hint: {d.hint}.", ""),
        ]
    return out


def _index(index) -> str:
    """``[2]``: the element of a field with a shape (nothing for a scalar)."""
    return "" if not index else "[" + ",".join(map(str, index)) + "]"


def closer_segments(f, hand: str) -> list[Segment]:
    """Which side the step worked exactly from its own start is nearer (sgdtrace.reference.closer),
    in words; nothing where it was not worked out."""
    errors = getattr(f, "exact_error", None)
    if not errors:
        return []
    off = f"{hand} off by {show(errors['hand'])}, torch by {show(errors['torch'])}"
    if f.closer is None:
        said = f"neither side is nearer the exact step from its own start ({off})."
    elif f.closer == "torch":
        said = f"torch is nearer the exact step from its own start ({off})."
    else:
        whose = "the hand side's" if hand == "hand" else f"{hand}'s"
        said = (
            f"{hand} is nearer the exact step from its own start ({off}): torch's own value is off here, not {whose}."
        )
    return [("\n  Ground truth: ", "bold"), (said, "")]


def plain(trace, marked: bool = True) -> str:
    """The verdict as plain text (markdown, HTML)."""
    return "".join(text for text, _ in segments(trace, marked))


def rich_text(trace, marked: bool = True):
    """The verdict as a rich Text (the terminal)."""
    from rich.text import Text

    out = Text()
    for text, style in segments(trace, marked):
        out.append(text, style=style or None)
    return out
