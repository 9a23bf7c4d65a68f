#!/usr/bin/env python3
"""An engine as a process: JSON lines on stdin/stdout (sgdtrace's --engine-cmd protocol).

    sgdtrace run --engine-cmd "python3 docs/examples/engine_cmd.py" --optimizer adam

It implements both parts for the linear model (the article's, or D features) with Adam and
SGD (with momentum), in plain Python floats (float64), whatever the run's dtype: sgdtrace
rounds each reply once to the run's dtype. It imports nothing beyond the standard library.
"""

import json
import math
import sys


def gradients(params, x, y):
    """The mean squared error of w·x + b and its gradients; params["w"] is a number (the
    article's model) or a list of D numbers, params["b"] a number or a list of one."""
    w, b = params["w"], params["b"]
    ws = w if isinstance(w, list) else [w]
    b0 = b[0] if isinstance(b, list) else b
    n = len(y)
    d = [sum(wj * xj for wj, xj in zip(ws, xi)) + b0 - yi for xi, yi in zip(x, y)]
    loss = sum(di * di for di in d) / n
    gw = [2 / n * sum(di * xi[j] for di, xi in zip(d, x)) for j in range(len(ws))]
    gb = 2 / n * sum(d)
    return loss, {"w": gw if isinstance(w, list) else gw[0], "b": [gb] if isinstance(b, list) else gb}


def elementwise(f, *values):
    """f applied element by element to numbers or (nested) lists of the same shape."""
    if isinstance(values[0], list):
        return [elementwise(f, *vs) for vs in zip(*values)]
    return f(*values)


def update(optimizer, value, grad, state, hp):
    """One parameter's step; state is the dict this process sent back last time (empty at first)."""
    if optimizer in ("adam", "adamw"):
        beta1, beta2 = hp["betas"]
        t = state["step"] = state.get("step", 0) + 1
        m = state.get("exp_avg", elementwise(lambda g: 0.0, grad))
        v = state.get("exp_avg_sq", elementwise(lambda g: 0.0, grad))
        vmax = state.get("max_exp_avg_sq", elementwise(lambda g: 0.0, grad))

        def one(p, g, m, v, vmax):
            g = -g if hp["maximize"] else g
            if hp["weight_decay"]:
                if hp["decoupled_weight_decay"]:
                    p = p * (1 - hp["lr"] * hp["weight_decay"])
                else:
                    g = g + hp["weight_decay"] * p
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g * g
            vmax = max(vmax, v)  # amsgrad's running max (kept only when amsgrad is on)
            root = math.sqrt(vmax if hp["amsgrad"] else v)
            step = hp["lr"] / (1 - beta1**t) * m / (root / math.sqrt(1 - beta2**t) + hp["eps"])
            return p - step, m, v, vmax

        out = elementwise(lambda *a: one(*a), value, grad, m, v, vmax)
        pick = lambda i: elementwise(lambda r: r[i], out) if isinstance(out, list) else out[i]  # noqa: E731
        state["exp_avg"], state["exp_avg_sq"] = pick(1), pick(2)
        if hp["amsgrad"]:
            state["max_exp_avg_sq"] = pick(3)
        return pick(0)
    if optimizer == "sgd":
        g = elementwise(lambda g, p: (-g if hp["maximize"] else g) + hp["weight_decay"] * p, grad, value)
        if hp["momentum"]:
            if "momentum_buffer" in state:
                mu, damp = hp["momentum"], 1 - hp["dampening"]
                state["momentum_buffer"] = elementwise(lambda b, g: mu * b + damp * g, state["momentum_buffer"], g)
            else:
                state["momentum_buffer"] = g
            buf = state["momentum_buffer"]
            g = elementwise(lambda g, b: g + hp["momentum"] * b, g, buf) if hp["nesterov"] else buf
        return elementwise(lambda p, g: p - hp["lr"] * g, value, g)
    raise ValueError(f"this engine does not implement {optimizer}")


def number(v):
    """A request's value: a number, or "inf", "-inf", "nan"."""
    return float(v) if isinstance(v, str) else v


def main():
    optimizer = None
    for line in sys.stdin:
        req = json.loads(line, parse_constant=float)
        op = req["op"]
        if op == "start":
            optimizer = req["optimizer"]
            parts = ["gradients", "update"] if optimizer in ("sgd", "adam", "adamw") else ["gradients"]
            reply = {"parts": parts}
        elif op == "gradients":
            params = {k: elementwise(number, v) for k, v in req["params"].items()}
            x = elementwise(number, req["x"])
            y = elementwise(number, req["y"])
            loss, grads = gradients(params, x, y)
            reply = {"loss": loss, "grads": grads}
        elif op == "update":
            value = elementwise(number, req["value"])
            grad = elementwise(number, req["grad"])
            state = req["state"]
            new = update(optimizer, value, grad, state, req["hp"])
            reply = {"value": new, "state": state}
        else:  # stop
            break
        # json writes floats with repr: the shortest text that reads back the same double
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
