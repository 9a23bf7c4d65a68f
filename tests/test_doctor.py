"""``sgdtrace doctor`` and the probe behind it: this machine's kernel rules, measured, cached, and
the claims that hold here; every JSON output's ``environment``.

* the exact references the probe measures against (correctly rounded sqrt in integers, a fused
  multiply-add rounded once, ulp distances), checked against IEEE arithmetic and exact fractions;
* each measured rule checked again here, independently, on fresh inputs;
* the cache: where it lives, read back without measuring, measured again when stale, corrupt or
  asked to; a cache that cannot be written never fails a run;
* the claims, from rules made to hold and not to hold;
* the command (table, JSON, --output, --refresh, bad input) and the view (golden, fixed input);
* the environment in the JSON of run, compare and check.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from golden_util import GOLDEN, check_golden, render

from sgdtrace import probe
from sgdtrace.cli import cli
from sgdtrace.engines.optimizers._track import SQRT_ULPS
from sgdtrace.views.doctor import doctor_view

DTYPES = ("float32", "float64", "bfloat16", "float16")


# ------------------------------------------------------------------ the exact references


def test_correct_sqrt_is_ieee_sqrt_in_float64_and_float32():
    """In integers, exactly: equal to the hardware's correctly rounded sqrt over the whole range,
    subnormals included."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 20000) * np.exp(rng.uniform(-740, 709, 20000))
    x = np.concatenate([x, [5e-324, 2.2e-308, 1.0, 2.0, 4.0, 0.25, 1.7976931348623157e308, 0.0]])
    assert all(probe.correct_sqrt(v, 53) == math.sqrt(v) for v in x.tolist())
    x32 = rng.uniform(0, 1, 20000).astype(np.float32) * np.exp(rng.uniform(-100, 88, 20000)).astype(np.float32)
    x32 = x32[np.isfinite(x32)]
    assert all(probe.correct_sqrt(float(v), 24) == float(np.sqrt(v)) for v in x32)


def test_correct_sqrt_in_16_bits_is_the_nearest_value():
    """Positive bfloat16 and float16 values: the root rounded once is a value of the type, and the
    exact root lies between the midpoints to its neighbours (compared squared, in fractions)."""
    for dtype, p in ((ml_dtypes.bfloat16, 8), (np.float16, 11)):
        top = 0x7C00 if dtype is np.float16 else 0x7F80
        for v in np.arange(1, top, 7, dtype=np.uint16).view(dtype).astype(np.float64).tolist():
            r = probe.correct_sqrt(v, p)
            bits = np.asarray([r]).astype(dtype).view(np.uint16)
            assert float(bits.view(dtype)[0]) == r  # a value of the type
            up, down = (float((bits.astype(np.int32) + k).astype(np.uint16).view(dtype)[0]) for k in (1, -1))
            lo, hi = (Fraction(r) + Fraction(down)) / 2, (Fraction(r) + Fraction(up)) / 2
            assert lo * lo <= Fraction(v) <= hi * hi, (v, r)


def test_exact_fma_rounds_once():
    rng = np.random.default_rng(1)
    for _ in range(3000):
        a, b, c = (rng.standard_normal(3) * np.exp(rng.uniform(-12, 12, 3))).astype(np.float32)
        exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
        got = probe.exact_fma(float(a), float(b), float(c), "float32")
        f = np.float32(got)
        neighbours = (np.nextafter(f, np.float32(np.inf)), np.nextafter(f, np.float32(-np.inf)))
        assert all(abs(Fraction(got) - exact) <= abs(Fraction(float(n)) - exact) for n in neighbours)
    # a float32 midpoint after rounding to float64: the exact sum decides (here: just above it)
    a = b = float(np.float32(1 + 2**-23))
    assert probe.exact_fma(a, b, 2.0**-60, "float32") == float(np.float32(1 + 2**-22))
    assert probe.exact_fma(0.1, 0.2, 0.3, "float64") == float(Fraction(0.1) * Fraction(0.2) + Fraction(0.3))


def test_ulp_distance_counts_the_values_between():
    one = torch.tensor([1.0, -1.0, 0.0, 0.0, 1.0, float("nan")], dtype=torch.float32)
    other = torch.tensor(
        [float(np.nextafter(np.float32(1), np.float32(2))), -1.0, -0.0, 1e-45, float("inf"), 1.0],
        dtype=torch.float32,
    )
    assert probe.ulp_distance(torch, one, other).tolist() == [1, 0, 0, 1, -1, -1]
    tiny = torch.tensor([-1e-45], dtype=torch.float32)
    assert probe.ulp_distance(torch, tiny, torch.tensor([1e-45])).tolist() == [2]
    for name in DTYPES:
        dt = getattr(torch, name)
        x = torch.tensor([1.0, -2.0], dtype=dt)
        keys = probe._ordered(torch, x)
        assert torch.equal(probe._from_ordered(torch, keys, dt), x)
        up = probe._from_ordered(torch, keys + 1, dt)
        assert probe.ulp_distance(torch, x, up).tolist() == [1, 1]
        assert (up.double() > x.double()).all()


# ------------------------------------------------------------------ the rules, measured again here


def test_every_rule_is_measured_on_stated_inputs(machine_rules):
    r = machine_rules
    assert set(r) == {"sqrt", "functions", "kernels", "add_16bit", "optimizers", "cuda"}
    assert (r["cuda"] is None) == (not torch.cuda.is_available())
    assert "U(" in r["sqrt"]["inputs"] and all("x =" in r["functions"][f]["inputs"] for f in r["functions"])
    for name in DTYPES:
        for path in ("one", "vector"):
            s = r["sqrt"][name][path]
            assert s["n"] == probe.N_SQRT and 0 <= s["off_share"] <= 1 and s["max_ulp"] >= 0
            for f in ("exp", "log", "tanh", "sigmoid"):
                assert r["functions"][f][name][path]["n"] == probe.N_FUNC
    rules = {"fma", "textbook", "mixed", "scalar rounded first", "in double"}
    assert all(k["rule"] in rules for d in ("float32", "float64") for k in r["kernels"][d].values())
    combos = {(x["optimizer"], x["impl"], x["dtype"]) for x in r["optimizers"]["results"]}
    expected = {(o, i, d) for o, (_, impls) in probe.OPTIMIZER_CASES.items() for i in impls for d in DTYPES}
    assert combos == expected


def test_bfloat16_and_float16_roots_are_correctly_rounded_here(machine_rules):
    """A 16-bit root is float32's, rounded: correctly rounded on every machine (24 >= 2p + 2 bits);
    the probe finds none off."""
    for name in ("bfloat16", "float16"):
        assert machine_rules["sqrt"][name]["one"]["max_ulp"] == 0
        assert machine_rules["sqrt"][name]["vector"]["max_ulp"] == 0


def test_the_16_bit_chunk_is_what_the_probe_measured(machine_rules):
    """Whole chunks of the vectorised loop round once, the tail three times: checked on fresh vectors
    shorter than a chunk, of one and a half, and of two and a tail, with the chunk the probe found."""
    rng = np.random.default_rng(9)
    for name in ("bfloat16", "float16"):
        found = machine_rules["add_16bit"][name]
        assert found["one_element_three_roundings"]
        chunk = found["chunk"]
        if chunk is None:
            continue
        npdt = ml_dtypes.bfloat16 if name == "bfloat16" else np.float16
        dt = getattr(torch, name)

        def r16(v):
            return np.asarray(v, dtype=np.float64).astype(npdt).astype(np.float64)

        for n in (chunk - 1, chunk + chunk // 2, 2 * chunk + 5):
            a = r16(rng.choice([-1, 1], n) * 2.0 ** rng.uniform(-2, 2, n))
            b = r16(rng.choice([-1, 1], n) * 2.0 ** rng.uniform(-2, 2, n))
            c = -float(2.0 ** rng.uniform(-6, -1))
            got = torch.tensor(a, dtype=dt).add_(torch.tensor(b, dtype=dt), alpha=c).double().numpy()
            c16, c32 = float(r16(c)), float(np.float32(c))
            three = r16(a + r16(c16 * b))  # c, the product, the sum: each rounded
            once = [r16(a + k * b) for k in (c16, c32)]  # exact in float64 here, rounded once
            once += [r16(np.float32(a + k * b)) for k in (c16, c32)]  # through float32
            edge = n // chunk * chunk
            assert (got[edge:] == three[edge:]).all(), (name, n)
            assert np.any([got[:edge] == o[:edge] for o in once], axis=0).all(), (name, n)
            if edge:  # the two rules do differ here: the check can tell them apart
                assert (three[:edge] != got[:edge]).any()


def test_whether_fused_sgd_stores_16_bit_vectors_is_what_the_probe_measured(machine_rules):
    rows = {(r["impl"], r["dtype"]): r for r in machine_rules["optimizers"]["results"] if r["optimizer"] == "sgd"}
    for name in ("bfloat16", "float16"):
        dt = getattr(torch, name)
        g = torch.Generator().manual_seed(3)
        p = torch.nn.Parameter(torch.randn(64, generator=g).to(dt))
        before = p.detach().clone()
        p.grad = torch.randn(64, generator=g).to(dt)
        torch.optim.SGD([p], lr=0.1, fused=True).step()
        moved = float((p.detach() != before).double().mean())
        assert (moved < 0.5) == (rows[("fused", name)]["vector_updated_share"] < 0.5)
        assert rows[("for-loop", name)]["vector_updated_share"] > 0.5  # the default path always stores


def test_the_hand_16_bit_sgd_is_torchs_default_bit_for_bit(machine_rules):
    """The claim behind 16-bit SGD's zero allowance: torch's default (for-loop) update on one-element
    parameters is the hand rule's, on every case measured."""
    rows = machine_rules["optimizers"]["results"]
    for r in rows:
        if r["optimizer"] == "sgd" and r["impl"] == "for-loop" and r["dtype"] in ("bfloat16", "float16"):
            assert r["match_share"] == 1.0, r


# ------------------------------------------------------------------ on a CUDA device


def test_sqrt_and_the_functions_on_the_cpu_named_are_the_default(machine_rules):
    """``device="cpu"`` named is the measurement every machine makes (the cached one)."""
    assert probe.measure_sqrt(device="cpu") == machine_rules["sqrt"]
    assert probe.measure_functions(device="cpu") == machine_rules["functions"]


def test_the_kernels_run_on_the_device_named():
    """On a device whose tensors hold no data (meta), the kernels run, and bringing their results
    back to the CPU is what fails: the inputs went to the device before any kernel ran."""
    for measure in (probe.measure_sqrt, probe.measure_functions):
        with pytest.raises(NotImplementedError, match="meta"):
            measure(device="meta")


@pytest.fixture
def fake_gpu(monkeypatch, machine_rules, tmp_path):
    """torch seeing one CUDA device ("Fake GPU") whose sqrt and functions are the CPU's: the devices
    the probe asked for are counted; the CPU-only rules are the session's (instant)."""
    monkeypatch.setenv(probe.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(probe, "_memo", {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Fake GPU")
    asked = []
    sqrt, functions = probe.measure_sqrt, probe.measure_functions

    def on(measure, cached):
        def fake(device="cpu"):
            asked.append((measure.__name__, device))
            return measure("cpu") if device == "cuda" else copy.deepcopy(cached)

        return fake

    monkeypatch.setattr(probe, "measure_sqrt", on(sqrt, machine_rules["sqrt"]))
    monkeypatch.setattr(probe, "measure_functions", on(functions, machine_rules["functions"]))
    for name in ("kernels", "add_16bit", "optimizers"):
        monkeypatch.setattr(probe, f"measure_{name}", lambda name=name: copy.deepcopy(machine_rules[name]))
    return asked


def test_a_cuda_device_is_measured_and_keyed(fake_gpu, machine_rules):
    key = probe.cache_key()
    assert key["cuda_device"] == "Fake GPU"
    assert probe.cache_path(key) != probe.cache_path({**key, "cuda_device": None})
    rules = probe.measure()
    assert ("measure_sqrt", "cuda") in fake_gpu and ("measure_functions", "cuda") in fake_gpu
    cuda = rules["cuda"]
    assert set(cuda) == {"device", "sqrt", "functions"} and cuda["device"] == "Fake GPU"
    assert cuda["sqrt"] == machine_rules["sqrt"] and cuda["functions"] == machine_rules["functions"]
    env = probe.environment()
    assert env["rules"]["cuda"] == json.loads(json.dumps(cuda)) and env["cuda"]["devices"] == ["Fake GPU"]
    table = CliRunner().invoke(cli, ["doctor"], env={"COLUMNS": "100"})
    assert table.exit_code == 0, table.output
    assert "on CUDA (Fake GPU): results not correctly rounded" in table.output
    assert "on CUDA: no CUDA device" not in table.output
    for name in ("sqrt", "exp", "log", "tanh", "sigmoid"):
        assert any(line.split()[:2] == [name, "float32"] for line in table.output.splitlines()), name
    doc = json.loads(CliRunner().invoke(cli, ["doctor", "--format", "json"]).output)
    assert doc["rules"]["cuda"] == env["rules"]["cuda"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_without_cuda_the_rules_say_so():
    env = probe.environment()
    assert env["rules"]["cuda"] is None and probe.cache_key()["cuda_device"] is None
    table = CliRunner().invoke(cli, ["doctor"], env={"COLUMNS": "100"})
    assert "sqrt, exp, log, tanh, sigmoid on CUDA: no CUDA device" in table.output
    doc = json.loads(CliRunner().invoke(cli, ["doctor", "--format", "json"]).output)
    assert doc["rules"]["cuda"] is None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_cuda_rules_are_measured_on_the_gpu(machine_rules):
    """On a GPU: sqrt and every function measured there, per dtype, one element and vector."""
    cuda = machine_rules["cuda"]
    assert cuda["device"] == torch.cuda.get_device_name(0)
    rules = {"sqrt": cuda["sqrt"], **{f: cuda["functions"][f] for f in probe.FUNC_INPUTS}}
    for name, rule in rules.items():
        for dtype in DTYPES:
            for path in ("one", "vector"):
                s = rule[dtype][path]
                assert s["n"] > 0 and 0 <= s["off_share"] <= 1 and s["max_ulp"] >= 0, (name, dtype, path)


# ------------------------------------------------------------------ the cache


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch, machine_rules):
    """An empty cache folder, and a probe that 'measures' the session's rules instantly (counted)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(probe.CACHE_ENV, str(folder))
    calls = []

    def measure():
        calls.append("cpu")
        return copy.deepcopy(machine_rules)

    monkeypatch.setattr(probe, "measure", measure)
    monkeypatch.setattr(probe, "_memo", {})
    return folder, calls


def test_cache_dir_follows_the_variables(monkeypatch, tmp_path):
    monkeypatch.setenv(probe.CACHE_ENV, str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert probe.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(probe.CACHE_ENV)
    assert probe.cache_dir() == tmp_path / "xdg" / "sgdtrace"
    monkeypatch.delenv("XDG_CACHE_HOME")
    if sys.platform != "win32":
        assert probe.cache_dir() == Path.home() / ".cache" / "sgdtrace"


def test_the_cache_is_written_once_and_read_back(fresh_cache):
    folder, calls = fresh_cache
    env = probe.environment(timing=True)
    assert calls == ["cpu"] and env["probe"]["from_cache"] is False
    path = Path(env["cache"]["path"])
    assert path.parent == folder and env["cache"] == {"path": str(path), "written": True, "error": None}
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["key"] == probe.cache_key() and doc["rules"] == env["rules"]
    # a new process (the memo emptied): read back, not measured
    probe._memo.clear()
    again = probe.environment(timing=True)
    assert calls == ["cpu"] and again["probe"]["from_cache"] is True
    assert again["rules"] == env["rules"] and again["claims"] == env["claims"]
    # --refresh measures whatever the cache holds
    probe.environment(refresh=True)
    assert calls == ["cpu", "cpu"]


def test_the_key_names_the_machine_and_versions(fresh_cache):
    key = probe.cache_key()
    assert key["torch"] == torch.__version__
    assert key["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert key["threads"] == torch.get_num_threads() and key["cpu_model"] == probe.cpu_model()
    assert probe.cache_path(key) != probe.cache_path({**key, "threads": key["threads"] + 1})
    assert probe.cache_path(key) != probe.cache_path({**key, "torch": "0.0"})
    assert key["cuda"] == torch.version.cuda
    assert key["cuda_device"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    assert probe.cache_path(key) != probe.cache_path({**key, "cuda_device": "another GPU"})


@pytest.mark.parametrize("damage", ["garbage", "other key", "no rules"])
def test_a_stale_or_corrupt_cache_is_measured_again(fresh_cache, damage):
    folder, calls = fresh_cache
    path = probe.cache_path()
    folder.mkdir()
    key = probe.cache_key()
    text = {
        "garbage": "{not json",
        "other key": json.dumps({"key": {**key, "torch": "1.0"}, "rules": {"sqrt": {}}}),
        "no rules": json.dumps({"key": key}),
    }[damage]
    path.write_text(text, encoding="utf-8")
    env = probe.environment()
    assert calls == ["cpu"] and env["cache"]["written"]
    assert json.loads(path.read_text(encoding="utf-8"))["rules"] == env["rules"]


def test_a_cache_that_cannot_be_written_never_fails_a_run(fresh_cache, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    monkeypatch.setenv(probe.CACHE_ENV, str(blocker / "cache"))
    env = probe.environment()
    assert env["cache"]["written"] is False and env["cache"]["error"]
    assert env["rules"]["sqrt"] and env["claims"]
    result = CliRunner().invoke(cli, ["run", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["environment"]["cache"]["written"] is False
    table = CliRunner().invoke(cli, ["doctor"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "rules not cached in" in table.output


def test_a_cached_probe_costs_little(machine_rules):
    """What a run pays for its environment once the rules are cached: the key (versions, CPU,
    the sources' digest) and one small file. Measured here about 10 ms; allowed a generous 0.5 s."""
    probe.environment()
    saved = dict(probe._memo)
    try:
        probe._memo.clear()
        t0 = time.perf_counter()
        env = probe.environment(timing=True)
        elapsed = time.perf_counter() - t0
    finally:
        probe._memo.update(saved)
    assert env["probe"]["from_cache"] is True
    assert elapsed < 0.5


# ------------------------------------------------------------------ the claims


def _claim(claims, words):
    (found,) = [c for c in claims if words in c["claim"]]
    return found


def test_the_claims_follow_the_rules(machine_rules):
    rules = copy.deepcopy(machine_rules)
    for name in DTYPES:
        for path in ("one", "vector"):
            rules["sqrt"][name][path].update(off_share=0.0, max_ulp=0)
    for d in ("float32", "float64"):
        for op in probe.FUSED_KERNELS:
            rules["kernels"][d][op].update(rule="fma", other=0)
    for r in rules["optimizers"]["results"]:
        r.update(match_share=1.0, vector_updated_share=1.0)
    good = probe.claims(rules)
    assert all(c["holds"] for c in good), [c for c in good if not c["holds"]]

    bad = copy.deepcopy(rules)
    bad["sqrt"]["float32"]["one"].update(off_share=0.183, max_ulp=SQRT_ULPS + 1)
    bad["kernels"]["float32"]["add(alpha=)"]["rule"] = "textbook"
    bad["kernels"]["float64"]["addcmul_"]["other"] = 3
    for r in bad["optimizers"]["results"]:
        if (r["optimizer"], r["impl"]) == ("sgd", "fused") and r["dtype"] in ("bfloat16", "float16"):
            r.update(match_share=0.484, vector_updated_share=0.0)
    claims = probe.claims(bad)
    sqrt = _claim(claims, "sqrt is correctly rounded")
    assert not sqrt["holds"] and "float32 18.3%" in sqrt["why"]
    bound = _claim(claims, f"within {SQRT_ULPS} ulp")
    assert not bound["holds"] and f"at most {SQRT_ULPS + 1} ulp" in bound["why"]
    fused = _claim(claims, "round once (fused)")
    assert not fused["holds"] and "add(alpha=) float32: textbook" in fused["why"]
    assert not _claim(claims, "fused or the textbook rule")["holds"]
    sgd = _claim(claims, "16-bit SGD, fused")
    assert not sgd["holds"] and "bfloat16 48.4%" in sgd["why"]
    assert _claim(claims, "16-bit SGD, torch's default")["holds"]
    stuck = _claim(claims, "64-element parameter")
    assert not stuck["holds"] and "fused sgd bfloat16: 0% moved" in stuck["why"]


def test_the_claims_here_agree_with_the_rules_here(machine_rules):
    claims = probe.claims(machine_rules)
    sqrt = _claim(claims, "sqrt is correctly rounded")
    assert sqrt["holds"] == (machine_rules["sqrt"]["float32"]["one"]["off_share"] == 0)
    assert _claim(claims, f"within {SQRT_ULPS} ulp")["holds"]  # the model's bound: MKL's documented one
    fused = probe.fused(machine_rules, "float32") and probe.fused(machine_rules, "float64")
    assert _claim(claims, "round once (fused)")["holds"] == fused


# ------------------------------------------------------------------ the command and the view


def test_doctor_prints_the_machine_the_rules_and_the_claims(machine_rules):
    result = CliRunner().invoke(cli, ["doctor"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("sgdtrace doctor:")
    cap = torch.backends.cpu.get_cpu_capability()
    for text in (torch.__version__, f"capability {cap}", "torch's sqrt", "sigmoid", "lerp_ (w < 0.5)"):
        assert text in out, text
    assert "sgdtrace's claims on this machine" in out and "rules cached in" in out
    held = sum(c["holds"] for c in probe.claims(machine_rules))
    assert f"{held} of {len(probe.claims(machine_rules))} hold" in out


def test_doctor_json_is_the_environment(tmp_path):
    out = tmp_path / "env.json"
    result = CliRunner().invoke(cli, ["doctor", "--format", "json", "--output", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text(encoding="utf-8"))
    env = probe.environment()
    assert {k: v for k, v in doc.items() if k != "probe"} == json.loads(json.dumps(env))
    assert set(doc["probe"]) == {"from_cache", "seconds"}
    for key in ("sgdtrace", "torch", "numpy", "python", "cpu", "cuda", "deterministic_algorithms", "rules", "claims"):
        assert key in doc
    assert doc["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability()
    assert doc["cpu"]["threads"] == torch.get_num_threads()


def test_doctor_refresh_measures_again(fresh_cache):
    _, calls = fresh_cache
    assert CliRunner().invoke(cli, ["doctor", "--format", "json"]).exit_code == 0
    assert CliRunner().invoke(cli, ["doctor", "--format", "json"]).exit_code == 0
    assert calls == ["cpu"]
    result = CliRunner().invoke(cli, ["doctor", "--refresh", "--format", "json"])
    assert result.exit_code == 0 and calls == ["cpu", "cpu"]
    assert json.loads(result.output)["probe"]["from_cache"] is False


@pytest.mark.parametrize(
    "args,says",
    [
        (["--format", "xml"], "'xml' is not one of 'table', 'json'"),
        (["--output", "/no/such/folder/env.json"], "does not exist"),
        (["--lr", "0.1"], "No such option '--lr'"),
    ],
)
def test_doctor_bad_input_is_one_line_and_exit_2(args, says):
    result = CliRunner().invoke(cli, ["doctor", *args])
    assert result.exit_code == 2
    assert says in result.output and len(result.output.strip().splitlines()) == 1


def test_doctor_help_imports_no_torch():
    code = "import sys\nfrom sgdtrace.cli import main\n"
    code += "try:\n    main(['doctor', '--help'])\nexcept SystemExit:\n    pass\n"
    code += "print('TORCH' if 'torch' in sys.modules or 'numpy' in sys.modules else 'NONE')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("NONE") and "--refresh" in out.stdout


def test_golden_doctor_view():
    """The view alone, on a stored environment (an AMD EPYC's): the same text on every machine."""
    env = json.loads((GOLDEN / "doctor_env.json").read_text(encoding="utf-8"))
    check_golden("doctor.txt", render(doctor_view(env), width=80))


def test_golden_doctor_view_with_cuda_rules():
    """The CUDA section, on the stored environment given a device whose rules are its CPU's (the
    layout, not a GPU's figures)."""
    env = json.loads((GOLDEN / "doctor_env.json").read_text(encoding="utf-8"))
    rules = env["rules"]
    rules["cuda"] = {"device": "Fake GPU", "sqrt": rules["sqrt"], "functions": rules["functions"]}
    check_golden("doctor_cuda.txt", render(doctor_view(env), width=80))


def test_the_doctor_view_imports_no_torch():
    code = "import sys\nimport sgdtrace.views.doctor\n"
    code += "print(sorted(m for m in ('torch', 'sgdtrace.teaching') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ every JSON output carries it


def _without_timing(env):
    return json.loads(json.dumps(env))


def test_run_compare_and_check_json_carry_the_environment(tmp_path):
    env = _without_timing(probe.environment())
    runner = CliRunner()
    run = runner.invoke(cli, ["run", "--format", "json"])
    assert run.exit_code == 0 and json.loads(run.output)["environment"] == env
    ref = runner.invoke(cli, ["run", "--format", "json", "--reference", "exact"])  # not the streamed path
    assert ref.exit_code == 0 and json.loads(ref.output)["environment"] == env
    cmp = runner.invoke(cli, ["compare", "--format", "json", "--dtype", "float32", "--dtype", "float64"])
    doc = json.loads(cmp.output)
    assert cmp.exit_code == 0 and doc["environment"] == env
    assert all("environment" not in r for r in doc["runs"])  # one for the whole comparison
    chk = runner.invoke(cli, ["check", "configs/article.toml", "--format", "json"])
    assert chk.exit_code == 0 and json.loads(chk.output)["environment"] == env


def test_the_environment_names_cuda_settings_where_there_is_a_gpu():
    env = probe.environment()
    if not torch.cuda.is_available():
        assert env["cuda"] is None
    else:  # pragma: no cover - a GPU machine
        assert env["cuda"]["tf32_matmul"] == torch.backends.cuda.matmul.allow_tf32
        assert env["cuda"]["tf32_cudnn"] == torch.backends.cudnn.allow_tf32
        assert len(env["cuda"]["devices"]) == torch.cuda.device_count()
    assert env["float32_matmul_precision"] == torch.get_float32_matmul_precision()
    assert env["deterministic_algorithms"] == torch.are_deterministic_algorithms_enabled()


def test_the_rules_do_not_depend_on_the_cache_folder(machine_rules, tmp_path, monkeypatch):
    """Measured twice, the rules are the same (seeded inputs): the cache holds a measurement, not a draw."""
    monkeypatch.setenv(probe.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(probe, "_memo", {})
    assert probe.rules() == machine_rules
    assert os.listdir(tmp_path)
