"""Config: defaults are the article's run; a file < flags; every value validated, naming where it came from."""

import os

import pytest

from sgdtrace.config import Config, build_config, load_toml
from sgdtrace.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_defaults_are_the_articles_run():
    c = Config()
    assert (c.lr, c.batch_size, c.epochs, c.init_w, c.init_b, c.dtype, c.device) == (
        0.01,
        3,
        1,
        0.0,
        0.0,
        "float32",
        "cpu",
    )
    assert c.data is None and c.synthetic is None and not c.shuffle


def test_file_then_flags(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("lr = 0.5\nepochs = 4\ndata = 'points.csv'\n")
    values = load_toml(str(path))
    assert values["data"] == str(tmp_path / "points.csv")  # relative to the file's folder
    cfg = build_config(values, {"lr": 0.25, "epochs": None}, str(path))
    assert (cfg.lr, cfg.epochs) == (0.25, 4)


def test_bad_value_from_a_file_names_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("momentum = -1\n")
    with pytest.raises(ConfigError, match=r"'momentum' in c.toml -1.0: momentum must be"):
        build_config(load_toml(str(path)), {}, str(path))


def test_unknown_key_suggests_the_closest(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("learning_rate = 0.1\nbatchsize = 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'learning_rate'"):
        load_toml(str(path))
    path.write_text("batchsize = 3\n")
    with pytest.raises(ConfigError, match=r"did you mean 'batch_size'"):
        load_toml(str(path))


def test_wrong_type_and_invalid_toml(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("batch_size = 2.5\n")
    with pytest.raises(ConfigError, match="must be a whole number"):
        load_toml(str(path))
    path.write_text("lr = = 1\n")
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 1"):
        load_toml(str(path))


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"lr": float("nan")}, "lr=nan"),  # (the Python API names keyword arguments)
        ({"lr": float("inf")}, "lr=inf"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"epochs": 0}, "epochs=0"),
        ({"dampening": 1.5}, "dampening must be in [0, 1]"),
        ({"weight_decay": -0.1}, "weight decay must be"),
        ({"nesterov": True}, "Nesterov momentum requires a momentum > 0"),
        ({"nesterov": True, "momentum": 0.9, "dampening": 0.1}, "zero dampening"),
        ({"device": "gpu"}, "allowed: cpu, cuda, cuda:N, auto"),
        ({"dtype": "float8"}, "allowed: float32, float64, bfloat16, float16"),
        ({"data": "a.csv", "synthetic": 10}, "choose one data source"),
        ({"seed": -1}, "seed=-1"),
    ],
)
def test_validation(changes, needle):
    with pytest.raises(ConfigError) as err:
        Config(**changes)
    assert needle in str(err.value)


# ------------------------------------------------------------------ every option is a TOML key


RUN_KEYS = [
    ("rows", "6", 6),
    ("every", "2", 2),
    ("reference", "'exact'", "exact"),
    ("quiet", "true", True),
    ("gradcheck", "true", True),
]


@pytest.mark.parametrize("key, text, value", RUN_KEYS)
def test_run_options_are_toml_keys(tmp_path, key, text, value):
    from sgdtrace.config import run_options

    path = tmp_path / "c.toml"
    path.write_text(f"{key.replace('_', '-')} = {text}\n")
    cfg = build_config(load_toml(str(path)), {}, str(path))
    opts, warnings = run_options(cfg, "table", {})
    assert opts[key] == value and warnings == []
    # a flag given beats the file; a flag not given (None, or False for an on/off flag) does not
    flag = {"rows": 3, "every": 5, "reference": "none", "quiet": True, "gradcheck": True}[key]
    assert run_options(cfg, "table", {key: flag})[0][key] == flag


def test_every_option_of_run_is_accepted_in_a_file():
    """The README's promise: each of run's options (except --config itself) is a known TOML key."""
    from sgdtrace.cli import run as run_command
    from sgdtrace.config import KNOWN_KEYS

    names = {p.name for p in run_command.params} - {"config_path"}
    names = {
        {"fmt": "format", "batch_no": "batch", "epoch_no": "epoch", "scheduler_args": "scheduler"}.get(n, n)
        for n in names
    }  # --scheduler-arg KEY=VALUE: a key of the [scheduler] table
    assert names <= set(KNOWN_KEYS), names - set(KNOWN_KEYS)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("rows = -1\n", "'rows' in c.toml = -1: must be a whole number >= 0"),
        ("every = 0\n", "'every' in c.toml = 0: must be a whole number >= 1"),
        ("every = 1.5\n", "'every' in c.toml = 1.5: must be a whole number"),
        ("reference = 'exactly'\n", "'reference' in c.toml = 'exactly': allowed: none, exact"),
        ("quiet = 1\n", "'quiet' in c.toml = 1: must be true or false"),
    ],
)
def test_run_options_in_a_file_are_validated_as_the_flags_are(tmp_path, text, needle):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_toml(str(path))
    assert needle in str(err.value)


# ------------------------------------------------------------------ clashes and options that do not apply


@pytest.mark.parametrize(
    "a, b", [("batch_size", "batch-size"), ("drop-last", "drop_last"), ("weight_decay", "weight-decay")]
)
def test_one_option_spelled_twice_in_a_file_is_a_clash_naming_both(tmp_path, a, b):
    path = tmp_path / "c.toml"
    value = "true" if "drop" in a else "2"
    path.write_text(f"{a} = {value}\n{b} = {value}\n")  # even with the same value: two places for one thing
    with pytest.raises(ConfigError) as err:
        load_toml(str(path))
    assert f"{a!r}" in str(err.value) and f"{b!r}" in str(err.value) and "twice" in str(err.value)


@pytest.mark.parametrize(
    "flags, named",
    [
        ({"true_w": 3.0}, ["--true-w"]),
        ({"true_b": 1.0, "noise": 0.5}, ["--true-b", "--noise"]),
        ({"noise": 0.0, "data": "d.csv"}, ["--noise", "'d.csv'"]),
    ],
)
def test_synthetic_options_without_synthetic_warn(flags, named):
    cfg = build_config({}, flags)
    (line,) = cfg.warnings
    assert "ignored" in line and "--synthetic" in line
    for name in named:
        assert name in line
    assert build_config({}, {**flags, "data": None, "synthetic": 5}).warnings == ()


def test_synthetic_options_from_a_file_warn_naming_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("true_w = 3.0\n")
    (line,) = build_config(load_toml(str(path)), {}, str(path)).warnings
    assert "'true_w' in c.toml" in line
    assert build_config({}, {}).warnings == ()


@pytest.mark.parametrize("fmt", ["json", "csv", "markdown"])
@pytest.mark.parametrize("given", [{"rows": 5}, {"every": 2}, {"rows": 0, "every": 1}])
def test_rows_and_every_with_a_non_table_format_are_refused(fmt, given):
    """An option of another format is refused, as an option of another command is."""
    from sgdtrace.config import RUN_DEFAULTS, run_options

    with pytest.raises(ConfigError) as err:
        run_options(Config(), fmt, given)
    key = next(iter(given))
    assert f"--{key} {given[key]} and --format {fmt}: shapes the table" in str(err.value) and f"--format {fmt}" in str(
        err.value
    )
    for ok in ("table", "html"):
        assert run_options(Config(), ok, given) == ({**RUN_DEFAULTS, **given}, [])
    assert run_options(Config(), fmt, {})[1] == []


# ------------------------------------------------------------------ values the dtype cannot hold


@pytest.mark.parametrize("value", [1e-46, 7e-46, 1e-300, 5e-324])
@pytest.mark.parametrize("key, extra", [("lr", {}), ("momentum", {"nesterov": True})])
def test_values_that_must_be_positive_and_round_to_zero_in_float32_are_refused(key, value, extra):
    changes = {"momentum": 0.9, **extra, key: value}
    with pytest.raises(ConfigError) as err:
        Config(**changes)
    assert f"{key}={value!r}: rounds to 0 in float32" in str(err.value) and "--dtype float64" in str(err.value)
    if value > 0:
        Config(**changes, dtype="float64")  # float64 holds it


@pytest.mark.parametrize("key", ["init_w", "init_b", "momentum", "dampening", "weight_decay"])
def test_values_where_zero_is_legal_may_round_to_zero(key):
    # 0 is a legal value of these, and a value that rounds to it runs as that 0 in both engines
    assert getattr(Config(**{key: 1e-46}), key) == 1e-46


@pytest.mark.parametrize("value", [1.5e-45, 1e-45, 1e-40, 1.2e-38])
def test_the_smallest_float32_numbers_are_accepted(value):
    # 1e-45 rounds up to the smallest subnormal, 1.4e-45; below half of it a value rounds to 0
    assert Config(lr=value).lr == value


def test_to_dtype_rounds_as_numpy_does():
    import numpy as np

    from sgdtrace.config import to_dtype

    rng = np.random.default_rng(0)
    values = np.concatenate([10.0 ** rng.uniform(-50, 40, 2000), [7.006e-46, 7.007e-46, 3.4028235e38, 3.5e38]])
    with np.errstate(over="ignore"):
        want = values.astype(np.float32).astype(np.float64)
    assert [to_dtype(float(v), "float32") for v in values] == want.tolist()


def test_data_dash_in_a_file_is_standard_input(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("data = '-'\n")
    assert load_toml(str(path))["data"] == "-"  # not a file named '-' beside the config


def test_epoch_in_a_file_without_batch_is_refused_naming_epochs(tmp_path):
    """`epoch` is run's --epoch (the HTML report's batch); alone, it is most likely `epochs` misspelled:
    refused as the flag is, never a run of one epoch."""
    from click.testing import CliRunner

    from sgdtrace.cli import cli

    path = tmp_path / "c.toml"
    path.write_text("epoch = 3\n")
    r = CliRunner().invoke(cli, ["run", "--config", str(path)])
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.startswith("sgdtrace: error: 'epoch' in c.toml = 3 with no --batch K: ")
    assert r.stderr.count("\n") == 1
    assert "did you mean 'epochs'?" in r.stderr


# ------------------------------------------------------------------ names in any case


@pytest.mark.parametrize("given", ["Adam", "ADAM", "adam"])
def test_optimizer_names_in_any_case_are_torchs_class(tmp_path, given):
    """`--optimizer Adam` as torch spells the class: the same run as adam, named adam in the JSON."""
    from click.testing import CliRunner

    from sgdtrace.cli import cli

    assert Config(optimizer=given).optimizer == "adam"
    assert Config().replace(optimizer=given).eps == 1e-8  # Adam's default eps follows, as for "adam"
    assert Config(optimizer="AdamW").weight_decay == 0.01 and Config(optimizer="RMSprop").optimizer == "rmsprop"
    path = tmp_path / "c.toml"
    path.write_text(f"optimizer = {given!r}\n")
    assert build_config(load_toml(str(path)), {}, str(path)) == Config(optimizer="adam")
    import json

    r = CliRunner().invoke(cli, ["run", "--optimizer", given, "--format", "json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["config"]["optimizer"] == "adam"


@pytest.mark.parametrize("given", ["steplr", "STEPLR", "StepLR", "stepLR"])
def test_scheduler_names_in_any_case_are_torchs_class(tmp_path, given):
    from sgdtrace.config import make_schedule, parse_scheduler_flags

    assert parse_scheduler_flags(given, ("step_size=2",)).name == "StepLR"
    assert make_schedule({"name": given, "step_size": 2}, "x").to_json()["name"] == "StepLR"
    path = tmp_path / "c.toml"
    path.write_text(f"[scheduler]\nname = {given!r}\nstep_size = 2\n")
    assert load_toml(str(path))["scheduler"].name == "StepLR"


@pytest.mark.parametrize(
    "make, suggestion",
    [
        (lambda: Config(optimizer="adma"), "did you mean 'adam'?"),
        (lambda: Config(optimizer="RMSProps"), "did you mean 'rmsprop'?"),
        (lambda: Config(optimizer="sdg"), "did you mean 'sgd'?"),
        (lambda: Config(scheduler=None, optimizer="lbfgs"), None),
    ],
)
def test_a_misspelt_optimizer_suggests_the_name(make, suggestion):
    with pytest.raises(ConfigError) as err:
        make()
    text = str(err.value)
    assert "allowed: sgd, adam, adamw, rmsprop, adagrad" in text
    assert (suggestion in text) if suggestion else "did you mean" not in text


@pytest.mark.parametrize(
    "given, suggestion",
    [("StepRL", "'StepLR'"), ("cosine", "'CosineAnnealingLR'"), ("onecycle", "'OneCycleLR'"), ("plateau", None)],
)
def test_a_misspelt_scheduler_suggests_the_name(given, suggestion):
    from sgdtrace.config import parse_scheduler_flags

    with pytest.raises(ConfigError) as err:
        parse_scheduler_flags(given, ())
    text = str(err.value)
    assert f"scheduler {given!r}: allowed: StepLR" in text
    assert (f"did you mean {suggestion}?" in text) if suggestion else "did you mean" not in text


# ------------------------------------------------------------------ errors name options as the user wrote them


@pytest.mark.parametrize(
    "kwargs, python, flag",
    [
        ({"lr": -1}, "lr=-1: the learning rate must be", "--lr -1: the learning rate must be"),
        ({"batch_size": 0}, "batch_size=0: must be", "--batch-size 0: must be"),
        ({"engine_timeout": 0.0}, "engine_timeout=0.0: must be", "--engine-timeout 0.0: must be"),
        ({"set_epoch": False}, "set_epoch=False with world_size 1", "--no-set-epoch with --world-size 1"),
        (
            {"momentum": 0.5, "optimizer": "adam"},
            "momentum=0.5 and optimizer='adam'",
            "--momentum 0.5 and --optimizer adam",
        ),
    ],
)
def test_python_api_errors_name_keyword_arguments_and_the_command_line_flags(kwargs, python, flag):
    """`sgdtrace.trace(lr=-1)` says lr, as the caller wrote it; `sgdtrace run --lr -1` says --lr."""
    import sgdtrace
    from sgdtrace.testing import assert_matches_torch

    for call in (lambda: sgdtrace.trace(**kwargs), lambda: Config(**kwargs), lambda: Config().replace(**kwargs)):
        with pytest.raises(ConfigError) as err:
            call()
        assert str(err.value).startswith(python) and "--" not in str(err.value).split(":")[0], str(err.value)
    if "optimizer" not in kwargs:  # (an engine with another optimizer is refused first)
        with pytest.raises(ConfigError) as err:
            assert_matches_torch(os.path.join(ROOT, "docs", "examples", "engine_correct.py"), **kwargs)
        assert str(err.value).startswith(python)
    with pytest.raises(ConfigError) as err:
        build_config({}, kwargs)
    assert str(err.value).startswith(flag), str(err.value)


def test_python_api_errors_found_with_the_data_name_keywords():
    import sgdtrace

    with pytest.raises(ConfigError, match=r"^drop_last with batch_size 20 and 9 samples .* leave drop_last out"):
        sgdtrace.trace(drop_last=True, batch_size=20)
    with pytest.raises(ConfigError, match=r"^world_size 12: more ranks than the 9 samples"):
        sgdtrace.trace(world_size=12)
