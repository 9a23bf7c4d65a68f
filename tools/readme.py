"""Keep the docs' example output true: re-run every marked example and paste its real output.

In README.md and in every page under docs/, a line ``<!-- sh: COMMAND -->`` right before a
fenced block marks that block as the output of COMMAND, run in the project's folder (several
commands: ``A ;; B``). ``sgdtrace ...`` commands run in process (click's CliRunner, 80 columns,
no colour); anything else runs in a shell. A ``  # comment`` after a command is shown, not run.

    python tools/readme.py                   # rewrite README.md and docs/**/*.md in place
    python tools/readme.py --check           # exit 1 and list the blocks that are out of date
    python tools/readme.py docs/sgd.md ...   # only the files named
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = re.compile(r"^<!-- sh: (?P<cmd>.+?) -->\n```[a-z]*\n(?P<body>.*?)^```\n", re.S | re.M)
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
    """Every file whose examples are kept true: README.md, then docs/**/*.md in path order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def refresh(text: str, only_sgdtrace: bool = False) -> tuple[str, list[str]]:
    """The text with every marked block re-run; and the commands whose output changed."""
    changed: list[str] = []

    def replace(m: re.Match) -> str:
        cmd = m.group("cmd")
        if only_sgdtrace and not cmd.startswith("sgdtrace "):
            return m.group(0)
        body = run_examples(cmd)
        if body != m.group("body"):
            changed.append(cmd)
        return f"<!-- sh: {cmd} -->\n```\n{body}```\n"

    os.chdir(ROOT)
    return MARK.sub(replace, text), changed


def main(argv: list[str]) -> int:
    check = "--check" in argv
    named = [Path(a).resolve() for a in argv if a != "--check"]
    run = changed_total = 0
    for path in named or pages():
        text = path.read_text(encoding="utf-8")
        new, changed = refresh(text)
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
