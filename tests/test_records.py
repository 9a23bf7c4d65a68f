"""The verdict's typed records: their JSON is the 0.1 dicts' JSON, read like a dict as before;
the verdict's sentences are built once (the table, the markdown export and the HTML page agree)."""

from __future__ import annotations

import dataclasses
import json
import math
from html import escape

import numpy as np
import pytest

from sgdtrace import Config
from sgdtrace.blowup import batch_sums, epoch_log_radius, full_loss, largest_stable_lr
from sgdtrace.tracing import run_trace
from sgdtrace.verdict import BlowUp, FieldSummary, FirstDivergence, json_number
from sgdtrace.views import verdict as sentences
from sgdtrace.views.export import trace_to_json, trace_to_json_text, trace_to_markdown, verdict_sentence
from sgdtrace.views.html import verdict_html
from sgdtrace.views.table import verdict_text


def _halved_grad_w(monkeypatch):
    from sgdtrace.engines import manual

    real = manual.grad_w
    monkeypatch.setattr(manual, "grad_w", lambda up, x: real(up, x) / 2)


def old_first_divergent_step(t) -> dict | None:
    """The 0.1 verdict's dict, built the 0.1 way: the earliest failing step over the fields in order."""
    first, first_step = None, math.inf
    for f, d in t.divergence.items():
        bad = np.flatnonzero(~d.ok)
        if bad.size and bad[0] < first_step:
            k = first_step = int(bad[0])
            first = {
                "epoch": int(t.epoch[k]),
                "batch": int(t.batch[k]),
                "step": k + 1,
                "field": f,
                "manual": json_number(t.manual[f][k]),
                "torch": json_number(t.torch[f][k]),
                "abs": json_number(d.abs[k]) if d.finite[k] else None,
                "carried": json_number(d.carried[k]),
                "tol": json_number(d.tol[k]),
            }
    return first


def old_blowup(t) -> dict:
    """The 0.1 diagnosis's dict, assembled the 0.1 way from the library's pieces (its sentences as they are)."""
    d, cfg = t.verdict.diverged_training, t.config
    k = d.step - 1
    sums = batch_sums(t.dataset.x, t.plan, cfg)
    row = t.epoch[k] - 1 if sums[1].shape[0] > 1 else 0
    log_r = epoch_log_radius(sums, np.array([cfg.lr]), cfg)[row, 0]
    one = (sums[0], sums[1][row : row + 1], sums[2][row : row + 1])
    limit = largest_stable_lr(one, cfg, float(t.stable_lr.min()))
    return {
        "epoch": int(t.epoch[k]),
        "batch": int(t.batch[k]),
        "step": k + 1,
        "reason": d.reason,
        "hint": d.hint,
        "stable_lr": float(t.stable_lr.min()),
        "stable_lr_batch": float(t.stable_lr[k]),
        "stable_lr_epoch": limit if math.isfinite(limit) else None,
        "radius": json_number(math.exp(log_r) if log_r < 700 else math.inf),
        "lr_hint": d.lr_hint,
        "loss_start": json_number(full_loss(t.dataset, cfg.init_w, cfg.init_b)),
        "loss_end": json_number(full_loss(t.dataset, float(t.manual["w"][-1]), float(t.manual["b"][-1]))),
    }


def test_a_diverging_runs_record_is_the_old_dict(monkeypatch):
    _halved_grad_w(monkeypatch)
    t = run_trace(Config())
    rec = t.verdict.first_divergent_step
    assert isinstance(rec, FirstDivergence) and t.verdict.diverged_training is None
    old = old_first_divergent_step(t)
    assert old["step"] == 1 and old["field"] == "grad_w"
    # a field added since (sgdtrace.diagnosis): the halved gradient is named
    assert rec.diagnosis["kind"] == "factor" and rec.diagnosis["factor"] == 0.5
    old["diagnosis"] = rec.diagnosis
    # and (sgdtrace.reference.closer) the ground truth: torch is nearer the exact step
    assert rec.closer == "torch" and rec.exact_error["hand"] > 1e6 * rec.exact_error["torch"]
    old["closer"], old["exact_error"] = rec.closer, rec.exact_error
    assert rec.to_json() == old and list(rec.to_json()) == list(old)
    assert t.verdict.to_json()["first_divergent_step"] == old
    for key, value in old.items():  # the 0.1 access
        assert rec[key] == value and rec.get(key) == value
    assert rec.get("nope") is None
    with pytest.raises(KeyError):
        rec["nope"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.step = 2


@pytest.mark.parametrize("cfg", [Config(lr=1.0, epochs=30), Config(lr=0.1)], ids=["inf", "finite"])
def test_a_blowups_record_is_the_old_dict(cfg):
    t = run_trace(cfg)
    rec = t.verdict.diverged_training
    assert isinstance(rec, BlowUp)
    old = old_blowup(t)
    assert rec.to_json() == old and list(rec.to_json()) == list(old)
    assert json.dumps(rec.to_json()) == json.dumps(old)  # same JSON text, key order included
    for key, value in old.items():
        assert rec[key] == value
    # numbers on the record, JSON's strings only in to_json
    assert isinstance(rec.loss_end, float) and isinstance(rec.loss_start, float)
    if cfg.lr == 1.0:
        assert rec.loss_end != rec.loss_end and rec["loss_end"] == "nan" and old["loss_end"] == "nan"


def test_an_agreeing_runs_verdict_is_the_old_json():
    t = run_trace(Config())
    assert t.verdict.ok and t.verdict.first_divergent_step is None and t.verdict.diverged_training is None
    j = trace_to_json(t)["verdict"]
    assert j["first_divergent_step"] is None and j["diverged_training"] is None
    assert json.loads(trace_to_json_text(t))["verdict"] == j
    assert not hasattr(t.verdict, "fields")


def test_the_verdict_is_built_from_the_field_summaries(monkeypatch):
    _halved_grad_w(monkeypatch)
    t = run_trace(Config(lr=1.0, epochs=30))
    s = {f: FieldSummary.of(d) for f, d in t.divergence.items()}
    v = t.verdict
    assert v.max_abs == max(x.max_abs for x in s.values()) and v.max_ulp == max(x.max_ulp for x in s.values())
    assert v.max_rel == max(x.max_rel for x in s.values())
    assert v.max_tol_ratio == max(x.max_tol_ratio for x in s.values())
    assert v.first_divergent_step.step - 1 == min(x.first_bad for x in s.values() if x.first_bad is not None)
    # the streamed JSON writer and json.dumps still write the same text
    assert trace_to_json_text(t) == json.dumps(trace_to_json(t), indent=2, allow_nan=False) + "\n"


@pytest.mark.parametrize("cfg", [Config(), Config(lr=0.1)], ids=["agree", "blowup"])
def test_every_view_says_the_builders_sentences(cfg, monkeypatch):
    t = run_trace(cfg)
    segs = sentences.segments(t)
    words = "".join(text for text, _ in segs)
    assert verdict_text(t).plain == words
    assert [s.style for s in verdict_text(t).spans] == [style for _, style in segs if style]
    # the markdown table marks no row: the same words, without the pointer to the marked row
    md = verdict_sentence(t)
    assert md == sentences.plain(t, marked=False) == words.replace(", the row marked ⚠", "")
    assert md in trace_to_markdown(t)
    page = verdict_html(t)
    for line in words.split("\n"):
        assert escape(line.strip(), quote=True) in page


def test_diverge_sentence_from_the_record(monkeypatch):
    _halved_grad_w(monkeypatch)
    t = run_trace(Config())
    f = t.verdict.first_divergent_step
    text = sentences.plain(t)
    assert text.startswith(
        f"✗ diverge  first at epoch 1 batch 1 (step 1), dl/dw: hand {sentences.show(f.manual)}, "
        f"torch {sentences.show(f.torch)}, |Δ| {sentences.show(f.abs)}"
    )
    assert sentences.show(None) == "n/a" and sentences.show(math.inf) == "inf" == json_number(math.inf)
    assert sentences.show(float("nan")) == "nan" and sentences.show(-math.inf) == "-inf"
