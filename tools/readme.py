"""Keep the docs' example output true: re-run every marked example and paste its real output.

In README.md and in every page under docs/, a line ``<!-- sh: COMMAND -->`` right before a
fenced block marks that block as the output of COMMAND, run in the project's folder (several
commands: ``A ;; B``). ``sgdtrace ...`` commands run in process (click's CliRunner, 80 columns,
no colour); anything else runs in a shell. A ``  # comment`` after a command is shown, not run.

Every notebook under docs/ (``*.ipynb``) is executed top to bottom (nbclient, in its own folder)
and stored with its outputs, so GitHub and the docs site show its results. It is compared by its
outputs' text (each output's kind and text, an image by its kind only), never by execution times
or an image's bytes: a notebook whose outputs read the same is left as it is.

    python tools/readme.py                   # rewrite README.md, docs/**/*.md and docs/**/*.ipynb in place
    python tools/readme.py --check           # exit 1 and list the blocks and notebooks that are out of date
    python tools/readme.py docs/sgd.md ...   # only the files named

Some figures depend on the machine that prints them (torch's sqrt is correctly rounded on one CPU
and not on another: see ``sgdtrace doctor``). A line ``<!-- machine: ITEM; ITEM -->`` right before
the ``sh`` line names them, and ``--check`` lets exactly those differ (a rewrite still pastes this
machine's output):

    column HEADER   the figures under the table column headed HEADER (``column max ulp``; a mark
                    beside a figure, such as the blow-up's ``⚠``, must still match)
    verdict         the verdict's figures: ``max N ulp (bit-identical)``, ``max |Δ|``, ``max rel``,
                    ``worst N% of tolerance``
    all             the whole block is this machine's report: it must run, with the same first line
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = re.compile(
    r"^(?:<!-- machine: (?P<machine>[^\n]+?) -->\n)?<!-- sh: (?P<cmd>.+?) -->\n```[a-z]*\n(?P<body>.*?)^```\n",
    re.S | re.M,
)
#: a figure in a table cell: digits, a sign, a point, an exponent, a percent sign
FIGURE = re.compile(r"^[-+0-9.e%]*$")
#: the verdict's figures, and what each becomes when compared
VERDICT = (
    (re.compile(r"max \d+ ulp(?: \(bit-identical\))?"), "max # ulp"),
    (re.compile(r"max \|Δ\| \S+"), "max |Δ| #"),
    (re.compile(r"max rel \S+"), "max rel #"),
    (re.compile(r"worst \d+% of"), "worst #% of"),
)
ENV = {"NO_COLOR": "1", "COLUMNS": "80", "TERM": "dumb"}


def run_examples(commands: str) -> str:
    """The text a reader sees for each of ``A ;; B ;; ...``: the prompt line, then what it printed."""
    return "".join(run_example(c.strip()) for c in commands.split(";;"))


def run_example(shown: str) -> str:
    """The text a reader sees for one command: the prompt line, then what it printed."""
    command = shown.split("  # ")[0].strip()
    words = shlex.split(command)
    if words and words[0] == "sgdtrace" and "|" not in command and ">" not in command:
        from click.testing import CliRunner

        from sgdtrace.cli import cli

        result = CliRunner().invoke(cli, words[1:], env=ENV)
        out = result.output
    else:
        env = dict(os.environ, **ENV)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
        proc = subprocess.run(command, shell=True, cwd=ROOT, env=env, capture_output=True, text=True)
        out = proc.stdout + proc.stderr
    lines = [line.rstrip() for line in out.rstrip("\n").splitlines()]
    return "$ " + shown + "\n" + "".join(line + "\n" for line in lines)


def pages() -> list[Path]:
    """Every file whose examples are kept true: README.md, docs/**/*.md in path order, then the notebooks."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *notebooks()]


def notebooks() -> list[Path]:
    """The notebooks stored with their outputs: docs/**/*.ipynb in path order."""
    return sorted(p for p in (ROOT / "docs").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def execute_notebook(path: Path):
    """The notebook at ``path`` run top to bottom in a fresh kernel, in its own folder (an error in a
    cell raises). Its metadata stays as stored (no kernel or Python version recorded)."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    metadata = copy.deepcopy(nb.metadata)  # (the client writes the kernel's language_info into it)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", record_timing=False, resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    nb.metadata = metadata
    return nb


def outputs_text(nb) -> list[list[tuple[str, ...]]]:
    """Per code cell, its outputs as text: the kind, then each MIME type's text (an image: its type
    only, since its bytes change with the plotting library's version). Stable from run to run."""
    cells = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outs = []
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                outs.append(("stream", out.name, out.text))
            elif out.output_type == "error":
                outs.append(("error", out.ename, out.evalue))
            else:
                data = out.get("data", {})
                outs.append(
                    (out.output_type, *(f"{k}: {v}" if k.startswith("text/") else k for k, v in sorted(data.items())))
                )
        cells.append(outs)
    return cells


def refresh_notebook(path: Path, check: bool) -> bool:
    """Run the notebook; unless ``check``, store it with its new outputs when their text changed.
    Returns whether it was out of date."""
    import nbformat

    stored = nbformat.read(path, as_version=4)
    fresh = execute_notebook(path)
    if outputs_text(fresh) == outputs_text(stored):
        return False
    if not check:
        nbformat.write(fresh, path)
    return True


def machine_items(spec: str | None) -> list[str]:
    """The items of a ``<!-- machine: ... -->`` line; an unknown one is an error in the page."""
    items = [item.strip() for item in (spec or "").split(";") if item.strip()]
    for item in items:
        if item not in ("verdict", "all") and not (item.startswith("column ") and item[len("column ") :].strip()):
            raise ValueError(f"<!-- machine: {spec} -->: {item!r} is not 'column HEADER', 'verdict' or 'all'")
    return items


def _column_spans(lines: list[str], header: str) -> list[tuple[int, int, int]]:
    """Each table's column headed ``header``: (its header line's index, the column's first and last
    + 1 character), from the end of the header before it to the end of its own (figures are
    right-aligned under it). A header line is the one above a table's rule (``───``); a block can
    hold several tables, each with its own widths."""
    spans = []
    for i, line in enumerate(lines[:-1]):
        at = re.search(r"(?:^|(?<=\s))" + re.escape(header) + r"(?=\s|$)", line)
        if at and lines[i + 1].lstrip().startswith("─"):
            spans.append((i, len(line[: at.start()].rstrip()), at.end()))
    return spans


def _masked(text: str, items: list[str]) -> list[str] | None:
    """The lines with the machine's figures blanked; None where a named column is missing. The
    verdict's figures first (its lines are not table rows); then each column's: a figure (a whole
    word) that lies within the column's span of a line after its header."""
    lines = text.splitlines()
    if "verdict" in items:
        for pattern, stand_in in VERDICT:
            lines = [pattern.sub(stand_in, line) for line in lines]
    for item in items:
        if not item.startswith("column "):
            continue
        spans = _column_spans(lines, item[len("column ") :].strip())
        if not spans:
            return None
        for (head, lo, hi), (until, _, _) in zip(spans, [*spans[1:], (len(lines), 0, 0)]):
            for i in range(head + 1, until):
                lines[i] = _blank_figures(lines[i], lo, hi)
    return lines


def _blank_figures(line: str, lo: int, hi: int) -> str:
    """``line`` with each figure that lies wholly within columns ``lo`` to ``hi`` blanked."""
    for word in re.finditer(r"\S+", line):
        if lo <= word.start() and word.end() <= hi and FIGURE.match(word.group()):
            line = line[: word.start()] + " " * len(word.group()) + line[word.end() :]
    return line


def same_but_machine(old: str, new: str, spec: str | None) -> bool:
    """Do two outputs of a block differ only where its ``machine`` line says they may?"""
    items = machine_items(spec)
    if old == new:
        return True
    if not items:
        return False
    if "all" in items:  # the prompt line, and the report's first line
        return old.splitlines()[:2] == new.splitlines()[:2]
    a, b = _masked(old, items), _masked(new, items)
    return a is not None and a == b


def refresh(text: str, only_sgdtrace: bool = False, check: bool = False) -> tuple[str, list[str]]:
    """The text with every marked block re-run; and the commands whose output changed (with
    ``check``, beyond the figures the block's ``machine`` line names)."""
    changed: list[str] = []

    def replace(m: re.Match) -> str:
        cmd, spec = m.group("cmd"), m.group("machine")
        if only_sgdtrace and not cmd.startswith("sgdtrace "):
            return m.group(0)
        body = run_examples(cmd)
        if not (same_but_machine(m.group("body"), body, spec) if check else body == m.group("body")):
            changed.append(cmd)
        machine = f"<!-- machine: {spec} -->\n" if spec else ""
        return f"{machine}<!-- sh: {cmd} -->\n```\n{body}```\n"

    os.chdir(ROOT)
    return MARK.sub(replace, text), changed


def main(argv: list[str]) -> int:
    check = "--check" in argv
    named = [Path(a).resolve() for a in argv if a != "--check"]
    run = changed_total = 0
    for path in named or pages():
        if path.suffix == ".ipynb":
            run += 1
            stale = refresh_notebook(path, check)
            changed_total += stale
            if check and stale:
                print(f"out of date: {path.relative_to(ROOT)}: its outputs")
            continue
        text = path.read_text(encoding="utf-8")
        new, changed = refresh(text, check=check)
        name = path.relative_to(ROOT)
        run += len(MARK.findall(text))
        changed_total += len(changed)
        if check:
            for cmd in changed:
                print(f"out of date: {name}: {cmd}")
        elif changed:
            path.write_text(new, encoding="utf-8")
    if check:
        return 1 if changed_total else 0
    print(f"{run} examples run, {changed_total} updated")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
