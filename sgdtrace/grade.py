"""``sgdtrace grade``: a course's autograder on the judge's per-step verdict.

An assignment (TOML) is a list of parts::

    title = "SGD, momentum and Adam by hand"

    [[part]]
    name = "Adam"
    points = 3
    grades = ["update"]            # the parts of the engine the submission's code stands for
    update = "adam_update"         # the function it is (default: the part's own name; then "update")
    visibility = "visible"         # Gradescope's: hidden, after_due_date, after_published, visible

    [[part.config]]                # one run per table: sgdtrace's run options, as in a config file
    optimizer = "adam"
    epochs = 3

Each run is judged with ``--judge step`` (each step starts from torch's values), so one early slip
costs only the steps it touches. A part's score is ``points`` times the share of its judged steps
(over its runs) that agree. Its feedback names the step, the field, the element and the likely
mistake, never the reference's numbers (``show_values`` adds yours and torch's). A submission that
fails (an exception, a hang, a wrong return, garbage on a pipe) scores 0 on the part, with the
failure's first line as the reason; the grader itself always writes a result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from sgdtrace.config import tomllib
from sgdtrace.errors import ConfigError

#: Gradescope's visibility values
VISIBILITY = ("hidden", "after_due_date", "after_published", "visible")
#: the engine parts a part may grade
GRADED = ("gradients", "update")
#: feedback lines listed per run (the count of every failing step is always given)
LISTED = 5
EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assignments", "example.toml")


@dataclass
class Part:
    name: str
    points: float
    grades: tuple[str, ...]
    functions: dict[str, str]
    visibility: str
    configs: list[dict[str, Any]]


@dataclass
class PartResult:
    part: Part
    score: float
    steps: int = 0
    agreeing: int = 0
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.part.name,
            "score": self.score,
            "max_score": self.part.points,
            "steps": self.steps,
            "agreeing_steps": self.agreeing,
            "visibility": self.part.visibility,
            "output": self.output,
        }


@dataclass
class GradeResult:
    title: str
    submission: str
    parts: list[PartResult]

    @property
    def score(self) -> float:
        return round(sum(p.score for p in self.parts), 4)

    @property
    def max_score(self) -> float:
        return sum(p.part.points for p in self.parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "submission": self.submission,
            "score": self.score,
            "max_score": self.max_score,
            "parts": [p.to_json() for p in self.parts],
        }


def _fail(path: str, what: str) -> ConfigError:
    return ConfigError(f"--assignment {path!r}: {what}")


def load_assignment(path: str) -> tuple[str, list[Part]]:
    """The assignment's title and parts; :class:`ConfigError` (exit 2) naming what is wrong."""
    from sgdtrace.config import build_config

    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise _fail(path, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(path, f"cannot be read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise _fail(path, f"not valid TOML: {exc}") from None
    unknown = set(doc) - {"title", "part"}
    if unknown:
        raise _fail(path, f"unknown key {sorted(unknown)[0]!r}; allowed: title, [[part]]")
    raw = doc.get("part")
    if not isinstance(raw, list) or not raw:
        raise _fail(path, "no [[part]] tables: an assignment has at least one part")
    parts = []
    for i, p in enumerate(raw, 1):
        where = f"part {i}"
        allowed = {"name", "points", "grades", "visibility", "config", *GRADED}
        extra = set(p) - allowed
        if extra:
            raise _fail(path, f"{where}: unknown key {sorted(extra)[0]!r}; allowed: {', '.join(sorted(allowed))}")
        name = p.get("name")
        if not isinstance(name, str) or not name:
            raise _fail(path, f"{where}: name must be a text")
        points = p.get("points")
        if isinstance(points, bool) or not isinstance(points, (int, float)) or not points >= 0:
            raise _fail(path, f"part {name!r}: points = {points!r}: must be a number >= 0")
        grades = p.get("grades", list(GRADED))
        if not isinstance(grades, list) or not grades or any(g not in GRADED for g in grades):
            raise _fail(path, f"part {name!r}: grades = {grades!r}: must list some of {', '.join(GRADED)}")
        visibility = p.get("visibility", "visible")
        if visibility not in VISIBILITY:
            raise _fail(path, f"part {name!r}: visibility = {visibility!r}: allowed: {', '.join(VISIBILITY)}")
        functions = {}
        for g in GRADED:
            fn = p.get(g, g)
            if not isinstance(fn, str) or not fn.isidentifier():
                raise _fail(path, f"part {name!r}: {g} = {fn!r}: must be a function's name")
            functions[g] = fn
        configs = p.get("config", [{}])
        if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs) or not configs:
            raise _fail(path, f"part {name!r}: config must be [[part.config]] tables of run options")
        for c in configs:  # each run's options are checked before anything runs
            if "engine" in c or "engine_cmd" in c or "judge" in c:
                raise _fail(path, f"part {name!r}: a config sets the engine and the judge itself; leave them out")
            try:
                build_config(_options(c, path), {}, path)
            except ConfigError as exc:
                raise _fail(path, f"part {name!r}: {exc}") from None
        parts.append(Part(name, float(points), tuple(grades), functions, visibility, configs))
    title = doc.get("title", os.path.splitext(os.path.basename(path))[0])
    return str(title), parts


def _options(values: dict[str, Any], path: str) -> dict[str, Any]:
    """A [[part.config]] table as a config file's values (keys spelled either way, data paths
    relative to the assignment's folder)."""
    out = {}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key == "data" and isinstance(value, str) and not os.path.isabs(value):
            value = os.path.join(os.path.dirname(os.path.abspath(path)), value)
        out[key] = value
    return out


def _engine(submission: str | None, command: str | None, part: Part, timeout: float):
    if command is not None:
        from sgdtrace.engines.command import CommandEngine

        return CommandEngine(command, timeout, use=part.grades)
    from sgdtrace.engines.user import UserEngine

    return UserEngine(submission, timeout, use=_functions(submission, part))


def _functions(submission: str, part: Part) -> dict[str, str | None]:
    """The submission's function for each part this part grades (its own name, else the part's
    name: ``update``), and None (sgdtrace's own) for the others."""
    import ast

    try:
        with open(submission, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    except (OSError, SyntaxError, ValueError):
        defined = set()  # the child reports the syntax error
    use: dict[str, str | None] = {}
    for g in GRADED:
        if g not in part.grades:
            use[g] = None
            continue
        fn = part.functions[g]
        use[g] = fn if fn in defined or g not in defined else g  # the part's function, else the generic one
    return use


def _where(row: dict[str, Any], config_no: int, configs: int) -> str:
    run = f"run {config_no}, " if configs > 1 else ""
    index = row.get("index") or []
    element = "" if not index else "[" + ",".join(str(i) for i in index) + "]"
    return f"{run}step {row['step']} (epoch {row['epoch']}, batch {row['batch']}), {row['field']}{element}"


def grade_part(part: Part, submission: str | None, command: str | None, timeout: float, show_values: bool, path):
    """One part's score and feedback (a failure of the submission scores 0, with its reason)."""
    from sgdtrace.config import build_config
    from sgdtrace.errors import SgdtraceError
    from sgdtrace.tracing import run_trace

    result = PartResult(part, 0.0)
    for i, values in enumerate(part.configs, 1):
        cfg = build_config({**_options(values, path), "judge": "step"}, {}, path)
        try:
            trace = run_trace(cfg, engine=_engine(submission, command, part, timeout))
        except SgdtraceError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return PartResult(part, 0.0, result.steps, 0, [f"0 points: {reason}"])
        except Exception as exc:  # the grader never crashes: this part scores 0, with the reason  # noqa: BLE001
            return PartResult(part, 0.0, result.steps, 0, [f"0 points: sgdtrace could not run it ({exc})"])
        listed = trace.verdict.divergent_steps or {"count": 0, "steps": []}
        steps = trace.n_steps
        result.steps += steps
        result.agreeing += steps - int(listed["count"])
        for row in listed["steps"][:LISTED]:
            line = _where(row, i, len(part.configs))
            diagnosis = row.get("diagnosis")
            text = diagnosis["text"] if diagnosis else "differs from torch beyond rounding"
            label = line.rsplit(", ", 1)[1] + ": "
            line += ": " + (text[len(label) :] if text.startswith(label) else text)
            if show_values:
                k, index = row["step"] - 1, tuple(row.get("index") or ())
                yours = float(trace.manual[row["field"]][(k, *index)])
                ref = float(trace.torch[row["field"]][(k, *index)])
                line += f" (yours {yours!r}, torch's {ref!r})"
            result.lines.append(line)
        if listed["count"] > LISTED:
            result.lines.append(f"... and {listed['count'] - LISTED} more divergent steps in this run")
    result.score = round(part.points * (result.agreeing / result.steps if result.steps else 0.0), 4)
    summary = f"{result.agreeing} of {result.steps} steps agree with torch"
    result.lines.insert(0, summary + (" (each started from torch's values)" if result.lines else ""))
    return result


def grade(
    submission: str | None,
    command: str | None = None,
    assignment: str | None = None,
    timeout: float | None = None,
    show_values: bool = False,
) -> GradeResult:
    from sgdtrace.config import ENGINE_TIMEOUT

    path = assignment or EXAMPLE
    title, parts = load_assignment(path)
    timeout = ENGINE_TIMEOUT if timeout is None else timeout
    if submission is not None:
        submission = os.path.abspath(submission)
    results = [grade_part(p, submission, command, timeout, show_values, path) for p in parts]
    return GradeResult(title, command if command is not None else submission, results)


# ------------------------------------------------------------------ the formats


def render_text(result: GradeResult) -> str:
    lines = [f"{result.title}: {result.submission}"]
    for p in result.parts:
        lines.append(f"{p.part.name}: {p.score:g} / {p.part.points:g}")
        lines += ["  " + ln for ln in p.lines]
    lines.append(f"total: {result.score:g} / {result.max_score:g}")
    return "\n".join(lines) + "\n"


def render_json(result: GradeResult) -> str:
    import json

    return json.dumps(result.to_json(), indent=2) + "\n"


def render_gradescope(result: GradeResult) -> str:
    """Gradescope's ``results.json``: ``score`` and ``tests[]`` (name, score, max_score, output, visibility)."""
    import json

    doc = {
        "score": result.score,
        "tests": [
            {
                "name": p.part.name,
                "score": p.score,
                "max_score": p.part.points,
                "output": p.output,
                "visibility": p.part.visibility,
            }
            for p in result.parts
        ],
    }
    return json.dumps(doc, indent=2) + "\n"


def render_junit(result: GradeResult) -> str:
    """One test case per part; it passes only at full points."""
    import xml.etree.ElementTree as ET

    suites = ET.Element("testsuites", name="sgdtrace grade")
    failures = sum(p.score < p.part.points for p in result.parts)
    suite = ET.SubElement(
        suites, "testsuite", name=result.title, tests=str(len(result.parts)), failures=str(failures), errors="0"
    )
    for p in result.parts:
        case = ET.SubElement(suite, "testcase", classname="sgdtrace.grade", name=p.part.name)
        ET.SubElement(case, "properties")
        if p.score < p.part.points:
            fail = ET.SubElement(case, "failure", message=f"{p.score:g} / {p.part.points:g}")
            fail.text = p.output
        else:
            ET.SubElement(case, "system-out").text = p.output
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode") + "\n"


RENDER = {"text": render_text, "json": render_json, "gradescope": render_gradescope, "junit": render_junit}
