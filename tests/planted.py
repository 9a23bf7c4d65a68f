"""Planted mistakes: one engine file per usual mistake, each an honest engine with one slip, and
the config on which its effect exceeds the allowance at the first step (or where it first can).

``ENGINE`` is a correct engine for every optimizer (NumPy, in the run's dtype) whose update and
gradients take one ``MISTAKE`` switch; :data:`PLANTED` lists ``(name, kind, options)``: the
mistake, the diagnosis kind it must be named by, and the run's options. Used by
tests/test_mistakes.py and by tools/mistake_study.py (the figures in docs/own-engine.md).
"""

ENGINE = """
import numpy as np

MISTAKE = {mistake!r}
_prev = {{}}


def gradients(w, b, x, y):
    n = len(x)
    if MISTAKE == "stale_gradient_grad" and "g" in _prev:
        out = _prev["g"]
    d = w * x + b - y
    loss = (d * d).sum() / n
    gw, gb = 2 * (d * x).sum() / n, 2 * d.sum() / n
    if MISTAKE == "sum_not_mean":
        gw, gb = 2 * (d * x).sum(), 2 * d.sum()
    if MISTAKE == "swapped_gradients":
        gw, gb = gb, gw
    if MISTAKE == "sign_gradient":
        gw, gb = -gw, -gb
    out = (loss, gw, gb)
    if MISTAKE == "stale_gradient_grad":
        out, _prev["g"] = _prev.get("g", out), out
    return out


def update(param, grad, state, hp):
    name = hp.param
    if MISTAKE == "stale_gradient":
        grad, state["_last"] = state.get("_last", 0 * grad), grad
    if MISTAKE == "b_gets_w_gradient":
        if name == "w":
            _prev["gw"] = grad
        else:
            grad = _prev["gw"]
    lr = hp.lr
    if MISTAKE == "schedule_early":
        state["_k"] = k = state.get("_k", 0) + 1
        lr = _RATES[min(k, len(_RATES) - 1)]
    g = -grad if hp.maximize else grad
    opt = _OPTIMIZER
    if opt == "sgd":
        if hp.weight_decay:
            g = g + hp.weight_decay * param
        if hp.momentum:
            if "momentum_buffer" not in state:
                buf = g
            else:
                buf = hp.momentum * state["momentum_buffer"] + (1 - hp.dampening) * g
            state["momentum_buffer"] = buf
            nesterov = hp.nesterov != (MISTAKE in ("nesterov_missing", "nesterov_unasked"))
            g = g + hp.momentum * buf if nesterov else buf
        return param - lr * g
    if opt in ("adam", "adamw"):
        b1, b2 = hp.betas
        decoupled = hp.decoupled_weight_decay != (MISTAKE in ("l2_in_adamw", "decoupled_in_adam"))
        if hp.weight_decay and MISTAKE != "decay_after_update":
            if decoupled:
                param = param * (1 - lr * hp.weight_decay)
            else:
                g = g + hp.weight_decay * param
        t = state["step"] = state.get("step", 0) + 1
        m = state["exp_avg"] = b1 * state.get("exp_avg", 0 * g) + (1 - b1) * g
        v = state["exp_avg_sq"] = b2 * state.get("exp_avg_sq", 0 * g) + (1 - b2) * g * g
        tt = t + 1 if MISTAKE == "bias_correction_ahead" else t - 1 if MISTAKE == "bias_correction_behind" else t
        bc1 = 1 if MISTAKE in ("no_bias_correction", "no_bias_correction1") else 1 - b1**tt
        bc2 = 1 if MISTAKE in ("no_bias_correction", "no_bias_correction2") else 1 - b2**tt
        if hp.amsgrad:
            if MISTAKE == "amsgrad_corrected_max":
                v = state["max_exp_avg_sq"] = np.maximum(state.get("max_exp_avg_sq", 0 * v), v / bc2)
                bc2 = 1
            else:
                v = state["max_exp_avg_sq"] = np.maximum(state.get("max_exp_avg_sq", 0 * v), v)
        if MISTAKE == "betas_swapped":  # not in the catalogue: no name may be given
            m = state["exp_avg"] = b2 * (m - (1 - b1) * g) / b1 + (1 - b2) * g
        m_hat, v_hat = m / bc1, v / bc2  # the textbook's form (NumPy: a zero divisor gives inf, not an error)
        if MISTAKE == "eps_inside_sqrt":
            denom = np.sqrt(v_hat + hp.eps)
        else:
            denom = np.sqrt(v_hat) + hp.eps
        new = param - lr * m_hat / denom
        if hp.weight_decay and MISTAKE == "decay_after_update":
            new = new * (1 - lr * hp.weight_decay)
        return new
    if opt == "rmsprop":
        if hp.weight_decay:
            g = g + hp.weight_decay * param
        v = state["square_avg"] = hp.alpha * state.get("square_avg", 0 * g) + (1 - hp.alpha) * g * g
        if MISTAKE == "alpha_swapped":  # not in the catalogue: no name may be given
            v = state["square_avg"] = (1 - hp.alpha) * state.get("square_avg", 0 * g) + hp.alpha * g * g
        inner = v
        if hp.centered:
            ga = state["grad_avg"] = hp.alpha * state.get("grad_avg", 0 * g) + (1 - hp.alpha) * g
            inner = v - ga if MISTAKE == "centered_no_square" else v - ga * ga
        avg = np.sqrt(inner + hp.eps) if MISTAKE == "eps_inside_sqrt" else np.sqrt(inner) + hp.eps
        if hp.momentum > 0:
            if MISTAKE == "momentum_on_gradient":
                buf = state["momentum_buffer"] = hp.momentum * state.get("momentum_buffer", 0 * g) + g
                return param - lr * buf / avg
            buf = state["momentum_buffer"] = hp.momentum * state.get("momentum_buffer", 0 * g) + g / avg
            return param - lr * buf
        return param - lr * g / avg
    # adagrad
    t = state["step"] = state.get("step", 0) + 1
    if hp.weight_decay:
        g = g + hp.weight_decay * param
    clr = lr / (1 + (t if MISTAKE == "lr_decay_ahead" else t - 1) * hp.lr_decay)
    s = state["sum"] = state.get("sum", 0 * g + hp.initial_accumulator_value) + g * g
    std = np.sqrt(s + hp.eps) if MISTAKE == "eps_inside_sqrt" else np.sqrt(s) + hp.eps
    if MISTAKE == "no_sqrt":  # not in the catalogue: no name may be given
        std = s + hp.eps
    return param - clr * g / std


_OPTIMIZER = {optimizer!r}
_RATES = {rates!r}
"""

STEP = {"scheduler": {"name": "StepLR", "interval": "step", "step_size": 1, "gamma": 0.7}}
W1 = {"init_w": 1.0, "init_b": 1.0}

#: (name, the kind it must be named by (None: caught, no name expected), the run's options)
PLANTED = [
    # the gradients part
    ("sum_not_mean", "factor", {}),
    ("swapped_gradients", "other_gradient", {}),
    ("sign_gradient", "sign", {}),
    ("stale_gradient_grad", "previous_gradient", {}),
    # every optimizer's inputs
    ("stale_gradient", "stale_gradient", {"optimizer": "adam"}),
    ("b_gets_w_gradient", "other_gradient", {"optimizer": "adam"}),
    ("schedule_early", "schedule_early", {"optimizer": "adam", **STEP}),
    ("schedule_early", "schedule_early", {"optimizer": "sgd", "momentum": 0.9, **STEP}),
    # SGD
    ("nesterov_missing", "nesterov_missing", {"momentum": 0.9, "nesterov": True}),
    ("nesterov_unasked", "nesterov_unasked", {"momentum": 0.9}),
    # Adam, AdamW
    ("no_bias_correction", "no_bias_correction", {"optimizer": "adam"}),
    ("no_bias_correction1", "no_bias_correction1", {"optimizer": "adam"}),
    ("no_bias_correction2", "no_bias_correction2", {"optimizer": "adam"}),
    ("bias_correction_ahead", "bias_correction_ahead", {"optimizer": "adam"}),
    ("bias_correction_behind", "bias_correction_behind", {"optimizer": "adam"}),
    ("eps_inside_sqrt", "eps_inside_sqrt", {"optimizer": "adam", "eps": 0.1}),
    ("l2_in_adamw", "l2_in_adamw", {"optimizer": "adamw", "weight_decay": 0.1, **W1}),
    ("decoupled_in_adam", "decoupled_in_adam", {"optimizer": "adam", "weight_decay": 0.1, **W1}),
    ("decay_after_update", "decay_after_update", {"optimizer": "adamw", "weight_decay": 0.5, "lr": 0.2, **W1}),
    ("amsgrad_corrected_max", "amsgrad_corrected_max", {"optimizer": "adam", "amsgrad": True}),
    ("no_bias_correction", "no_bias_correction", {"optimizer": "adamw", "dtype": "bfloat16"}),
    # RMSprop
    ("centered_no_square", "centered_no_square", {"optimizer": "rmsprop", "centered": True}),
    ("momentum_on_gradient", "momentum_on_gradient", {"optimizer": "rmsprop", "momentum": 0.9}),
    ("eps_inside_sqrt", "eps_inside_sqrt", {"optimizer": "rmsprop", "eps": 0.1}),
    # Adagrad
    ("lr_decay_ahead", "lr_decay_ahead", {"optimizer": "adagrad", "lr_decay": 0.1}),
    ("eps_inside_sqrt", "eps_inside_sqrt", {"optimizer": "adagrad", "eps": 0.1}),
    # mistakes outside the catalogue: caught, and no name may be given (a name would be wrong)
    ("betas_swapped", None, {"optimizer": "adam"}),
    ("alpha_swapped", None, {"optimizer": "rmsprop"}),
    ("no_sqrt", None, {"optimizer": "adagrad"}),
]


def source(mistake: str, options: dict) -> str:
    """The planted engine's file for ``mistake`` on a run with ``options``."""
    from sgdtrace.config import Config, make_schedule

    opts = dict(options)
    sched = opts.pop("scheduler", None)
    rates = []
    if sched is not None:
        from sgdtrace.data import load, plan
        from sgdtrace.engines.optimizers import schedules

        cfg = Config(scheduler=make_schedule(sched, "planted"), **opts)
        p = plan(len(load(cfg)), cfg)
        rows = schedules.values(cfg, schedules.calls(cfg, p))
        rates = [r["lr"] for r in rows]
    return ENGINE.format(mistake=mistake, optimizer=opts.get("optimizer", "sgd"), rates=rates)


def config(options: dict):
    from sgdtrace.config import Config, make_schedule

    opts = dict(options)
    sched = opts.pop("scheduler", None)
    opts.setdefault("epochs", 3)
    return Config(scheduler=make_schedule(sched, "planted") if sched else None, **opts)
