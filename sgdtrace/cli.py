"""The command line: parse, build a Config, call the library, print what a view built. No maths here.

Importing this module imports neither torch nor numpy, so ``--help`` and ``--version`` are instant;
each command imports what it needs.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import click

from sgdtrace._version import __version__
from sgdtrace.config import (
    DTYPES,
    OPTIMIZERS,
    build_config,
    load_toml,
    parse_betas,
    parse_scheduler_flags,
    parse_vector,
    refuse_run_keys,
    run_options,
)
from sgdtrace.errors import ConfigError, SgdtraceError
from sgdtrace.models import ACTIVATIONS, LOSSES
from sgdtrace.models import NAMES as MODELS
from sgdtrace.output import STDOUT, Terminated, is_stdout, write_pieces

EXIT_OK, EXIT_DIVERGE, EXIT_USAGE = 0, 1, 2


class _Group(click.Group):
    """A click group whose every error is one line on stderr and exit code 2, never a traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # noqa: D102
        # standalone_mode=False: click returns each command's exit code (and --help's, --version's)
        # and raises its usage errors here, where they become one line
        try:
            rv = super().main(
                args=args, prog_name=prog_name or "sgdtrace", complete_var=complete_var, standalone_mode=False, **extra
            )
        except click.exceptions.Abort:
            click.echo("sgdtrace: aborted", err=True)
            sys.exit(130)
        except click.exceptions.NoArgsIsHelpError as exc:  # no command: the help, not as an error
            click.echo(exc.ctx.get_help(), err=True)
            sys.exit(EXIT_USAGE)
        except click.ClickException as exc:
            click.echo(f"sgdtrace: error: {exc.format_message()}", err=True)
            sys.exit(EXIT_USAGE)
        except SgdtraceError as exc:
            click.echo(f"sgdtrace: error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except MemoryError:
            click.echo(
                "sgdtrace: error: not enough memory for this run: use fewer --epochs, "
                "fewer samples or a smaller --batch-size",
                err=True,
            )
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            click.echo("sgdtrace: interrupted", err=True)
            sys.exit(130)
        except Terminated:  # SIGTERM while an --output file was being written: it was removed
            click.echo("sgdtrace: terminated", err=True)
            sys.exit(143)
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", "-V", prog_name="sgdtrace")
def cli() -> None:
    """SGD on ypred = w*x + b, worked by hand beside torch.optim.SGD, batch by batch.

    Every gradient, loss and parameter the hand-derived engine computes is compared with what
    autograd + optim.SGD compute from the same batches, and each difference is judged against
    a tolerance derived from the roundings involved. Exit code 0: they agree; 1: they diverge
    (the first divergent step is named); 2: a usage or input error.

    With no options, `sgdtrace run` reproduces the article's three-batch table.
    """


# ------------------------------------------------------------------ formats


class View(NamedTuple):
    """One output format of a command: what it is, and the function that renders the command's result.

    ``render(result, width=..., **options)`` returns text, an iterable of text pieces (written as
    they come) or a rich renderable (printed at ``width`` columns, in colour on a terminal).
    """

    help: str
    render: Callable[..., Any]


def _lazy(module: str, name: str, *, width: bool = False, **fixed: Any) -> Callable[..., Any]:
    """A renderer imported when called (importing the CLI imports no view, nor torch, nor numpy)."""

    def render(result: Any, width_: int | None = None, **options: Any) -> Any:
        import importlib

        fn = getattr(importlib.import_module(module), name)
        if width:
            options["width"] = width_
        return fn(result, **fixed, **options)

    return render


def _json(result: Any, width_: int | None = None, **_: Any) -> str:
    from sgdtrace.views.export import to_json_text

    return to_json_text(result.to_json())


def _json_of(module: str, name: str) -> Callable[..., Any]:
    """JSON of a view function's dict (``explain_json``, ``graph_json``)."""
    make = _lazy(module, name)

    def render(result: Any, width_: int | None = None, **_: Any) -> str:
        from sgdtrace.views.export import to_json_text

        return to_json_text(make(result))

    return render


def _ignore_options(render: Callable[..., Any]) -> Callable[..., Any]:
    return lambda result, width_=None, **_: render(result)


#: each command's formats, in the order --help lists them; the first is the default
RUN_FORMATS: dict[str, View] = {
    "table": View("the per-batch table and the verdict", _lazy("sgdtrace.views.table", "run_view", width=True)),
    "json": View(
        "every step and the verdict (the JSON contract)", _ignore_options(_lazy("sgdtrace.views.export", "json_pieces"))
    ),
    "csv": View("one flat row per step", _ignore_options(_lazy("sgdtrace.views.export", "trace_to_csv"))),
    "markdown": View("the table as Markdown", _ignore_options(_lazy("sgdtrace.views.export", "trace_to_markdown"))),
    "html": View(
        "one self-contained page: verdict, plots, every shown batch explained (MathML), table, graph",
        _lazy("sgdtrace.teaching.report", "run_html"),
    ),
}
COMPARE_FORMATS: dict[str, View] = {
    "table": View("per run and field, the worst distances", _lazy("sgdtrace.views.compare", "compare_view")),
    "json": View("the same as JSON", _json_of("sgdtrace.views.export", "compare_to_json")),
    "csv": View("one row per run and field", _lazy("sgdtrace.views.compare", "compare_text", fmt="csv")),
    "markdown": View("the same as Markdown", _lazy("sgdtrace.views.compare", "compare_text", fmt="markdown")),
    "html": View("one self-contained page", _lazy("sgdtrace.views.html", "compare_page")),
}
CHECK_FORMATS: dict[str, View] = {
    "table": View("one row per config and device", _lazy("sgdtrace.views.check", "check_view", width=True)),
    "json": View("the same as JSON", _json),
    "markdown": View("the same as Markdown", _lazy("sgdtrace.views.check", "check_markdown")),
    "html": View("one self-contained page", _lazy("sgdtrace.views.html", "check_page")),
    "junit": View(
        "JUnit XML for CI (one test case per config and device)", _lazy("sgdtrace.views.check", "check_junit")
    ),
}
EXPLAIN_FORMATS: dict[str, View] = {
    "table": View("the batch, equation by equation", _lazy("sgdtrace.views.explain", "explain_view")),
    "json": View("every node and factor as JSON", _json_of("sgdtrace.views.explain", "explain_json")),
}
#: explain with --world-size N: the same formats, of each rank's equations and the all-reduce
EXPLAIN_DISTRIBUTED_FORMATS: dict[str, View] = {
    "table": View("each rank's batch and the all-reduce", _lazy("sgdtrace.views.explain", "explain_distributed_view")),
    "json": View("the same as JSON", _json_of("sgdtrace.views.explain", "explain_distributed_json")),
}
GRAPH_FORMATS: dict[str, View] = {
    "table": View("both graphs side by side", _lazy("sgdtrace.views.graph", "graph_view")),
    "json": View("both graphs as JSON", _json_of("sgdtrace.views.graph", "graph_json")),
    "dot": View("torch's graph for Graphviz", _lazy("sgdtrace.views.graph", "graph_dot")),
}
#: plot writes one kind of file; it is drawn by :func:`sgdtrace.views.plot.plot_trace`
PLOT_FORMATS: dict[str, View] = {
    "png": View("a PNG image (needs --output FILE.png)", _lazy("sgdtrace.views.plot", "plot_trace")),
}
DOCTOR_FORMATS: dict[str, View] = {
    "table": View("the machine, its kernel rules, the claims that hold", _lazy("sgdtrace.views.doctor", "doctor_view")),
    "json": View(
        "the same as JSON (every JSON output's environment object)", _lazy("sgdtrace.views.doctor", "doctor_json")
    ),
}


def format_option(formats: dict[str, View], default: str | None = None) -> Callable:
    """``--format``, offering exactly the command's formats (``default``: None lets a config file choose)."""
    listed = "; ".join(f"{name}: {view.help}" for name, view in formats.items())
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(list(formats)),
        default=default,
        help=f"Output format (default {next(iter(formats))}). {listed}.",
    )


def output_option(help: str | None = None) -> Callable:
    return click.option(
        "--output",
        type=click.Path(dir_okay=False, allow_dash=True),
        default=None,
        metavar="FILE",
        help=help
        or "Write to FILE instead of standard output ('-': standard output); the file is written whole or not at all.",
    )


# ------------------------------------------------------------------ shared options


def training_options(
    formats: dict[str, View], multi: bool = False, output_help: str | None = None, own: tuple[str, ...] = ()
) -> Callable:
    """The options every training command takes, with the command's own formats.

    Unset flags are None, so a config file can fill them. ``own``: flags the command defines
    itself with another meaning (graph's ``--loss``, torch's form of the loss), left out here.
    """

    def deco(f: Callable) -> Callable:
        opts = [
            click.option(
                "--config",
                "config_path",
                type=click.Path(dir_okay=False),
                default=None,
                help="TOML file of options (keys as the flags: lr, batch_size, ...); flags win.",
            ),
            click.option(
                "--lr", type=float, default=None, help="Learning rate (default 0.01, as the article's table)."
            ),
            click.option("--batch-size", type=int, default=None, help="Samples per batch (default 3)."),
            click.option("--epochs", type=int, default=None, help="Passes over the data (default 1)."),
            click.option(
                "--model",
                type=click.Choice(MODELS),
                default=None,
                help="The model (default linear: ypred = w·x + b; mlp: a network with one hidden layer, "
                "nn.Sequential(nn.Linear(D, H), act, nn.Linear(H, 1))).",
            ),
            click.option(
                "--hidden",
                type=int,
                default=None,
                metavar="H",
                help="--model mlp: the hidden layer's width (default 8).",
            ),
            click.option(
                "--activation",
                type=click.Choice(ACTIVATIONS),
                default=None,
                help="--model mlp: the hidden layer's activation (default relu).",
            ),
            _flagged(
                click.option(
                    "--loss",
                    type=click.Choice(sorted({loss for losses in LOSSES.values() for loss in losses})),
                    default=None,
                    help="The model's loss (default mse: nn.MSELoss; bce: nn.BCEWithLogitsLoss, labels 0/1).",
                ),
                "--loss",
            ),
            click.option(
                "--features",
                type=int,
                default=None,
                metavar="D",
                help="D input columns x1..xD: w has D elements, torch's side is nn.Linear(D, 1) "
                "(default: the article's form, one x column, scalar w and b).",
            ),
            click.option(
                "--judge",
                type=click.Choice(("carry", "step")),
                default=None,
                help="carry (default): two trajectories, each step judged with the differences it "
                "started from carried; step: each step of the hand side starts from torch's values "
                "(every divergent step listed).",
            ),
            click.option(
                "--init-w",
                type=str,
                default=None,
                metavar="W",
                help="Initial weight w: a number, or one per feature (1,-2,0.5) (default 0).",
            ),
            click.option("--init-b", type=float, default=None, help="Initial bias b (default 0)."),
            click.option(
                "--data",
                type=str,
                default=None,
                metavar="FILE.csv",
                help="CSV file with a header row naming columns x (or x1..xD) and y.",
            ),
            click.option(
                "--synthetic",
                type=int,
                default=None,
                metavar="N",
                help="N synthetic samples: x uniform in [0, 10), y = true_w*x + true_b + noise "
                "(with --features D: x in [0, 10)^D, y = x·true_w + true_b + noise).",
            ),
            click.option(
                "--true-w",
                type=str,
                default=None,
                metavar="W",
                help="Synthetic data's true weight: a number, or one per feature (default 2).",
            ),
            click.option("--true-b", type=float, default=None, help="Synthetic data's true bias (default 10)."),
            click.option("--noise", type=float, default=None, help="Synthetic data's noise std (default 0)."),
            click.option("--seed", type=int, default=None, help="Seed for shuffling and synthetic data (default 0)."),
            click.option(
                "--shuffle/--no-shuffle",
                default=None,
                help="Shuffle each epoch exactly as DataLoader(shuffle=True, generator=seeded) does (default off).",
            ),
            click.option("--drop-last/--no-drop-last", default=None, help="Drop the last partial batch (default off)."),
            click.option("--momentum", type=float, default=None, help="optim.SGD momentum (default 0)."),
            click.option("--dampening", type=float, default=None, help="optim.SGD dampening in [0, 1] (default 0)."),
            click.option("--nesterov/--no-nesterov", default=None, help="optim.SGD Nesterov momentum (default off)."),
            click.option("--weight-decay", type=float, default=None, help="optim.SGD weight decay (L2, default 0)."),
            click.option(
                "--maximize/--no-maximize", default=None, help="optim.SGD maximize: ascend the loss (default off)."
            ),
            # the optimizer and its options, by torch's keyword names (see docs/optimizers.md)
            click.option(
                "--optimizer",
                type=str,
                default=None,
                metavar="[" + "|".join(OPTIMIZERS) + "]",
                help="torch.optim class, in any case: adam or Adam (default sgd).",
            ),
            click.option(
                "--betas", type=str, default=None, metavar="B1,B2", help="Adam/AdamW betas (default 0.9,0.999)."
            ),
            click.option("--eps", type=float, default=None, help="Adam/AdamW/RMSprop/Adagrad eps (default torch's)."),
            click.option("--amsgrad/--no-amsgrad", default=None, help="Adam/AdamW amsgrad (default off)."),
            click.option("--alpha", type=float, default=None, help="RMSprop alpha (default 0.99)."),
            click.option("--centered/--no-centered", default=None, help="RMSprop centered (default off)."),
            click.option("--lr-decay", type=float, default=None, help="Adagrad lr_decay (default 0)."),
            click.option(
                "--initial-accumulator-value",
                type=float,
                default=None,
                help="Adagrad initial_accumulator_value (default 0).",
            ),
            click.option(
                "--foreach/--no-foreach",
                default=None,
                help="torch side: foreach implementation (default: torch chooses).",
            ),
            click.option(
                "--fused/--no-fused", default=None, help="torch side: fused implementation (default: torch chooses)."
            ),
            click.option(
                "--scheduler",
                type=str,
                default=None,
                metavar="NAME",
                help="torch.optim.lr_scheduler class, in any case: StepLR (or steplr), MultiStepLR, "
                "ExponentialLR, CosineAnnealingLR, LinearLR, OneCycleLR.",
            ),
            click.option(
                "--scheduler-arg",
                "scheduler_args",
                type=str,
                multiple=True,
                metavar="KEY=VALUE",
                help="A keyword argument of the schedule, or interval=epoch|step (repeatable).",
            ),
            click.option(
                "--device",
                type=str,
                default=None,
                multiple=multi,
                metavar="cpu|cuda|cuda:N|auto",
                help="Where both engines run" + (" (repeatable)." if multi else " (default cpu)."),
            ),
            click.option(
                "--dtype",
                type=click.Choice(DTYPES),
                default=None,
                multiple=multi,
                help="Floating-point type" + (" (repeatable)." if multi else " (default float32)."),
            ),
            click.option(
                "--rtol",
                type=float,
                default=None,
                help="Relative tolerance, times each value's rounding scale "
                "(default 4u = 2 machine epsilons: 2.4e-7 in float32).",
            ),
            click.option(
                "--atol",
                type=float,
                default=None,
                help="Absolute tolerance (default the dtype's smallest normal number).",
            ),
            click.option(
                "--world-size",
                type=int,
                default=None,
                metavar="N",
                help="Data-parallel SGD: N processes (DistributedSampler, DistributedDataParallel; "
                "default 1, no process group); --batch-size is per rank.",
            ),
            click.option(
                "--set-epoch/--no-set-epoch",
                default=None,
                help="Call sampler.set_epoch(e) each epoch (default); --no-set-epoch replays forgetting it.",
            ),
            click.option(
                "--rank-timeout",
                type=float,
                default=None,
                metavar="SECONDS",
                help="End the run (exit 2) when a rank fails or is silent this long (default 60).",
            ),
            *engine_options(),
            format_option(formats),
            output_option(output_help),
        ]
        for opt in reversed(opts):
            if own and any(f"--{name}" in getattr(opt, "__sgdtrace_flags__", ()) for name in own):
                continue
            f = opt(f)
        return f

    return deco


def _flagged(option: Callable, *flags: str) -> Callable:
    """An option decorator that names its flags (for :func:`training_options`' ``own``)."""
    option.__sgdtrace_flags__ = flags
    return option


def engine_options() -> list[Callable]:
    """--engine FILE.py and --engine-timeout: a user's engine on the hand side (sgdtrace.engines.user)."""
    return [
        click.option(
            "--engine",
            type=str,
            default=None,
            metavar="FILE.py",
            help="Your own engine: a file defining gradients(w, b, x, y) (or gradients(params, x, y)) and/or "
            "update(param, grad, state, hp), for any optimizer, schedule and dtype, run in its own process in "
            "place of the hand engine (see `sgdtrace template`).",
        ),
        click.option(
            "--engine-cmd",
            type=str,
            default=None,
            metavar='"COMMAND"',
            help="Your own engine in any language: a command that speaks JSON lines on stdin/stdout "
            "(docs/own-engine.md), started once per run in place of the hand engine.",
        ),
        click.option(
            "--engine-timeout",
            type=float,
            default=None,
            metavar="SECONDS",
            help="Stop the --engine file or --engine-cmd process after this long per run (default 60).",
        ),
    ]


def with_engine_options(f: Callable) -> Callable:
    for opt in reversed(engine_options()):
        f = opt(f)
    return f


def _configure(kw: dict[str, Any], formats: dict[str, View], warn_now: bool = True):
    """Merge defaults < --config file < flags into a Config; return it with the format and the output.

    ``formats``: the command's formats (a flag is checked by click; a config file's value here).
    ``warn_now``: print the config's warnings (False: the command prints them once its own checks pass,
    so a refused run says one line).
    """
    path = kw.pop("config_path")
    file_values = load_toml(path) if path else {}
    fmt = kw.pop("fmt") or file_values.get("format") or next(iter(formats))
    if fmt not in formats:
        where = "--format" if path is None or "format" not in file_values else f"'format' in {os.path.basename(path)}"
        raise ConfigError(f"{where} {fmt!r}: this command writes {', '.join(formats)}")
    output = kw.pop("output")
    if output is None and file_values.get("output") is not None:
        output = file_values["output"]
        if os.path.basename(output) == STDOUT and os.path.dirname(output) == os.path.dirname(os.path.abspath(path)):
            output = STDOUT  # `output = "-"` in the file (which the file's folder was joined to)
    check_output_path(output)
    kw["betas"] = parse_betas(kw.get("betas"))
    for key in ("init_w", "true_w"):
        kw[key] = parse_vector(kw.get(key), "--" + key.replace("_", "-"))
    kw["scheduler"] = parse_scheduler_flags(kw.pop("scheduler", None), tuple(kw.pop("scheduler_args", ())))
    cfg = build_config(file_values, kw, path)
    command = click.get_current_context().info_name
    if command != "run":  # run's own keys in the file: this command does not take them
        refuse_run_keys(cfg, command)
    if warn_now:
        warn(cfg.warnings)
    return cfg, fmt, output


def warn(lines: Iterable[str]) -> None:
    """Options that do not apply to the run: one line each on stderr, not an error."""
    for line in lines:
        click.echo(f"sgdtrace: warning: {line}", err=True)


def check_output_path(path: str | None) -> None:
    """Refuse an --output we could not write, before any work is done."""
    if is_stdout(path):
        return
    if os.path.islink(path):  # written through: the link's target is what gets replaced
        path = os.path.realpath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConfigError(f"--output {path!r}: the folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise ConfigError(f"--output {path!r}: is a folder; name a file")
    if os.path.exists(path) and not os.path.isfile(path) and os.access(path, os.W_OK):
        return  # a device or a pipe (/dev/null): written in place
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"--output {path!r}: the folder {folder!r} is not writable")


def write_output(text: str | Iterable[str], output: str | None) -> None:
    """Print, or write ``output`` whole or not at all (:func:`sgdtrace.output.write_pieces`).

    ``text`` may be an iterable of pieces (a long run's JSON), written as they come.
    """
    write_pieces([text] if isinstance(text, str) else text, output)


def _console(output: str | None):
    """A console that prints into a string, set up as the terminal's (its width, colour only on a
    terminal and without NO_COLOR) or, for a file, plain text 100 columns wide. The text is then
    written by :func:`write_output`, which reports any error writing it."""
    import io

    from rich.console import Console

    # force_jupyter=False everywhere: inside a Jupyter kernel rich would display the text itself
    if is_stdout(output):
        terminal = Console(soft_wrap=False, force_jupyter=False)  # only asked about the terminal; writes nothing
        return Console(
            file=io.StringIO(),
            width=terminal.width,
            color_system=terminal.color_system,
            force_terminal=terminal.is_terminal,
            soft_wrap=False,
            force_jupyter=False,
        )
    return Console(file=io.StringIO(), width=100, color_system=None, soft_wrap=False, force_jupyter=False)


def render_text(renderable: Any, width: int | None = None) -> str:
    """A rich renderable as plain text (no colour), for --output files."""
    import io

    from rich.console import Console

    from sgdtrace.views.fmt import strip_trailing

    buf = io.StringIO()
    Console(file=buf, width=width or 100, color_system=None, soft_wrap=False, force_jupyter=False).print(renderable)
    return strip_trailing(buf.getvalue())


def emit(formats: dict[str, View], fmt: str, result: Any, output: str | None, **options: Any) -> None:
    """Render ``result`` in format ``fmt`` with the command's table and write it to ``output``."""
    console = _console(output) if fmt == "table" else None
    rendered = formats[fmt].render(result, console.width if console else None, **options)
    if isinstance(rendered, str) or not hasattr(rendered, "__rich_console__"):
        write_output(rendered, output)
        return
    console = console or _console(output)
    console.print(rendered)
    text = console.file.getvalue()
    if console.color_system is None:  # plain text (a pipe, a file): no spaces padding the lines
        from sgdtrace.views.fmt import strip_trailing

        text = strip_trailing(text)
    write_output(text, output)


def progress_reporter(quiet: bool = False):
    """A progress callback for long runs (stderr, only on a terminal); None when not wanted."""
    if quiet or not sys.stderr.isatty():
        return None, None
    from sgdtrace.views.progress import Progress

    bar = Progress()
    return bar.update, bar


def _exit_code(ok: bool) -> int:
    return EXIT_OK if ok else EXIT_DIVERGE


# ------------------------------------------------------------------ commands


@cli.command()
@training_options(RUN_FORMATS)
@click.option(
    "--rows",
    type=click.IntRange(min=0),
    default=None,
    help="Table rows before long runs are shortened (default 40; 0: all).",
)
@click.option(
    "--every",
    type=click.IntRange(min=1),
    default=None,
    metavar="K",
    help="Table: show every K-th step (and the last; default 1).",
)
@click.option(
    "--reference",
    type=click.Choice(["none", "exact"]),
    default=None,
    help="exact: add a ground-truth column, the run replayed without rounding, and each engine's error (default none).",
)
@click.option(
    "--gradcheck",
    is_flag=True,
    help="Check the chain-rule gradients against central differences in float64, per step (default off).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar (default: a bar on a terminal).")
@click.option(
    "--batch",
    "batch_no",
    type=click.IntRange(min=1),
    default=None,
    metavar="K",
    help="--format html: the batch explained (default: the first divergent one, else batch 1).",
)
@click.option(
    "--epoch",
    "epoch_no",
    type=click.IntRange(min=1),
    default=None,
    metavar="E",
    help="--format html: the epoch of --batch (default 1; the number of epochs is --epochs).",
)
def run(
    rows: int | None,
    every: int,
    reference: str,
    gradcheck: bool,
    quiet: bool,
    batch_no: int | None,
    epoch_no: int,
    **kw: Any,
) -> int:
    """Train with both engines; print the per-batch table and the verdict.

    Each batch shows the article's columns (n, lr, dl/dw, dl/db, w, b, loss) worked by hand,
    torch's values beneath, and the largest distance between the two in ULPs (units in the
    last place: 0 means bit-identical). The loss and gradients are computed on the batch at
    the parameters it started with; w and b are the values after the batch's update.
    """
    cfg, fmt, output = _configure(kw, RUN_FORMATS, warn_now=False)
    opts, unused = run_options(
        cfg,
        fmt,
        dict(
            rows=rows,
            every=every,
            reference=reference,
            gradcheck=gradcheck,
            quiet=quiet,
            batch=batch_no,
            epoch=epoch_no,
        ),
    )
    warn([*cfg.warnings, *unused])
    rows, every, reference, gradcheck, quiet, batch_no, epoch_no = (
        opts[k] for k in ("rows", "every", "reference", "gradcheck", "quiet", "batch", "epoch")
    )
    epoch_no = epoch_no or 1
    from sgdtrace.tracing import run_trace

    _refuse_distributed(
        cfg,
        ("world_size-reference", "--reference exact" if reference == "exact" else None),
        ("world_size-gradcheck", "--gradcheck" if gradcheck else None),
    )
    if cfg.features is not None or cfg.model == "mlp":  # refused before any training (a CSV file's: after reading it)
        from sgdtrace import models

        refuse_features(
            cfg,
            models.build(cfg, cfg.features),
            "--reference exact" if reference == "exact" else None,
            "--gradcheck" if gradcheck else None,
        )
    dataset = None
    if batch_no is not None:  # a bad --batch is refused before training (without html: by run_options)
        from sgdtrace import data

        dataset = data.load(cfg)
        data.plan(len(dataset), cfg).step(batch_no, epoch_no)
    update, bar = progress_reporter(quiet)
    try:
        trace = run_trace(cfg, progress=update, dataset=dataset)
    finally:
        if bar is not None:
            bar.close()
    if trace is None:  # a rank other than 0 of a torchrun group: rank 0 writes the output
        return EXIT_OK
    add_witnesses(trace, reference, gradcheck)
    if fmt == "json":  # the machine (sgdtrace.probe) read, or measured, before the output is opened
        _ = trace.environment
    if fmt == "table":
        options = {"rows": rows, "every": every}
    elif fmt == "html":
        options = {"batch": batch_no, "epoch": epoch_no, "rows": rows, "every": every}
    else:
        options = {}
    emit(RUN_FORMATS, fmt, trace, output, **options)
    return _exit_code(trace.verdict.ok)


def _refuse_distributed(cfg, *options: tuple[str, str | None], command: str | None = None) -> None:
    """``--world-size N`` (N >= 2) with what it does not support: exit 2 naming both (``options``:
    ``(key of config.COMBINATIONS, the option as given or None)``); under torchrun only ``run``
    joins the group."""
    from sgdtrace.config import refusal
    from sgdtrace.engines.torch_ddp import under_torchrun

    ws = cfg.origin.get("world_size") or "--world-size"
    if cfg.world_size > 1:
        for key, opt in options:
            if opt:
                raise refusal(key, f"{ws} {cfg.world_size}", opt, "with")
    if command is not None and (cfg.world_size > 1 or under_torchrun()):
        if under_torchrun():
            raise ConfigError(f"sgdtrace {command} under torchrun: only 'sgdtrace run' joins a torchrun group")
        if command in ("graph",):
            raise refusal("graph-world_size", "sgdtrace graph", f"{ws} {cfg.world_size}", "with")


def refuse_features(cfg, model, *options: str | None) -> None:
    """``--reference exact`` and ``--gradcheck`` replay the article's model (scalar w and b): with D
    features, exit 2 naming both options."""
    if model is None or model.scalar:
        return
    from sgdtrace.config import refusal

    if model.name == "mlp":
        for opt in options:
            if opt:
                raise refusal("mlp-reference", f"{cfg.origin.get('model') or '--model'} mlp", opt, "with")
    given = (
        f"{cfg.origin.get('features') or '--features'} {cfg.features}"
        if cfg.features is not None
        else f"--data {cfg.data!r} ({model.features} feature columns)"
    )
    for opt in options:
        if opt:
            key = "features-reference" if opt.startswith("--reference") else "features-gradcheck"
            raise refusal(key, opt, given, "with")


def add_witnesses(trace, reference: str, gradcheck: bool) -> None:
    """Attach the exact reference and the finite-difference check to a trace, when asked for."""
    refuse_features(
        trace.config,
        trace.model,
        "--reference exact" if reference == "exact" else None,
        "--gradcheck" if gradcheck else None,
    )
    if reference == "exact":
        from sgdtrace.reference import exact_reference

        trace.reference = exact_reference(trace)
    if gradcheck:
        from sgdtrace.reference import gradcheck as check_gradients

        trace.gradcheck = check_gradients(trace)


def export(trace, fmt: str) -> str | Iterable[str]:
    """A trace in one of run's text formats (json, csv, markdown)."""
    return RUN_FORMATS[fmt].render(trace)


@cli.command()
@training_options(COMPARE_FORMATS, multi=True)
def compare(**kw: Any) -> int:
    """The divergence view: manual vs torch per field, on each --device and --dtype given.

    With two or more devices, torch on the first device is also compared with torch on each
    other device (same dtype), judged by the same tolerance model.
    """
    devices: tuple[str, ...] = kw.pop("device")
    dtypes: tuple[str, ...] = kw.pop("dtype")
    cfg, fmt, output = _configure(kw, COMPARE_FORMATS)  # without the flags, the file's device and dtype
    _refuse_distributed(cfg, command="compare")
    from sgdtrace.compare import compare_runs

    result = compare_runs(cfg, devices or (cfg.device,), dtypes or (cfg.dtype,))
    emit(COMPARE_FORMATS, fmt, result, output)
    return _exit_code(result.ok)


@cli.command()
@click.argument("configs", nargs=-1, type=click.Path(dir_okay=True))
@click.option(
    "--device",
    "devices",
    multiple=True,
    metavar="cpu|cuda|cuda:N",
    help="Devices to run on (repeatable; default every available device).",
)
@format_option(CHECK_FORMATS, default="table")
@output_option()
@with_engine_options
def check(
    configs: tuple[str, ...],
    devices: tuple[str, ...],
    fmt: str,
    output: str | None,
    engine: str | None,
    engine_cmd: str | None,
    engine_timeout: float | None,
) -> int:
    """The CI gate: run sgdtrace's own configs (or the TOML files and folders named) on every available device.

    Prints one summary row per config and device; exit 1 if any run diverges. The configs ship
    with sgdtrace, so it runs from any folder. With --engine, your file stands on the hand side
    of every config it serves (its SGDTRACE declaration; without one, a file with update serves
    SGD; the others are listed as skipped, with the reason), or of the configs named.
    """
    check_output_path(output)
    from sgdtrace.engines.torch_ddp import under_torchrun

    if under_torchrun():
        raise ConfigError("sgdtrace check under torchrun: only 'sgdtrace run' joins a torchrun group")
    paths = find_configs(configs)
    from sgdtrace.check import run_checks

    chosen = {
        k: v
        for k, v in (("engine", engine), ("engine_cmd", engine_cmd), ("engine_timeout", engine_timeout))
        if v is not None
    }
    if chosen:  # a bad --engine is refused before anything runs (on a run its declaration serves)
        from sgdtrace.engines import declared

        pre = {}
        if engine:
            try:
                found = declared.read(engine)
            except declared.DeclarationError as exc:
                raise ConfigError(f"--engine {engine!r}: {exc}") from None
            pre = {key: getattr(found, key)[0] for key in declared.KEYS if getattr(found, key)}
        build_config(pre, chosen)
    try:
        result = run_checks(paths, devices or None, chosen, named=bool(configs))
    except ConfigError as exc:  # check's files are its arguments, not a --config option
        message = str(exc)
        if message.startswith("--config "):
            raise ConfigError("config " + message[len("--config ") :]) from None
        raise
    emit(CHECK_FORMATS, fmt, result, output)
    return _exit_code(result.ok)


#: the epoch of a command's --batch (explain, graph)
epoch_option = click.option(
    "--epoch",
    "epoch_no",
    type=int,
    default=1,
    show_default=True,
    metavar="E",
    help="The epoch the batch is in (from 1).",
)


@cli.command()
@training_options(EXPLAIN_FORMATS)
@click.option("--batch", "batch_no", type=int, required=True, metavar="K", help="The batch to explain (from 1).")
@epoch_option
def explain(batch_no: int, epoch_no: int, **kw: Any) -> int:
    """One batch, equation by equation: forward pass node by node, backward pass factor by factor.

    Shows the nodes a, c, d, e per sample, the loss l and root z (Equations 1-3), each chain-rule
    factor (dl/de, de/dd, dd/dc, dc/da, da/dw, dc/db), Equations 6-11 with the numbers substituted
    and the update (Equations 4-5, or torch.optim.SGD's momentum form), with torch's value beside
    each result.
    """
    cfg, fmt, output = _configure(kw, EXPLAIN_FORMATS)
    _refuse_distributed(cfg, command="explain")
    from sgdtrace import data
    from sgdtrace.teaching.explain import explain_step
    from sgdtrace.tracing import run_trace

    dataset = data.load(cfg)
    if cfg.world_size > 1 and dataset.features is not None:
        from sgdtrace.config import refusal

        ws = cfg.origin.get("world_size") or "--world-size"
        given = (
            f"{cfg.origin.get('features') or '--features'} {cfg.features}"
            if cfg.features is not None
            else f"--data {cfg.data!r} ({dataset.features} feature columns)"
        )
        raise refusal("explain-world_size-features", f"explain {ws} {cfg.world_size}", given, "with")
    if cfg.world_size > 1 and cfg.model != "linear":
        from sgdtrace.config import refusal

        ws = cfg.origin.get("world_size") or "--world-size"
        given = f"{cfg.origin.get('model') or '--model'} {cfg.model}"
        raise refusal("explain-world_size-model", f"explain {ws} {cfg.world_size}", given, "with")
    if cfg.world_size > 1:
        data.distributed_plan(len(dataset), cfg).global_plan().step(batch_no, epoch_no)
        from sgdtrace.teaching.explain import explain_distributed

        trace = run_trace(cfg, dataset=dataset)
        emit(EXPLAIN_DISTRIBUTED_FORMATS, fmt, explain_distributed(trace, batch_no, epoch_no), output)
        return _exit_code(trace.verdict.ok)
    k = data.plan(len(dataset), cfg).step(batch_no, epoch_no)  # a bad --batch is refused before training
    user = None
    if cfg.engine is not None:  # the user's file, asked for its nodes (forward) at this step
        from sgdtrace.engines.user import UserEngine

        user = UserEngine(cfg.engine, cfg.engine_timeout, forward_step=k)
    trace = run_trace(cfg, dataset=dataset, engine=user)
    emit(EXPLAIN_FORMATS, fmt, explain_step(trace, batch_no, epoch_no), output)
    return _exit_code(trace.verdict.ok)


@cli.command()
@training_options(GRAPH_FORMATS, own=("loss",))
@click.option(
    "--batch",
    "batch_no",
    type=int,
    default=1,
    show_default=True,
    metavar="K",
    help="The batch whose graph is built (from 1).",
)
@epoch_option
@click.option(
    "--loss",
    "loss_kind",
    type=click.Choice(["mse", "explicit"]),
    default="mse",
    show_default=True,
    help="torch's loss: nn.MSELoss(), or explicit ((out - y) ** 2).mean() (one node per manual node).",
)
def graph(batch_no: int, epoch_no: int, loss_kind: str, **kw: Any) -> int:
    """The forward DAG and backward functions of the manual derivation beside torch's real grad_fn graph.

    Torch's graph is walked from loss.grad_fn; each of its nodes is mapped to the manual node it
    computes, with the gradient flowing into it in both engines. The whole run is also trained
    with that loss, and the verdict printed.
    """
    cfg, fmt, output = _configure(kw, GRAPH_FORMATS)
    _refuse_distributed(cfg, command="graph")
    if cfg.engine is not None or cfg.engine_cmd is not None:
        from sgdtrace.config import refusal

        which = "engine" if cfg.engine is not None else "engine_cmd"
        given = cfg.origin.get(which) or "--" + which.replace("_", "-")
        raise refusal("graph-engine", "sgdtrace graph", given, "with")
    from sgdtrace.teaching.graph import build_graph
    from sgdtrace.tracing import run_trace

    trace = run_trace(cfg, torch_loss=loss_kind)
    g = build_graph(trace, batch_no, epoch_no, loss_kind)
    emit(GRAPH_FORMATS, fmt, g, output)
    return _exit_code(g.ok)


@cli.command()
@training_options(PLOT_FORMATS, output_help="The PNG file to write (required; written whole or not at all).")
@click.option("--width", type=click.IntRange(200, 6000), default=1500, show_default=True, help="Image width in pixels.")
@click.option(
    "--height", type=click.IntRange(150, 6000), default=450, show_default=True, help="Image height in pixels."
)
def plot(width: int, height: int, **kw: Any) -> int:
    """Plot loss per step, w and b per step against their true values, and the (w, b) path.

    The path is drawn over contour lines of the full-data loss. Writes a PNG image to --output.
    """
    cfg, fmt, output = _configure(kw, PLOT_FORMATS)
    if output is None:
        raise ConfigError("plot needs --output FILE.png: the file to write the image to")
    if not output.lower().endswith(".png"):
        raise ConfigError(f"--output {output!r}: plot writes PNG images; name a file ending in .png")
    from sgdtrace.views.plot import require_matplotlib

    require_matplotlib()  # a missing matplotlib is reported before any training
    from sgdtrace.tracing import run_trace

    trace = run_trace(cfg)
    try:
        PLOT_FORMATS[fmt].render(trace, None, output=output, width=width, height=height)
    except OSError as exc:
        from sgdtrace.output import OutputError

        raise OutputError(f"cannot write to {output}: {exc.strerror or exc}") from None
    click.echo(f"wrote {output} ({width}x{height})", err=True)
    return _exit_code(trace.verdict.ok)


@cli.command()
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE.py",
    help="Write the file here (an existing file is never overwritten) instead of printing it.",
)
def template(output: str | None) -> int:
    """Print (or write) a starter file for --engine: gradients, update and forward, with the equations
    to implement in their docstrings and no solution.

    Run as is, `sgdtrace run --engine FILE.py` exits 2 naming the function to write first.
    """
    from sgdtrace.engines.template import TEMPLATE

    if output is not None and os.path.exists(output) and os.path.isfile(output):
        raise ConfigError(f"--output {output!r}: the file exists; name a new file (your work is not overwritten)")
    check_output_path(output)
    write_output(TEMPLATE, output)
    if output is not None:
        click.echo(f"wrote {output}: write gradients, then run: sgdtrace run --engine {output}", err=True)
    return EXIT_OK


@cli.command()
@click.argument("submission", required=False, metavar="[SUBMISSION.py]")
@click.option(
    "--engine-cmd", default=None, metavar='"COMMAND"', help="Grade a command (any language) instead of a file."
)
@click.option(
    "--assignment",
    type=str,
    default=None,
    metavar="FILE.toml",
    help="The assignment: its parts, points and runs (default: the sample, --example-assignment).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "junit", "gradescope"], case_sensitive=False),
    default="text",
    show_default=True,
    help="gradescope: Gradescope's results.json; junit: one test case per part.",
)
@click.option("--output", type=click.Path(dir_okay=False), default=None, metavar="FILE", help="Write here.")
@click.option("--show-values", is_flag=True, help="Show your values and torch's in the feedback (default off).")
@click.option("--engine-timeout", type=float, default=None, metavar="SECONDS", help="Per run (default 60).")
@click.option("--example-assignment", is_flag=True, help="Print the sample assignment and exit (default off).")
def grade(
    submission: str | None,
    engine_cmd: str | None,
    assignment: str | None,
    fmt: str,
    output: str | None,
    show_values: bool,
    engine_timeout: float | None,
    example_assignment: bool,
) -> int:
    """Grade a submission against an assignment: each part's points times the share of its steps that
    agree with torch (--judge step), with feedback that names the step, the field and the likely
    mistake, never the reference's numbers. Runs from any folder; exit 0 once a result is written.
    """
    from sgdtrace import grade as grading

    if example_assignment:
        with open(grading.EXAMPLE, encoding="utf-8") as f:
            write_output(f.read(), output)
        return EXIT_OK
    if (submission is None) == (engine_cmd is None):
        raise ConfigError('sgdtrace grade: give one submission: a FILE.py, or --engine-cmd "COMMAND"')
    if submission is not None:
        if not submission.endswith(".py"):
            raise ConfigError(f"SUBMISSION {submission!r}: must be a Python file (FILE.py)")
        if not os.path.isfile(submission):
            raise ConfigError(f"SUBMISSION {submission!r}: no such file")
    if engine_cmd is not None:
        from sgdtrace.config import Config

        Config(engine_cmd=engine_cmd)  # a command line that cannot be split: exit 2 here
    if engine_timeout is not None and not engine_timeout > 0:
        raise ConfigError(f"--engine-timeout {engine_timeout}: must be a number of seconds > 0")
    check_output_path(output)
    result = grading.grade(submission, engine_cmd, assignment, engine_timeout, show_values)
    write_output(grading.RENDER[fmt.lower()](result), output)
    if output is not None:
        click.echo(f"wrote {output}: {result.score:g} / {result.max_score:g}", err=True)
    return EXIT_OK


@cli.command()
@format_option(DOCTOR_FORMATS, default="table")
@output_option()
@click.option("--refresh", is_flag=True, show_default=True, help="Measure the rules again, whatever the cache holds.")
def doctor(fmt: str, output: str | None, refresh: bool) -> int:
    """Is it my code or my machine? This machine's kernel rules, measured, and which of sgdtrace's
    bit-for-bit claims hold here.

    Versions, the CPU (torch's capability, threads) and CUDA's settings; how torch's sqrt, exp, log,
    tanh and sigmoid round, whether its kernels fuse, how each optimizer implementation rounds
    against the hand update. Measured once per machine and torch version (about a second), then read
    from a cache; every JSON output carries the same as "environment".
    """
    check_output_path(output)
    from sgdtrace.probe import environment

    emit(DOCTOR_FORMATS, fmt, environment(refresh=refresh, timing=True), output)
    return EXIT_OK


def find_configs(names: Iterable[str]) -> list[str]:
    """The config files named (a folder means its *.toml), or the gate's own (shipped in the package:
    ``sgdtrace/configs/*.toml``, found from any folder)."""
    if not list(names):
        from sgdtrace.check import CONFIGS

        return sorted(glob.glob(os.path.join(CONFIGS, "*.toml")))
    paths: list[str] = []
    for name in names:
        if os.path.isdir(name):
            found = sorted(glob.glob(os.path.join(name, "*.toml")))
            if not found:
                raise ConfigError(f"{name!r}: no *.toml config files in this folder")
            paths += found
        elif os.path.isfile(name):
            if name.lower().endswith((".csv", ".tsv", ".txt")):
                raise ConfigError(
                    f"config {name!r}: check runs TOML config files (*.toml); "
                    f"a data file is trained on with `sgdtrace run --data {name}`, "
                    f"or named by a config file's `data` key"
                )
            paths.append(name)
        else:
            from sgdtrace.check import CONFIGS

            shipped = os.path.join(CONFIGS, os.path.basename(name))
            shipped = shipped if shipped.endswith(".toml") else shipped + ".toml"
            if not os.path.isfile(shipped):  # one of the gate's own, by name (configs/adam.toml, adam)
                raise ConfigError(
                    f"config {name!r}: no such file or folder, nor a config sgdtrace ships "
                    f"(sgdtrace check --help; the shipped ones are in {CONFIGS})"
                )
            paths.append(shipped)
    return paths


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``sgdtrace``) and ``python -m sgdtrace``."""
    cli.main(args=argv, prog_name="sgdtrace")


if __name__ == "__main__":  # pragma: no cover
    main()
