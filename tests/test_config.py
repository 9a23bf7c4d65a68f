"""Config: defaults are the article's run; a file < flags; every value validated, naming where it came from."""

import pytest

from sgdtrace.config import Config, build_config, load_toml
from sgdtrace.errors import ConfigError


def test_defaults_are_the_articles_run():
    c = Config()
    assert (c.lr, c.batch_size, c.epochs, c.init_w, c.init_b, c.dtype, c.device) == (0.01, 3, 1, 0.0, 0.0,
                                                                                      "float32", "cpu")
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


@pytest.mark.parametrize("changes, needle", [
    ({"lr": float("nan")}, "--lr nan"),
    ({"lr": float("inf")}, "--lr inf"),
    ({"batch_size": 0}, "--batch-size 0"),
    ({"epochs": 0}, "--epochs 0"),
    ({"dampening": 1.5}, "dampening must be in [0, 1]"),
    ({"weight_decay": -0.1}, "weight decay must be"),
    ({"nesterov": True}, "Nesterov momentum requires a momentum > 0"),
    ({"nesterov": True, "momentum": 0.9, "dampening": 0.1}, "zero dampening"),
    ({"device": "gpu"}, "allowed: cpu, cuda, cuda:N, auto"),
    ({"dtype": "float8"}, "allowed: float32, float64, bfloat16, float16"),
    ({"data": "a.csv", "synthetic": 10}, "choose one data source"),
    ({"seed": -1}, "--seed -1"),
])
def test_validation(changes, needle):
    with pytest.raises(ConfigError) as err:
        Config(**changes)
    assert needle in str(err.value)
