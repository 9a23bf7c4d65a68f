"""The command line, in process (CliRunner) and for real (a subprocess of the installed script)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sgdtrace import __version__
from sgdtrace.cli import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def runner():
    return CliRunner()


def invoke(runner, *args):
    return runner.invoke(cli, list(args), catch_exceptions=False)


def test_run_prints_the_articles_table(runner):
    result = invoke(runner, "run")
    assert result.exit_code == 0
    out = result.output
    for text in (
        "-26.6667",
        "-24",
        "0.266667",
        "0.24",
        "146.667",  # batch 1
        "-135.858",
        "-33.3867",
        "1.62524",
        "0.573867",
        "280.67",  # batch 2
        "-169.192",
        "-24.0988",
        "3.31716",
        "0.814855",
        "145.282",
    ):  # batch 3
        assert text in out
    assert out.count("hand") == 3 and out.count("torch") >= 3
    assert "✓ agree" in out


def test_table_fits_80_columns_and_is_plain_when_piped(runner):
    out = invoke(runner, "run").output
    assert "\x1b[" not in out  # no colour codes when not a terminal
    assert max(len(line) for line in out.splitlines()) <= 80


def test_json_matches_the_contract(runner):
    result = invoke(runner, "run", "--format", "json")
    assert result.exit_code == 0
    doc = json.loads(result.output)
    assert set(doc) >= {"sgdtrace", "config", "steps", "verdict"}
    assert doc["sgdtrace"] == __version__
    cfg = doc["config"]
    expected = {
        "lr": 0.01,
        "batch_size": 3,
        "epochs": 1,
        "momentum": 0.0,
        "dampening": 0.0,
        "nesterov": False,
        "weight_decay": 0.0,
        "maximize": False,
        "init_w": 0.0,
        "init_b": 0.0,
        "shuffle": False,
        "seed": None,
        "drop_last": False,
        "device": "cpu",
        "dtype": "float32",
    }
    for key, value in expected.items():
        assert cfg[key] == value, key
    assert isinstance(cfg["rtol"], float) and isinstance(cfg["atol"], float)
    assert cfg["data"] == {"source": "article", "n": 9}
    assert len(doc["steps"]) == 3
    first = doc["steps"][0]
    assert (first["epoch"], first["batch"], first["n"], first["indices"]) == (1, 1, 3, [0, 1, 2])
    assert doc["steps"][2]["indices"] == [6, 7, 8]
    for engine in ("manual", "torch"):
        assert set(first[engine]) == {"grad_w", "grad_b", "loss", "w", "b", "stalled_w", "stalled_b"}
        assert first[engine]["stalled_w"] is False and first[engine]["stalled_b"] is False
    assert set(first["divergence"]) == {"grad_w", "grad_b", "loss", "w", "b"}  # the flags are not judged
    assert doc["verdict"]["stalled"] is None
    assert first["manual"]["grad_b"] == -24.0
    assert first["manual"]["grad_w"] == pytest.approx(-26.6667, abs=1e-4)
    assert first["manual"]["loss"] == pytest.approx(146.6667, abs=1e-4)
    for _field, d in first["divergence"].items():
        assert {"abs", "rel", "ulp"} <= set(d)
        assert d["ulp"] == 0 and d["abs"] == 0.0
    v = doc["verdict"]
    assert set(v) >= {"ok", "max_abs", "max_rel", "max_ulp", "first_divergent_step", "diverged_training"}
    assert v["ok"] is True and v["first_divergent_step"] is None and v["diverged_training"] is None


def test_csv_and_markdown_exports(runner):
    csv_out = invoke(runner, "run", "--format", "csv").output.splitlines()
    assert csv_out[0].startswith("epoch,batch,n,manual_grad_w")
    assert len(csv_out) == 4
    md = invoke(runner, "run", "--format", "markdown").output
    assert md.count("\n|") >= 5 and "dl/dw (hand)" in md


def test_output_file_written_whole(runner, tmp_path):
    out = tmp_path / "run.json"
    result = invoke(runner, "run", "--format", "json", "--output", str(out))
    assert result.exit_code == 0 and result.output == ""
    assert json.loads(out.read_text())["verdict"]["ok"] is True
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temporary file left behind


def test_config_file_and_flag_precedence(runner, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('lr = 0.1\nbatch-size = 3\nformat = "json"\n')
    doc = json.loads(invoke(runner, "run", "--config", str(cfg)).output)
    assert doc["config"]["lr"] == 0.1
    doc = json.loads(invoke(runner, "run", "--config", str(cfg), "--lr", "0.02").output)
    assert doc["config"]["lr"] == 0.02


def test_compare_two_dtypes(runner):
    result = invoke(runner, "compare", "--dtype", "float32", "--dtype", "float64", "--format", "json")
    assert result.exit_code == 0
    doc = json.loads(result.output)
    assert [r["config"]["dtype"] for r in doc["runs"]] == ["float32", "float64"]
    # across dtypes, torch's drift: reported, not judged
    assert [(c["a"], c["b"], c["judged"]) for c in doc["cross"]] == [
        ({"device": "cpu", "dtype": "float32"}, {"device": "cpu", "dtype": "float64"}, False)
    ]


def test_check_runs_every_config(runner, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = invoke(runner, "check", "--format", "json")
    assert result.exit_code == 0
    doc = json.loads(result.output)
    names = {os.path.basename(c["config"]) for c in doc["checks"]}
    assert {"article.toml", "article-lr-0.1.toml"} <= names
    assert doc["ok"] is True


def test_gate_fails_with_exit_1_naming_the_step(runner, monkeypatch):
    """A deliberately wrong manual gradient: exit code 1 and the first divergent step named."""
    from sgdtrace.models import linear as manual  # the article's equations are the linear model's

    monkeypatch.setattr(manual, "de_dd", lambda d: 3 * d)  # de/dd = 3d instead of 2d
    result = runner.invoke(cli, ["run"])
    assert result.exit_code == 1
    assert "✗ diverge" in result.output and "epoch 1 batch 1 (step 1), dl/dw" in result.output
    monkeypatch.chdir(ROOT)
    result = runner.invoke(cli, ["check", "sgdtrace/configs/article.toml"])
    assert result.exit_code == 1 and "DIVERGE at 1:1" in result.output


def test_usage_errors_are_one_line_exit_2(runner):
    for args, needle in (
        (["run", "--lr", "0"], "--lr 0.0"),
        (["run", "--dtype", "float8"], "--dtype"),
        (["run", "--device", "tpu"], "--device 'tpu'"),
        (["run", "--bogus"], "--bogus"),
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 2, args
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sgdtrace: error:") and needle in lines[0], lines


def test_cuda_missing_is_exit_2_not_a_fallback(runner):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    result = runner.invoke(cli, ["run", "--device", "cuda"])
    assert result.exit_code == 2 and "CUDA is not available" in result.output


def _script(name):
    return str(Path(sys.executable).parent / name)


def test_real_subprocess_runs():
    proc = subprocess.run([_script("sgdtrace"), "run", "--format", "json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["verdict"]["ok"] is True
    proc = subprocess.run([sys.executable, "-m", "sgdtrace", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and __version__ in proc.stdout
    proc = subprocess.run(
        [_script("sgdtrace"), "run", "--batch-size", "0"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "--batch-size 0" in proc.stderr


def test_output_file_gets_the_usual_mode(runner, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "run.csv"
        assert invoke(runner, "run", "--format", "csv", "--output", str(out)).exit_code == 0
        assert (out.stat().st_mode & 0o777) == 0o644
    finally:
        os.umask(old)


def test_compare_takes_device_and_dtype_from_a_config_file(runner, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('dtype = "float64"\ndevice = "cpu"\n')
    doc = json.loads(invoke(runner, "compare", "--config", str(cfg), "--format", "json").output)
    assert [(r["config"]["device"], r["config"]["dtype"]) for r in doc["runs"]] == [("cpu", "float64")]


def test_graph_format_from_a_config_file(runner, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('format = "dot"\n')
    result = invoke(runner, "graph", "--config", str(cfg))
    assert result.exit_code == 0 and result.output.startswith("digraph")
    cfg.write_text('format = "csv"\n')
    result = runner.invoke(cli, ["graph", "--config", str(cfg)])
    assert result.exit_code == 2 and "this command writes table, json, dot" in result.output


def test_explain_refuses_a_bad_batch_before_training(runner, monkeypatch):
    import sgdtrace.tracing

    def no_training(*args, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("trained before checking --batch")

    monkeypatch.setattr(sgdtrace.tracing, "run_trace", no_training)
    result = runner.invoke(cli, ["explain", "--batch", "4"])
    assert result.exit_code == 2 and "--batch 4" in result.output and "allowed: 1..3" in result.output


def test_cross_device_comparison_judges_torch_against_torch():
    """The torch-vs-torch part of compare, on two CPU runs (one recorded as CUDA records)."""
    from sgdtrace.compare import cross_compare
    from sgdtrace.config import Config
    from sgdtrace.tracing import run_trace

    cfg = Config(synthetic=50, batch_size=4, epochs=3, momentum=0.5)
    base = run_trace(cfg)
    other = run_trace(cfg, manual_backend="torch", sync_free=True)
    other.device = "cuda:0"  # a label only: the same numbers on another recorder
    c = cross_compare(base, other)
    assert c.verdict.ok and (c.a, c.b) == ("cpu", "cuda:0")
    doc = c.to_json()
    assert doc["fields"]["w"]["max_ulp"] == 0 and doc["fields"]["buf_w"]["ok"] is True
    other.torch["w"] = other.torch["w"] * 1.001  # one device's w off by 0.1%: caught
    assert not cross_compare(base, other).verdict.ok


def test_output_dash_is_standard_output(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for fmt in ("table", "json", "csv", "markdown"):
        result = invoke(runner, "run", "--format", fmt, "--output", "-")
        assert result.exit_code == 0
        assert result.output == invoke(runner, "run", "--format", fmt).output
    assert list(tmp_path.iterdir()) == []  # no file named "-"
    cfg = tmp_path / "c.toml"
    cfg.write_text('output = "-"\nformat = "json"\n')
    result = invoke(runner, "run", "--config", str(cfg))
    assert json.loads(result.output)["verdict"]["ok"] is True
    assert [p.name for p in tmp_path.iterdir()] == ["c.toml"]


def test_no_command_prints_the_help_not_an_error(runner):
    result = runner.invoke(cli, [])
    assert result.exit_code == 2
    assert result.output.startswith("Usage: ")
    assert "sgdtrace: error" not in result.output and "Error:" not in result.output
    assert "run " in result.output and "check " in result.output


@pytest.mark.parametrize(
    "command,formats",
    [
        ("run", ["table", "json", "csv", "markdown", "html"]),
        ("compare", ["table", "json", "csv", "markdown", "html"]),
        ("check", ["table", "json", "markdown", "html", "junit"]),
        ("explain", ["table", "json"]),
        ("graph", ["table", "json", "dot"]),
        ("plot", ["png"]),
    ],
)
def test_help_lists_exactly_the_formats_the_command_writes(runner, command, formats):
    from sgdtrace import cli as cli_module

    table = getattr(cli_module, f"{command.upper()}_FORMATS")
    assert list(table) == formats
    param = next(p for p in cli.commands[command].params if p.name == "fmt")
    assert list(param.type.choices) == formats
    help_text = invoke(runner, command, "--help").output
    assert "[" + "|".join(formats) + "]" in help_text
    for other in {"table", "json", "csv", "markdown", "html", "dot", "png"} - set(formats):
        result = runner.invoke(cli, [command, "--format", other])
        assert result.exit_code == 2 and f"'{other}' is not" in result.output, (command, other)


@pytest.mark.parametrize(
    "command,formats",
    [
        ("explain", ["table", "json"]),
        ("graph", ["table", "json", "dot"]),
        ("compare", ["table", "json", "csv", "markdown"]),
    ],
)
def test_every_listed_format_is_written(runner, command, formats):
    extra = ["--batch", "2"] if command == "explain" else []
    for fmt in formats:
        result = invoke(runner, command, *extra, "--format", fmt)
        assert result.exit_code == 0 and result.output.strip(), (command, fmt)
        if fmt == "json":
            json.loads(result.output)


def test_check_counts_runs_in_words(runner, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = invoke(runner, "check", "sgdtrace/configs/article.toml").output
    assert "✓ 1 run agrees" in out and "1 runs" not in out
    out = invoke(runner, "check", "sgdtrace/configs/article.toml", "sgdtrace/configs/article-lr-0.1.toml").output
    assert "✓ 2 runs agree" in out


def test_graph_tree_draws_siblings_with_a_tee_and_the_last_with_an_elbow():
    from sgdtrace.views.graph import tree_prefixes

    # MseLoss → Add → (Mul → Acc(w)), Acc(b): the article's graph
    assert tree_prefixes([0, 1, 2, 3, 2]) == ["", "  └ ", "    ├ ", "    │ └ ", "    └ "]
    assert tree_prefixes([0, 1, 1]) == ["", "  ├ ", "  └ "]
    assert tree_prefixes([0, 1, 2, 1, 2]) == ["", "  ├ ", "  │ └ ", "  └ ", "    └ "]
    out = invoke(CliRunner(), "graph").output
    assert "├ MulBackward0" in out and "└ AccumulateGrad (bias)" in out


@pytest.mark.parametrize("fmt", ["json", "table"])
def test_output_through_a_symbolic_link_replaces_its_target(runner, tmp_path, fmt):
    """`--output link.json`, link.json a symbolic link: the link stays, its target gets the output."""
    data = tmp_path / "data"
    data.mkdir()
    target = data / "run.json"
    target.write_text("old\n")
    link = tmp_path / "link.json"
    link.symlink_to(os.path.join("data", "run.json"))  # relative, as `ln -s` makes it
    chain = tmp_path / "chain.json"
    chain.symlink_to(link)  # a link to a link
    for name in (link, chain):
        target.write_text("old\n")
        assert invoke(runner, "run", "--format", fmt, "--output", str(name)).exit_code == 0
        assert link.is_symlink() and chain.is_symlink() and os.readlink(link) == os.path.join("data", "run.json")
        assert "-135.85" in target.read_text()  # the run, where "old" was
        assert sorted(p.name for p in data.iterdir()) == ["run.json"]  # no temporary file left beside it
        assert sorted(p.name for p in tmp_path.iterdir()) == ["chain.json", "data", "link.json"]


def test_output_through_a_dangling_link_makes_its_target(runner, tmp_path):
    link = tmp_path / "out.csv"
    link.symlink_to(tmp_path / "made.csv")
    assert invoke(runner, "run", "--format", "csv", "--output", str(link)).exit_code == 0
    assert link.is_symlink() and (tmp_path / "made.csv").read_text().startswith("epoch,")
    missing = tmp_path / "gone.csv"
    missing.symlink_to(tmp_path / "no-such-folder" / "x.csv")
    result = runner.invoke(cli, ["run", "--output", str(missing)])
    assert result.exit_code == 2 and "no-such-folder" in result.output and missing.is_symlink()


# ------------------------------------------------------------------ options a command does not take
# The rule: an option belongs to the commands (and, for run, the formats) that use it; given to
# another, as a flag or as a key of the --config file, it is exit 2 with one line naming where it
# belongs, and a did-you-mean where its name is close to an option that applies.


def _refused(result, *needles: str) -> None:
    assert result.exit_code == 2 and result.stdout == "", result.output
    assert result.stderr.startswith("sgdtrace: error: ") and result.stderr.count("\n") == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


@pytest.mark.parametrize(
    "args, needles",
    [
        (["run", "--epoch", "3"], ["--epoch 3", "did you mean --epochs 3?"]),  # not 1 epoch and a warning
        (["run", "--format", "html", "--epoch", "2"], ["--epoch 2", "--batch K", "did you mean --epochs 2?"]),
        (["run", "--batch", "2"], ["--batch 2 and --format table", "--format html", "sgdtrace explain --batch"]),
        (["run", "--batch", "2", "--epoch", "1"], ["--batch 2", "--format html"]),
        (["run", "--format", "json", "--rows", "5"], ["--rows 5", "--format json"]),
        (["run", "--format", "csv", "--every", "2"], ["--every 2", "--format csv"]),
        (["compare", "--epoch", "2"], ["'--epoch'", "--epochs"]),  # click's own: an option compare has not
        (["plot", "--batch", "2", "--output", "p.png"], ["'--batch'", "--batch-size"]),
    ],
)
def test_an_option_the_command_does_not_take_is_exit_2(runner, args, needles):
    _refused(runner.invoke(cli, args), *needles)


@pytest.mark.parametrize(
    "text, args, needles",
    [
        ("epoch = 3\n", ["run"], ["'epoch' in c.toml = 3", "did you mean 'epochs'?"]),
        ("batch = 2\n", ["run"], ["'batch' in c.toml = 2", "--format html"]),
        ("rows = 5\n", ["run", "--format", "json"], ["'rows' in c.toml = 5", "--format json"]),
        ("rows = 5\n", ["compare"], ["'rows' in c.toml = 5", "sgdtrace compare does not take it"]),
        ("epoch = 2\n", ["explain", "--batch", "1"], ["'epoch' in c.toml = 2", "--epoch on the command line"]),
        ("reference = 'exact'\n", ["graph"], ["'reference' in c.toml = 'exact'", "sgdtrace graph"]),
    ],
)
def test_a_key_the_command_does_not_take_is_exit_2_as_its_flag(runner, tmp_path, text, args, needles):
    path = tmp_path / "c.toml"
    path.write_text(text)
    _refused(runner.invoke(cli, [*args, "--config", str(path)]), *needles)


def test_the_options_where_they_belong_still_work(runner, tmp_path):
    out = tmp_path / "r.html"
    assert (
        invoke(runner, "run", "--format", "html", "--batch", "2", "--epoch", "1", "--output", str(out)).exit_code == 0
    )
    assert invoke(runner, "run", "--rows", "2", "--every", "2", "--epochs", "3").exit_code == 0
    path = tmp_path / "c.toml"
    path.write_text("rows = 2\nepochs = 3\n")
    result = invoke(runner, "run", "--config", str(path))
    assert result.exit_code == 0 and result.stderr == "" and "9 steps, 2 shown" in result.stdout


# ------------------------------------------------------------------ text output as a new user reads it


def test_piped_tables_have_no_trailing_spaces(tmp_path):
    """`sgdtrace run | less`, `> out.txt`, `--output`: no line ends in spaces (rich pads to the width)."""
    script = os.path.join(os.path.dirname(sys.executable), "sgdtrace")
    env = dict(os.environ, COLUMNS="80")
    for args in (["run"], ["run", "--momentum", "0.9", "--epochs", "2"], ["compare"], ["explain", "--batch", "2"]):
        proc = subprocess.run([script, *args], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr
        assert [line for line in proc.stdout.splitlines() if line != line.rstrip()] == [], args
    out = tmp_path / "t.txt"
    assert CliRunner().invoke(cli, ["check", "sgdtrace/configs/article.toml", "--output", str(out)]).exit_code == 0
    assert all(line == line.rstrip() for line in out.read_text().splitlines())


@pytest.mark.parametrize(
    "args",
    [
        ["--momentum", "0.9", "--nesterov", "--weight-decay", "0.01", "--shuffle", "--drop-last", "--batch-size", "2"],
        [
            "--optimizer",
            "adam",
            "--amsgrad",
            "--betas",
            "0.8,0.99",
            "--eps",
            "1e-6",
            "--weight-decay",
            "0.1",
            "--shuffle",
        ],
    ],
)
def test_the_run_title_breaks_between_its_parts_at_80_columns(runner, args):
    """The title's second line is "lr 0.01 · batch size 2 · ..." : at 80 columns it breaks at a " · ",
    never inside a part ("weight decay" / "0.01")."""
    from sgdtrace.config import build_config
    from sgdtrace.views.table import _title

    result = runner.invoke(cli, ["run", *args], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    head = lines[: next(i for i, line in enumerate(lines) if line.lstrip().startswith("batch"))]
    kw = {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01, "shuffle": True, "drop_last": True, "batch_size": 2}
    if "adam" in args:
        kw = {
            "optimizer": "adam",
            "amsgrad": True,
            "betas": (0.8, 0.99),
            "eps": 1e-6,
            "weight_decay": 0.1,
            "shuffle": True,
        }
    from sgdtrace.tracing import run_trace

    parts = [p for line in _title(run_trace(build_config({}, kw))).split("\n") for p in line.split(" · ")]
    assert all(len(line) <= 80 for line in head) and len(head) > 2
    shown = [p for line in head for p in line.split(" · ")]
    assert shown == parts  # every part whole, in order


@pytest.mark.parametrize("name", ["good.py", "my_gradients_engine.py", "exercise_3_solution.py"])
def test_an_engine_is_labelled_by_its_files_stem(runner, tmp_path, name):
    """One rule: the rows of --engine FILE.py are labelled with the file's stem, whatever its length."""
    engine = tmp_path / name
    engine.write_text((ROOT / "docs" / "examples" / "engine_correct.py").read_text())
    result = runner.invoke(cli, ["run", "--engine", str(engine)], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    stem = name.removesuffix(".py")
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()[:2] in ("1 ", "2 ", "3 ")]
    assert [r[2] for r in rows] == [stem] * 3 and "yours" not in result.stdout
    assert f"('{stem}' rows)" in result.stdout


@pytest.mark.parametrize("columns", ["80", "72"])
def test_check_never_cuts_a_configs_name(runner, columns):
    names = ["schedule-exponentiallr.toml", "schedule-multisteplr.toml", "article-lr-0.1.toml"]
    result = runner.invoke(cli, ["check", *(f"sgdtrace/configs/{n}" for n in names)], env={"COLUMNS": columns})
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout
    lines = result.stdout.splitlines()
    assert all(len(line) <= int(columns) for line in lines)
    for name in names:
        assert any(line.startswith(name + " ") for line in lines), name


def test_help_gives_every_on_off_flags_default():
    """`--help` shows each on/off flag's default (they are None until a flag or a file sets them)."""
    import click

    for name, command in cli.commands.items():
        for param in command.params:
            if isinstance(param, click.Option) and (param.is_flag or param.secondary_opts):
                text = param.help or ""
                assert "default" in text or param.show_default, (name, param.opts)
    help_text = CliRunner().invoke(cli, ["run", "--help"]).output
    assert "Drop the last partial batch (default off)" in help_text


def test_every_option_is_in_the_options_page_and_the_readme_links_every_page():
    """docs/options.md names each option of the training commands and of run; check.md each of
    check's formats; the README's list of pages links every page of the manual (ddp.md included)."""
    import click

    options = (ROOT / "docs" / "options.md").read_text()
    for name in ("run", "compare", "explain", "graph", "plot"):
        for param in cli.commands[name].params:
            if isinstance(param, click.Option) and param.name not in ("help", "width", "height", "loss_kind"):
                flags = [o for o in param.opts if o.startswith("--")] + [o for o in param.secondary_opts]
                assert any(f"`{f}" in options or f"{f}`" in options or f"{f}/" in options for f in flags), (
                    name,
                    param.opts,
                )
    assert "`-q`" in options
    check = (ROOT / "docs" / "check.md").read_text()
    assert all(f"`{fmt}`" in check for fmt in ("table", "json", "markdown", "html", "junit"))
    readme = (ROOT / "README.md").read_text()
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert {p for p in pages if f"(docs/{p})" not in readme} == set()
    assert "--world-size" in readme


def test_check_finds_a_shipped_config_by_name_from_any_folder(tmp_path, monkeypatch):
    """`check adam` and `check configs/adam.toml` run the gate's own config where no such file is here."""
    monkeypatch.chdir(tmp_path)
    for name in ("article", "configs/article.toml"):
        result = CliRunner().invoke(cli, ["check", name, "--format", "json"])
        assert result.exit_code == 0, result.output
        assert [c["config"] for c in json.loads(result.output)["checks"]] == ["configs/article.toml"]
    bad = CliRunner().invoke(cli, ["check", "nonesuch"])
    assert bad.exit_code == 2 and "nor a config sgdtrace ships" in bad.output
